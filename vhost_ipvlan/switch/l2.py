"""IPvlan l2 decisions (flags bridge, private, vepa), per frame.

Reference: ``docs/kernel-behaviour.md`` §3 (``ipvlan_xmit_mode_l2``), §5
(``ipvlan_handle_mode_l2``) and §8; departures: its §9 (the README's tables).

Which verdict each destination kind gets is data: ``table.TABLE`` (rendered in
``docs/policy-matrix.md``), compiled by ``verdict.rules``; the functions below find
the destination kind and look the verdict up. l3 and l3s: ``switch.l3``.

From a guest (source validation first: a departure, the kernel checks nothing)
  1. runt -> DROP(RUNT); 802.1Q/802.1ad -> DROP(VLAN); MAC control (PAUSE)
     -> DROP(MAC_CONTROL); ARP/IPv4/IPv6 that does not parse -> DROP(BAD_HEADER).
     Guards (``guard.check_guard``, all modes, departures): 01:80:c2:00:00:0X ->
     DROP(L2_CONTROL); RA/Redirect -> DROP(RA_GUARD) and DHCP(v6) server messages
     -> DROP(DHCP_GUARD) unless ``Slave.allow_router``; NDP behind an IPv6
     extension header -> DROP(NDP_EXT_HEADER); 0.0.0.0/``::`` sources beyond DHCP
     client, IGMP, ARP probe, DAD NS and MLD -> DROP(ANONYMOUS_SRC).
  2-3. Source validation and address learning (``source.check_source``): the
     Ethernet source, ARP sender, IPv4/IPv6 source and NA target must be the
     slave's (or learnable: its MAC once, unless the wire uses it; link-locals
     nobody uses; and in learning mode up to 1 IPv4 + 4 IPv6 addresses nobody
     owns, on the master's link); else SRC_MAC_SPOOF, SRC_IP_SPOOF,
     TOO_MANY_LINK_LOCALS, LEARN_REFUSED or LEARN_NOT_ON_LINK.
  3b. A DHCPv4 client message (UDP 68 -> 67, any destination) from a slave whose
     ``dhcp`` lease is set -> ANSWER(DHCP): the backend answers it into that guest's
     RX ring (``net.dhcp``); it reaches neither the wire nor another guest
     (departure: the kernel has no DHCP server). A DHCPv6 client message (UDP 546 ->
     547) from a slave whose ``dhcp6`` lease is set -> ANSWER(DHCP6), likewise
     (``net.dhcp6``); its Router Solicitation -> ANSWER(RS) while the daemon is the
     link's router (``Port.advertises``: no IPv6 default route via the master, no RA
     from the wire or from a guest with ``allow_router``, whose RA, flooded like any
     multicast, sets ``Port.link_router``), else it is flooded and the router answers.
  4. Destination MAC multicast/broadcast -> MULTICAST: FLOOD in every flag (kernel:
     other UP slaves + wire, the host gets no copy). IGMP/MLD in it update the
     sender's multicast filter (``mcast``), unless the frame is longer than the
     master's MTU (``Port.max_frame``: the daemon drops it for the wire).
  5. Destination MAC the master's or a guest's ("local": a departure from the
     kernel's dst == src test): look up the L3 key (IPv4/IPv6 destination, ARP target
     IP, NS target). Hit -> SLAVE (also when the owner is the sender, as the kernel
     does); miss, ARP or IP -> HOST whichever local MAC it was (as the kernel: an
     address no slave has is the host's; the guest owning the MAC never gets it);
     miss, another EtherType, and the MAC is a guest's -> GUEST_MAC; the master's
     -> HOST. bridge: SLAVE/GUEST_MAC -> TO_SLAVE (a target that is not up ->
     DROP(TARGET_DOWN)), HOST -> TO_HOST (host <-> guest: a departure; the daemon drops
     it as ``to_host_unsupported`` if it has no host link). private: SLAVE/GUEST_MAC
     -> DROP(PRIVATE), HOST -> TO_HOST. vepa: all three -> TO_UPLINK (the kernel's VEPA skips the local
     test for every unicast, slave -> host included: §8.3), a guest's MAC
     rewritten to the master's.
  6. Any other unicast -> OUTSIDE: TO_UPLINK.

From the wire (``port.uplink_drops`` counts these drops; the flag changes nothing)
  1. runt -> DROP(RUNT). Tagged, MAC control, malformed and other non-IP/ARP frames:
     FLOOD if the destination is multicast (not for tagged or MAC control), else PASS.
  2. Multicast destination MAC, source MAC the master's and L3 source a slave's: our
     own frame looped back (``ipvlan_external_frame``) -> LOOPED_BACK: DROP.
  3. ARP (any op, any destination MAC) whose target IP is a slave's, and an NS whose
     target is a slave's -> SLAVE: TO_SLAVE owner only: consumed, the host must not
     answer (departure: the kernel also fans broadcast ARP out to every slave and the
     host).
  4. IPv4/IPv6 to a unicast MAC whose destination is a slave's -> SLAVE: TO_SLAVE owner
     (the kernel ignores the destination MAC; so a vepa frame hairpinned back, src and
     dst MAC the master's, is delivered). An owner that is not up -> DROP(TARGET_DOWN)
     (the kernel would pass it to the host; we consume it).
  5. Other multicast/broadcast -> MULTICAST: FLOOD (a Router Advertisement from another
     MAC than the master's also sets ``Port.link_router``: the daemon stops answering
     RS, the router's RAs reach the guests; forgotten when no RA came for
     ``LINK_ROUTER_TICKS`` RA intervals, ``Port.age_link_router``); everything else -> HOST: PASS.

Rules: decisions never raise on frame content; they only read the frame (the daemon
translates the copies); the only state they change is learning (slave MAC,
link-locals, via the Port; multicast groups, via the slave's filter), drop counters and
``Port.link_router`` (a router's RA seen on the link).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ..drops import DropReason
from ..net import ra
from ..net.dhcp import is_client_message
from ..net.frames import L3_ARP, L3_IPV4, L3_IPV6, L3_MALFORMED, L3_OTHER, L3_RUNT, Frame, classify
from .guard import check_guard
from .source import check_source
from .table import Dest, Source
from .verdict import ANSWERED_DHCP, GUEST_REJECT, FromGuest, FromUplink, Verdict, answered_v6, apply, drop, rules

if TYPE_CHECKING:
    from .port import Port, Slave

_RUNT: Final = DropReason.RUNT


def from_guest(flag: str) -> FromGuest:
    """The decision for frames sent by a slave, mode l2, for ``flag``."""
    table = rules("l2", flag, Source.GUEST)
    multicast, outside = table[Dest.MULTICAST], table[Dest.OUTSIDE]
    to_slave, to_guest_mac, to_host = table[Dest.SLAVE], table[Dest.GUEST_MAC], table[Dest.HOST]

    def decide(port: Port, slave: Slave, frame: Frame) -> Verdict:
        kind, dst, src, sha, l3src, key = classify(frame)
        drops = slave.drops
        if kind < L3_OTHER:
            return drop(drops, GUEST_REJECT[kind])
        why = check_guard(slave, frame, kind, dst, l3src)
        if why is not None:
            return drop(drops, why)

        # the common case inline: IPv4 from the slave's MAC and one of its addresses
        if kind != L3_IPV4 or src != slave.mac or port.by_addr.get(l3src) is not slave:
            why = check_source(port, slave, frame, kind, src, sha, l3src, key)
            if why is not None:
                return drop(drops, why)

        if slave.dhcp is not None and kind == L3_IPV4 and is_client_message(frame):
            return ANSWERED_DHCP  # the backend is this guest's DHCP server: it never leaves
        if slave.dhcp6 is not None and kind == L3_IPV6:
            answered = answered_v6(port, frame)
            if answered is not None:
                return answered

        # Destination.
        if dst[0] & 1:
            if kind in (L3_IPV4, L3_IPV6) and len(frame) <= port.max_frame:
                slave.mcast.snoop(frame)
            if slave.allow_router and kind == L3_IPV6 and ra.is_router_advert(frame):
                port.link_router, port.link_router_age = True, 0  # a guest is the link's router: the daemon steps back
            return apply(multicast, drops, None, None)
        mac_owner = None
        if dst != port.master_mac:
            mac_owner = port.by_mac.get(dst)
            if mac_owner is None:
                return apply(outside, drops, None, None)
        if kind >= L3_ARP:
            target = port.by_addr.get(key)
            if target is not None:
                return apply(to_slave, drops, target, mac_owner)
        elif mac_owner is not None:
            return apply(to_guest_mac, drops, mac_owner, mac_owner)
        # ARP/IP to the master's or a guest's MAC, not for a slave: the host's (vepa:
        # the wire's, a guest's MAC rewritten); never the guest that owns the MAC
        return apply(to_host, drops, None, mac_owner)

    decide.__name__ = decide.__qualname__ = f"l2_{flag}_from_guest"
    return decide


def from_uplink(flag: str) -> FromUplink:
    """The decision for frames received on the master, mode l2, for ``flag``."""
    table = rules("l2", flag, Source.WIRE)
    multicast, host = table[Dest.MULTICAST], table[Dest.HOST]
    to_slave, looped_back = table[Dest.SLAVE], table[Dest.LOOPED_BACK]

    def decide(port: Port, frame: Frame) -> Verdict:
        kind, dst, src, _sha, l3src, key = classify(frame)
        drops = port.uplink_drops
        if kind == L3_RUNT:
            return drop(drops, _RUNT)
        if src not in port.wire_macs or kind >= L3_IPV6:
            port.saw_on_wire(src, kind, l3src)
        if kind < L3_ARP:
            if dst[0] & 1 and kind in (L3_OTHER, L3_MALFORMED):
                return apply(multicast, drops, None, None)
            return apply(host, drops, None, None)
        by_addr = port.by_addr
        mcast = dst[0] & 1
        if mcast:
            if src == port.master_mac and l3src in by_addr:
                return apply(looped_back, drops, None, None)
            if kind in (L3_IPV4, L3_IPV6):
                if kind == L3_IPV6 and src != port.master_mac and ra.is_router_advert(frame):
                    port.link_router = True
                    port.link_router_age = 0
                return apply(multicast, drops, None, None)
        target = by_addr.get(key)
        if target is None:
            return apply(multicast if mcast else host, drops, None, None)
        return apply(to_slave, drops, target, None)

    decide.__name__ = decide.__qualname__ = f"l2_{flag}_from_uplink"
    return decide


def decisions(flag: str) -> tuple[FromGuest, FromUplink]:
    """Mode l2's two decision functions for ``flag`` (``decisions.DECISIONS``)."""
    return from_guest(flag), from_uplink(flag)
