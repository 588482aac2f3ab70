"""Harness (b): hostile rings into the virtqueues, ``rx_deliver`` and the C accelerator.

An in-process l2 bridge port with three guests (a, b, c, as in
``tests/pair/test_fastpath.py``), whose rings all live in one guest RAM that is
the fuzz input. Guest a's TX ring is drained (``NetDevice.drain_tx``) twice,
from identical copies of the RAM: once with ``vhost_ipvlan._fastpath`` (the
ASan/UBSan build when ``FUZZ_FASTPATH`` names it, see ``fuzz/build-asan``) and
once in pure Python. Frames go through the switch into b's, c's and a's RX
rings (``virtio.net.rx_deliver``) and the (fake) uplink.

Input: ``cfg u8, base u16, ram[..16 KiB]``; ``cfg``: bit 0 mergeable RX buffers,
bit 1 EVENT_IDX, bit 2 a second memory region ending at 2**64 - 4096, bits 3-5
the queue size (1 << (n % 5)), bit 6 b and c take NEEDS_CSUM, bit 7 c is down.
Ring layout (every ring at most 16 entries): ``RINGS`` offsets, desc at +0,
avail at +0x100, used at +0x140; ring addresses are front-end (UVA) addresses
``UVA + offset``, descriptors are guest-physical (region at GPA 0).

Invariants: nothing escapes ``drain_tx`` (a broken ring is ``GuestError``,
caught and counted by the data path); C and pure Python leave the same RAM, the
same indices, counters, drops, broken queues and frames on the wire.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from typing import Any

from .common import IdleLoop, Reader, WireSink, check


def _load_fastpath() -> None:
    path = os.environ.get("FUZZ_FASTPATH")
    if not path:
        return
    loader = importlib.machinery.ExtensionFileLoader("vhost_ipvlan._fastpath", path)
    spec = importlib.util.spec_from_file_location("vhost_ipvlan._fastpath", path, loader=loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    sys.modules["vhost_ipvlan._fastpath"] = mod


_load_fastpath()

from vhost_ipvlan.daemon import fastpath  # noqa: E402
from vhost_ipvlan.daemon.datapath import PortDatapath  # noqa: E402
from vhost_ipvlan.daemon.device import NetDevice  # noqa: E402
from vhost_ipvlan.drops import counts  # noqa: E402
from vhost_ipvlan.errors import FrontendError  # noqa: E402
from vhost_ipvlan.switch.port import Port  # noqa: E402
from vhost_ipvlan.vhost_user import codec  # noqa: E402
from vhost_ipvlan.virtio.memory import GuestMemory, Region  # noqa: E402
from vhost_ipvlan.virtio.virtqueue import SplitQueue  # noqa: E402

FASTPATH = fastpath.ext
RAM = 0x4000
UVA = 0x7F00_0000_0000
HIGH_GPA = (1 << 64) - 0x2000
HIGH_UVA = 0x7E00_0000_0000
RINGS = {("a", "tx"): 0x000, ("b", "rx"): 0x200, ("c", "rx"): 0x400, ("a", "rx"): 0x600}
MASTER_MAC = bytes.fromhex("020000000001")
GUESTS = {
    "a": (bytes.fromhex("02000000000a"), [bytes([10, 0, 0, 10]), bytes.fromhex("fd00" + "00" * 13 + "10")]),
    "b": (bytes.fromhex("02000000000b"), [bytes([10, 0, 0, 11]), bytes.fromhex("fd00" + "00" * 13 + "11")]),
    "c": (bytes.fromhex("02000000000c"), [bytes([10, 0, 0, 12])]),
}


def _high_gpa() -> int:
    """The highest region the codec lets a front-end declare (what SET_MEM_TABLE accepts)."""
    for gpa in (HIGH_GPA, HIGH_GPA - 0x1000):
        region = codec.MEM_REGION.pack(gpa, 0x2000, HIGH_UVA, 0)
        msg = codec.Message(codec.Request.SET_MEM_TABLE, 1, codec.MEM_HEADER.pack(1, 0) + region, [0])
        try:
            codec.mem_table(msg)
        except FrontendError:
            continue
        return gpa
    raise AssertionError("the codec refuses every high region")


def _run(cfg: int, base: int, ram: bytes, fast: Any) -> dict[str, Any]:
    buf = bytearray(RAM)
    buf[: len(ram)] = ram
    regions = [Region(0, RAM, UVA, memoryview(buf))]
    high = bytearray(0x2000)
    if cfg & 4:
        regions.append(Region(_high_gpa(), len(high), HIGH_UVA, memoryview(high)))
    mem = GuestMemory(regions)
    num = 1 << ((cfg >> 3 & 7) % 5)
    event_idx = bool(cfg & 2)
    port = Port("fuzz", MASTER_MAC, "l2", "bridge")
    uplink = WireSink()
    dp = PortDatapath(port, uplink, IdleLoop())
    for name, (mac, addrs) in GUESTS.items():
        slave = port.add_slave(name, addrs, mac=mac)
        dev = dp.devices[name] = NetDevice(slave, dp)
        dev.mergeable = bool(cfg & 1)
        dev.takes_csum = bool(cfg & 0x40)
        for (guest, which), off in RINGS.items():
            if guest != name:
                continue
            q = SplitQueue(mem, num, UVA + off, UVA + off + 0x100, UVA + off + 0x140,
                           base if which == "tx" else 0, event_idx=event_idx)
            if which == "tx":
                dev.tx, dev.tx_enabled = q, True
            else:
                dev.rx, dev.rx_enabled = q, True
        slave.up = dev.rx is not None and not (name == "c" and cfg & 0x80)
    saved = fastpath.ext
    fastpath.ext = fast
    try:
        dp.devices["a"].drain_tx()
    finally:
        fastpath.ext = saved
    out: dict[str, Any] = {"ram": bytes(buf), "high": bytes(high), "uplink": uplink.sent}
    for name, dev in dp.devices.items():
        out[name] = (dev.counters(), counts(dev.drops), dev.slave.drop_counts(), dev.tx is None, dev.rx is None,
                     [(q.last_avail, q.used_idx) for q in (dev.tx, dev.rx) if q is not None])
    return out


def test_one_input(data: bytes) -> None:
    r = Reader(data)
    cfg = r.u8()
    base = r.u16()
    ram = r.take(RAM)
    pure = _run(cfg, base, ram, None)
    if FASTPATH is not None:
        fast = _run(cfg, base, ram, FASTPATH)
        if fast != pure:
            diff = sorted(k for k in pure if pure[k] != fast[k])
            detail = {k: (fast[k], pure[k]) for k in diff if k not in ("ram", "high")}
            check(False, f"C and Python disagree on {diff}: (C, Python) {detail}")
