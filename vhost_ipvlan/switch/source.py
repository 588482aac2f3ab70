"""Source validation and address learning: which frames a guest may send.

Every frame from a guest passes here before it is switched (``l2`` step 2-3,
all modes; a departure, docs/kernel-behaviour.md §3: the kernel checks nothing). ``check_source``
returns ``None`` (valid; any learning it implies is committed) or the
``DropReason`` to count. It reads the fields ``frames.classify`` returned.

Rules:
- ``guard`` has run first: 0.0.0.0 and ``::`` sources are only in the frames it
  lets through (DHCP client, ARP probe, DAD NS, MLD), and NDP never follows an
  extension header here, so the NA below is always right after the IPv6 header.
- Ethernet source: the slave's MAC. Multicast -> MULTICAST_SRC. A slave without a
  MAC learns it from its first frame that passes every check, unless it is the
  master's, all-zero, another slave's, one seen as a source on the wire
  (``Port.wire_macs``: e.g. the LAN router's) or a neighbour's of the master
  (``Port.in_use``) (SRC_MAC_SPOOF); it is then locked.
- ARP: sender HW address == Ethernet source (SRC_MAC_SPOOF). IPv4 source and ARP
  sender IP: an address the slave owns, or 0.0.0.0 (SRC_IP_SPOOF).
- IPv6 source: an address the slave owns, or ``::``. An unowned link-local is
  learned, first come (``Port.learn_link_local``, at most MAX_LEARNED_LINK_LOCALS:
  TOO_MANY_LINK_LOCALS), unless somebody on the wire uses it: another slave's, the
  master's own, one seen as a source on the wire (``Port.wire_link_locals``) or
  one the daemon says is in use (``Port.in_use``: the master's neighbours, e.g.
  the router's ``fe80::1``) is SRC_IP_SPOOF.
- A Neighbour Advertisement's *target* is checked like a source: it must be the
  slave's (or a link-local it may learn, as above: it is then learned, so it
  counts against the limit and nobody else takes it later), else SRC_IP_SPOOF,
  so an unsolicited NA (override flag or not) cannot claim another guest's
  address. One new link-local per frame.
- Learning mode (``Slave.learn``, opt-in per slave, mode l2): an address that is
  nobody's becomes the slave's on first use: as IPv4 source or ARP sender IP
  (gratuitous ARP, any ARP, any packet), IPv6 source, NA target, and as the
  target of an ARP probe (sender 0.0.0.0) or a DAD NS (source ``::``). At most
  ``MAX_LEARNED_V4`` IPv4 and ``MAX_LEARNED_V6`` IPv6 (not link-local) addresses;
  after that the slave is locked and new addresses are SRC_IP_SPOOF. Only
  addresses on the master's link are learned: outside the master's connected
  prefixes (``Port.on_link``; off-link addresses such as 8.8.8.8), or IPv4
  link-local (169.254/16, e.g. 169.254.169.254), is LEARN_NOT_ON_LINK. Another
  slave's address, the master's (``Port.master_addresses``, kept by the daemon), or
  one in use on the link (``Port.in_use``: the master's gateways and neighbours)
  is refused: LEARN_REFUSED, the frame dropped; a probe (ARP probe, DAD NS) for it
  is not learned but still delivered, so the owner answers and the guest's
  duplicate detection sees the conflict.
- Nothing changes unless every check passed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ..drops import DropReason
from ..net.addr import ZERO_MAC, ZERO_V4, ZERO_V6
from ..net.frames import (
    IPPROTO_ICMPV6,
    L3_ARP,
    L3_IPV4,
    L3_IPV6,
    L3_ND_NS,
    ND_NEIGHBOR_ADVERT,
    ND_TARGET,
    ND_TARGET_END,
    OFF_ICMPV6,
    OFF_IPV6_NEXT,
    Frame,
)

if TYPE_CHECKING:
    from .port import Port, Slave

MAX_LEARNED_V4: Final = 1
MAX_LEARNED_V6: Final = 4

_MULTICAST_SRC: Final = DropReason.MULTICAST_SRC
_SRC_MAC_SPOOF: Final = DropReason.SRC_MAC_SPOOF
_SRC_IP_SPOOF: Final = DropReason.SRC_IP_SPOOF
_TOO_MANY_LL: Final = DropReason.TOO_MANY_LINK_LOCALS
_LEARN_REFUSED: Final = DropReason.LEARN_REFUSED
_NOT_ON_LINK: Final = DropReason.LEARN_NOT_ON_LINK



def _link_local(addr: bytes) -> bool:
    return addr[0] == 0xFE and (addr[1] & 0xC0) == 0x80


def learnable(port: Port, slave: Slave, addr: bytes) -> DropReason | None:
    """Whether ``slave`` may learn ``addr`` (not link-local, not its own yet): ``None``
    or why not."""
    if not slave.learn:
        return _SRC_IP_SPOOF
    owner = port.by_addr.get(addr)
    if (owner is not None and owner is not slave) or addr in port.master_addresses:
        return _LEARN_REFUSED
    if len(addr) == 4:
        if addr[0] >= 224 or addr[0] == 127 or slave.learned_v4() >= MAX_LEARNED_V4:
            return _SRC_IP_SPOOF
        if addr[0] == 169 and addr[1] == 254:
            return _NOT_ON_LINK
    elif addr[0] == 0xFF or slave.learned_v6() >= MAX_LEARNED_V6:
        return _SRC_IP_SPOOF
    if not port.on_link(addr):
        return _NOT_ON_LINK
    if port.in_use(addr):
        return _LEARN_REFUSED
    return None


def _link_local_taken(port: Port, slave: Slave, addr: bytes) -> bool:
    """Whether the link-local ``addr`` is somebody else's: another slave's, the
    master's, or in use on the wire."""
    owner = port.by_addr.get(addr)
    if owner is slave:
        return False
    return owner is not None or addr in port.master_addresses or addr in port.wire_link_locals or \
        port.in_use(addr)


def check_source(port: Port, slave: Slave, frame: Frame, kind: int, src: bytes, sha: bytes,
                 l3src: bytes, key: bytes) -> DropReason | None:
    """Validate the frame's source (and learn); ``None`` or the reason to drop it."""
    mac = slave.mac
    learn_mac = False
    if src != mac:
        if src[0] & 1:
            return _MULTICAST_SRC
        if mac is not None or src == port.master_mac or src == ZERO_MAC or src in port.by_mac or \
                src in port.wire_macs or port.in_use(src):
            return _SRC_MAC_SPOOF
        learn_mac = True

    by_addr = port.by_addr
    learn_ll = b""
    learn = b""
    if kind in (L3_IPV4, L3_ARP):
        if kind == L3_ARP and sha != src:
            return _SRC_MAC_SPOOF
        if l3src != ZERO_V4:
            if by_addr.get(l3src) is not slave:
                why = learnable(port, slave, l3src)
                if why is not None:
                    return why
                learn = l3src
        elif kind == L3_ARP and slave.learn and by_addr.get(key) is None and \
                learnable(port, slave, key) is None:
            learn = key  # an ARP probe (RFC 5227)
    elif kind >= L3_IPV6:
        if l3src != ZERO_V6:
            owner = by_addr.get(l3src)
            if owner is not slave:
                if _link_local(l3src):
                    if owner is not None or l3src in port.master_addresses:
                        return _SRC_IP_SPOOF
                    if not port.can_learn_link_local(slave):
                        return _TOO_MANY_LL
                    if _link_local_taken(port, slave, l3src):
                        return _SRC_IP_SPOOF
                    learn_ll = l3src
                else:
                    why = learnable(port, slave, l3src)
                    if why is not None:
                        return why
                    learn = l3src
        elif kind == L3_ND_NS and slave.learn and not _link_local(key) and by_addr.get(key) is None and \
                learnable(port, slave, key) is None:
            learn = key  # duplicate address detection (RFC 4862)
        if kind == L3_IPV6 and frame[OFF_IPV6_NEXT] == IPPROTO_ICMPV6 and len(frame) >= ND_TARGET_END and \
                frame[OFF_ICMPV6] == ND_NEIGHBOR_ADVERT:
            target = bytes(frame[ND_TARGET])
            owner = by_addr.get(target)
            if owner is not slave and target != learn and target != learn_ll:
                if _link_local(target):
                    if _link_local_taken(port, slave, target) or learn_ll:
                        return _SRC_IP_SPOOF  # somebody else's, or a second new one in this frame
                    if not port.can_learn_link_local(slave):
                        return _TOO_MANY_LL
                    learn_ll = target
                elif learn:
                    return _SRC_IP_SPOOF  # one new address per frame
                else:
                    why = learnable(port, slave, target)
                    if why is not None:
                        return why
                    learn = target

    if learn_mac:
        port.learn_mac(slave, src)
    if learn_ll:
        port.learn_link_local(slave, learn_ll)
    if learn:
        port.learn_address(slave, learn)
    return None


def learnable_more(slave: Slave) -> bool:
    """Whether a learning slave can still learn an address of either family."""
    return slave.learned_v4() < MAX_LEARNED_V4 or slave.learned_v6() < MAX_LEARNED_V6
