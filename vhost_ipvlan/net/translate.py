"""MAC translation between a guest's own MAC and the master's MAC, in place.

Guests keep their own MAC (a departure from the kernel, docs/kernel-behaviour.md §2, where every slave
has the master's MAC); the wire must only ever see the master's MAC. So:

- ``to_wire`` (guest -> master, on the copy that leaves through the master):
  Ethernet source; ARP sender hardware address, and the ARP target hardware address
  when it is the guest's own (gratuitous ARP replies); the source/target link-layer
  address options of NDP messages (RS, RA, NS, NA, Redirect), with the ICMPv6
  checksum updated incrementally (RFC 1624, eqn. 3: ``HC' = ~(~HC + ~m + m')``).
- ``to_guest`` (master -> guest, on the copy delivered to one guest): Ethernet
  destination and ARP target hardware address. NDP options arriving from the
  outside carry the outside's MAC and are left alone.
- ``hairpin_to_wire`` (vepa: guest -> another guest's MAC, via the wire): the same
  two fields, from that guest's MAC to the master's (then ``to_wire`` as usual).

Rules:
- Only fields equal to the MAC being replaced are rewritten; everything else is left
  byte for byte, so translating twice, or translating a frame that needs nothing, is
  harmless.
- ``frame`` must be writable (``bytearray`` or a writable ``memoryview``); only
  ``frame[:length]`` is looked at. Short or malformed frames are left as they are:
  these functions never raise on frame content.
- The ICMPv6 checksum is assumed complete (Linux always computes NDP checksums in
  software). If the frame's virtio_net_hdr asks for checksum offload of that very
  checksum (NEEDS_CSUM), pass ``fix_checksum=False``: the device sums the new bytes.
- NDP options are found only when ICMPv6 directly follows the IPv6 header: a
  guest's NDP behind an extension header never gets here (``switch.guard`` drops
  it), so nothing leaves with an untranslated link-layer option.
- Both return how many MAC fields they rewrote (0 = frame untouched). A
  ``guest_mac`` of ``None`` (a slave whose MAC is not learned yet) rewrites nothing.
"""

from __future__ import annotations

import struct
from typing import Final

from .frames import (
    ETH,
    ETH_HLEN,
    ETH_P_ARP,
    ETH_P_IPV6,
    IPPROTO_ICMPV6,
    ND_OPT_SOURCE_LL_ADDR,
    ND_OPT_TARGET_LL_ADDR,
    ND_OPTIONS_OFFSET,
    OFF_ICMPV6,
)

WritableFrame = bytearray | memoryview

# Ethernet/IPv4 ARP fixed header: htype 1, ptype 0x0800, hlen 6, plen 4.
_ARP_ETH_IP: Final = b"\x00\x01\x08\x00\x06\x04"
_ARP_SHA: Final = ETH_HLEN + 8  # 22
_ARP_THA: Final = ETH_HLEN + 18  # 32
_ARP_END: Final = ETH_HLEN + 28  # 42
_ICMPV6_CSUM: Final = OFF_ICMPV6 + 2  # 56
_SIX: Final = struct.Struct("6s")  # reads a MAC as bytes, without a memoryview slice


_WORDS3: Final = struct.Struct("!3H")


def _csum_delta(old: bytes, new: bytes) -> int:
    """One's-complement ``sum(~old_i) + sum(new_i)`` over the three 16-bit words."""
    a, b, c = _WORDS3.unpack(old)
    d, e, f = _WORDS3.unpack(new)
    delta: int = 3 * 0xFFFF - a - b - c + d + e + f
    return delta


def _arp_hw_rewrite(frame: WritableFrame, n: int, old: bytes, new: bytes, sender: bool) -> int:
    """Rewrite the ARP target (and, if ``sender``, sender) HW address ``old`` -> ``new``."""
    if n < _ARP_END or _SIX.unpack_from(frame, ETH_HLEN)[0] != _ARP_ETH_IP:
        return 0
    changed = 0
    if sender and _SIX.unpack_from(frame, _ARP_SHA)[0] == old:
        frame[_ARP_SHA : _ARP_SHA + 6] = new
        changed += 1
    if _SIX.unpack_from(frame, _ARP_THA)[0] == old:
        frame[_ARP_THA : _ARP_THA + 6] = new
        changed += 1
    return changed


def _ndp_rewrite(
    frame: WritableFrame, n: int, old: bytes, new: bytes, fix_checksum: bool
) -> int:
    """Rewrite NDP link-layer address options ``old`` -> ``new`` and fix the checksum."""
    if n < OFF_ICMPV6 + 4 or frame[ETH_HLEN] >> 4 != 6 or frame[ETH_HLEN + 6] != IPPROTO_ICMPV6:
        return 0
    end = OFF_ICMPV6 + ((frame[ETH_HLEN + 4] << 8) | frame[ETH_HLEN + 5])
    if end > n:
        return 0
    start = ND_OPTIONS_OFFSET.get(frame[OFF_ICMPV6])
    if start is None:
        return 0
    off = OFF_ICMPV6 + start
    changed = 0
    while off + 2 <= end:
        olen = frame[off + 1] * 8
        if olen == 0 or off + olen > end:
            break
        if (
            olen >= 8
            and (frame[off] == ND_OPT_SOURCE_LL_ADDR or frame[off] == ND_OPT_TARGET_LL_ADDR)
            and _SIX.unpack_from(frame, off + 2)[0] == old
        ):
            frame[off + 2 : off + 8] = new
            changed += 1
        off += olen
    if changed and fix_checksum:
        # Every option's MAC sits at an even offset from the ICMPv6 header, so its
        # three 16-bit words line up with the checksum's words.
        hc = (frame[_ICMPV6_CSUM] << 8) | frame[_ICMPV6_CSUM + 1]
        s = (~hc & 0xFFFF) + changed * _csum_delta(old, new)
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        hc = ~s & 0xFFFF
        frame[_ICMPV6_CSUM] = hc >> 8
        frame[_ICMPV6_CSUM + 1] = hc & 0xFF
    return changed


def to_wire(
    frame: WritableFrame,
    length: int,
    guest_mac: bytes | None,
    master_mac: bytes,
    *,
    fix_checksum: bool = True,
) -> int:
    """Translate a guest's frame, about to leave through the master, to the master's MAC."""
    n = min(length, len(frame))
    if n < ETH_HLEN or guest_mac is None or len(guest_mac) != 6 or len(master_mac) != 6:
        return 0
    changed = 0
    _dst, src, etype = ETH.unpack_from(frame)
    if src == guest_mac:
        frame[6:12] = master_mac
        changed = 1
    if etype == ETH_P_ARP:
        changed += _arp_hw_rewrite(frame, n, guest_mac, master_mac, True)
    elif etype == ETH_P_IPV6:
        changed += _ndp_rewrite(frame, n, guest_mac, master_mac, fix_checksum)
    return changed


def to_guest(
    frame: WritableFrame, length: int, guest_mac: bytes | None, master_mac: bytes
) -> int:
    """Translate a frame addressed to the master's MAC for delivery to one guest."""
    n = min(length, len(frame))
    if n < ETH_HLEN or guest_mac is None or len(guest_mac) != 6 or len(master_mac) != 6:
        return 0
    changed = 0
    dst, _src, etype = ETH.unpack_from(frame)
    if dst == master_mac:
        frame[0:6] = guest_mac
        changed = 1
    if etype == ETH_P_ARP:
        changed += _arp_hw_rewrite(frame, n, master_mac, guest_mac, False)
    return changed


def hairpin_to_wire(frame: WritableFrame, length: int, guest_mac: bytes, master_mac: bytes) -> int:
    """Readdress a frame sent to a guest's MAC (Ethernet destination, ARP target HW
    address) to the master's, before ``to_wire``: a vepa frame for another guest
    leaves with dst MAC = src MAC = the master's, as the kernel's does, so that only
    the master's MAC is ever on the wire and a hairpin switch sends it back to us."""
    return to_guest(frame, length, master_mac, guest_mac)
