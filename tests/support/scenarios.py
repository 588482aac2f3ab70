"""The conformance scenarios as data: one topology, the traffic, what is observed.

The same scenario runs against the kernel's IPvlan (namespaces inside one TCG guest)
and against vhost-ipvlan (QEMU guests as slaves), see ``conformance_nets.py``; the
observations are compared in ``conformance_expect.py``.

Topology (both back-ends)::

    s1, s2, s3 (slaves) --- master (host: HOST4/HOST6) ==== veth ==== bridge br0 (out: OUT4/OUT6)

The outside host's end of the veth is the one port of a bridge ``br0`` that holds the
outside's addresses: with the port's ``hairpin`` off it is a plain wire, with it on the
outside reflects every frame back to the master (a reflective relay, as behind a VEPA
switch). Every endpoint answers echo requests sent to broadcast/multicast
(``icmp_echo_ignore_broadcasts=0``); IPv6 without DAD unless a probe turns it on. Before
each probe every endpoint's neighbour cache is flushed, so no probe profits from an
earlier one. Every endpoint counts the frames of EtherType ``ETHERTYPE`` its stack
receives (``rawpkt listen``, the tiny image's raw frame tool).

A probe's command may name, besides ``{if}`` (the sender's interface): ``{mac:host}``
(the master's MAC), ``{mac:out}`` (the outside's), ``{ll:s1}`` (s1's IPv6 link-local
address); each back-end fills them in.

An observation of one probe (``Observation``):

* ``replies``: how many answers the sender got (ping: "N packets received"; arping:
  "Received N response(s)"); every ping probe sends ``COUNT``, so a lost first packet
  shows as ``COUNT - 1``;
* ``received``: the endpoints, other than the sender, whose counter ``probe.counter``
  grew during the probe: ``v4`` ``Icmp InEchos``, ``v6`` ``Icmp6InEchos``, ``ns``
  ``Icmp6InNeighborSolicits``, ``raw`` frames of ``ETHERTYPE``; ``None`` for probes that
  count nothing (ARP);
* ``shown``: which of ``probe.shows`` (words such as ``tentative``) the sender's output
  contains; ``None`` for probes that look for none.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
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
COUNT = 2  # echo requests per ping probe; the kernel answers every one where it answers at all
PING = f"busybox ping -c {COUNT} -i 0.5 -W {WAIT} -w {WAIT}"
ETHERTYPE = "88b5"  # IEEE local experimental: the non-IP frames the raw probes send and count
# An address in s1's solicited-node group (ff02::1:ff00:11): a DAD NS for it reaches s1's stack.
DAD6 = "2001:db8::100:0:11"
# The outside joins the same group through this address, so it counts DAD NS on the wire too.
DAD6_OUT = "2001:db8::200:0:11"


def next_combo(combo: str) -> str:
    """The mode and flag a live port is switched to by the ``port="next"`` probes: the next
    mode and the next flag (l2-bridge -> l3-private -> l3s-vepa -> l2-bridge ...)."""
    mode, flag = combo.split("-")
    return f"{MODES[(MODES.index(mode) + 1) % 3]}-{FLAGS[(FLAGS.index(flag) + 1) % 3]}"


@dataclass(frozen=True)
class Probe:
    """One piece of traffic. ``cmd`` runs at ``sender``; ``{if}`` is the sender's
    interface on the network under test. ``pre``/``post``: (endpoint, command) steps run
    before/after it, ``{if}`` being that endpoint's interface. ``down``: a slave whose
    link is down during the probe (the kernel: ``ip link set down``; a VM: QMP
    ``set_link`` off, which stops its vhost-user queues). ``hairpin``: the outside
    reflects frames back (its bridge port in hairpin mode). ``port="next"``: the live
    port runs ``next_combo`` of the combination during the probe (the kernel: ``ip link
    set dev s1 type ipvlan mode M F``, port-wide; vhost-ipvlan: ``port.change``).
    ``shows``: words looked for in the sender's output."""

    id: str
    what: str
    sender: str
    cmd: str
    counter: str | None  # "v4" | "v6" | "ns" | "raw" | None (nothing to count)
    ref: str  # the row of docs/kernel-behaviour.md §8.1 (its letter) or README row it exercises
    pre: tuple[tuple[str, str], ...] = ()
    post: tuple[tuple[str, str], ...] = ()
    down: str = ""
    hairpin: bool = False
    port: str = ""
    shows: tuple[str, ...] = ()


# The multicast sender must not answer its own (looped-back) echo requests.
_DEAF = ("echo 1 > /proc/sys/net/ipv4/icmp_echo_ignore_broadcasts; "
         "echo 1 > /proc/sys/net/ipv6/icmp/echo_ignore_multicast")
_HEARING = _DEAF.replace("echo 1", "echo 0")

# DAD on for one interface, and a wait (deadline 6 s) until ADDR is no longer tentative.
_DAD_ON = "echo 1 > /proc/sys/net/ipv6/conf/{if}/accept_dad"
_DAD_OFF = "echo 0 > /proc/sys/net/ipv6/conf/{if}/accept_dad"


def _dad_settled(addr: str) -> str:
    return (f"i=0; while ip -6 addr show dev {{if}} | grep {addr}/ | grep -q tentative && [ $i -lt 60 ]; "
            f"do sleep 0.1; i=$((i+1)); done")


_BASE: Final[tuple[Probe, ...]] = (
    Probe("a.v4", "slave -> other slave, IPv4 ping", "s1", f"{PING} {ADDR4['s2']}", "v4", "§8.1 a"),
    Probe("a.v6", "slave -> other slave, IPv6 ping", "s1", f"{PING} -6 {ADDR6['s2']}", "v6", "§8.1 a"),
    Probe("b.s2o.v4", "slave -> outside, IPv4 ping", "s1", f"{PING} {OUT4}", "v4", "§8.1 b"),
    Probe("b.s2o.v6", "slave -> outside, IPv6 ping", "s1", f"{PING} -6 {OUT6}", "v6", "§8.1 b"),
    Probe("b.o2s.v4", "outside -> slave, IPv4 ping", "out", f"{PING} {ADDR4['s1']}", "v4", "§8.1 b"),
    Probe("b.o2s.v6", "outside -> slave, IPv6 ping", "out", f"{PING} -6 {ADDR6['s1']}", "v6", "§8.1 b"),
    Probe("c.s2h.v4", "slave -> host's address on the master, IPv4", "s1", f"{PING} {HOST4}", "v4", "§8.1 c"),
    Probe("c.s2h.v6", "slave -> host's address on the master, IPv6", "s1", f"{PING} -6 {HOST6}", "v6", "§8.1 c"),
    Probe("c.h2s.v4", "host -> slave, IPv4", "host", f"{PING} {ADDR4['s1']}", "v4", "§8.1 c"),
    Probe("c.h2s.v6", "host -> slave, IPv6", "host", f"{PING} -6 {ADDR6['s1']}", "v6", "§8.1 c"),
    Probe("d.mping4", "slave multicast ping 224.0.0.1", "s1", f"{PING} -I {{if}} 224.0.0.1", "v4", "§8.1 d",
          pre=(("s1", _DEAF),), post=(("s1", _HEARING),)),
    Probe("d.mping6", "slave multicast ping ff02::1", "s1", f"{PING} -6 -I {{if}} ff02::1", "v6", "§8.1 d",
          pre=(("s1", _DEAF),), post=(("s1", _HEARING),)),
    Probe("e.arp", "outside ARP request for a slave's address", "out",
          f"busybox arping -c {COUNT} -w {WAIT} -I {{if}} {ADDR4['s1']}", None, "§8.1 e"),
    Probe("g.foreign-src", f"slave pings the outside from {FOREIGN4}, an address it was not given", "s1",
          f"ip addr add {FOREIGN4}/32 dev {{if}} && {PING} -I {FOREIGN4} {OUT4}; "
          f"ip addr del {FOREIGN4}/32 dev {{if}}", "v4", "§8.1 g"),
    Probe("x.down", "outside -> a slave whose link is down, IPv4", "out", f"{PING} {ADDR4['s3']}", "v4",
          "§8.3 owner down", down="s3"),
    Probe("g.ethertype-uc", f"slave sends {COUNT} frames of EtherType 0x{ETHERTYPE} (not IP) to the outside's MAC",
          "s1", f"rawpkt send {{if}} {{mac:out}} {ETHERTYPE} {COUNT}", "raw", "§8.1 g"),
    Probe("g.ethertype-bc", f"slave broadcasts {COUNT} frames of EtherType 0x{ETHERTYPE} (not IP)", "s1",
          f"rawpkt send {{if}} ff:ff:ff:ff:ff:ff {ETHERTYPE} {COUNT}", "raw", "§8.1 g"),
    Probe("f.dad", f"slave s3 adds {DAD6} with DAD: tentative at once? who receives its DAD NS "
          "(s1's and the outside's solicited-node group)", "s3",
          f"{_DAD_ON}; ip addr add {DAD6}/64 dev {{if}}; ip -6 addr show dev {{if}} | grep {DAD6}/; "
          f"{_dad_settled(DAD6)}; ip addr del {DAD6}/64 dev {{if}}; {_DAD_OFF}", "ns", "§8.1 f",
          pre=(("out", f"ip addr add {DAD6_OUT}/64 dev {{if}} nodad"),),
          post=(("out", f"ip addr del {DAD6_OUT}/64 dev {{if}}"),), shows=("tentative", "dadfailed")),
    Probe("e.dadns", "the outside adds s1's IPv6 address with DAD: does its DAD NS reach s1, is it defended "
          "(dadfailed)?", "out",
          f"{_DAD_ON}; ip addr add {ADDR6['s1']}/128 dev {{if}}; {_dad_settled(ADDR6['s1'])}; "
          f"ip -6 addr show dev {{if}} | grep {ADDR6['s1']}/; ip addr del {ADDR6['s1']}/128 dev {{if}}; {_DAD_OFF}",
          "ns", "§8.1 e, f", shows=("tentative", "dadfailed")),
    Probe("x.ll", "outside -> s1's IPv6 link-local address (outside: static neighbour -> the master's MAC)",
          "out", f"ip -6 neigh replace {{ll:s1}} lladdr {{mac:host}} dev {{if}} nud permanent; "
          f"{PING} -6 -I {{if}} {{ll:s1}}%{{if}}; ip -6 neigh del {{ll:s1}} dev {{if}}", "v6", "§8.2 #9, issue 16 #1"),
)

# The probes that run again behind the hairpin switch (the outside reflects frames back).
HAIRPIN: Final = ("a.v4", "a.v6", "b.s2o.v4", "b.o2s.v4", "c.s2h.v4", "c.s2h.v6", "c.h2s.v4", "c.h2s.v6",
                  "d.mping4", "d.mping6", "g.ethertype-bc")
_BY_ID = {p.id: p for p in _BASE}

PROBES: Final[tuple[Probe, ...]] = (
    *_BASE,
    *(replace(_BY_ID[i], id=f"hp.{i}", what=f"{_BY_ID[i].what}, behind a hairpin switch", hairpin=True,
              ref=f"{_BY_ID[i].ref}, hairpin") for i in HAIRPIN),
    Probe("j.flip.a", "after a live change of the port to the next mode and flag: slave -> other slave, IPv4",
          "s1", f"{PING} {ADDR4['s2']}", "v4", "§8.1 j", port="next"),
    Probe("j.flip.o2s", "after a live change of the port to the next mode and flag: outside -> slave, IPv4",
          "out", f"{PING} {ADDR4['s1']}", "v4", "§8.1 j", port="next"),
    # Last: it leaves the host's forwarding switches off (the kernel's default).
    Probe("x.netconf", "host toggles net.ipv4.ip_forward 1 -> 0, then slave -> outside, IPv4 (outside: static "
          "neighbour for the slave -> the master's MAC)", "s1", f"{PING} {OUT4}", "v4", "issue 16 #2",
          pre=(("host", "echo 1 > /proc/sys/net/ipv4/ip_forward; echo 0 > /proc/sys/net/ipv4/ip_forward"),
               ("out", f"ip neigh replace {ADDR4['s1']} lladdr {{mac:host}} dev {{if}}")),
          post=(("out", f"ip neigh del {ADDR4['s1']} dev {{if}}"),)),
)
PROBE_BY_ID: Final = {p.id: p for p in PROBES}


@dataclass(frozen=True)
class Observation:
    replies: int
    received: tuple[str, ...] | None
    shown: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {"replies": self.replies,
                                   "received": None if self.received is None else list(self.received)}
        if self.shown is not None:
            data["shown"] = list(self.shown)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Observation:
        rec, shown = data["received"], data.get("shown")
        return cls(int(data["replies"]),  # type: ignore[call-overload]
                   None if rec is None else tuple(sorted(str(x) for x in rec)),  # type: ignore[attr-defined]
                   None if shown is None else tuple(str(x) for x in shown))  # type: ignore[attr-defined]

    def __str__(self) -> str:
        rec = "-" if self.received is None else ",".join(self.received) or "nobody"
        text = f"{self.replies} repl{'y' if self.replies == 1 else 'ies'}; received: {rec}"
        return text if self.shown is None else f"{text}; shown: {','.join(self.shown) or 'nothing'}"


Observations = dict[str, Observation]  # probe id -> observation

# What every endpoint prints to be counted: its ICMP counters, v4 and v6, then its raw frame
# count (the file its ``rawpkt listen`` keeps; ``{raw}`` is its path).
COUNTERS_CMD: Final = "ip neigh flush all >/dev/null 2>&1; cat /proc/net/snmp /proc/net/snmp6 {raw}"
_REPLIES = re.compile(r"(\d+) packets received|Received (\d+) response")
_SNMP6: Final = {"v6": "Icmp6InEchos", "ns": "Icmp6InNeighborSolicits"}


def parse_counters(text: str) -> dict[str, int]:
    """``{"v4": Icmp InEchos, "v6": Icmp6InEchos, "ns": Icmp6InNeighborSolicits, "raw": RawIn}``
    from ``COUNTERS_CMD``'s output."""
    lines = [ln.split() for ln in text.splitlines()]
    icmp = [ln for ln in lines if ln and ln[0] == "Icmp:"]
    v6 = {ln[0]: int(ln[1]) for ln in lines if len(ln) == 2 and ln[0].startswith("Icmp6")}
    raw = [int(ln[1]) for ln in lines if len(ln) == 2 and ln[0] == "RawIn"]
    if len(icmp) < 2 or any(name not in v6 for name in _SNMP6.values()):
        raise ValueError(f"no ICMP counters in {text[:300]!r}")
    if not raw:
        raise ValueError(f"no raw frame count (RawIn: is rawpkt listen running?) in {text[-300:]!r}")
    return {"v4": int(icmp[1][icmp[0].index("InEchos")]), **{k: v6[n] for k, n in _SNMP6.items()}, "raw": raw[-1]}


def replies(output: str) -> int:
    """How many answers a ping/arping output reports (0 if it reports none)."""
    return sum(int(a or b) for a, b in _REPLIES.findall(output))


def observe(probe: Probe, output: str, before: dict[str, dict[str, int]],
            after: dict[str, dict[str, int]]) -> Observation:
    """The observation of ``probe`` from the sender's output and every endpoint's counters."""
    received: tuple[str, ...] | None = None
    if probe.counter is not None:
        c = probe.counter
        received = tuple(sorted(e for e in after if e != probe.sender and after[e][c] > before[e][c]))
    shown = tuple(w for w in probe.shows if w in output) if probe.shows else None
    return Observation(replies(output), received, shown)


_PLACEHOLDER = re.compile(r"\{([a-z0-9:]+)\}")


def fill(cmd: str, names: Mapping[str, str]) -> str:
    """``cmd`` with every ``{name}`` replaced by ``names[name]`` (an unknown name is an error)."""
    def one(m: re.Match[str]) -> str:
        if m.group(1) not in names:
            raise KeyError(f"probe command names {{{m.group(1)}}}, which this network does not fill: {cmd!r}")
        return names[m.group(1)]
    return _PLACEHOLDER.sub(one, cmd)
