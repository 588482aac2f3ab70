"""Every reason a frame is dropped: one registry for the switch, the data path, stats and docs.

A dropped frame is counted, never raised: each counter list (``[0] * N_DROP_REASONS``)
is indexed by ``DropReason``, and ``.label`` is the stable counter name that
``stats``, ``SIGUSR1``, the Prometheus ``reason`` label and ``docs/drop-reasons.md``
show. Where the lists live:

- per slave: ``Slave.drops`` (the switch) and ``NetDevice.drops`` (the data path);
- per master: ``Port.uplink_drops`` (the switch, frames from the wire) and
  ``PortDatapath.drops`` (the data path, the wire and the host link);
- ``counts`` adds lists into the ``{label: n}`` that ``stats`` reports.

Rules:
- To add a reason: append a member at the end of ``DropReason`` and its row to
  ``REASONS`` (where it is counted, whose counter, what it means; the import fails
  without it), count it with ``drops[DropReason.X] += 1`` at the one place that
  drops the frame, then regenerate the docs:
  ``python3 scripts/gen_drop_reasons.py > docs/drop-reasons.md``.
- A frame is counted once: the code that gives up on it counts it, and a helper
  that fails reports the failure to its caller instead of counting (``HostLink.send``).
- The C accelerator (``_fastpath.c``) counts no drops: every frame it would not
  forward goes back to Python, which counts it (a test checks the C source).
- No I/O and no imports beyond the standard library: the switch imports this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Final


class Where(Enum):
    """The stage that drops (and counts) the frame (``PLACES`` says more)."""

    SWITCH = "switch"
    RING = "ring"
    WIRE = "wire"
    HOST = "host"
    ROUTE = "route"
    BUG = "bug"


PLACES: Final[dict[Where, str]] = {
    Where.SWITCH: "The switch's decision on the frame's content (`vhost_ipvlan/switch/`: source validation, the "
                  "guards, the policy table), before anything is copied",
    Where.RING: "A guest's virtio rings (the data path's `NetDevice`): what the rings do to a frame",
    Where.WIRE: "The master (the data path's `PortDatapath`): frames for the wire, or read from it",
    Where.HOST: "The host link, the tap between a port and the host's own stack (`HostLink` does the I/O, "
                "`PortDatapath` counts)",
    Where.ROUTE: "l3/l3s egress (`routing.Router`): the next hop the host's tables give, never waited for",
    Where.BUG: "An unexpected exception while the data path handled the frame",
}


class DropReason(IntEnum):
    """Why a frame was dropped; ``.label`` is the stable counter name. Append new reasons at the end."""

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
    PRIVATE = 14
    LEARN_REFUSED = 15
    L2_CONTROL = 16
    ANONYMOUS_SRC = 17
    RA_GUARD = 18
    DHCP_GUARD = 19
    NDP_EXT_HEADER = 20
    LEARN_NOT_ON_LINK = 21
    RX_RING_FULL = 22
    RX_TOO_BIG = 23
    RX_BAD_BUFFER = 24
    RX_NOT_READY = 25
    OFFLOAD_UNSUPPORTED = 26
    CALL_FAILED = 27
    QUEUE_BROKEN = 28
    INTERNAL_ERROR = 29
    MASTER_DOWN = 30
    MTU_EXCEEDED = 31
    UPLINK_SEND_FAILED = 32
    UPLINK_READ_ERROR = 33
    UPLINK_TRUNCATED = 34
    MAC_UNKNOWN = 35
    HOST_SEND_FAILED = 36
    HOST_READ_ERROR = 37
    HOST_NOT_UNICAST_IP = 38
    HOST_NO_GUEST = 39
    NO_ROUTE = 40
    NEIGH_UNRESOLVED = 41
    NEIGH_RATE_LIMITED = 42
    NEIGH_BUSY = 43
    NEIGH_NOT_ON_LINK = 44
    NEIGH_BUDGET = 45
    NEIGH_QUEUE_FULL = 46
    NEIGH_FAILED = 47
    DHCP_MALFORMED = 48
    DHCP6_MALFORMED = 49

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def where(self) -> tuple[Where, ...]:
        return REASONS[self].where

    @property
    def meaning(self) -> str:
        return REASONS[self].meaning


N_DROP_REASONS: Final = len(DropReason)


@dataclass(frozen=True)
class Reason:
    """One row of the registry."""

    where: tuple[Where, ...]
    #: whose counter it adds to
    on: str
    #: what happened to the frame, one line
    meaning: str


_SENDER_OR_MASTER: Final = "the sender (the master for frames from the wire)"
_SENDER: Final = "the sender"
_RECEIVER: Final = "the receiver"
_MASTER: Final = "the master"
_SW: Final = (Where.SWITCH,)
_RING: Final = (Where.RING,)
_WIRE: Final = (Where.WIRE,)
_HOST: Final = (Where.HOST,)
_ROUTE: Final = (Where.ROUTE,)

REASONS: Final[dict[DropReason, Reason]] = {
    DropReason.RUNT: Reason(
        (Where.RING, Where.SWITCH), _SENDER_OR_MASTER,
        "ring: a transmit chain shorter than the 12-byte `virtio_net_hdr` (zero-length included; it adds "
        "nothing to `tx_packets`/`tx_bytes`); switch: a frame shorter than an Ethernet header"),
    DropReason.BAD_HEADER: Reason(
        _SW, _SENDER_OR_MASTER,
        "ARP/IPv4/IPv6 whose header does not parse, an IPv6 extension header chain that runs past the "
        "payload or is longer than 8, a UDP/ICMPv6 header cut short by the end of the packet (a first "
        "fragment must carry it), or from a guest an 802.3 frame whose LLC/SNAP header carries an Ethernet "
        "type (RFC 1042 IP/ARP would pass every address check)"),
    DropReason.VLAN: Reason(_SW, _SENDER, "802.1Q/802.1ad tagged (from a guest)"),
    DropReason.MAC_CONTROL: Reason(_SW, _SENDER, "802.3x MAC control (PAUSE) from a guest"),
    DropReason.MULTICAST_SRC: Reason(_SW, _SENDER, "a multicast source MAC"),
    DropReason.SRC_MAC_SPOOF: Reason(
        _SW, _SENDER,
        "a source MAC (or ARP sender MAC) that is not the guest's; for a guest without a configured MAC, "
        "one the master, another guest, the wire or a neighbour of the master uses"),
    DropReason.SRC_IP_SPOOF: Reason(
        _SW, _SENDER, "a source address (or ARP sender, NA target) that is not the guest's and not learnable"),
    DropReason.TOO_MANY_LINK_LOCALS: Reason(_SW, _SENDER, "a guest's ninth IPv6 link-local"),
    DropReason.TARGET_DOWN: Reason(_SW, _SENDER_OR_MASTER, "for a guest that is not up"),
    DropReason.TO_HOST_UNSUPPORTED: Reason(
        _HOST, _SENDER, "for the host (to the master's MAC, or an l3 local route), and the port has no host link"),
    DropReason.LOOPED_BACK: Reason(_SW, _MASTER, "from the wire: our own multicast, reflected"),
    DropReason.NO_DESTINATION: Reason(_SW, _SENDER_OR_MASTER, "no rule (never expected)"),
    DropReason.NOT_IP: Reason(_SW, _SENDER, "l3/l3s: not IP (and not an ARP the daemon answers)"),
    DropReason.MULTICAST_DST: Reason(_SW, _SENDER, "l3/l3s: to a multicast/broadcast destination"),
    DropReason.PRIVATE: Reason(_SW, _SENDER, "guest to guest in `private`"),
    DropReason.LEARN_REFUSED: Reason(
        _SW, _SENDER,
        "learning mode: an address another guest, the master or the master's gateways and neighbours have"),
    DropReason.L2_CONTROL: Reason(
        _SW, _SENDER,
        "from a guest to 01:80:c2:00:00:00-0f (STP, 802.1X, LACP, LLDP, ...) or 01:00:0c:cc:cc:cc/cd "
        "(CDP, DTP, UDLD, PVST+)"),
    DropReason.ANONYMOUS_SRC: Reason(
        _SW, _SENDER, "`0.0.0.0` or `::` as source beyond DHCP client, IGMP, ARP probe, DAD and MLD"),
    DropReason.RA_GUARD: Reason(_SW, _SENDER, "a Router Advertisement or Redirect from a guest without `allow_router`"),
    DropReason.DHCP_GUARD: Reason(
        _SW, _SENDER, "a DHCPv4/DHCPv6 server message from a guest without `allow_router`"),
    DropReason.NDP_EXT_HEADER: Reason(_SW, _SENDER, "NDP behind an IPv6 extension header, from a guest"),
    DropReason.LEARN_NOT_ON_LINK: Reason(
        _SW, _SENDER,
        "learning mode: an address outside the master's connected prefixes, or IPv4 link-local (169.254/16)"),
    DropReason.RX_RING_FULL: Reason(_RING, _RECEIVER, "not enough receive buffers posted"),
    DropReason.RX_TOO_BIG: Reason(
        _RING, _RECEIVER, "without mergeable buffers, the next buffer cannot hold the frame"),
    DropReason.RX_BAD_BUFFER: Reason(
        _RING, _RECEIVER,
        "a receive chain with room for less than a `virtio_net_hdr` (zero-capacity chains included), or, "
        "with mergeable buffers, chains fragmented into more descriptors than the queue size for one frame; "
        "the frame is dropped at once and the chains stay the guest's"),
    DropReason.RX_NOT_READY: Reason(_RING, _RECEIVER, "its receive queue is not started or not enabled"),
    DropReason.OFFLOAD_UNSUPPORTED: Reason(
        _RING, _RECEIVER, "the frame's checksum/GSO request is one its driver did not negotiate"),
    DropReason.CALL_FAILED: Reason(
        _RING, "the guest whose interrupt it was",
        "its call eventfd's counter was full (or the descriptor gone): the interrupt is lost rather than "
        "the loop blocked (README, \"A hostile front-end\")"),
    DropReason.QUEUE_BROKEN: Reason(
        _RING, "the guest",
        "it broke a ring's rules (loop, out-of-range index or address, an indirect table longer than the "
        "queue size, ...): that queue is stopped until it reconnects"),
    DropReason.INTERNAL_ERROR: Reason(
        (Where.BUG,), _SENDER_OR_MASTER,
        "a bug raised while the frame was handled: that frame is dropped, the burst and the other guests "
        "go on; the traceback is logged at most once per 10 s. When the C accelerator fails, the frame is "
        "not lost: it is counted and Python switches it"),
    DropReason.MASTER_DOWN: Reason(
        _WIRE, _SENDER, "for the wire while the master is down, has no carrier or is gone (guest <-> guest goes on)"),
    DropReason.MTU_EXCEEDED: Reason(
        _WIRE, _SENDER_OR_MASTER,
        "a non-GSO frame for the wire larger than the master's MTU, or a multicast/broadcast frame larger "
        "than it (GSO or not, from a guest or the wire), dropped before it is copied"),
    DropReason.UPLINK_SEND_FAILED: Reason(_WIRE, _SENDER, "the master's socket refused the frame"),
    DropReason.UPLINK_READ_ERROR: Reason(
        _WIRE, _MASTER, "reading the master's socket failed (the burst ends; what is queued waits)"),
    DropReason.UPLINK_TRUNCATED: Reason(_WIRE, _MASTER, "a frame from the wire larger than the daemon's buffer"),
    DropReason.MAC_UNKNOWN: Reason(
        _WIRE, _RECEIVER, "from the wire for a guest whose MAC is not known yet (none configured, none learned)"),
    DropReason.HOST_SEND_FAILED: Reason(
        _HOST, _SENDER, "writing the frame into the host link failed, or the host link is closed"),
    DropReason.HOST_READ_ERROR: Reason(_HOST, _MASTER, "reading the host link failed (the burst ends)"),
    DropReason.HOST_NOT_UNICAST_IP: Reason(
        _HOST, _MASTER, "the host sent a multicast, broadcast or non-IP frame into the host link (MLD, IPv6 RS, ...)"),
    DropReason.HOST_NO_GUEST: Reason(
        _HOST, _MASTER, "the host sent a frame for an address no up guest with a known MAC has"),
    DropReason.NO_ROUTE: Reason(
        _ROUTE, _SENDER, "no unicast or local route for the destination through the master"),
    DropReason.NEIGH_UNRESOLVED: Reason(
        _ROUTE, _SENDER,
        "the destination's last lookup found no neighbour MAC (less than 0.1 s ago) and none is running: "
        "nothing to hold the packet for (while a lookup runs, packets are held: ``routing.Router.hold``)"),
    DropReason.NEIGH_RATE_LIMITED: Reason(
        _ROUTE, _SENDER, "the guest asked for more than 64 new destinations a second (burst 128)"),
    DropReason.NEIGH_BUSY: Reason(
        _ROUTE, _SENDER, "64 lookups are already running for the master, or 32 for this guest"),
    DropReason.NEIGH_NOT_ON_LINK: Reason(
        _ROUTE, _SENDER,
        "a route puts the destination on-link, but it is outside the master's prefixes and the host has "
        "no neighbour entry for it: the daemon does not create one"),
    DropReason.NEIGH_BUDGET: Reason(
        _ROUTE, _SENDER,
        "the next hop would need a new neighbour entry, and the guest (or the master) holds its budget "
        "of entries the daemon created"),
    DropReason.NEIGH_QUEUE_FULL: Reason(
        _ROUTE, _SENDER,
        "the destination already holds 101 packets or 212992 bytes while it resolves (the kernel's unres_qlen "
        "defaults: the oldest is dropped), or the master holds 1 MiB (the new one is)"),
    DropReason.NEIGH_FAILED: Reason(
        _ROUTE, _SENDER,
        "a held packet whose next hop did not resolve (about 3 s: the kernel's NEIGH_FAILED), or whose master "
        "went or changed meanwhile"),
    DropReason.DHCP_MALFORMED: Reason(
        _SW, _SENDER,
        "a DHCPv4 client message (UDP 68 -> 67) from a guest the backend answers (`dhcp`) that does not parse "
        "(`net/dhcp.py`: short, not a BOOTREQUEST, no magic cookie, an option past the end, no or a server's "
        "message type); it goes nowhere"),
    DropReason.DHCP6_MALFORMED: Reason(
        _SW, _SENDER,
        "a DHCPv6 client message (UDP 546 -> 547) from a guest the backend answers (`dhcp`) that does not parse "
        "(`net/dhcp6.py`: short, an option past the end, a relay or server message type, a Client or Server "
        "Identifier missing or present against RFC 8415 §16, an IA shorter than its fields); it goes nowhere"),
}

_missing = [r.label for r in DropReason if r not in REASONS] + [w.value for w in Where if w not in PLACES]
if _missing:  # pragma: no cover - a reason added without its row
    raise ImportError(f"vhost_ipvlan.drops: no REASONS/PLACES row for {', '.join(_missing)}")


def new_counters() -> list[int]:
    """A zeroed counter list, indexed by ``DropReason``."""
    return [0] * N_DROP_REASONS


def counts(*counters: Sequence[int]) -> dict[str, int]:
    """The lists added up: non-zero counters by label, in registry order."""
    out: dict[str, int] = {}
    if not any(map(any, counters)):  # the usual case (an idle slave): stats of 1000 stay cheap
        return out
    for r in DropReason:
        n = sum(c[r] for c in counters)
        if n:
            out[r.label] = n
    return out
