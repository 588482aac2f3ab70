"""Bounds-checked inspection of Ethernet frames: Ethernet, 802.1Q, ARP, IPv4, IPv6, NDP.

A ``frame`` is a ``memoryview``, ``bytearray`` or ``bytes`` that starts at the
Ethernet header and ends at the end of the frame (``len(frame)`` is the frame
length; trailing Ethernet padding is allowed).

Rules:
- Nothing here raises on hostile input: every read is preceded by a length check,
  and a frame that is too short or inconsistent is reported as such (``None``,
  ``-1`` or ``L3_RUNT``/``L3_MALFORMED``), never as an exception.
- No I/O, no per-frame objects beyond the small result tuple and the ``bytes``
  address fields it holds (they are dictionary keys for the switch). Headers are
  read with precompiled ``struct.Struct`` objects.
- Validation is what the kernel's ``ipvlan_get_L3_hdr`` checks, plus enough for
  source validation: IPv4 needs version 4, ``ihl >= 5`` and a total length that fits;
  IPv6 needs version 6 and a payload length that fits; ARP must be Ethernet/IPv4
  (htype 1, ptype 0x0800, hlen 6, plen 4).
- ``classify`` does not walk IPv6 extension headers: an NS is recognised only when
  ICMPv6 directly follows the IPv6 header, as NDP messages always do. ``ipv6_upper``
  walks them (Hop-by-Hop, Routing, Fragment, Destination Options; at most
  ``MAX_EXT_HEADERS``) for the guards that must see the upper-layer protocol
  whatever precedes it (``switch.guard``: NDP behind an extension header from a
  guest is dropped, so nothing downstream needs to walk them).
- ``flow_hash`` spreads flows over a multiqueue guest's receive rings: the same
  L3 addresses and TCP/UDP ports (of an unfragmented IPv4 packet, or directly
  behind the IPv6 header) always give the same value, so one flow keeps its order;
  anything else (ARP, non-IP) hashes to 0. ``_fastpath.c`` computes it too, to pick
  the same ring: a change here is a change there (``tests/unit/test_frames.py``
  compares the two).
"""

from __future__ import annotations

import struct
import zlib
from typing import Final

Frame = bytes | bytearray | memoryview

ETH_HLEN: Final = 14
ETH_P_IP: Final = 0x0800
ETH_P_ARP: Final = 0x0806
ETH_P_IPV6: Final = 0x86DD
ETH_P_8021Q: Final = 0x8100
ETH_P_8021AD: Final = 0x88A8
ETH_P_QINQ1: Final = 0x9100  # pre-standard QinQ, also a VLAN tag
ETH_P_PAUSE: Final = 0x8808  # 802.3x MAC control

ARP_HLEN: Final = 28
IPV4_HLEN: Final = 20
IPV6_HLEN: Final = 40
IPPROTO_ICMPV6: Final = 58
IPPROTO_UDP: Final = 17
IPPROTO_HOPOPTS: Final = 0
IPPROTO_ROUTING: Final = 43
IPPROTO_FRAGMENT: Final = 44
IPPROTO_DSTOPTS: Final = 60
EXT_HEADERS: Final = frozenset((IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_FRAGMENT, IPPROTO_DSTOPTS))
MAX_EXT_HEADERS: Final = 8  # more than any real packet carries (RFC 8200 §4.1 orders at most 6)

ARPOP_REQUEST: Final = 1
ARPOP_REPLY: Final = 2

# ICMPv6 NDP message types (RFC 4861) and where their options start, counted from
# the start of the ICMPv6 header.
ND_ROUTER_SOLICIT: Final = 133
ND_ROUTER_ADVERT: Final = 134
ND_NEIGHBOR_SOLICIT: Final = 135
ND_NEIGHBOR_ADVERT: Final = 136
ND_REDIRECT: Final = 137
ND_OPTIONS_OFFSET: Final[dict[int, int]] = {
    ND_ROUTER_SOLICIT: 8,
    ND_ROUTER_ADVERT: 16,
    ND_NEIGHBOR_SOLICIT: 24,
    ND_NEIGHBOR_ADVERT: 24,
    ND_REDIRECT: 40,
}
ND_OPT_SOURCE_LL_ADDR: Final = 1
ND_OPT_TARGET_LL_ADDR: Final = 2

# Offsets of fields from the start of the frame (untagged Ethernet), for the code
# outside ``net`` that reads a field in place on the data path. The reader has made
# sure the frame is long enough and of that kind (``classify`` did, or it compares
# the length first). A buffer with a header in front (virtio-net): ``shifted``.
OFF_ETHERTYPE: Final = 12  # the EtherType, or an 802.3 length (< 0x0600)
OFF_L3: Final = ETH_HLEN
OFF_LLC: Final = ETH_HLEN  # 802.3: the LLC/SNAP header (3 bytes), then the SNAP OUI (3 bytes)
OFF_ARP_OP: Final = OFF_L3 + 6  # 16-bit ARP opcode
OFF_IPV4_VER_IHL: Final = OFF_L3  # version << 4 | header length in 32-bit words (also IPv6's version)
OFF_IPV4_TOT_LEN: Final = OFF_L3 + 2  # 16 bits
OFF_IPV4_FRAG: Final = OFF_L3 + 6  # 3 flag bits, then the 13-bit fragment offset
OFF_IPV4_PROTO: Final = OFF_L3 + 9
OFF_IPV4_DST: Final = OFF_L3 + 16
OFF_IPV6_PLEN: Final = OFF_L3 + 4  # 16-bit payload length
OFF_IPV6_NEXT: Final = OFF_L3 + 6  # next header
OFF_IPV6_DST: Final = OFF_L3 + 24
OFF_ICMPV6: Final = ETH_HLEN + IPV6_HLEN  # 54: ICMPv6 type, when it directly follows the IPv6 header
OFF_ND_TARGET: Final = OFF_ICMPV6 + 8  # 62: NS/NA/Redirect target address
ND_TARGET_END: Final = OFF_ND_TARGET + 16  # 78: the length of an NS/NA without options
LLC_HDR: Final = slice(OFF_LLC, OFF_LLC + 3)
SNAP_OUI: Final = slice(OFF_LLC + 3, OFF_LLC + 6)
IPV4_DST: Final = slice(OFF_IPV4_DST, OFF_IPV4_DST + 4)
IPV6_DST: Final = slice(OFF_IPV6_DST, OFF_IPV6_DST + 16)
ND_TARGET: Final = slice(OFF_ND_TARGET, ND_TARGET_END)

ETH: Final = struct.Struct("!6s6sH")  # dst, src, ethertype
ARP: Final = struct.Struct("!HHBBH6s4s6s4s")  # htype ptype hlen plen op sha spa tha tpa
IPV4: Final = struct.Struct("!BxH8x4s4s")  # version/ihl, total length, src, dst
IPV6: Final = struct.Struct("!IHBB16s16s")  # ver/tc/flow, payload len, nh, hlim, src, dst
ADDR16: Final = struct.Struct("16s")

# Kinds returned by classify().
L3_RUNT: Final = 0  # shorter than an Ethernet header
L3_VLAN: Final = 1  # 802.1Q / 802.1ad tagged
L3_MALFORMED: Final = 2  # ARP/IPv4/IPv6 ethertype, but the header does not parse
L3_CONTROL: Final = 3  # 802.3x MAC control (PAUSE, PFC)
L3_OTHER: Final = 4  # any other ethertype: no L3 addresses
L3_ARP: Final = 5  # src = sender IP, key = target IP, hw = sender HW address
L3_IPV4: Final = 6  # src, key = destination
L3_IPV6: Final = 7  # src, key = destination
L3_ND_NS: Final = 8  # IPv6 Neighbor Solicitation: src, key = NS target address
# The order is part of the contract: kinds below L3_OTHER are unusable frames, kinds
# from L3_ARP up carry addresses, and L3_IPV6/L3_ND_NS are the IPv6 kinds.

VLAN_TYPES: Final = frozenset((ETH_P_8021Q, ETH_P_8021AD, ETH_P_QINQ1))

Classified = tuple[int, bytes, bytes, bytes, bytes, bytes]
_RUNT: Final[Classified] = (L3_RUNT, b"", b"", b"", b"", b"")


def shifted(field: slice, header: int) -> slice:
    """``field`` (a slice above) in a buffer where the frame follows a ``header``-byte header."""
    return slice(header + field.start, header + field.stop)


def classify(frame: Frame) -> Classified:
    """Parse what the switch needs in one pass.

    Returns ``(kind, eth_dst, eth_src, arp_sha, l3_src, l3_key)``: ``kind`` is one of
    the ``L3_*`` constants; ``l3_key`` is the address the kernel's lookup uses
    (IPv4/IPv6 destination, ARP target IP, NS target); fields that do not apply are
    ``b""``.
    """
    n = len(frame)
    if n < ETH_HLEN:
        return _RUNT
    dst, src, etype = ETH.unpack_from(frame)
    if etype == ETH_P_IP:
        if n >= ETH_HLEN + IPV4_HLEN:
            vihl, total, s4, d4 = IPV4.unpack_from(frame, OFF_L3)
            ihl = vihl & 0x0F
            if vihl >> 4 == 4 and ihl >= 5 and ihl * 4 <= total and ETH_HLEN + total <= n:
                return (L3_IPV4, dst, src, b"", s4, d4)
        return (L3_MALFORMED, dst, src, b"", b"", b"")
    if etype == ETH_P_IPV6:
        if n >= OFF_ICMPV6:
            vtf, plen, nh, _hlim, s6, d6 = IPV6.unpack_from(frame, OFF_L3)
            if vtf >> 28 == 6 and OFF_ICMPV6 + plen <= n:
                if (
                    nh == IPPROTO_ICMPV6
                    and plen >= 24
                    and frame[OFF_ICMPV6] == ND_NEIGHBOR_SOLICIT
                ):
                    target = ADDR16.unpack_from(frame, OFF_ND_TARGET)[0]
                    return (L3_ND_NS, dst, src, b"", s6, target)
                return (L3_IPV6, dst, src, b"", s6, d6)
        return (L3_MALFORMED, dst, src, b"", b"", b"")
    if etype == ETH_P_ARP:
        if n >= ETH_HLEN + ARP_HLEN:
            htype, ptype, hlen, plen4, _op, sha, spa, _tha, tpa = ARP.unpack_from(frame, OFF_L3)
            if htype == 1 and ptype == ETH_P_IP and hlen == 6 and plen4 == 4:
                return (L3_ARP, dst, src, sha, spa, tpa)
        return (L3_MALFORMED, dst, src, b"", b"", b"")
    if etype in VLAN_TYPES:
        return (L3_VLAN, dst, src, b"", b"", b"")
    if etype == ETH_P_PAUSE:
        return (L3_CONTROL, dst, src, b"", b"", b"")
    return (L3_OTHER, dst, src, b"", b"", b"")


def ethertype(frame: Frame) -> int:
    """The outer ethertype, or -1 for a frame shorter than an Ethernet header."""
    if len(frame) < ETH_HLEN:
        return -1
    return (frame[12] << 8) | frame[13]


def is_vlan(frame: Frame) -> bool:
    """True for an 802.1Q/802.1ad tagged frame."""
    return ethertype(frame) in VLAN_TYPES


def arp_fields(frame: Frame) -> tuple[int, bytes, bytes, bytes, bytes] | None:
    """``(op, sha, spa, tha, tpa)`` of an Ethernet/IPv4 ARP frame, else ``None``."""
    if ethertype(frame) != ETH_P_ARP or len(frame) < ETH_HLEN + ARP_HLEN:
        return None
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = ARP.unpack_from(frame, OFF_L3)
    if htype != 1 or ptype != ETH_P_IP or hlen != 6 or plen != 4:
        return None
    return (op, sha, spa, tha, tpa)


def ipv4_addrs(frame: Frame) -> tuple[bytes, bytes] | None:
    """``(src, dst)`` of a valid IPv4 frame, else ``None``."""
    kind, _d, _s, _h, src, dst = classify(frame)
    return (src, dst) if kind == L3_IPV4 else None


def ipv6_header(frame: Frame) -> tuple[bytes, bytes, int, int] | None:
    """``(src, dst, next_header, payload_length)`` of a valid IPv6 frame, else ``None``."""
    n = len(frame)
    if ethertype(frame) != ETH_P_IPV6 or n < OFF_ICMPV6:
        return None
    vtf, plen, nh, _hlim, src, dst = IPV6.unpack_from(frame, OFF_L3)
    if vtf >> 28 != 6 or OFF_ICMPV6 + plen > n:
        return None
    return (src, dst, nh, plen)


def icmpv6_type(frame: Frame) -> int:
    """The ICMPv6 type when ICMPv6 directly follows a valid IPv6 header, else -1."""
    hdr = ipv6_header(frame)
    if hdr is None or hdr[2] != IPPROTO_ICMPV6 or hdr[3] < 4:
        return -1
    return frame[OFF_ICMPV6]


def ipv6_upper(frame: Frame, n: int) -> tuple[int, int, int]:
    """Walk the extension headers of the valid IPv6 frame ``frame[:n]``.

    Returns ``(protocol, offset, walked)``: the first header that is not an
    extension header, where it starts (from the start of the frame) and how many
    extension headers precede it. A non-first fragment (offset != 0) ends the walk
    with ``IPPROTO_FRAGMENT`` (its upper layer is in another fragment). ``protocol``
    is -1 when the chain runs past the payload or holds more than
    ``MAX_EXT_HEADERS`` headers. Bounded work; never raises."""
    end = min(n, OFF_ICMPV6 + ((frame[ETH_HLEN + 4] << 8) | frame[ETH_HLEN + 5]))
    nh, off = frame[ETH_HLEN + 6], OFF_ICMPV6
    walked = 0
    while nh in EXT_HEADERS:
        if walked == MAX_EXT_HEADERS or off + 8 > end:
            return (-1, off, walked)
        walked += 1
        if nh == IPPROTO_FRAGMENT:
            if (frame[off + 2] << 8 | frame[off + 3]) & 0xFFF8:
                return (IPPROTO_FRAGMENT, off, walked)
            nh, off = frame[off], off + 8
        else:
            nh, off = frame[off], off + (frame[off + 1] + 1) * 8
    if off > end:
        return (-1, off, walked)
    return (nh, off, walked)


def nd_target(frame: Frame) -> bytes | None:
    """The target address of a Neighbor Solicitation or Advertisement, else ``None``."""
    hdr = ipv6_header(frame)
    if (
        hdr is None
        or hdr[2] != IPPROTO_ICMPV6
        or hdr[3] < 24
        or frame[OFF_ICMPV6] not in (ND_NEIGHBOR_SOLICIT, ND_NEIGHBOR_ADVERT)
    ):
        return None
    target: bytes = ADDR16.unpack_from(frame, OFF_ND_TARGET)[0]
    return target


def nd_lladdr_options(frame: Frame) -> list[tuple[int, int]]:
    """``[(option_type, offset_of_the_MAC), ...]`` for every source/target link-layer
    address option of an NDP message (RS, RA, NS, NA, Redirect); ``[]`` otherwise.

    Offsets are from the start of the frame. A malformed option list (length 0, or
    an option running past the message) ends the walk. Not for the hot path.
    """
    hdr = ipv6_header(frame)
    if hdr is None or hdr[2] != IPPROTO_ICMPV6:
        return []
    start = ND_OPTIONS_OFFSET.get(frame[OFF_ICMPV6] if hdr[3] >= 1 else -1)
    if start is None:
        return []
    end = OFF_ICMPV6 + hdr[3]
    off = OFF_ICMPV6 + start
    found: list[tuple[int, int]] = []
    while off + 2 <= end:
        otype, olen = frame[off], frame[off + 1] * 8
        if olen == 0 or off + olen > end:
            break
        if otype in (ND_OPT_SOURCE_LL_ADDR, ND_OPT_TARGET_LL_ADDR) and olen >= 8:
            found.append((otype, off + 2))
        off += olen
    return found


_IPPROTO_TCP: Final = 6
_IPPROTO_UDP: Final = 17
_OFF_IPV4_SRC: Final = OFF_L3 + 12
_OFF_IPV6_SRC: Final = OFF_L3 + 8


def flow_hash(frame: Frame) -> int:
    """A hash of the frame's flow (see the rules): the L3 source and destination,
    and for TCP/UDP the two ports; 0 for a frame that is not IP."""
    if len(frame) < ETH_HLEN:
        return 0
    etype = frame[OFF_ETHERTYPE] << 8 | frame[OFF_ETHERTYPE + 1]
    if etype == ETH_P_IP and len(frame) >= ETH_HLEN + IPV4_HLEN:
        h = zlib.crc32(frame[_OFF_IPV4_SRC : _OFF_IPV4_SRC + 8])
        ports = OFF_L3 + (frame[OFF_IPV4_VER_IHL] & 0xF) * 4
        unfragmented = not (frame[OFF_IPV4_FRAG] & 0x3F or frame[OFF_IPV4_FRAG + 1])  # MF clear, offset 0
        proto = frame[OFF_IPV4_PROTO]
    elif etype == ETH_P_IPV6 and len(frame) >= ETH_HLEN + IPV6_HLEN:
        h = zlib.crc32(frame[_OFF_IPV6_SRC : _OFF_IPV6_SRC + 32])
        ports, unfragmented, proto = OFF_L3 + IPV6_HLEN, True, frame[OFF_IPV6_NEXT]
    else:
        return 0
    if unfragmented and proto in (_IPPROTO_TCP, _IPPROTO_UDP) and len(frame) >= ports + 4:
        h = zlib.crc32(frame[ports : ports + 4], h)
    return h
