"""IPvlan l3 and l3s decisions (flags bridge, private, vepa).

Reference: docs/kernel-behaviour.md §4 (``ipvlan_xmit_mode_l3``, ``ipvlan_process_outbound``),
§5 (``ipvlan_handle_mode_l3``), §6 (l3s) and §8.1 rows a-h; departures: its §9.

The guest's "router" is the master's MAC: the daemon answers every ARP request
and Neighbour Solicitation a guest sends (for any address but the guest's own)
with the master's MAC, so a guest needs no special configuration (a plain
``192.0.2.10/24`` with any gateway works). Every frame delivered to an l3 guest
has the master's MAC as its source.

From a guest (after the same validation as in l2, ``l2`` "From a guest" steps 1-3):
  0. A DHCPv4 client message from a slave whose ``dhcp`` lease is set -> ANSWER(DHCP),
     as in l2 (the daemon is the guest's DHCP server and router); with a ``dhcp6``
     lease a DHCPv6 client message -> ANSWER(DHCP6) and a Router Solicitation ->
     ANSWER(RS) (the daemon is always an l3 guest's router; kernel: dropped, §4).
  1. ARP request (not a probe from 0.0.0.0) or NS (not DAD) whose target is not
     the guest's own address -> ANSWER (departure: the kernel's NOARP slave
     never asks). Any other ARP -> DROP(NOT_IP); DAD NS -> DROP(MULTICAST_DST).
  2. Other non-IP EtherTypes -> DROP(NOT_IP) (kernel: "Dropped outbound packet type").
  3. Multicast/broadcast destination MAC -> DROP(MULTICAST_DST) (kernel
     ``ipvlan_process_outbound``). The §8.3 bridge quirk (a broadcast ARP for
     another slave is delivered to it, where it is ignored) is not reproduced:
     the daemon answers it instead.
  4. IPv4/IPv6 whose destination is a slave's (the sender's own included, as the
     kernel's lookup), whatever the destination MAC: the flag decides
     (``table`` row SLAVE; kernel ``ipvlan_xmit_mode_l3`` step 1):
     bridge -> TO_SLAVE owner (local delivery, no ARP; not up -> DROP(TARGET_DOWN));
     private -> DROP(PRIVATE); vepa -> ROUTE: the lookup is skipped and the packet
     is routed pinned to the master, out the wire, in l3 *and* l3s (the kernel's
     l3s transmits as l3; going into the host's stack instead would bring it
     straight back through the host link, never on the wire). It comes back only
     if the outside routes or hairpins it; it is then steered like any frame from
     the wire.
  5. Multicast/broadcast destination address -> DROP(MULTICAST_DST).
  6. Anything else (row OUTSIDE; the host's addresses too, whatever the flag: they
     are not in the port's table, §8.3): l3 -> ROUTE (the host's tables,
     oif pinned to the master; a local route goes to the host link); l3s -> TO_HOST
     (the host's stack routes it, through its netfilter: a departure, see
     ``daemon.hostlink``), except an IPv6 link-local destination: ROUTE, as l3 (the
     host cannot forward a link-local packet from the host link to the master).

From the wire (the flag changes nothing here, as in the kernel):
  1. runt -> DROP(RUNT); other unusable frames -> PASS.
  2. ARP request (not a probe) or NS (not DAD) whose target is a slave's ->
     ANSWER with the master's MAC (departure, §8.1 row e: nothing
     answers them in the kernel). Other ARP/NDP for slave addresses: consumed by
     the nftables chain, nothing to do here (PASS).
  3. l3: IPv4/IPv6 to a unicast MAC whose destination is a slave's -> TO_SLAVE
     owner (not up: DROP(TARGET_DOWN)). l3s: PASS: the host forwards it into the
     host link (ingress crosses the host's netfilter too); but a slave's IPv6
     link-local address is steered as in l3 (the host has no route per guest for
     it and would forward it back out of the master; the kernel's l3s delivers it).
  4. Everything else -> PASS (the master only: l3 slaves get no broadcast).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ..drops import DropReason
from ..net.addr import ZERO_V4, ZERO_V6, is_link_local_v6
from ..net.dhcp import is_client_message
from ..net.frames import (
    ARPOP_REQUEST,
    L3_ARP,
    L3_IPV4,
    L3_IPV6,
    L3_ND_NS,
    L3_OTHER,
    L3_RUNT,
    OFF_ARP_OP,
    Classified,
    Frame,
    classify,
)
from .guard import check_guard
from .source import check_source
from .table import Dest, Source
from .verdict import (
    ANSWERED,
    ANSWERED_DHCP,
    GUEST_REJECT,
    PASSED,
    ROUTED,
    FromGuest,
    FromUplink,
    Verdict,
    answered_v6,
    apply,
    drop,
    rules,
)

if TYPE_CHECKING:
    from .port import Port, Slave

_NOT_IP: Final = DropReason.NOT_IP
_MCAST_DST: Final = DropReason.MULTICAST_DST
_TARGET_DOWN: Final = DropReason.TARGET_DOWN
_ARP_OP: Final = OFF_ARP_OP + 1  # low byte of the ARP opcode


def validate(port: Port, slave: Slave, frame: Frame) -> tuple[Verdict | None, Classified]:
    """Guest validation (``l2`` "From a guest" steps 1-3, with learning): a drop verdict or ``None``."""
    c = classify(frame)
    kind, dst, src, sha, l3src, key = c
    drops = slave.drops
    if kind < L3_OTHER:
        return drop(drops, GUEST_REJECT[kind]), c
    why = check_guard(slave, frame, kind, dst, l3src)
    if why is not None:
        return drop(drops, why), c
    why = check_source(port, slave, frame, kind, src, sha, l3src, key)
    if why is not None:
        return drop(drops, why), c
    return None, c


def _is_multicast_ip(addr: bytes) -> bool:
    if len(addr) == 4:
        return addr[0] >= 224 or addr == b"\xff\xff\xff\xff"
    return addr[0] == 0xFF


def from_guest(mode: str, flag: str) -> FromGuest:
    """The decision for frames sent by a slave, mode l3 or l3s, for ``flag``."""
    table = rules(mode, flag, Source.GUEST)
    hit, beyond = table[Dest.SLAVE], table[Dest.OUTSIDE]

    def decide(port: Port, slave: Slave, frame: Frame) -> Verdict:
        bad, (kind, dst, _src, _sha, l3src, key) = validate(port, slave, frame)
        if bad is not None:
            return bad
        drops = slave.drops
        if slave.dhcp is not None and kind == L3_IPV4 and is_client_message(frame):
            return ANSWERED_DHCP
        if slave.dhcp6 is not None and kind == L3_IPV6:
            answered = answered_v6(port, frame)
            if answered is not None:
                return answered
        if kind == L3_ARP:
            if frame[_ARP_OP] == ARPOP_REQUEST and frame[_ARP_OP - 1] == 0 and l3src != ZERO_V4 \
                    and key not in slave.addresses:
                return ANSWERED
            return drop(drops, _NOT_IP)
        if kind == L3_ND_NS:
            if l3src != ZERO_V6 and port.by_addr.get(key) is not slave:
                return ANSWERED
            return drop(drops, _MCAST_DST)
        if kind == L3_OTHER:
            return drop(drops, _NOT_IP)
        if dst[0] & 1:
            return drop(drops, _MCAST_DST)
        target = port.by_addr.get(key)
        if target is not None:
            return apply(hit, drops, target, None)
        if _is_multicast_ip(key):
            return drop(drops, _MCAST_DST)
        if kind == L3_IPV6 and is_link_local_v6(key):
            return ROUTED  # l3s too: the host cannot forward it
        return beyond

    decide.__name__ = decide.__qualname__ = f"{mode}_{flag}_from_guest"
    return decide


def _from_uplink(port: Port, frame: Frame, steer: bool) -> Verdict:
    kind, dst, src, _sha, l3src, key = classify(frame)
    if kind == L3_RUNT:
        return drop(port.uplink_drops, DropReason.RUNT)
    if src not in port.wire_macs or kind >= L3_IPV6:
        port.saw_on_wire(src, kind, l3src)
    if kind < L3_ARP:
        return PASSED
    target = port.by_addr.get(key)
    if target is None:
        return PASSED
    if kind == L3_ARP:
        if frame[_ARP_OP] == ARPOP_REQUEST and frame[_ARP_OP - 1] == 0 and l3src != ZERO_V4:
            return ANSWERED
        return PASSED
    if kind == L3_ND_NS:
        return ANSWERED if l3src != ZERO_V6 else PASSED
    if dst[0] & 1 or not (steer or (kind == L3_IPV6 and is_link_local_v6(key))):
        return PASSED
    return target.to_me if target.up else drop(port.uplink_drops, _TARGET_DOWN)


def l3_from_uplink(port: Port, frame: Frame) -> Verdict:
    """Mode l3: a frame received on the master."""
    return _from_uplink(port, frame, True)


def l3s_from_uplink(port: Port, frame: Frame) -> Verdict:
    """Mode l3s: a frame received on the master (IP to guests is the host's to forward)."""
    return _from_uplink(port, frame, False)


_FROM_UPLINK: Final[dict[str, FromUplink]] = {"l3": l3_from_uplink, "l3s": l3s_from_uplink}


def decisions(mode: str, flag: str) -> tuple[FromGuest, FromUplink]:
    """Mode l3's or l3s's two decision functions for ``flag`` (``decisions.DECISIONS``)."""
    return from_guest(mode, flag), _FROM_UPLINK[mode]
