#!/bin/sh
# lab-link.sh NETNS MASTER PEER [ADDRESS/LEN...]: make sure veth MASTER (here, up) <-> PEER
# (in NETNS, up, with the addresses) exists. Prints "changed" when it changed anything.
set -eu
ns=$1 master=$2 peer=$3
shift 3
changed=
is_up() { "$@" | head -n1 | grep -q '[<,]UP[,>]'; }
if ! ip link show dev "$master" >/dev/null 2>&1; then
    ip link add "$master" type veth peer name "$peer" netns "$ns"
    changed=1
fi
is_up ip link show dev "$master" || { ip link set dev "$master" up; changed=1; }
is_up ip -n "$ns" link show dev lo || { ip -n "$ns" link set dev lo up; changed=1; }
is_up ip -n "$ns" link show dev "$peer" || { ip -n "$ns" link set dev "$peer" up; changed=1; }
for a in "$@"; do
    if ! ip -n "$ns" -o addr show dev "$peer" | grep -q " $a "; then
        case "$a" in
        *:*) ip -n "$ns" addr add "$a" dev "$peer" nodad ;;
        *) ip -n "$ns" addr add "$a" dev "$peer" ;;
        esac
        changed=1
    fi
done
[ -z "$changed" ] || echo changed
