"""Router Advertisements built by the backend for one guest (RFC 4861 §4.2, §6.2; RDNSS
and DNSSL RFC 8106). Pure: bytes in, bytes out.

Where the daemon is a guest's router (l3/l3s; l2 when no router is on the link:
``Port.advertises``), it answers the guest's Router Solicitation (``switch`` gives it
the verdict ``ANSWERED_RS``) and sends one unsolicited RA when the guest's rings start,
into that guest's RX ring only.

Rules:
- ``is_router_solicit(frame)``: ICMPv6 type 133 code 0 right after the IPv6 header,
  hop limit 255 (RFC 4861 §6.1.1), at least 8 bytes; ``is_router_advert`` the same for
  type 134 (the wire's router, seen by the switch in l2). Bounds-checked, never raise.
- ``advert(dst_mac, dst_ip, src_mac, adv)``: from the daemon's link-local address
  (``adv.source``: fe80:: EUI-64 of the master's MAC, the address the guests' default
  route points to; an NS for it is answered with the master's MAC in l3/l3s), hop
  limit 255. Header: Cur Hop Limit 64, M (``adv.managed``: addresses by DHCPv6), O
  (``adv.other``: DNS by DHCPv6), Router Lifetime ``adv.lifetime`` (0: not a default
  router), Reachable Time and Retrans Timer 0 (unspecified).
  Options: 1 source link-layer address (``src_mac``), 5 MTU (``adv.mtu``), 3 prefix
  information for each of ``adv.prefixes`` (L=1 on-link, A=0: no SLAAC, the addresses
  come from DHCPv6 and a SLAAC one would be a spoofed source), 25 RDNSS (at most
  ``dhcp.MAX_DNS`` servers), 31 DNSSL (``dhcp.encode_search``, padded to 8 bytes);
  the DNS options only when there is something to say. The ICMPv6 checksum is computed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from .dhcp import MAX_DNS, encode_search
from .frames import (
    ETH_HLEN,
    IPPROTO_ICMPV6,
    IPV6_HLEN,
    ND_OPT_SOURCE_LL_ADDR,
    ND_ROUTER_ADVERT,
    ND_ROUTER_SOLICIT,
    OFF_ICMPV6,
    Frame,
)
from .neigh import ipv6_frame

ALL_NODES: Final = bytes.fromhex("ff020000000000000000000000000001")
ALL_NODES_MAC: Final = bytes.fromhex("333300000001")
CUR_HOP_LIMIT: Final = 64
FLAG_MANAGED: Final = 0x80
FLAG_OTHER: Final = 0x40
#: seconds: the daemon re-advertises every ``INTERVAL`` (RFC 4861's MaxRtrAdvInterval
#: default), so router, RDNSS and DNSSL lifetimes of 3 intervals never run out
INTERVAL: Final = 600
ROUTER_LIFETIME: Final = 3 * INTERVAL
#: seconds from a guest's receive ring starting to its first, unsolicited RA
FIRST_DELAY: Final = 1.0
DNS_LIFETIME: Final = 3 * INTERVAL
PREFIX_VALID: Final = 86400
PREFIX_PREFERRED: Final = 14400
ND_OPT_PREFIX_INFO: Final = 3
ND_OPT_MTU: Final = 5
ND_OPT_RDNSS: Final = 25
ND_OPT_DNSSL: Final = 31
PREFIX_ON_LINK: Final = 0x80
_ICMP_MIN: Final = 8


@dataclass(frozen=True, slots=True)
class Advert:
    """What one RA says: the flags, the router lifetime, the MTU, on-link prefixes
    (packed address, length), DNS servers (packed IPv6) and search domains, and the
    daemon's link-local address it comes from."""

    source: bytes
    managed: bool
    other: bool
    lifetime: int
    mtu: int
    prefixes: tuple[tuple[bytes, int], ...] = ()
    dns: tuple[bytes, ...] = ()
    search: tuple[str, ...] = ()


def _icmpv6_is(frame: Frame, kind: int) -> bool:
    n = len(frame)
    if n < OFF_ICMPV6 + _ICMP_MIN or frame[12] != 0x86 or frame[13] != 0xDD or frame[ETH_HLEN] >> 4 != 6:
        return False
    plen = frame[ETH_HLEN + 4] << 8 | frame[ETH_HLEN + 5]
    return (frame[ETH_HLEN + 6] == IPPROTO_ICMPV6 and frame[ETH_HLEN + 7] == 255 and plen >= _ICMP_MIN and
            ETH_HLEN + IPV6_HLEN + plen <= n and frame[OFF_ICMPV6] == kind and frame[OFF_ICMPV6 + 1] == 0)


def is_router_solicit(frame: Frame) -> bool:
    """Whether ``frame`` is a Router Solicitation (ICMPv6 133/0, hop limit 255)."""
    return _icmpv6_is(frame, ND_ROUTER_SOLICIT)


def is_router_advert(frame: Frame) -> bool:
    """Whether ``frame`` is a Router Advertisement (ICMPv6 134/0, hop limit 255)."""
    return _icmpv6_is(frame, ND_ROUTER_ADVERT)


def _prefix(addr: bytes, length: int) -> bytes:
    value = int.from_bytes(addr, "big") & (((1 << 128) - 1) ^ ((1 << (128 - length)) - 1))
    return struct.pack("!BBBBII4x16s", ND_OPT_PREFIX_INFO, 4, length, PREFIX_ON_LINK, PREFIX_VALID,
                       PREFIX_PREFERRED, value.to_bytes(16, "big"))


def _dns_options(adv: Advert) -> bytes:
    out = b""
    dns = adv.dns[:MAX_DNS]
    if dns:
        out += struct.pack("!BBHI", ND_OPT_RDNSS, 1 + 2 * len(dns), 0, DNS_LIFETIME) + b"".join(dns)
    search = encode_search(adv.search)
    if search:
        search += bytes(-(8 + len(search)) % 8)
        out += struct.pack("!BBHI", ND_OPT_DNSSL, (8 + len(search)) // 8, 0, DNS_LIFETIME) + search
    return out


def advert(dst_mac: bytes, dst_ip: bytes, src_mac: bytes, adv: Advert) -> bytes:
    """The Router Advertisement ``adv`` from ``src_mac`` to ``dst_ip`` at ``dst_mac``."""
    flags = (FLAG_MANAGED if adv.managed else 0) | (FLAG_OTHER if adv.other else 0)
    body = struct.pack("!BBHBBHII", ND_ROUTER_ADVERT, 0, 0, CUR_HOP_LIMIT, flags, adv.lifetime, 0, 0)
    body += struct.pack("!BB6s", ND_OPT_SOURCE_LL_ADDR, 1, src_mac)
    body += struct.pack("!BBHI", ND_OPT_MTU, 1, 0, max(1280, min(adv.mtu, 0xFFFFFFFF)))
    seen = set()
    for addr, length in adv.prefixes:
        if 0 < length < 128 and (opt := _prefix(addr, length)) not in seen:
            seen.add(opt)
            body += opt
    body += _dns_options(adv)
    return ipv6_frame(dst_mac, src_mac, adv.source, dst_ip, IPPROTO_ICMPV6, body)
