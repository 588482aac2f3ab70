#!/bin/sh
# bench/rxmech.sh [SECONDS] [SIZES]: recvmmsg vs TPACKET_V3 on a veth master, and
# sendmmsg vs a TX ring (see rxmech.c).
# RX: a sender in namespace "out" (core 0) blasts frames at vio0; the receiver reads vim0 in
# namespace "host" (core 1), once with each mechanism, alternating, twice per size.
# TX: the sender alone (core 1) on vim0, sendmmsg then the TX ring, twice per size.
set -eu
secs=${1:-4}
sizes=${2:-64 1500}
dir=$(mktemp -d)
h=rxm-h-$$ o=rxm-o-$$
cleanup() { ip netns del "$h" 2>/dev/null || true; ip netns del "$o" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
gcc -O2 -Wall -o "$dir/rxmech" "$(dirname "$0")/rxmech.c"
ip netns add "$h"
ip netns add "$o"
ip link add vim0 netns "$h" type veth peer name vio0 netns "$o"
for ns in "$h" "$o"; do ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1; done
ip -n "$h" link set vim0 up
ip -n "$o" link set vio0 up
for size in $sizes; do
  for round in 1 2; do
    for mech in recvmmsg tpacket3; do
      ip netns exec "$o" taskset -c 0 "$dir/rxmech" send vio0 $((secs + 2)) "$size" >/dev/null &
      sender=$!
      sleep 1
      printf '%s B, round %s: ' "$size" "$round"
      ip netns exec "$h" taskset -c 1 "$dir/rxmech" "$mech" vim0 "$secs"
      wait "$sender"
    done
  done
done
for size in $sizes; do
  for round in 1 2; do
    for mech in send txring; do
      printf '%s B, round %s: ' "$size" "$round"
      ip netns exec "$h" taskset -c 1 "$dir/rxmech" "$mech" vim0 "$secs" "$size"
    done
  done
done
