"""The modes and flags, their decision functions, and their traits: one place per mode.

Rules:
- ``MODES`` and ``FLAGS`` are the only lists of mode and flag names; the
  configuration (``config``) and ``Port`` accept exactly these.
- ``DECISIONS`` maps every (mode, flag) to its two decision functions (from a
  guest, from the wire), built once from the decision modules (``l2``, ``l3``),
  which read their verdicts from ``table.TABLE``.
- ``TRAITS`` maps every (mode, flag) to its ``Traits``: what the daemon does
  differently for that port beyond the per-frame verdicts (``Port.traits``). The
  daemon reads traits, never mode or flag names. ``docs/policy-matrix.md`` renders
  them (``scripts/gen_policy_matrix.py``); ``tests/unit/test_policy_table.py``
  checks them against the table where the table implies them.
- To add a mode: its rules in ``table``, its decision module (beside ``l2``/``l3``),
  its name in ``MODES``, its builder in ``_BUILDERS`` and its traits in
  ``_MODE_TRAITS`` here; then regenerate the docs. To add a trait: a field of
  ``Traits`` (with its ``doc``), its value per mode (and per flag where it
  differs), and the daemon's read of it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import Any, Final

from . import l2, l3
from .verdict import FromGuest, FromUplink

MODES: Final = ("l2", "l3", "l3s")
FLAGS: Final = ("bridge", "private", "vepa")


def _trait(doc: str) -> Any:
    return field(metadata={"doc": doc})


@dataclass(frozen=True, slots=True)
class Traits:
    """What a (mode, flag) port needs from the daemon, besides its verdicts."""

    master_src_mac: bool = _trait(
        "frames delivered to a guest carry the master's MAC as their source (the guest's router)")
    fast_path: bool = _trait(
        "the C accelerator may forward guest -> guest unicast (it does it the l2 bridge way)")
    fast_wire: bool = _trait(
        "the C accelerator may send a guest's unicast to an off-host MAC out the master (l2's OUTSIDE: to_uplink)")
    routes: bool = _trait(
        "a guest's frame may be ROUTEd: the port gets a next-hop lookup (daemon.routing)")
    host_forwarding: bool = _trait(
        "the host's stack forwards the guests' traffic: IP forwarding on the host link")
    consume_ip: bool = _trait(
        "the nftables chain takes the wire's IP to slave addresses from the host stack (ARP/NS and IPv6 "
        "link-locals always); without it the host forwards that IP into the host link")
    learning: bool = _trait("slaves may learn their addresses from their frames (learn = true)")


TRAIT_DOCS: Final[dict[str, str]] = {f.name: f.metadata["doc"] for f in fields(Traits)}

_MODE_TRAITS: Final[dict[str, Traits]] = {
    "l2": Traits(master_src_mac=False, fast_path=False, fast_wire=True, routes=False, host_forwarding=False,
                 consume_ip=True, learning=True),
    "l3": Traits(master_src_mac=True, fast_path=False, fast_wire=False, routes=True, host_forwarding=False,
                 consume_ip=True, learning=False),
    # l3s routes IPv6 link-local destinations (the host cannot forward them), and vepa's guest -> guest
    "l3s": Traits(master_src_mac=True, fast_path=False, fast_wire=False, routes=True, host_forwarding=True,
                  consume_ip=False, learning=False),
}

# where a flag changes a mode's traits
_FLAG_TRAITS: Final[dict[tuple[str, str], Mapping[str, bool]]] = {
    ("l2", "bridge"): {"fast_path": True},  # private drops guest -> guest, vepa sends it to the wire
}

_BUILDERS: Final[dict[str, Callable[[str], tuple[FromGuest, FromUplink]]]] = {
    "l2": l2.decisions,
    "l3": partial(l3.decisions, "l3"),
    "l3s": partial(l3.decisions, "l3s"),
}

# (mode, flag) -> the two decision functions; every pair has a complete row set in
# table.TABLE (tests/unit/test_policy_table.py).
DECISIONS: Final[dict[tuple[str, str], tuple[FromGuest, FromUplink]]] = {
    (mode, flag): _BUILDERS[mode](flag) for mode in MODES for flag in FLAGS
}

TRAITS: Final[dict[tuple[str, str], Traits]] = {
    (mode, flag): replace(_MODE_TRAITS[mode], **_FLAG_TRAITS.get((mode, flag), {}))
    for mode in MODES for flag in FLAGS
}


def modes_with(trait: str) -> tuple[str, ...]:
    """The modes in which some flag has ``trait`` (for error messages)."""
    return tuple(m for m in MODES if any(getattr(TRAITS[(m, f)], trait) for f in FLAGS))
