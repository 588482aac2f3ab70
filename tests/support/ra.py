"""A tiny IPv6 router for tests: sends Router Advertisements for one prefix, with scapy.

Run it inside a namespace (``ip netns exec NS python -m tests.support.ra IFACE PREFIX/LEN``):
it sends an unsolicited RA to ff02::1 every ``--interval`` seconds (and once at
start) until killed, from the interface's link-local address, hop limit 255, with
the source link-layer option and one Prefix Information option (on-link and
autonomous: hosts autoconfigure an address by SLAAC, RFC 4862). The router
lifetime is 0 unless ``--default`` is given: the prefix is on-link, no default
route is offered. Nothing here answers Router Solicitations; the short interval
stands in for that.
"""

from __future__ import annotations

import argparse
import ipaddress
import time
from pathlib import Path

from scapy.layers.inet6 import ICMPv6ND_RA, ICMPv6NDOptPrefixInfo, ICMPv6NDOptSrcLLAddr, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet
from scapy.sendrecv import sendp


def link_local(iface: str) -> str:
    """The interface's (first) IPv6 link-local address, from /proc/net/if_inet6."""
    for line in Path("/proc/net/if_inet6").read_text().splitlines():
        hexaddr, _idx, _plen, scope, _flags, name = line.split()
        if name == iface and scope == "20":
            return str(ipaddress.IPv6Address(bytes.fromhex(hexaddr)))
    raise SystemExit(f"ra: {iface} has no IPv6 link-local address")


def advertisement(iface: str, prefix: ipaddress.IPv6Network, default: bool) -> Packet:
    mac = Path(f"/sys/class/net/{iface}/address").read_text().strip()
    return (Ether(src=mac, dst="33:33:00:00:00:01")
            / IPv6(src=link_local(iface), dst="ff02::1", hlim=255)
            / ICMPv6ND_RA(routerlifetime=1800 if default else 0)
            / ICMPv6NDOptSrcLLAddr(lladdr=mac)
            / ICMPv6NDOptPrefixInfo(prefix=str(prefix.network_address), prefixlen=prefix.prefixlen,
                                    L=1, A=1, validlifetime=3600, preferredlifetime=1800))


def main() -> None:
    ap = argparse.ArgumentParser(prog="ra", description=__doc__.splitlines()[0])
    ap.add_argument("iface")
    ap.add_argument("prefix", type=ipaddress.IPv6Network)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--default", action="store_true", help="also offer a default route")
    args = ap.parse_args()
    ra = advertisement(args.iface, args.prefix, args.default)
    while True:
        sendp(ra, iface=args.iface, verbose=False)
        time.sleep(args.interval)


if __name__ == "__main__":
    main()
