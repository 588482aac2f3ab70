"""Random flows for the multiqueue tests: frames whose RX ring ``frames.flow_hash`` picks.

``random_flow`` draws one frame of the kinds the hash treats differently: IPv4 and
IPv6; TCP, UDP and other protocols (ICMP, ICMPv6, GRE, SCTP); IPv4 fragments (first,
middle, last: no ports hashed), IPv4 options (the ports further on), IPv6 with a
Fragment header (the ports are not directly behind the IPv6 header); a payload of a
random length. Deterministic for a given ``random.Random``.
"""

from __future__ import annotations

import random

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

_KINDS4 = ("udp", "tcp", "icmp", "gre", "first_fragment", "middle_fragment", "last_fragment", "options")
_KINDS6 = ("udp", "tcp", "icmpv6", "sctp", "fragment_header")


def _upper(rng: random.Random, kind: str) -> Packet:
    sport, dport = rng.randrange(1, 65536), rng.randrange(1, 65536)
    while {sport, dport} & {67, 68, 546, 547}:  # DHCP: the guards', never C's
        sport, dport = rng.randrange(1, 65536), rng.randrange(1, 65536)
    if kind == "tcp":
        return TCP(sport=sport, dport=dport)
    if kind in ("icmp", "icmpv6", "gre", "sctp"):
        return Raw(b"")
    return UDP(sport=sport, dport=dport)


def random_flow(rng: random.Random, src_mac: str, dst_mac: str, srcs4: list[str], dsts4: list[str],
                srcs6: list[str], dsts6: list[str]) -> bytes:
    """One frame from ``src_mac`` to ``dst_mac``: IPv4 between ``srcs4`` and ``dsts4`` or
    IPv6 between ``srcs6`` and ``dsts6`` (the family drawn when both are given)."""
    payload = Raw(bytes(rng.randrange(256) for _ in range(rng.choice([0, 2, 40]))))
    eth = Ether(src=src_mac, dst=dst_mac)
    if dsts6 and (not dsts4 or rng.random() < 0.4):
        kind = rng.choice(_KINDS6)
        ip6 = IPv6(src=rng.choice(srcs6), dst=rng.choice(dsts6))
        if kind == "icmpv6":
            return bytes(eth / ip6 / ICMPv6EchoRequest(id=rng.randrange(65536)) / payload)
        if kind == "sctp":
            return bytes(eth / IPv6(src=ip6.src, dst=ip6.dst, nh=132) / payload)
        if kind == "fragment_header":
            return bytes(eth / ip6 / IPv6ExtHdrFragment(offset=rng.choice([0, 10]), m=rng.randrange(2))
                         / _upper(rng, "udp") / payload)
        return bytes(eth / ip6 / _upper(rng, kind) / payload)
    kind = rng.choice(_KINDS4)
    src, dst = rng.choice(srcs4), rng.choice(dsts4)
    if kind == "icmp":
        return bytes(eth / IP(src=src, dst=dst) / ICMP(id=rng.randrange(65536)) / payload)
    if kind == "gre":
        return bytes(eth / IP(src=src, dst=dst, proto=47) / payload)
    if kind == "options":
        return bytes(eth / IP(src=src, dst=dst, options=b"\x01\x01\x01\x00") / _upper(rng, rng.choice(["udp", "tcp"]))
                     / payload)
    if kind.endswith("fragment"):
        flags, frag = {"first_fragment": ("MF", 0), "middle_fragment": ("MF", 7), "last_fragment": ("", 7)}[kind]
        return bytes(eth / IP(src=src, dst=dst, flags=flags, frag=frag, proto=17) / _upper(rng, "udp") / payload)
    return bytes(eth / IP(src=src, dst=dst) / _upper(rng, kind) / payload)
