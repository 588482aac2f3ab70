"""The conformance scenarios as data: one topology, the traffic, what is observed.

The same scenario runs against the kernel's IPvlan (namespaces inside one TCG guest)
and against vhost-ipvlan (QEMU guests as slaves), see ``conformance_nets.py``; the
observations are compared in ``conformance_expect.py``.

Topology (both back-ends)::

    s1, s2, s3 (slaves) --- master (host: HOST4/HOST6) ==== veth ==== out (OUT4/OUT6)

Every endpoint answers echo requests sent to broadcast/multicast
(``icmp_echo_ignore_broadcasts=0``); IPv6 without DAD. Before each probe every
endpoint's neighbour cache is flushed, so no probe profits from an earlier one.

An observation of one probe (``Observation``):

* ``replied``: the sender got at least one answer (ping: "N packets received" with N > 0;
  arping: "Received N response(s)" with N > 0);
* ``received``: the endpoints, other than the sender, whose ICMP (v4: ``Icmp InEchos``,
  v6: ``Icmp6InEchos``) echo-request counter grew during the probe; ``None`` for probes
  that count nothing (ARP).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

SLAVES: Final = ("s1", "s2", "s3")
ENDPOINTS: Final = (*SLAVES, "host", "out")

OUT4, OUT6 = "192.0.2.1", "2001:db8::1"
HOST4, HOST6 = "192.0.2.2", "2001:db8::2"
FOREIGN4 = "192.0.2.99"  # an address no slave was given
ADDR4: Final = {"s1": "192.0.2.11", "s2": "192.0.2.12", "s3": "192.0.2.13", "host": HOST4, "out": OUT4}
ADDR6: Final = {"s1": "2001:db8::11", "s2": "2001:db8::12", "s3": "2001:db8::13", "host": HOST6, "out": OUT6}
MACS: Final = {"s1": "52:54:00:c0:00:11", "s2": "52:54:00:c0:00:12", "s3": "52:54:00:c0:00:13"}
PREFIX4, PREFIX6 = 24, 64

MODES: Final = ("l2", "l3", "l3s")
FLAGS: Final = ("bridge", "private", "vepa")
COMBOS: Final = tuple(f"{m}-{f}" for m in MODES for f in FLAGS)

# Waits are generous (TCG under load); a probe that gets no answer costs WAIT seconds.
WAIT = 3
PING = f"busybox ping -c 2 -i 0.5 -W {WAIT} -w {WAIT}"


@dataclass(frozen=True)
class Probe:
    """One piece of traffic. ``cmd`` runs at ``sender``; ``{if}`` is the sender's
    interface on the network under test. ``pre``/``post`` run at ``at`` around it.
    ``down``: a slave whose link is down during the probe (the kernel: ``ip link set
    down``; a VM: QMP ``set_link`` off, which stops its vhost-user queues)."""

    id: str
    what: str
    sender: str
    cmd: str
    counter: str | None  # "v4" | "v6" | None (nothing to count)
    ref: str  # the reference row (§12.1 letter) or README row it exercises
    at: str = ""
    pre: str = ""
    post: str = ""
    down: str = ""


# The multicast sender must not answer its own (looped-back) echo requests.
_DEAF = ("echo 1 > /proc/sys/net/ipv4/icmp_echo_ignore_broadcasts; "
         "echo 1 > /proc/sys/net/ipv6/icmp/echo_ignore_multicast")
_HEARING = _DEAF.replace("echo 1", "echo 0")

PROBES: Final[tuple[Probe, ...]] = (
    Probe("a.v4", "slave -> other slave, IPv4 ping", "s1", f"{PING} {ADDR4['s2']}", "v4", "§12.1 a"),
    Probe("a.v6", "slave -> other slave, IPv6 ping", "s1", f"{PING} -6 {ADDR6['s2']}", "v6", "§12.1 a"),
    Probe("b.s2o.v4", "slave -> outside, IPv4 ping", "s1", f"{PING} {OUT4}", "v4", "§12.1 b"),
    Probe("b.s2o.v6", "slave -> outside, IPv6 ping", "s1", f"{PING} -6 {OUT6}", "v6", "§12.1 b"),
    Probe("b.o2s.v4", "outside -> slave, IPv4 ping", "out", f"{PING} {ADDR4['s1']}", "v4", "§12.1 b"),
    Probe("b.o2s.v6", "outside -> slave, IPv6 ping", "out", f"{PING} -6 {ADDR6['s1']}", "v6", "§12.1 b"),
    Probe("c.s2h.v4", "slave -> host's address on the master, IPv4", "s1", f"{PING} {HOST4}", "v4", "§12.1 c"),
    Probe("c.s2h.v6", "slave -> host's address on the master, IPv6", "s1", f"{PING} -6 {HOST6}", "v6", "§12.1 c"),
    Probe("c.h2s.v4", "host -> slave, IPv4", "host", f"{PING} {ADDR4['s1']}", "v4", "§12.1 c"),
    Probe("c.h2s.v6", "host -> slave, IPv6", "host", f"{PING} -6 {ADDR6['s1']}", "v6", "§12.1 c"),
    Probe("d.mping4", "slave multicast ping 224.0.0.1", "s1", f"{PING} -I {{if}} 224.0.0.1", "v4", "§12.1 d",
          at="s1", pre=_DEAF, post=_HEARING),
    Probe("d.mping6", "slave multicast ping ff02::1", "s1", f"{PING} -6 -I {{if}} ff02::1", "v6", "§12.1 d",
          at="s1", pre=_DEAF, post=_HEARING),
    Probe("e.arp", "outside ARP request for a slave's address", "out",
          f"busybox arping -c 2 -w {WAIT} -I {{if}} {ADDR4['s1']}", None, "§12.1 e"),
    Probe("g.foreign-src", f"slave pings the outside from {FOREIGN4}, an address it was not given", "s1",
          f"ip addr add {FOREIGN4}/32 dev {{if}} && {PING} -I {FOREIGN4} {OUT4}; "
          f"ip addr del {FOREIGN4}/32 dev {{if}}", "v4", "§12.1 g"),
    Probe("x.down", "outside -> a slave whose link is down, IPv4", "out", f"{PING} {ADDR4['s3']}", "v4",
          "§12.3 owner down", down="s3"),
)
PROBE_BY_ID: Final = {p.id: p for p in PROBES}


@dataclass(frozen=True)
class Observation:
    replied: bool
    received: tuple[str, ...] | None

    def to_json(self) -> dict[str, object]:
        return {"replied": self.replied, "received": None if self.received is None else list(self.received)}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Observation:
        rec = data["received"]
        return cls(bool(data["replied"]), None if rec is None else tuple(sorted(str(x) for x in rec)))  # type: ignore[attr-defined]

    def __str__(self) -> str:
        rec = "-" if self.received is None else ",".join(self.received) or "nobody"
        return f"{'replied' if self.replied else 'no reply'}; received: {rec}"


Observations = dict[str, Observation]  # probe id -> observation

# What every endpoint prints to be counted: its echo-request counters, v4 and v6.
COUNTERS_CMD: Final = "ip neigh flush all >/dev/null 2>&1; cat /proc/net/snmp /proc/net/snmp6"
_REPLIES = re.compile(r"(\d+) packets received|Received (\d+) response")


def parse_counters(text: str) -> dict[str, int]:
    """``{"v4": Icmp InEchos, "v6": Icmp6InEchos}`` from ``COUNTERS_CMD``'s output."""
    lines = [ln.split() for ln in text.splitlines()]
    icmp = [ln for ln in lines if ln and ln[0] == "Icmp:"]
    v6 = [ln for ln in lines if len(ln) == 2 and ln[0] == "Icmp6InEchos"]
    if len(icmp) < 2 or not v6:
        raise ValueError(f"no ICMP counters in {text[:300]!r}")
    return {"v4": int(icmp[1][icmp[0].index("InEchos")]), "v6": int(v6[0][1])}


def replied(output: str) -> bool:
    """True if a ping/arping output reports at least one answer."""
    return any(int(a or b) > 0 for a, b in _REPLIES.findall(output))


def observe(probe: Probe, output: str, before: dict[str, dict[str, int]],
            after: dict[str, dict[str, int]]) -> Observation:
    """The observation of ``probe`` from the sender's output and every endpoint's counters."""
    received: tuple[str, ...] | None = None
    if probe.counter is not None:
        c = probe.counter
        received = tuple(sorted(e for e in after if e != probe.sender and after[e][c] > before[e][c]))
    return Observation(replied(output), received)
