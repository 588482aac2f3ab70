"""Verdicts: what a decision tells the daemon to do with one frame, and the helpers
every decision module shares.

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
ANSWER     None, DHCP, DHCP6  None: an ARP request or NS the backend answers itself,
           or RS              to whoever sent it, claiming the master's MAC; ``DHCP``
                              (from a guest whose ``Slave.dhcp`` is set): a DHCPv4
                              client message, answered by ``net.dhcp`` into the
                              sender's RX ring only (it never leaves: a departure);
                              ``DHCP6`` (``Slave.dhcp6`` set): a DHCPv6 client
                              message, ``net.dhcp6``, the same way; ``RS``
                              (``Slave.dhcp6`` set, ``Port.advertises``): a Router
                              Solicitation, answered by an RA (``net.ra``), the same way
=========  =================  ==================================================

Rules:
- ``Action`` is the one list of actions; its ``label`` is the name ``table.Rule``
  uses. The module-level ``TO_SLAVE`` ... ``ANSWER`` are its members, for the hot
  path (one global lookup).
- Which verdict each destination kind gets, per (mode, flag), is data:
  ``table.TABLE``. ``rules(mode, flag, source)`` compiles it, once per decision
  function, into verdict templates by ``Dest``; ``apply`` turns a template into the
  frame's verdict (the owner for ``TO_SLAVE``, the counted reason for ``DROP``).
- ``drop`` counts a reason and returns its preallocated verdict; nothing here
  allocates per frame.
- ``answered_v6`` is l2's and l3's shared test for the IPv6 frames the backend
  answers (``net.dhcp6.is_client_message``, ``net.ra.is_router_solicit`` while the
  port ``advertises``), for a slave whose ``dhcp6`` lease is set.
- This module imports no decision module: ``l2`` and ``l3`` import it, and
  ``decisions`` imports them (dependencies run one way).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import TYPE_CHECKING, Final

from ..drops import DropReason
from ..net import dhcp6, ra
from ..net.frames import IPPROTO_ICMPV6, IPPROTO_UDP, L3_CONTROL, L3_MALFORMED, L3_RUNT, L3_VLAN, OFF_IPV6_NEXT, Frame
from .table import ROWS, TABLE, Dest, Source

if TYPE_CHECKING:
    from .port import Port, Slave


class Action(IntEnum):
    """What the daemon does with a frame (the table above)."""

    TO_SLAVE = 0
    TO_UPLINK = 1
    FLOOD = 2
    PASS = 3
    DROP = 4
    TO_HOST = 5
    ROUTE = 6
    ANSWER = 7

    @property
    def label(self) -> str:
        """The action's name in ``table.Rule`` and the docs (``to_slave``, ...)."""
        return self.name.lower()


TO_SLAVE: Final = Action.TO_SLAVE
TO_UPLINK: Final = Action.TO_UPLINK
FLOOD: Final = Action.FLOOD
PASS: Final = Action.PASS
DROP: Final = Action.DROP
TO_HOST: Final = Action.TO_HOST
ROUTE: Final = Action.ROUTE
ANSWER: Final = Action.ANSWER

Verdict = tuple[int, "Slave | int | None"]
FromGuest = Callable[["Port", "Slave", Frame], Verdict]
FromUplink = Callable[["Port", Frame], Verdict]

UPLINK: Final[Verdict] = (TO_UPLINK, None)
FLOODED: Final[Verdict] = (FLOOD, None)
PASSED: Final[Verdict] = (PASS, None)
HOSTED: Final[Verdict] = (TO_HOST, None)
ROUTED: Final[Verdict] = (ROUTE, None)
ANSWERED: Final[Verdict] = (ANSWER, None)
#: ``ANSWER``'s argument for a DHCPv4 client message (the server port)
DHCP: Final = 67
ANSWERED_DHCP: Final[Verdict] = (ANSWER, DHCP)
#: ``ANSWER``'s argument for a DHCPv6 client message (the server port) and a Router Solicitation (its type)
DHCP6: Final = 547
RS: Final = 133
ANSWERED_DHCP6: Final[Verdict] = (ANSWER, DHCP6)
ANSWERED_RS: Final[Verdict] = (ANSWER, RS)
DROPS: Final[tuple[Verdict, ...]] = tuple((DROP, r) for r in DropReason)

_TARGET_DOWN: Final = DropReason.TARGET_DOWN

#: classify() kinds that the guest-side validation rejects outright
GUEST_REJECT: Final = {
    L3_RUNT: DropReason.RUNT,
    L3_VLAN: DropReason.VLAN,
    L3_MALFORMED: DropReason.BAD_HEADER,
    L3_CONTROL: DropReason.MAC_CONTROL,
}


def answered_v6(port: Port, frame: Frame) -> Verdict | None:
    """A guest's (with a ``dhcp6`` lease) IPv6 frame the backend answers: its DHCPv6
    client message, or its Router Solicitation while the port ``advertises``. (``frame``
    is ``classify``'s L3_IPV6: at least an IPv6 header long; TCP and the rest leave at
    the next-header byte.)"""
    nh = frame[OFF_IPV6_NEXT]
    if nh != IPPROTO_UDP and nh != IPPROTO_ICMPV6:
        return None
    if dhcp6.is_client_message(frame):
        return ANSWERED_DHCP6
    if port.advertises and ra.is_router_solicit(frame):
        return ANSWERED_RS
    return None


def drop(counters: list[int], reason: DropReason) -> Verdict:
    """Count ``reason`` in ``counters``; its (preallocated) DROP verdict."""
    counters[reason] += 1
    return DROPS[reason]


def rules(mode: str, flag: str, source: Source) -> dict[Dest, Verdict]:
    """The table's verdicts for one (mode, flag, source), by destination kind.

    ``TO_SLAVE`` entries are templates (``apply`` supplies the owner); a missing
    row is ``DROP(NO_DESTINATION)``, never reached by a complete table."""
    out: dict[Dest, Verdict] = {}
    for dest in Dest:
        rule = TABLE.get((mode, flag, source, dest))
        if rule is None or (source, dest) not in ROWS:
            out[dest] = DROPS[DropReason.NO_DESTINATION]
        elif rule.action == "drop":
            out[dest] = DROPS[DropReason[rule.reason.upper()]]
        else:
            out[dest] = (Action[rule.action.upper()], None)
    return out


def apply(rule: Verdict, drops: list[int], target: Slave | None, mac_owner: Slave | None) -> Verdict:
    """The verdict for a frame whose destination kind has the template ``rule``:
    ``target`` is the owner of the destination (``TO_SLAVE``; not up: a
    ``TARGET_DOWN`` drop), ``mac_owner`` the guest whose MAC it was sent to (vepa's
    ``TO_UPLINK`` rewrites it); a DROP is counted in ``drops``."""
    action = rule[0]
    if action == DROP:
        return drop(drops, rule[1])  # type: ignore[arg-type]
    if action == TO_SLAVE:
        assert target is not None
        return target.to_me if target.up else drop(drops, _TARGET_DOWN)
    if action == TO_UPLINK and mac_owner is not None:
        return mac_owner.via_wire
    return rule
