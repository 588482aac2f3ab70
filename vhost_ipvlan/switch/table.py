"""The policy table, as data: (mode, flag, source, destination kind) -> verdict.

Reference: ``docs/kernel-behaviour.md`` §3 and §4 (from a slave), §5 (from the wire)
and §8 (observed; wins where they disagree). ``docs/policy-matrix.md`` is
generated from this table by ``scripts/gen_policy_matrix.py``.

Rules:
- A key is ``(mode, flag, source, dest)``. ``source`` is where the frame came from
  (``GUEST``: a slave's TX ring; ``WIRE``: the master); ``dest`` is the destination
  kind the decision function found, *after* source validation (which drops spoofed
  and unusable frames first, whatever the mode: a departure, §3).
- ``ROWS`` lists the (source, dest) pairs that exist, in document order, with the
  text of the traffic class (the §3-§5 row it comes from). A mode that does not tell
  some kinds apart simply gives them the same rule.
- A value is a ``Rule``: an action name (``verdict.Action.label``), the
  ``DropReason`` label for ``drop``, and a short note (kernel function, or
  "departure"). ``to_slave`` means "the owner of the destination address (or MAC)";
  a down owner is then a ``target_down`` drop.
- The decision functions read their verdicts from this table (``verdict.rules``),
  so the table cannot drift from the code; ``tests/unit/test_policy_table.py``
  also sends one sample frame per row through every implemented (mode, flag).
- A (mode, flag) pair is implemented when it has a rule for every row of ``ROWS``
  and an entry in ``decisions.DECISIONS``. To add a mode: add its rules here (new
  destination kinds go in ``Dest`` and ``ROWS``), its functions and traits there.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final, NamedTuple


class Source(StrEnum):
    GUEST = "guest"
    WIRE = "wire"


class Dest(StrEnum):
    """Destination kinds the decision functions tell apart."""

    MULTICAST = "multicast"  # broadcast or multicast destination MAC
    SLAVE = "slave"  # a slave's address (IPv4/IPv6 destination, ARP target, NS target)
    GUEST_MAC = "guest_mac"  # another guest's MAC, no slave address (e.g. non-IP)
    HOST = "host"  # the master's MAC / the host's address, no slave address
    OUTSIDE = "outside"  # any other unicast MAC: off-host
    LOOPED_BACK = "looped_back"  # our own multicast, reflected by the network


class Rule(NamedTuple):
    action: str  # an Action label: to_slave | to_uplink | flood | pass | drop | to_host | route | answer
    reason: str = ""  # DropReason label, for drop only
    note: str = ""


# (source, dest) -> the traffic class, as the docs name it (docs/kernel-behaviour.md §3-§5 rows).
ROWS: Final[dict[tuple[Source, Dest], str]] = {
    (Source.GUEST, Dest.SLAVE): "Slave -> another slave's address (unicast; ARP reply, NS target too)",
    (Source.GUEST, Dest.GUEST_MAC): "Slave -> another guest's MAC, no slave address (non-IP unicast)",
    (Source.GUEST, Dest.HOST): "Slave -> master's MAC (or a guest's, ARP/IP), not a slave's address (the host)",
    (Source.GUEST, Dest.OUTSIDE): "Slave -> off-host unicast",
    (Source.GUEST, Dest.MULTICAST): "Slave broadcast / multicast (ARP request, DHCP, ND, MLD, mDNS)",
    (Source.WIRE, Dest.SLAVE): "Wire -> a slave's address (unicast IP; ARP or NS for it, any dst MAC)",
    (Source.WIRE, Dest.HOST): "Wire -> unknown address or the master's",
    (Source.WIRE, Dest.MULTICAST): "Wire broadcast / multicast",
    (Source.WIRE, Dest.LOOPED_BACK): "Wire multicast with src MAC = master's and L3 src = a slave's",
}

_G, _W = Source.GUEST, Source.WIRE

# Mode l2: what does not depend on the flag (§5 ipvlan_handle_mode_l2, §3 multicast).
_L2_COMMON: Final[dict[tuple[Source, Dest], Rule]] = {
    (_G, Dest.OUTSIDE): Rule("to_uplink", note="ipvlan_xmit_mode_l2: dev_queue_xmit(master)"),
    (_G, Dest.MULTICAST): Rule(
        "flood", note="other UP slaves whose filter matches + the wire; the host gets no copy; flags ignored"
    ),
    (_W, Dest.SLAVE): Rule("to_slave", note="ipvlan_handle_mode_l3 lookup; consumed (ARP/NS: departure)"),
    (_W, Dest.HOST): Rule("pass", note="RX_HANDLER_PASS: the host stack keeps it"),
    (_W, Dest.MULTICAST): Rule("flood", note="every UP slave whose filter matches; the host keeps its copy"),
    (_W, Dest.LOOPED_BACK): Rule("drop", "looped_back", "ipvlan_external_frame"),
}

_L2_BY_FLAG: Final[dict[str, dict[tuple[Source, Dest], Rule]]] = {
    "bridge": {
        (_G, Dest.SLAVE): Rule("to_slave", note="switched locally (ipvlan_rcv_frame)"),
        (_G, Dest.GUEST_MAC): Rule("to_slave", note="departure: the kernel would hand it to the host"),
        (_G, Dest.HOST): Rule("to_host", note="departure: into the host stack through the daemon's host link"),
    },
    "private": {
        (_G, Dest.SLAVE): Rule("drop", "private", "ipvlan_xmit_mode_l2: private drops a lookup hit"),
        (_G, Dest.GUEST_MAC): Rule("drop", "private", "departure: no guest-to-guest path in private"),
        (_G, Dest.HOST): Rule("to_host", note="departure: into the host stack through the daemon's host link"),
    },
    "vepa": {
        (_G, Dest.SLAVE): Rule(
            "to_uplink", note="VEPA skips the local test; dst MAC becomes the master's; hairpin brings it back"
        ),
        (_G, Dest.GUEST_MAC): Rule("to_uplink", note="VEPA: to the wire, dst MAC rewritten to the master's"),
        (_G, Dest.HOST): Rule("to_uplink", note="§8.3: vepa sends slave -> host to the wire too"),
    },
}

# Modes l3 and l3s (§4 ipvlan_xmit_mode_l3, §6, §8; decisions in ``switch.l3``): what
# depends on neither the mode nor the flag.
_L3_COMMON: Final[dict[tuple[Source, Dest], Rule]] = {
    (_G, Dest.GUEST_MAC): Rule("drop", "not_ip", "ipvlan_process_outbound: non-IP dropped"),
    (_G, Dest.MULTICAST): Rule(
        "answer", note="departure: ARP/NS answered by the daemon; other broadcast/multicast: drop multicast_dst"
    ),
    (_W, Dest.HOST): Rule("pass", note="RX_HANDLER_PASS: the host stack keeps it"),
    (_W, Dest.MULTICAST): Rule("pass", note="the master only; slaves get no multicast"),
    (_W, Dest.LOOPED_BACK): Rule("pass", note="the master only (no l2 multicast path)"),
}

# By mode: where what leaves the port goes (l3: the daemon routes it; l3s: the host's stack).
# The flags do not change these rows: in the kernel the host's address is not in the
# port's table, so slave -> host takes the routed path in every flag (§8.3).
_L3_BY_MODE: Final[dict[str, dict[tuple[Source, Dest], Rule]]] = {
    "l3": {
        (_G, Dest.HOST): Rule("route", note="host routing pinned to the master; a local route -> host link"),
        (_G, Dest.OUTSIDE): Rule("route", note="ip_route_output pinned to the master, src MAC = master"),
        (_W, Dest.SLAVE): Rule("to_slave", note="ipvlan_handle_mode_l3; ARP/NS answered by the daemon (departure)"),
    },
    "l3s": {
        (_G, Dest.HOST): Rule("to_host", note="into the host stack (host link): netfilter sees it"),
        (_G, Dest.OUTSIDE): Rule(
            "to_host",
            note="into the host stack, forwarded to the master: conntrack sees it; an IPv6 link-local "
            "destination is routed as in l3 (the host cannot forward it)",
        ),
        (_W, Dest.SLAVE): Rule(
            "pass",
            note="the host forwards it into the host link (l3s: netfilter sees it); a slave's IPv6 link-local "
            "goes to it as in l3 (the host cannot forward it)",
        ),
    },
}

# By flag: guest -> guest unicast only (ipvlan_xmit_mode_l3 step 1), the same in l3 and l3s.
_L3_BY_FLAG: Final[dict[str, dict[tuple[Source, Dest], Rule]]] = {
    "bridge": {
        (_G, Dest.SLAVE): Rule("to_slave", note="delivered locally, no ARP (ipvlan_xmit_mode_l3 lookup hit)"),
    },
    "private": {
        (_G, Dest.SLAVE): Rule("drop", "private", "ipvlan_xmit_mode_l3: private drops a lookup hit"),
    },
    "vepa": {
        (_G, Dest.SLAVE): Rule(
            "route",
            note="VEPA skips the lookup: routed pinned to the master (l3s too), out the wire; back only if the "
            "outside routes or hairpins it",
        ),
    },
}

TABLE: Final[dict[tuple[str, str, Source, Dest], Rule]] = {
    **{
        ("l2", flag, source, dest): rule
        for flag, rules in _L2_BY_FLAG.items()
        for (source, dest), rule in {**_L2_COMMON, **rules}.items()
    },
    **{
        (mode, flag, source, dest): rule
        for mode, by_mode in _L3_BY_MODE.items()
        for flag, by_flag in _L3_BY_FLAG.items()
        for (source, dest), rule in {**_L3_COMMON, **by_mode, **by_flag}.items()
    },
}


def complete(mode: str, flag: str) -> bool:
    """True if the table has a rule for every row for this (mode, flag)."""
    return all((mode, flag, s, d) in TABLE for s, d in ROWS)
