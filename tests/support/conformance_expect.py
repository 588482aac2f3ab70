"""What vhost-ipvlan is allowed to do differently from the kernel: the documented
departures, as data, and the pure comparison the conformance suite applies.

A ``Departure`` names probes and mode-flag combinations (``fnmatch`` patterns such as
``"l3*-*"``), what vhost-ipvlan shows instead of the kernel, the reason and the README
row that documents it. ``judge()`` compares one probe's two observations:

* equal and no departure applies: ``SAME`` (pass);
* a departure applies and vhost-ipvlan shows exactly what it says: ``DEPARTURE`` (pass);
* a departure applies but vhost-ipvlan behaves like the kernel: ``STALE_DEPARTURE``
  (fail: the list must stay honest);
* anything else: ``DIFFERENT`` (fail: an undocumented difference).

``KNOWN_BUGS`` lists (combo, probe) cases that differ for a reason not documented as a
departure; the suite marks them ``xfail(strict=True)`` so a fix is noticed.

The hairpin variants (``hp.*``) share their base probe's departures where the kernel
behaves as on a plain wire; where the hairpin makes the kernel work (l2 host <-> slave),
vhost-ipvlan must do the same and no departure applies. A live mode change
(``j.flip.*``) is judged by the departures of the mode the port is switched to.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from fnmatch import fnmatch
from typing import Final

from .scenarios import COMBOS, COUNT, Observation


@dataclass(frozen=True)
class Departure:
    probes: tuple[str, ...]
    combos: tuple[str, ...]
    daemon: Observation
    reason: str
    readme: str  # the README section and row that documents it

    def applies(self, combo: str, probe: str) -> bool:
        return probe in self.probes and any(fnmatch(combo, pat) for pat in self.combos)


_HOST_LINK = 'README "Host <-> guest": host <-> guest works through the host link; the kernel cannot'
_L3_NEIGH = ('README "Modes l3 and l3s", departure: the daemon answers the outside\'s ARP and NS for slave '
             "addresses with the master's MAC (the kernel's l3 swallows them, l3s hands them to the host)")

_TO_HOST = ("a guest reaches the host: the daemon answers its ARP/NS for the host's address and writes "
            "the packet into the host link")
_FROM_HOST = "the host reaches a guest: /32 and /128 routes through the host link"
_OUTSIDE_ARP = "the outside resolves the slave's address (the master's MAC) and reaches it"
_L3 = ("l3-*", "l3s-*")
# j.flip.*: the port switched to next_combo(), l2-* -> l3-*, l3-* -> l3s-*, l3s-* -> l2-*.
_NEXT_IS_L3 = ("l2-*", "l3-*")

DEPARTURES: Final[tuple[Departure, ...]] = (
    Departure(("c.s2h.v4", "c.s2h.v6"), ("l2-bridge", "l2-private", *_L3), Observation(COUNT, ("host",)),
              _TO_HOST, _HOST_LINK),
    Departure(("c.h2s.v4", "c.h2s.v6"), ("l2-bridge", "l2-private", *_L3), Observation(COUNT, ("s1",)),
              _FROM_HOST, _HOST_LINK),
    # Behind a hairpin the kernel's l2 reaches the host both ways (so does the daemon); its l3 does not.
    Departure(("hp.c.s2h.v4", "hp.c.s2h.v6"), _L3, Observation(COUNT, ("host",)), _TO_HOST, _HOST_LINK),
    Departure(("hp.c.h2s.v4", "hp.c.h2s.v6"), _L3, Observation(COUNT, ("s1",)), _FROM_HOST, _HOST_LINK),
    Departure(("c.h2s.v4", "c.h2s.v6"), ("l2-vepa",), Observation(0, ("s1",)),
              "the host's echo reaches the guest through the host link, but vepa sends the guest's reply "
              "(guest -> host unicast) to the wire, as the kernel's vepa does, so it is lost without a hairpin",
              'README "Flags: bridge, private, vepa": vepa sends guest -> host to the wire; '
              '"Host <-> guest": the host link'),
    Departure(("g.foreign-src",), ("*",), Observation(0, ()),
              "source validation: a guest may only send from its configured addresses; the frame is dropped "
              "and counted src_ip_spoof",
              'README "Behaviour (l2)", departure "Source validation" (all modes)'),
    Departure(("b.s2o.v4", "b.s2o.v6", "hp.b.s2o.v4"), _L3, Observation(COUNT, ("out",)),
              "the outside's ARP/NS for the slave is answered, so the echo reply comes back", _L3_NEIGH),
    Departure(("b.o2s.v4", "b.o2s.v6", "hp.b.o2s.v4"), _L3, Observation(COUNT, ("s1",)), _OUTSIDE_ARP, _L3_NEIGH),
    Departure(("j.flip.o2s",), _NEXT_IS_L3, Observation(COUNT, ("s1",)),
              f"switched to l3/l3s: {_OUTSIDE_ARP}", _L3_NEIGH),
    Departure(("e.arp",), _L3, Observation(COUNT, None),
              "the outside's ARP request for a slave's address is answered with the master's MAC", _L3_NEIGH),
    Departure(("hp.a.v4", "hp.a.v6"), ("l3-vepa", "l3s-vepa"), Observation(COUNT, ("s2",)),
              "vepa behind a hairpin: the host's ARP/NS for the other guest comes back reflected and the daemon "
              "answers it, so guest <-> guest works without the static neighbours the kernel needs",
              'README "Flags in l3 and l3s: private, vepa", departure: vepa behind a hairpinning switch'),
    Departure(("f.dad",), _L3, Observation(0, (), ("tentative",)),
              "a guest's NIC is not NOARP: its new IPv6 address is tentative while its DAD runs (the kernel's "
              "NOARP l3 slave skips DAD); the DAD NS reaches nobody, as none is sent in the kernel",
              'README "Modes l3 and l3s", departure: the daemon answers the guest\'s ARP and NS (a guest is not '
              "a NOARP netdev)"),
)

# (probes, combo patterns, reason): real differences that no departure documents (bugs).
_BUGS: Final[tuple[tuple[tuple[str, ...], tuple[str, ...], str], ...]] = ()
# (combo, probe) -> reason: a real difference that is not a documented departure (a bug).
KNOWN_BUGS: Final[dict[tuple[str, str], str]] = {
    (combo, probe): reason for probes, patterns, reason in _BUGS for probe in probes
    for combo in COMBOS if any(fnmatch(combo, pat) for pat in patterns)}


class Verdict(StrEnum):
    SAME = "same"
    DEPARTURE = "departure"
    STALE_DEPARTURE = "stale departure"
    DIFFERENT = "different"

    @property
    def ok(self) -> bool:
        return self in (Verdict.SAME, Verdict.DEPARTURE)


def departure_for(combo: str, probe: str, departures: tuple[Departure, ...] = DEPARTURES) -> Departure | None:
    found = [d for d in departures if d.applies(combo, probe)]
    if len(found) > 1:
        raise ValueError(f"{combo} {probe}: {len(found)} departures apply")
    return found[0] if found else None


def judge(combo: str, probe: str, kernel: Observation, daemon: Observation,
          departures: tuple[Departure, ...] = DEPARTURES) -> tuple[Verdict, str]:
    """The verdict for one probe in one combination, and a one-line explanation."""
    dep = departure_for(combo, probe, departures)
    if dep is None:
        if kernel == daemon:
            return Verdict.SAME, f"as the kernel: {kernel}"
        return Verdict.DIFFERENT, f"kernel: {kernel}; vhost-ipvlan: {daemon} (no departure documents this)"
    if daemon == dep.daemon and daemon != kernel:
        return Verdict.DEPARTURE, f"departure ({dep.readme}): kernel: {kernel}; vhost-ipvlan: {daemon}"
    if daemon == kernel:
        return Verdict.STALE_DEPARTURE, (f"documented departure not seen: vhost-ipvlan behaves as the kernel "
                                         f"({kernel}); remove or fix the departure ({dep.readme})")
    return Verdict.DIFFERENT, (f"kernel: {kernel}; vhost-ipvlan: {daemon}; the departure ({dep.readme}) "
                               f"expects {dep.daemon}")
