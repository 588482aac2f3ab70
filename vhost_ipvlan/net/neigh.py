"""Answers to neighbour resolution, built by the backend itself: ARP replies and NDP NAs.

Used where nothing else would answer (departures, docs/kernel-behaviour.md §3-§5): in l3/l3s the backend
answers a guest's ARP/NS for any address but its own (the guest's "router" is the
master's MAC) and the outside's ARP/NS for slave addresses; in every mode it answers
a guest's ARP/NS for the host's own addresses on the master.

Rules:
- Pure: bytes in, bytes out; nothing raises on frame content. A frame that is not
  a well-formed request gets ``None``.
- ``request_target`` says what a frame asks for: ``(family, target)`` for an ARP
  request (4) or a Neighbour Solicitation (6), else ``None``. A DAD probe (ARP from
  0.0.0.0, NS from ``::``) is reported as ``None`` too: answering would make the
  prober think its address is taken.
- The reply is addressed to the requester (its Ethernet source, sender IP/MAC) and
  claims ``mac`` for the target. NAs carry a target link-layer address option, the
  Solicited and Override flags, Router when asked, and a computed checksum.
- Announcements (``announce``: after a live migration, docs/design.md §3) claim
  ``mac`` for an address nobody asked about: a gratuitous ARP is a broadcast request
  whose sender and target IP are the address (target MAC zero, as Linux sends
  them: neighbours update an entry they have, RFC 5227 §3); an unsolicited NA goes to
  all-nodes (ff02::1) from the address itself, Override set, Solicited clear
  (RFC 4861 §7.2.6), with the target link-layer address option.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Final

from .frames import (
    ARP,
    ARPOP_REQUEST,
    ETH,
    ETH_HLEN,
    ETH_P_ARP,
    ETH_P_IPV6,
    IPPROTO_ICMPV6,
    IPPROTO_UDP,
    ND_NEIGHBOR_ADVERT,
    ND_NEIGHBOR_SOLICIT,
    ND_OPT_TARGET_LL_ADDR,
    Frame,
    arp_fields,
    icmpv6_type,
    ipv6_header,
    nd_target,
)

ZERO4: Final = bytes(4)
ZERO16: Final = bytes(16)
NA_ROUTER: Final = 0x80
NA_SOLICITED: Final = 0x40
NA_OVERRIDE: Final = 0x20
_IPV6: Final = struct.Struct("!IHBB16s16s")
BROADCAST: Final = b"\xff" * 6
ALL_NODES: Final = bytes.fromhex("ff020000000000000000000000000001")
ALL_NODES_MAC: Final = b"\x33\x33\x00\x00\x00\x01"


def request_target(frame: Frame) -> tuple[int, bytes] | None:
    """``(4, ip)`` for an ARP request, ``(6, ip)`` for an NS; ``None`` otherwise (and for DAD)."""
    if len(frame) < ETH_HLEN:
        return None
    etype = (frame[12] << 8) | frame[13]
    if etype == ETH_P_ARP:
        f = arp_fields(frame)
        if f is None or f[0] != ARPOP_REQUEST or f[2] == ZERO4:
            return None
        return (4, f[4])
    if etype == ETH_P_IPV6 and icmpv6_type(frame) == ND_NEIGHBOR_SOLICIT:
        hdr = ipv6_header(frame)
        target = nd_target(frame)
        if hdr is None or target is None or hdr[0] == ZERO16:
            return None
        return (6, target)
    return None


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\x00"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def arp_reply(request: Frame, mac: bytes) -> bytes | None:
    """The ARP reply claiming ``mac`` for the request's target IP."""
    f = arp_fields(request)
    if f is None or f[0] != ARPOP_REQUEST:
        return None
    _op, sha, spa, _tha, tpa = f
    src = ETH.unpack_from(request)[1]
    return ETH.pack(src, mac, ETH_P_ARP) + ARP.pack(1, 0x0800, 6, 4, 2, mac, tpa, sha, spa)


def na_reply(request: Frame, mac: bytes, *, router: bool = False) -> bytes | None:
    """The Neighbour Advertisement claiming ``mac`` for the NS's target address."""
    hdr = ipv6_header(request)
    target = nd_target(request)
    if hdr is None or target is None or icmpv6_type(request) != ND_NEIGHBOR_SOLICIT or hdr[0] == ZERO16:
        return None
    flags = NA_SOLICITED | NA_OVERRIDE | (NA_ROUTER if router else 0)
    return _na(ETH.unpack_from(request)[1], hdr[0], target, mac, flags)


def _na(eth_dst: bytes, ip_dst: bytes, target: bytes, mac: bytes, flags: int) -> bytes:
    """A Neighbour Advertisement from ``target`` claiming ``mac`` for it, to ``ip_dst``."""
    body = struct.pack("!BBHB3x16sBB6s", ND_NEIGHBOR_ADVERT, 0, 0, flags, target, ND_OPT_TARGET_LL_ADDR, 1, mac)
    return ipv6_frame(eth_dst, mac, target, ip_dst, IPPROTO_ICMPV6, body)


def gratuitous_arp(mac: bytes, ip: bytes) -> bytes:
    """A broadcast gratuitous ARP request claiming ``mac`` for the IPv4 address ``ip``."""
    return ETH.pack(BROADCAST, mac, ETH_P_ARP) + ARP.pack(1, 0x0800, 6, 4, ARPOP_REQUEST, mac, ip, bytes(6), ip)


def unsolicited_na(mac: bytes, ip: bytes) -> bytes:
    """An unsolicited Neighbour Advertisement (to all-nodes, Override) claiming ``mac`` for ``ip``."""
    return _na(ALL_NODES_MAC, ALL_NODES, ip, mac, NA_OVERRIDE)


def announce(mac: bytes, addresses: Iterable[bytes]) -> list[bytes]:
    """One announcement per address (4 bytes: gratuitous ARP; 16: unsolicited NA), IPv4
    first, each family in address order."""
    return [gratuitous_arp(mac, a) if len(a) == 4 else unsolicited_na(mac, a)
            for a in sorted(addresses, key=lambda a: (len(a), a))]


def ipv6_frame(dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, proto: int, body: bytes,
               hop_limit: int = 255) -> bytes:
    """An Ethernet + IPv6 frame carrying the ICMPv6 or UDP message ``body`` (its
    checksum field zero), the checksum filled in (RFC 8200 §8.1 pseudo-header)."""
    at = 6 if proto == IPPROTO_UDP else 2
    pseudo = src + dst + struct.pack("!I3xB", len(body), proto)
    csum = checksum(pseudo + body) or (0xFFFF if proto == IPPROTO_UDP else 0)
    body = body[:at] + struct.pack("!H", csum) + body[at + 2 :]
    return ETH.pack(dst_mac, src_mac, ETH_P_IPV6) + _IPV6.pack(6 << 28, len(body), proto, hop_limit, src, dst) + body


def reply(request: Frame, mac: bytes, *, router: bool = False) -> bytes | None:
    """``arp_reply`` or ``na_reply``, whichever the request is."""
    kind = request_target(request)
    if kind is None:
        return None
    return arp_reply(request, mac) if kind[0] == 4 else na_reply(request, mac, router=router)
