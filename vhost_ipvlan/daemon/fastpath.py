"""The glue to the optional C accelerator (``vhost_ipvlan._fastpath``, ``_fastpath.c``).

The accelerator forwards guest -> guest unicast the l2 way straight from one
guest's TX ring into another's RX ring; Python stays the reference and handles
everything it hands back (see the theory of operation in ``_fastpath.c``). This
module is everything the rest of the daemon knows about it: whether it is loaded,
which ports may use it, and the per-port table and per-device counters it works on.

Rules:
- ``VHOST_IPVLAN_PURE=1`` in the environment turns it off (``ext`` is None); so
  does a failed import. Nothing else changes: the pure-Python path is complete.
- Python decides eligibility: ``PortTable.args`` returns None unless the port's
  traits allow it (``fast_path``: only l2 bridge; private drops guest -> guest, vepa
  sends it to the wire, l3/l3s never use it: ``tests/pair/test_fastpath.py`` checks
  they equal pure Python),
  and the table holds only targets that are up, enabled and have a known MAC.
- The table is rebuilt lazily when its key changes: the port's ``generation``
  (slaves, addresses), ``PortTable.gen`` (bumped by ``invalidate`` on every
  ring/up-state change) and the number of devices.
- ``_fastpath.c`` reads ``SplitQueue``/``GuestMemory`` attributes by name (see the
  notes in ``virtio/virtqueue.py`` and ``virtio/memory.py``) and a table entry is
  ``(rxq, mac, caps, counters, device)``: ``caps`` packs what the target negotiated,
  the same facts ``virtio.net.offload_ok`` checks in Python (``caps`` below is the
  one definition of the bit layout); ``counters`` is ``DeviceCounters.rx``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
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

#: (sender MAC, addresses it owns, destination table): ``forward_burst``'s arguments
Args = tuple[bytes, frozenset[bytes], dict[bytes, tuple[object, ...]]]
_Key = tuple[int, int, int]


def accelerated() -> bool:
    return ext is not None


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
        packets, nbytes = struct.unpack("=QQ", self.rx)
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
        """A ring or a slave's up state changed: rebuild before the next use."""
        self.gen += 1

    def args(self, dev: NetDevice) -> Args | None:
        """``forward_burst``'s (sender MAC, addresses it owns, destination table)
        for ``dev``, or None when the accelerator is unavailable or does not apply."""
        if ext is None or not self.port.traits.fast_path:
            return None
        mac = dev.slave.mac
        if mac is None:
            return None
        key = (self.port.generation, self.gen, len(self.devices))
        if key != self._key:
            self._rebuild()
            self._key = key
        fc = dev.fast
        cached = fc.cached
        if cached is None or cached[0] != key or cached[1] != mac:
            owned = frozenset(a for a, owner in self.port.by_addr.items() if owner is dev.slave)
            cached = fc.cached = (key, mac, owned)
        return mac, cached[2], self.table

    def _rebuild(self) -> None:
        entries: dict[str, tuple[object, ...]] = {}
        for name, d in self.devices.items():
            if d.slave.up and d.rx is not None and d.rx_enabled and d.slave.mac is not None:
                entries[name] = (d.rx, d.slave.mac, caps(d.takes_csum, d.ecn, d.gso_mask), d.fast.rx, d)
        table: dict[bytes, tuple[object, ...]] = {}
        for addr, owner in self.port.by_addr.items():
            entry = entries.get(owner.name)
            if entry is not None and self.devices.get(owner.name) is not None:
                table[addr] = entry
        self.table = table
