"""Guards: frames a guest may not send, whatever its addresses (all modes).

Run on every frame from a guest before source validation (``source``), so a
guarded frame teaches nothing (no MAC, no address learned). ``check_guard``
returns ``None`` or the ``DropReason`` to count. Departures: the kernel lets all
of these through (docs/kernel-behaviour.md §3, README "Behaviour (l2)").

Rules:
- 802.1 link-constrained control frames: destination 01:80:c2:00:00:00 to
  01:80:c2:00:00:0f (STP BPDUs, 802.1X EAPOL, LACP/marker, LLDP ``0e``, ...)
  -> L2_CONTROL. They would leave as the host's (translated) and make the
  switch port err-disable, log the host off 802.1X, or break its LAG; a Linux
  bridge never forwards them either. (PAUSE is MAC_CONTROL, in ``verdict``.)
  Cisco's 01:00:0c:cc:cc:cc (CDP, VTP, DTP, UDLD, PAgP) and 01:00:0c:cc:cc:cd
  (PVST+/Rapid-PVST+ BPDUs) too -> L2_CONTROL: BPDU guard and UDLD err-disable the
  host's port on them, DTP negotiates it into a trunk.
- RA-guard (RFC 6105) and DHCP-server guard, unless the slave allows it
  (``Slave.allow_router``): ICMPv6 Router Advertisement (134) and Redirect (137)
  -> RA_GUARD; DHCPv4 server messages (UDP from port 67, or to the client port
  68) and DHCPv6 server/relay messages (UDP from port 547, or to the client port
  546) -> DHCP_GUARD. Clients check only the destination port (dhclient,
  systemd-networkd, udhcpc), so the source port alone would not do. Otherwise a
  guest becomes the other guests' router (their egress delivered to it) or hands
  out leases.
- A UDP or ICMPv6 header cut short by the end of the packet -> BAD_HEADER: a
  first fragment must carry it (RFC 8200 §4.5, RFC 7112), else its ports or type
  would arrive in a later fragment that no guard reads.
- IPv6 extension headers are walked (``frames.ipv6_upper``: Hop-by-Hop, Routing,
  Fragment, Destination Options; at most ``MAX_EXT_HEADERS``): NDP (ICMPv6
  133-137) behind any extension header -> NDP_EXT_HEADER, whatever
  ``allow_router`` says; real NDP never carries one (RFC 6980 forbids fragmenting
  it). So the NA-target check (``source``) and the NDP option translation
  (``net.translate``) only ever see NDP right after the IPv6 header, and need
  not walk. A chain that runs past the payload or is longer than
  ``MAX_EXT_HEADERS`` -> BAD_HEADER.
- Anonymous sources: IPv4 source 0.0.0.0 only for a DHCP client (UDP 68 -> 67)
  and IGMP to a multicast destination (RFC 3376 §4.2.13: a host without an
  address reports from it; reports and leaves go to groups, never unicast), ARP
  sender 0.0.0.0 only in a request (an RFC 5227 probe); IPv6 source ``::``
  only for a DAD NS (ICMPv6 135 right after the header, to a solicited-node group)
  and MLD reports (ICMPv6 131, 132, 143). Anything else -> ANONYMOUS_SRC: it would
  leave unattributable.
- An 802.3 frame (length field) whose LLC/SNAP header carries an Ethernet type
  (OUI 00-00-00, RFC 1042, or 00-00-f8, 802.1H) -> BAD_HEADER: IPv4, ARP or IPv6
  in that form would pass as "other" traffic, past every address check, and
  hosts should accept RFC 1042 IP (RFC 1122 §2.3.3).
- Non-first IPv4/IPv6 fragments carry no upper-layer header: only the anonymous
  source rule applies to them.
- Cheap for the common case: an IPv4 TCP/UDP frame from a real source costs two
  byte compares; reads are bounds-checked, never raise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ..drops import DropReason
from ..net.addr import ZERO_V4, ZERO_V6
from ..net.frames import (
    ARPOP_REQUEST,
    ETH_HLEN,
    IPPROTO_ICMPV6,
    IPPROTO_UDP,
    L3_ARP,
    L3_IPV4,
    L3_IPV6,
    L3_ND_NS,
    L3_OTHER,
    LLC_HDR,
    ND_NEIGHBOR_SOLICIT,
    ND_REDIRECT,
    ND_ROUTER_ADVERT,
    ND_ROUTER_SOLICIT,
    OFF_ARP_OP,
    OFF_ETHERTYPE,
    OFF_ICMPV6,
    OFF_IPV4_DST,
    OFF_IPV4_FRAG,
    OFF_IPV4_PROTO,
    OFF_IPV4_TOT_LEN,
    OFF_IPV4_VER_IHL,
    OFF_IPV6_DST,
    OFF_IPV6_NEXT,
    OFF_IPV6_PLEN,
    SNAP_OUI,
    Frame,
    ipv6_upper,
)

if TYPE_CHECKING:
    from .port import Slave

IEEE_RESERVED: Final = b"\x01\x80\xc2\x00\x00"  # 01:80:c2:00:00:0X (X < 0x10)
CISCO_CONTROL: Final = b"\x01\x00\x0c\xcc\xcc"  # 01:00:0c:cc:cc:cc (CDP, ...) and :cd (PVST+)
LLC_SNAP: Final = b"\xaa\xaa\x03"  # 802.2 LLC header of a SNAP frame
ETHERTYPE_OUIS: Final = (b"\x00\x00\x00", b"\x00\x00\xf8")  # RFC 1042, 802.1H: an Ethernet type follows
IPPROTO_IGMP: Final = 2
DHCP_SERVER_PORT: Final = 67
DHCP_CLIENT_PORT: Final = 68
DHCPV6_SERVER_PORT: Final = 547
DHCPV6_CLIENT_PORT: Final = 546
UDP_HLEN: Final = 8
ICMPV6_HLEN: Final = 4
MLD_TYPES: Final = frozenset((131, 132, 143))  # MLDv1 report, done; MLDv2 report
_SOLICITED_NODE: Final = bytes.fromhex("ff02" + "00" * 9 + "01ff")  # ff02::1:ff00:0/104
_SOLICITED_NODE_PREFIX: Final = slice(OFF_IPV6_DST, OFF_IPV6_DST + len(_SOLICITED_NODE))

_L2_CONTROL: Final = DropReason.L2_CONTROL
_ANONYMOUS: Final = DropReason.ANONYMOUS_SRC
_RA_GUARD: Final = DropReason.RA_GUARD
_DHCP_GUARD: Final = DropReason.DHCP_GUARD
_NDP_EXT: Final = DropReason.NDP_EXT_HEADER
_BAD_HEADER: Final = DropReason.BAD_HEADER


def check_guard(slave: Slave, frame: Frame, kind: int, dst: bytes, l3src: bytes) -> DropReason | None:
    """``None`` if a guest may send ``frame`` (already ``classify``-ed), else why not."""
    if dst[0] == 0x01 and ((dst[5] < 0x10 and dst[:5] == IEEE_RESERVED) or
                           (dst[5] in (0xCC, 0xCD) and dst[:5] == CISCO_CONTROL)):
        return _L2_CONTROL
    if kind == L3_IPV4:
        return _ipv4(slave, frame, l3src)
    if kind >= L3_IPV6:
        return _ipv6(slave, frame, kind, l3src)
    if kind == L3_ARP and l3src == ZERO_V4 and (frame[OFF_ARP_OP] != 0 or frame[OFF_ARP_OP + 1] != ARPOP_REQUEST):
        return _ANONYMOUS
    if kind == L3_OTHER and frame[OFF_ETHERTYPE] < 0x06 and frame[LLC_HDR] == LLC_SNAP and \
            frame[SNAP_OUI] in ETHERTYPE_OUIS:
        return _BAD_HEADER  # an Ethernet type in an 802.3 frame: IP/ARP that no check above saw
    return None


def _ipv4(slave: Slave, frame: Frame, l3src: bytes) -> DropReason | None:
    if frame[OFF_IPV4_PROTO] != IPPROTO_UDP or frame[OFF_IPV4_FRAG] & 0x1F or frame[OFF_IPV4_FRAG + 1]:
        # not UDP, or a non-first fragment
        if l3src != ZERO_V4 or (frame[OFF_IPV4_PROTO] == IPPROTO_IGMP and 224 <= frame[OFF_IPV4_DST] < 240):
            return None
        return _ANONYMOUS
    off = ETH_HLEN + (frame[OFF_IPV4_VER_IHL] & 0x0F) * 4
    if off + UDP_HLEN > ETH_HLEN + (frame[OFF_IPV4_TOT_LEN] << 8 | frame[OFF_IPV4_TOT_LEN + 1]):
        return _BAD_HEADER
    sport = frame[off] << 8 | frame[off + 1]
    dport = frame[off + 2] << 8 | frame[off + 3]
    if (sport == DHCP_SERVER_PORT or dport == DHCP_CLIENT_PORT) and not slave.allow_router:
        return _DHCP_GUARD
    if l3src == ZERO_V4 and (sport != DHCP_CLIENT_PORT or dport != DHCP_SERVER_PORT):
        return _ANONYMOUS
    return None


def _ipv6(slave: Slave, frame: Frame, kind: int, l3src: bytes) -> DropReason | None:
    nh = frame[OFF_IPV6_NEXT]
    if nh in (IPPROTO_ICMPV6, IPPROTO_UDP):
        proto, off, walked = nh, OFF_ICMPV6, 0
    else:
        proto, off, walked = ipv6_upper(frame, len(frame))
        if proto < 0:
            return _BAD_HEADER
    end = OFF_ICMPV6 + (frame[OFF_IPV6_PLEN] << 8 | frame[OFF_IPV6_PLEN + 1])  # within the frame (classify)
    anonymous = l3src == ZERO_V6
    if proto == IPPROTO_ICMPV6:
        if off + ICMPV6_HLEN > end:
            return _BAD_HEADER
        icmp = frame[off]
        if ND_ROUTER_SOLICIT <= icmp <= ND_REDIRECT:
            if walked:
                return _NDP_EXT
            if icmp in (ND_ROUTER_ADVERT, ND_REDIRECT) and not slave.allow_router:
                return _RA_GUARD
        if anonymous:
            if icmp in MLD_TYPES:
                return None
            if kind == L3_ND_NS and icmp == ND_NEIGHBOR_SOLICIT and frame[_SOLICITED_NODE_PREFIX] == _SOLICITED_NODE:
                return None
            return _ANONYMOUS
        return None
    if proto == IPPROTO_UDP:
        if off + UDP_HLEN > end:
            return _BAD_HEADER
        if ((frame[off] << 8 | frame[off + 1]) == DHCPV6_SERVER_PORT or
                (frame[off + 2] << 8 | frame[off + 3]) == DHCPV6_CLIENT_PORT) and not slave.allow_router:
            return _DHCP_GUARD
    return _ANONYMOUS if anonymous else None
