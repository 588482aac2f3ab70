"""The glue to the optional C accelerator (``vhost_ipvlan._fastpath``, ``_fastpath.c``).

The accelerator forwards guest -> guest unicast the l2 way straight from one
guest's TX ring into another's RX ring, and sends l2 guest -> wire unicast out
the master in batches (``sendmmsg``); Python stays the reference and handles
everything it hands back (see the theory of operation in ``_fastpath.c``). This
module is everything the rest of the daemon knows about it: whether it is loaded,
which ports may use it, and the per-port table and per-device counters it works on.

Rules:
- ``VHOST_IPVLAN_PURE=1`` in the environment turns it off (``ext`` is None); so
  does a failed import. Nothing else changes: the pure-Python path is complete.
- Live migration: C marks the dirty log for the RX buffers it fills itself; its
  ``log_mark`` (``log_mark()`` here) is given to every new session, so Python's own
  marks are exact atomic ORs too (without it, ``virtio/dirtylog.py`` stores whole
  bytes).
- Python decides eligibility: ``PortTable.args`` returns None unless the port's
  traits allow it (``fast_path``: only l2 bridge forwards guest -> guest; private
  drops it, vepa sends it to the wire, so their table is empty; ``fast_wire``: l2,
  every flag, sends a guest's unicast to an off-host MAC out the master; l3/l3s
  use neither: ``tests/pair/test_fastpath.py`` checks they equal pure Python),
  and the table holds only targets that are up, have a known MAC and at least one
  ready (started and enabled) RX ring. An entry holds the target's ready rings in
  ``NetDevice.rx_ready``'s order, each with its pair's counters: with one, C
  delivers there without a look at the frame; with several, into the flow's ring,
  ``frames.flow_hash`` (computed by C, byte for byte the same: ``ext.flow_hash``)
  modulo their number, as ``NetDevice.deliver``. Any TX ring is drained by C.
- From the wire (``uplink_burst``, ``fast_wire`` ports): the same table, the
  master's MAC and the port's ``wire_macs``; C delivers what l2 would deliver to
  one guest unchanged but for the destination MAC, and gives every other frame, in
  order, to ``PortDatapath._uplink_frame`` (Python's per-frame path).
- The wire argument (``Wire``) is given by the data path only while the wire is
  up and the uplink has a ``batch_fd``: (that descriptor, the master's MAC, the
  port's live ``by_mac`` (a destination MAC in it is a guest's, not the wire's),
  the largest non-GSO buffer). C returns how many frames it sent and how many
  sends failed; Python counts them (``uplink_tx``, ``uplink_send_failed``).
- The table is rebuilt lazily when its key changes: the port's ``generation``
  (slaves, addresses), ``PortTable.gen`` (bumped by ``invalidate`` on every
  ring/up-state change) and the number of devices. ``invalidate`` also empties the
  current table in place: an ``uplink_burst`` whose ``slow`` (Python's per-frame path)
  broke a queue or took a guest down holds that dict, and must deliver no more from it.
- Worker threads (``workers.py``): ``plan_args`` gives a worker's ``WorkerCore`` what
  ``forward_burst`` would get for one device's TX ring (the same table, the same wire,
  the target rings' call descriptors and TX rings for flush's rule), so that its kicks
  are served without Python until Python runs again; None where it does not apply (not
  one queue pair, a dirty log on, a port larger than a plan).
- ``_fastpath.c`` reads ``SplitQueue``/``GuestMemory`` attributes by name (see the
  notes in ``virtio/virtqueue.py`` and ``virtio/memory.py``) and a table entry is
  ``(rings, mac, caps, device)``: ``rings`` a tuple of ``(rxq, counters)``, one per
  ready RX ring (``counters`` is ``QueuePair.fast_rx``); ``caps`` packs what the
  target negotiated, the same facts ``virtio.net.offload_ok`` checks in Python
  (``caps`` below is the one definition of the bit layout).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..switch.port import Port
    from .device import NetDevice

#: the C extension, or None (not built, or ``VHOST_IPVLAN_PURE=1``)
ext: ModuleType | None
try:
    if os.environ.get("VHOST_IPVLAN_PURE") == "1":
        raise ImportError("disabled by VHOST_IPVLAN_PURE=1")
    from .. import _fastpath as ext  # type: ignore[attr-defined, no-redef]
except ImportError:
    ext = None

#: (descriptor, master MAC, the port's by_mac, max_frame): the wire, for ``forward_burst``
Wire = tuple[int, bytes, Mapping[bytes, object], int]
#: (sender MAC, addresses it owns, destination table, wire or None): ``forward_burst``'s arguments
Args = tuple[bytes, frozenset[bytes], dict[bytes, tuple[object, ...]], Wire | None]
_NO_TARGETS: dict[bytes, tuple[object, ...]] = {}
_Key = tuple[int, int, int]


def accelerated() -> bool:
    return ext is not None


def log_mark() -> Callable[[memoryview, int, int], int] | None:
    """The accelerator's exact, atomic dirty-log marking for Python's own writes
    (``virtio.dirtylog.DirtyLog``'s native), or None: Python's whole-byte stores."""
    mark: Callable[[memoryview, int, int], int] | None = getattr(ext, "log_mark", None)
    return mark


def caps(takes_csum: bool, ecn: bool, gso_mask: int) -> int:
    """A target's offloads as ``_fastpath.c`` reads them (``offload_ok`` there and
    ``virtio.net.offload_ok`` here decide the same): bit 0 takes NEEDS_CSUM, bit 1
    takes ECN, bits 8..15 the mask of gso_types it takes."""
    return int(takes_csum) | int(ecn) << 1 | (gso_mask & 0xFF) << 8


class DeviceCounters:
    """One device's share of the accelerator's state: the RX counters C adds to
    (two native u64, packets and bytes) and the device's cached arguments."""

    __slots__ = ("cached", "rx")

    def __init__(self) -> None:
        self.rx = bytearray(16)
        self.cached: tuple[_Key, bytes, frozenset[bytes]] | None = None

    def rx_counts(self) -> tuple[int, int]:
        """(packets, bytes) the accelerator delivered to this device."""
        return counts(self.rx)


def counts(rx: bytearray) -> tuple[int, int]:
    """(packets, bytes) in one of the accelerator's RX counters (two native u64)."""
    packets, nbytes = struct.unpack("=QQ", rx)
    return packets, nbytes


class PortTable:
    """The accelerator's view of one port, rebuilt when anything that decides
    reachability changes (see the rules)."""

    def __init__(self, port: Port, devices: Mapping[str, NetDevice]) -> None:
        self.port = port
        self.devices = devices
        self.gen = 0
        self.table: dict[bytes, tuple[object, ...]] = {}
        self._key: _Key | None = None

    def invalidate(self) -> None:
        """A ring or a slave's up state changed: rebuild before the next use. The current
        table is emptied in place: an ``uplink_burst`` holding it (this may run inside its
        ``slow`` callback: a delivery that broke a queue) hands the rest to Python."""
        self.gen += 1
        self.table.clear()

    def key(self) -> _Key:
        """What the table is built from: the port's ``generation``, ``gen``, the number of
        devices (also the key of ``PortDatapath.receivers``)."""
        return (self.port.generation, self.gen, len(self.devices))

    def args(self, dev: NetDevice, wire: Wire | None) -> Args | None:
        """``forward_burst``'s (sender MAC, addresses it owns, destination table, wire)
        for ``dev``, or None when the accelerator is unavailable or does not apply."""
        traits = self.port.traits
        if ext is None or not (traits.fast_path or (traits.fast_wire and wire is not None)):
            return None
        if not traits.fast_wire:
            wire = None
        mac = dev.slave.mac
        if mac is None:
            return None
        key = self._fresh()
        fc = dev.fast
        cached = fc.cached
        if cached is None or cached[0] != key or cached[1] != mac:
            owned = frozenset(a for a, owner in self.port.by_addr.items() if owner is dev.slave)
            cached = fc.cached = (key, mac, owned)
        return mac, cached[2], self.table if traits.fast_path else _NO_TARGETS, wire

    def rx_table(self) -> dict[bytes, tuple[object, ...]] | None:
        """``uplink_burst``'s destination table (every ``fast_wire`` port's: the wire's
        unicast goes to its owner in every l2 flag), or None when C does not apply."""
        if ext is None or not self.port.traits.fast_wire:
            return None
        self._fresh()
        return self.table

    def _fresh(self) -> _Key:
        """Rebuild the table if its key changed; return the key."""
        key = self.key()
        if key != self._key:
            self._rebuild()
            self._key = key
        return key

    def _rebuild(self) -> None:
        entries: dict[str, tuple[object, ...]] = {}
        for name, d in self.devices.items():
            rings = tuple((p.rx, p.fast_rx) for p in d.rx_ready)  # C picks one by flow as deliver does
            if d.slave.up and rings and d.slave.mac is not None:
                entries[name] = (rings, d.slave.mac, caps(d.takes_csum, d.ecn, d.gso_mask), d)
        table: dict[bytes, tuple[object, ...]] = {}
        for addr, owner in self.port.by_addr.items():
            entry = entries.get(owner.name)
            if entry is not None and self.devices.get(owner.name) is not None:
                table[addr] = entry
        self.table = table


#: the largest plan ``_fastpath.c``'s WorkerCore takes (PLAN_OWNED, PLAN_DSTS, PLAN_LOCAL)
PLAN_OWNED = 16
PLAN_DSTS = 64
PLAN_LOCAL = 64


def plan_args(dev: NetDevice) -> tuple[object, ...] | None:
    """``WorkerCore.register``'s arguments for ``dev``'s TX ring, or None when its kicks are
    Python's: not one queue pair, the ring not started and enabled, a dirty log on (a
    migration), the C accelerator not applying (``PortTable.args``), or a port beyond a
    plan's size. A plan is taken only just before the worker waits (``workers.py``), from
    the same state ``forward_burst`` would get; it forwards exactly what forward_burst
    would (the same table, the same wire) and hands everything else back."""
    from ..vhost_user.session import TX
    from .device import BURST  # the device module imports this one

    if len(dev.pairs) != 1:
        return None
    pair = dev.pairs[0]
    q = pair.tx
    kick = dev.kick_fd(TX)
    if q is None or not pair.tx_enabled or q.log is not None or kick is None:
        return None
    dp = dev.dp
    fast = dp.fast_args(dev)
    if fast is None:
        return None
    mac, owned, table, wire = fast
    if len(owned) > PLAN_OWNED or len(table) > PLAN_DSTS:
        return None
    dsts = []
    for addr, entry in table.items():
        rings, tmac, tcaps, target = entry
        tdev: NetDevice = target  # type: ignore[assignment]
        by_rx = {id(p.rx): p for p in tdev.pairs if p.rx is not None}
        rings6 = []
        for rxq, counters in rings:  # type: ignore[attr-defined]
            p = by_rx.get(id(rxq))
            if p is None or rxq.log is not None:
                return None
            rings6.append((rxq, counters, p.rx_call, tdev, dp.dirty, tdev.drops))
        txqs = tuple(p.tx for p in tdev.pairs if p.tx is not None)
        dsts.append((addr, tmac, tcaps, tuple(rings6), txqs))
    plan_wire = None
    if wire is not None:
        fd, master_mac, by_mac, max_frame = wire
        if len(by_mac) > PLAN_LOCAL:
            return None
        plan_wire = (fd, master_mac, tuple(by_mac), max_frame)
    budget = plan_budget(q.num, BURST)
    return (kick, q, pair.tx_call, dev.buf, mac, owned, tuple(dsts), plan_wire, dev, pair, dp, budget)


def plan_budget(num: int, burst: int) -> int:
    """A plan's burst: ``burst`` (device.BURST), at most a quarter of the ring's ``num``
    entries. Each burst ends in publishing the sender's used ring and the receivers' RX
    rings, and a driver answers what it is given while the next burst is taken: with
    DPDK's default 256-entry rings, bursts of 256 made the two take turns (the one-way
    loop 7.6 Mpps, 13.8 with bursts of 64; bench/README.md). Python's drains keep
    ``burst``: its cost per drain is higher."""
    return min(burst, max(1, num // 4))
