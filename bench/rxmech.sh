#!/bin/sh
# bench/rxmech.sh [SECONDS] [SIZES] [RX]: recvmmsg vs TPACKET_V3 vs TPACKET_V2 (the daemon's
# ring) vs AF_XDP (native and generic XDP, rxmech_xdp.c) on a veth master, and sendmmsg vs a
# TX ring (see rxmech.c). RX: the receivers to run (default all); TX=0 skips the TX part.
# Then the delay each receiver adds at a low rate (pace, RATE frames/s).
# AF_XDP needs libxdp-dev and libbpf-dev (installed here with apt-get if missing).
# RX: a sender in namespace "out" (core 0) blasts frames at vio0; the receiver reads vim0 in
# namespace "host" (core 1), once with each mechanism, alternating, twice per size.
# TX: the sender alone (core 1) on vim0, sendmmsg with and without PACKET_QDISC_BYPASS,
# then the TX ring, twice per size.
set -eu
secs=${1:-4}
sizes=${2:-64 1500}
dir=$(mktemp -d)
h=rxm-h-$$ o=rxm-o-$$
cleanup() { ip netns del "$h" 2>/dev/null || true; ip netns del "$o" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
rx=${3:-recvmmsg tpacket3 tpacket2 xdp-drv xdp-skb}
gcc -O2 -Wall -o "$dir/rxmech" "$(dirname "$0")/rxmech.c"
if [ ! -e /usr/include/xdp/xsk.h ] || [ ! -e /usr/include/bpf/libbpf.h ]; then
  apt-get install -y -q libxdp-dev libbpf-dev >/dev/null
fi
gcc -O2 -Wall -o "$dir/rxmech_xdp" "$(dirname "$0")/rxmech_xdp.c" -lxdp -lbpf
ip netns add "$h"
ip netns add "$o"
ip link add vim0 netns "$h" type veth peer name vio0 netns "$o"
for ns in "$h" "$o"; do ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1; done
ip -n "$h" link set vim0 up
ip -n "$o" link set vio0 up
for size in $sizes; do
  for round in 1 2; do
    for mech in $rx; do
      ip netns exec "$o" taskset -c 0 "$dir/rxmech" send vio0 $((secs + 2)) "$size" >/dev/null &
      sender=$!
      sleep 1
      printf '%s B, round %s: ' "$size" "$round"
      case $mech in
        xdp-*) ip netns exec "$h" taskset -c 1 "$dir/rxmech_xdp" "${mech#xdp-}" vim0 "$secs" ;;
        *) ip netns exec "$h" taskset -c 1 "$dir/rxmech" "$mech" vim0 "$secs" ;;
      esac
      wait "$sender"
    done
  done
done
# latency: the sender paces RATE frames/s (default 1000), 64 B, each carrying its send time
for round in 1 2; do
  for mech in $rx; do
    ip netns exec "$o" taskset -c 0 "$dir/rxmech" pace vio0 $((secs + 2)) 64 "${RATE:-1000}" >/dev/null &
    sender=$!
    sleep 1
    printf 'paced %s/s, round %s: ' "${RATE:-1000}" "$round"
    case $mech in
      xdp-*) ip netns exec "$h" taskset -c 1 "$dir/rxmech_xdp" "${mech#xdp-}" vim0 "$secs" ;;
      *) ip netns exec "$h" taskset -c 1 "$dir/rxmech" "$mech" vim0 "$secs" ;;
    esac
    wait "$sender"
  done
done
[ "${TX:-1}" = 0 ] && exit 0
for size in $sizes; do
  for round in 1 2; do
    for mech in send sendq txring; do
      printf '%s B, round %s: ' "$size" "$round"
      ip netns exec "$h" taskset -c 1 "$dir/rxmech" "$mech" vim0 "$secs" "$size"
    done
  done
done
