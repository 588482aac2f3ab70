"""IPvlan switching decisions, per frame: verdicts, drop reasons and the policy table.

Reference: ``reference/ipvlan-kernel-behaviour.md`` §3 (``ipvlan_handle_mode_l2``),
§4 (``ipvlan_xmit_mode_l2``), §5 and §12; departures are from DESIGN.md.

Verdicts are ``(action, arg)`` tuples built once and reused (no allocation per frame):

=========  =================  ==================================================
action     arg                meaning for the daemon
=========  =================  ==================================================
TO_SLAVE   the target Slave   deliver to that guest only (translate with
                              ``to_guest(frame, n, target.mac, port.master_mac)``)
TO_UPLINK  None               transmit on the master (translate with ``to_wire``)
FLOOD      None               from a guest: every other UP slave, untranslated, plus
                              the master (``to_wire`` on that copy only); from the
                              wire: every UP slave (the host already has its copy)
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

The l3 and l3s decisions live in ``switch.l3``.

Policy table, mode l2, flag bridge (l3 and l3s: ``switch.l3``):

From a guest (source validation first: a DESIGN.md departure, the kernel checks nothing)
  1. runt -> DROP(RUNT); 802.1Q/802.1ad -> DROP(VLAN); MAC control (PAUSE)
     -> DROP(MAC_CONTROL); ARP/IPv4/IPv6 that does not parse -> DROP(BAD_HEADER).
  2. Ethernet source: multicast -> DROP(MULTICAST_SRC); not the slave's MAC ->
     DROP(SRC_MAC_SPOOF). A slave without a MAC learns it from its first frame that
     passes every check, unless it is the master's or another slave's; then it is locked.
  3. ARP sender HW address must be that MAC (SRC_MAC_SPOOF); ARP sender IP and IPv4
     source must be one of the slave's addresses or 0.0.0.0 (SRC_IP_SPOOF); the IPv6
     source one of its addresses, ``::``, or a link-local it owns. An unowned
     link-local (fe80::/10) is learned: the first slave using it owns it (at most
     ``MAX_LEARNED_LINK_LOCALS`` each: TOO_MANY_LINK_LOCALS); another slave's is
     SRC_IP_SPOOF.
  4. Destination MAC multicast/broadcast -> FLOOD (kernel: other UP slaves + wire,
     the host gets no copy).
  5. Destination MAC the master's or a guest's ("local": DESIGN.md departure for the
     kernel's dst == src test): look up the L3 key (IPv4/IPv6 destination, ARP target
     IP, NS target). Hit -> TO_SLAVE owner (also when the owner is the sender, as the
     kernel does). Miss and the MAC is a guest's -> TO_SLAVE that guest. Miss and the
     MAC is the master's -> TO_HOST (host <-> guest: a departure; the daemon drops
     it as ``to_host_unsupported`` if it has no host link).
     A target that is not up -> DROP(TARGET_DOWN).
  6. Any other unicast -> TO_UPLINK.

From the wire (``port.uplink_drops`` counts these drops)
  1. runt -> DROP(RUNT). Tagged, MAC control, malformed and other non-IP/ARP frames:
     FLOOD if the destination is multicast (not for tagged or MAC control), else PASS.
  2. Multicast destination MAC, source MAC the master's and L3 source a slave's: our
     own frame looped back (``ipvlan_external_frame``) -> DROP(LOOPED_BACK).
  3. ARP (any op, any destination MAC) whose target IP is a slave's, and an NS whose
     target is a slave's -> TO_SLAVE owner only: consumed, the host must not answer
     (departure: the kernel also fans broadcast ARP out to every slave and the host).
  4. IPv4/IPv6 to a unicast MAC whose destination is a slave's -> TO_SLAVE owner
     (the kernel ignores the destination MAC). An owner that is not up ->
     DROP(TARGET_DOWN) (the kernel would pass it to the host; we consume it).
  5. Other multicast/broadcast -> FLOOD; everything else -> PASS.

Rules: decisions never raise on frame content; they only read the frame (the daemon
translates the copies); the only state they change is learning (slave MAC,
link-locals, via the Port) and drop counters.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import TYPE_CHECKING, Final

from ..net.addr import ZERO_MAC, ZERO_V4, ZERO_V6
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


class DropReason(IntEnum):
    """Why a frame was dropped; ``.label`` is the stable counter name."""

    RUNT = 0
    BAD_HEADER = 1
    VLAN = 2
    MAC_CONTROL = 3
    MULTICAST_SRC = 4
    SRC_MAC_SPOOF = 5
    SRC_IP_SPOOF = 6
    TOO_MANY_LINK_LOCALS = 7
    TARGET_DOWN = 8
    TO_HOST_UNSUPPORTED = 9
    LOOPED_BACK = 10
    NO_DESTINATION = 11
    NOT_IP = 12
    MULTICAST_DST = 13

    @property
    def label(self) -> str:
        return self.name.lower()


N_DROP_REASONS: Final = len(DropReason)

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


def l2_bridge_from_guest(port: Port, slave: Slave, frame: Frame) -> Verdict:
    """Decide what to do with a frame sent by ``slave`` (mode l2, flag bridge)."""
    kind, dst, src, sha, l3src, key = classify(frame)
    drops = slave.drops
    if kind < L3_OTHER:
        return _drop(drops, _GUEST_REJECT[kind])

    # Source MAC: the slave's, or learnable (committed only if every check passes).
    mac = slave.mac
    learn_mac = False
    if src != mac:
        if src[0] & 1:
            return _drop(drops, _MULTICAST_SRC)
        if mac is not None or src == port.master_mac or src == ZERO_MAC or src in port.by_mac:
            return _drop(drops, _SRC_MAC_SPOOF)
        learn_mac = True

    # Source addresses.
    learn_ll = False
    if kind == L3_IPV4:
        if l3src not in slave.addresses and l3src != ZERO_V4:
            return _drop(drops, _SRC_IP_SPOOF)
    elif kind == L3_ARP:
        if sha != src:
            return _drop(drops, _SRC_MAC_SPOOF)
        if l3src not in slave.addresses and l3src != ZERO_V4:
            return _drop(drops, _SRC_IP_SPOOF)
    elif kind >= L3_IPV6 and l3src != ZERO_V6:
        owner = port.by_addr.get(l3src)
        if owner is not slave:
            if owner is not None or l3src[0] != 0xFE or (l3src[1] & 0xC0) != 0x80:
                return _drop(drops, _SRC_IP_SPOOF)
            if not port.can_learn_link_local(slave):
                return _drop(drops, _TOO_MANY_LL)
            learn_ll = True

    if learn_mac:
        port.learn_mac(slave, src)
    if learn_ll:
        port.learn_link_local(slave, l3src)

    # Destination.
    if dst[0] & 1:
        return FLOODED
    mac_owner = None
    if dst != port.master_mac:
        mac_owner = port.by_mac.get(dst)
        if mac_owner is None:
            return UPLINK
    if kind >= L3_ARP:
        target = port.by_addr.get(key)
        if target is not None:
            return target.to_me if target.up else _drop(drops, _TARGET_DOWN)
    if mac_owner is not None:
        return mac_owner.to_me if mac_owner.up else _drop(drops, _TARGET_DOWN)
    return HOSTED


def l2_bridge_from_uplink(port: Port, frame: Frame) -> Verdict:
    """Decide what to do with a frame received on the master (mode l2, flag bridge)."""
    kind, dst, src, _sha, l3src, key = classify(frame)
    if kind < L3_ARP:
        if kind == L3_RUNT:
            return _drop(port.uplink_drops, _RUNT)
        if dst[0] & 1 and kind in (L3_OTHER, L3_MALFORMED):
            return FLOODED
        return PASSED
    by_addr = port.by_addr
    mcast = dst[0] & 1
    if mcast:
        if src == port.master_mac and l3src in by_addr:
            return _drop(port.uplink_drops, _LOOPED_BACK)
        if kind in (L3_IPV4, L3_IPV6):
            return FLOODED
    target = by_addr.get(key)
    if target is None:
        return FLOODED if mcast else PASSED
    if not target.up:
        return _drop(port.uplink_drops, _TARGET_DOWN)
    return target.to_me


# (mode, flag) -> the two decision functions. Port() refuses anything missing here.
DECISIONS: Final[dict[tuple[str, str], tuple[FromGuest, FromUplink]]] = {
    ("l2", "bridge"): (l2_bridge_from_guest, l2_bridge_from_uplink),
}

from . import l3 as _l3  # noqa: E402  (registers l3 and l3s; it needs the names above)

DECISIONS.update(_l3.DECISIONS)
