"""IPvlan switching decisions, per frame: verdicts, drop reasons and the policy table.

Reference: ``docs/kernel-behaviour.md`` §3 (``ipvlan_xmit_mode_l2``), §5
(``ipvlan_handle_mode_l2``) and §8; departures: its §9 (the README's tables).

Verdicts are ``(action, arg)`` tuples built once and reused (no allocation per frame):

=========  =================  ==================================================
action     arg                meaning for the daemon
=========  =================  ==================================================
TO_SLAVE   the target Slave   deliver to that guest only (translate with
                              ``to_guest(frame, n, target.mac, port.master_mac)``)
TO_UPLINK  None or a Slave    transmit on the master (translate with ``to_wire``);
                              a Slave (vepa only) is the guest whose MAC is the
                              destination: rewrite it to the master's first
                              (``hairpin_to_wire``), as the kernel's dst == src
FLOOD      None               from a guest: every other UP slave, untranslated, plus
                              the master (``to_wire`` on that copy only); from the
                              wire: every UP slave (the host already has its copy);
                              in both cases only slaves whose ``mcast`` filter
                              accepts the destination MAC
PASS       None               from the wire only: not ours, the host stack keeps it
DROP       a DropReason       drop; the decision already counted it
TO_HOST    None               from a guest: give it to the host's own stack (the
                              host link, ``daemon.hostlink``; a departure)
ROUTE      None               from a guest (l3): route it in the host's tables,
                              pinned to the master (``daemon.routing``), and
                              transmit it to the next hop
ANSWER     None               an ARP request or NS the backend answers itself, to
                              whoever sent it, claiming the master's MAC
=========  =================  ==================================================

Which verdict each destination kind gets, per (mode, flag), is data: ``table.TABLE``
(rendered in ``docs/policy-matrix.md``). ``rules(mode, flag, source)`` compiles it
into a tuple of verdict templates indexed by ``Dest``; the functions below find the
destination kind and look the verdict up. Mode l2 (flags bridge, private, vepa; l3 and l3s: ``switch.l3``):

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
  5. Other multicast/broadcast -> MULTICAST: FLOOD; everything else -> HOST: PASS.

Rules: decisions never raise on frame content; they only read the frame (the daemon
translates the copies); the only state they change is learning (slave MAC,
link-locals, via the Port; multicast groups, via the slave's filter) and drop counters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from ..drops import N_DROP_REASONS as N_DROP_REASONS
from ..drops import DropReason as DropReason
from ..net.frames import (
    L3_ARP,
    L3_CONTROL,
    L3_IPV4,
    L3_IPV6,
    L3_MALFORMED,
    L3_OTHER,
    L3_RUNT,
    L3_VLAN,
    Frame,
    classify,
)
from .guard import check_guard
from .source import check_source
from .table import ROWS, TABLE, Dest, Source

if TYPE_CHECKING:
    from .port import Port, Slave

TO_SLAVE: Final = 0
TO_UPLINK: Final = 1
FLOOD: Final = 2
PASS: Final = 3
DROP: Final = 4
TO_HOST: Final = 5
ROUTE: Final = 6
ANSWER: Final = 7

ACTION_NAMES: Final = ("to_slave", "to_uplink", "flood", "pass", "drop", "to_host", "route", "answer")

MODES: Final = ("l2", "l3", "l3s")
FLAGS: Final = ("bridge", "private", "vepa")



Verdict = tuple[int, "Slave | int | None"]
FromGuest = Callable[["Port", "Slave", Frame], Verdict]
FromUplink = Callable[["Port", Frame], Verdict]

UPLINK: Final[Verdict] = (TO_UPLINK, None)
FLOODED: Final[Verdict] = (FLOOD, None)
PASSED: Final[Verdict] = (PASS, None)
HOSTED: Final[Verdict] = (TO_HOST, None)
ROUTED: Final[Verdict] = (ROUTE, None)
ANSWERED: Final[Verdict] = (ANSWER, None)
_DROPS: Final[tuple[Verdict, ...]] = tuple((DROP, r) for r in DropReason)

_RUNT: Final = DropReason.RUNT
_BAD_HEADER: Final = DropReason.BAD_HEADER
_VLAN: Final = DropReason.VLAN
_MAC_CONTROL: Final = DropReason.MAC_CONTROL
_MULTICAST_SRC: Final = DropReason.MULTICAST_SRC
_SRC_MAC_SPOOF: Final = DropReason.SRC_MAC_SPOOF
_SRC_IP_SPOOF: Final = DropReason.SRC_IP_SPOOF
_TOO_MANY_LL: Final = DropReason.TOO_MANY_LINK_LOCALS
_TARGET_DOWN: Final = DropReason.TARGET_DOWN
_LOOPED_BACK: Final = DropReason.LOOPED_BACK

# classify() kinds that the guest-side validation rejects outright.
_GUEST_REJECT: Final = {
    L3_RUNT: _RUNT,
    L3_VLAN: _VLAN,
    L3_MALFORMED: _BAD_HEADER,
    L3_CONTROL: _MAC_CONTROL,
}


def _drop(counters: list[int], reason: DropReason) -> Verdict:
    counters[reason] += 1
    return _DROPS[reason]


def rules(mode: str, flag: str, source: Source) -> tuple[Verdict, ...]:
    """The table's verdicts for one (mode, flag, source), indexed by ``Dest``'s order.

    ``TO_SLAVE`` entries are templates (the function supplies the owner); a missing
    row is ``DROP(NO_DESTINATION)``, never reached by a complete table."""
    out: list[Verdict] = []
    for dest in Dest:
        rule = TABLE.get((mode, flag, source, dest))
        if rule is None or (source, dest) not in ROWS:
            out.append(_DROPS[DropReason.NO_DESTINATION])
        elif rule.action == "drop":
            out.append(_DROPS[DropReason[rule.reason.upper()]])
        else:
            out.append((ACTION_NAMES.index(rule.action), None))
    return tuple(out)


_D_MULTICAST: Final = list(Dest).index(Dest.MULTICAST)
_D_SLAVE: Final = list(Dest).index(Dest.SLAVE)
_D_GUEST_MAC: Final = list(Dest).index(Dest.GUEST_MAC)
_D_HOST: Final = list(Dest).index(Dest.HOST)
_D_OUTSIDE: Final = list(Dest).index(Dest.OUTSIDE)
_D_LOOPED_BACK: Final = list(Dest).index(Dest.LOOPED_BACK)


def _apply(rule: Verdict, drops: list[int], target: Slave | None, mac_owner: Slave | None) -> Verdict:
    action = rule[0]
    if action == DROP:
        return _drop(drops, rule[1])  # type: ignore[arg-type]
    if action == TO_SLAVE:
        assert target is not None
        return target.to_me if target.up else _drop(drops, _TARGET_DOWN)
    if action == TO_UPLINK and mac_owner is not None:
        return mac_owner.via_wire
    return rule


def l2_from_guest(flag: str) -> FromGuest:
    """The decision for frames sent by a slave, mode l2, for ``flag``."""
    table = rules("l2", flag, Source.GUEST)
    multicast, outside = table[_D_MULTICAST], table[_D_OUTSIDE]
    to_slave, to_guest_mac, to_host = table[_D_SLAVE], table[_D_GUEST_MAC], table[_D_HOST]

    def decide(port: Port, slave: Slave, frame: Frame) -> Verdict:
        kind, dst, src, sha, l3src, key = classify(frame)
        drops = slave.drops
        if kind < L3_OTHER:
            return _drop(drops, _GUEST_REJECT[kind])
        why = check_guard(slave, frame, kind, dst, l3src)
        if why is not None:
            return _drop(drops, why)

        # the common case inline: IPv4 from the slave's MAC and one of its addresses
        if kind != L3_IPV4 or src != slave.mac or port.by_addr.get(l3src) is not slave:
            why = check_source(port, slave, frame, kind, src, sha, l3src, key)
            if why is not None:
                return _drop(drops, why)

        # Destination.
        if dst[0] & 1:
            if kind in (L3_IPV4, L3_IPV6) and len(frame) <= port.max_frame:
                slave.mcast.snoop(frame)
            return _apply(multicast, drops, None, None)
        mac_owner = None
        if dst != port.master_mac:
            mac_owner = port.by_mac.get(dst)
            if mac_owner is None:
                return _apply(outside, drops, None, None)
        if kind >= L3_ARP:
            target = port.by_addr.get(key)
            if target is not None:
                return _apply(to_slave, drops, target, mac_owner)
        elif mac_owner is not None:
            return _apply(to_guest_mac, drops, mac_owner, mac_owner)
        # ARP/IP to the master's or a guest's MAC, not for a slave: the host's (vepa:
        # the wire's, a guest's MAC rewritten); never the guest that owns the MAC
        return _apply(to_host, drops, None, mac_owner)

    decide.__name__ = decide.__qualname__ = f"l2_{flag}_from_guest"
    return decide


def l2_from_uplink(flag: str) -> FromUplink:
    """The decision for frames received on the master, mode l2, for ``flag``."""
    table = rules("l2", flag, Source.WIRE)
    multicast, host = table[_D_MULTICAST], table[_D_HOST]
    to_slave, looped_back = table[_D_SLAVE], table[_D_LOOPED_BACK]

    def decide(port: Port, frame: Frame) -> Verdict:
        kind, dst, src, _sha, l3src, key = classify(frame)
        drops = port.uplink_drops
        if kind == L3_RUNT:
            return _drop(drops, _RUNT)
        if src not in port.wire_macs or kind >= L3_IPV6:
            port.saw_on_wire(src, kind, l3src)
        if kind < L3_ARP:
            if dst[0] & 1 and kind in (L3_OTHER, L3_MALFORMED):
                return _apply(multicast, drops, None, None)
            return _apply(host, drops, None, None)
        by_addr = port.by_addr
        mcast = dst[0] & 1
        if mcast:
            if src == port.master_mac and l3src in by_addr:
                return _apply(looped_back, drops, None, None)
            if kind in (L3_IPV4, L3_IPV6):
                return _apply(multicast, drops, None, None)
        target = by_addr.get(key)
        if target is None:
            return _apply(multicast if mcast else host, drops, None, None)
        return _apply(to_slave, drops, target, None)

    decide.__name__ = decide.__qualname__ = f"l2_{flag}_from_uplink"
    return decide


# (mode, flag) -> the two decision functions. Port() refuses anything missing here;
# every pair here has a complete row set in table.TABLE (tests/unit/test_policy_table.py).
DECISIONS: Final[dict[tuple[str, str], tuple[FromGuest, FromUplink]]] = {
    ("l2", flag): (l2_from_guest(flag), l2_from_uplink(flag)) for flag in FLAGS
}

from . import l3 as _l3  # noqa: E402  (registers l3 and l3s; it needs the names above)

DECISIONS.update(_l3.DECISIONS)
