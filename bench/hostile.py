#!/usr/bin/env python3
"""Bounded cost, proven: the worst inputs of the hostile-input audit through the real data path.

    .venv/bin/python bench/hostile.py [--rounds 3] [--scenarios a,b] [--modes c,pure] [--json]
                                      [--cut 5] [--idle 4] [--list]

Each scenario runs on an in-process port (``tests/support/hostile.py``: the real
``PortDatapath``/``NetDevice``/switch, a real ``Session`` over memfd guest RAM, fake
guests): a well-behaved pair (guest a sends UDP to guest b), ``--idle`` idle guests
with RX buffers posted, and guest h, which writes the hostile input into its own
rings (or the wire sends it: ``WireUplink``). Every scenario runs in its own worker
process, with the C accelerator (``c``) and without it (``pure``:
``VHOST_IPVLAN_PURE=1``), ``--rounds`` times; each round builds fresh ports and measures:

- **worst frame**: the longest single daemon call that handles one frame
  (``device.BURST`` set to 1: one TX chain drained, or one frame read from the wire);
- **worst burst**: the longest single daemon call at the normal burst size (one
  ``drain_tx`` of h, or one read of the uplink), what one event-loop callback costs;
- **share**: the pair's frames per second of daemon time alone, then with h
  flooding, the daemon serving one burst of each in turn (a saturated event loop:
  every source always ready), compared with the same beside an ordinary flood
  (``control-plain``: "vs ord"; below 0.5, h takes the pair more than twice what a
  guest sending ordinary full-size frames takes).

Each call is timed twice: ``held``, how long it held the event loop (elapsed time
minus the time the thread sat runnable but preempted, from schedstat; waiting for
another thread counts, work a helper thread does meanwhile does not), which the
verdicts use since on a shared machine elapsed time mostly measures the scheduler;
and ``wall``, elapsed time, what the other guests waited here.

A call that runs longer than ``--cut`` seconds is interrupted (``BurstCut``, a
BaseException raised by SIGALRM) and reported as ">= cut"; that round's port is
thrown away. A guest error that breaks h's queue is an outcome ("queue broken (tx)"),
and so is a set-up the daemon refuses ("refused: ..."); neither stops the benchmark.
Aim (issue 10): no frame > 1 ms, no burst > 10 ms, and the pair keeps its share.
Needs no root (``l3-unresolved`` is skipped without it: it needs a network
namespace for real next-hop lookups). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import ipaddress
import json
import os
import platform
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.support.frontend import UVA_BASE  # noqa: E402
from tests.support.hostile import HostilePort  # noqa: E402
from vhost_ipvlan.daemon import device, fastpath  # noqa: E402
from vhost_ipvlan.drops import DropReason, counts  # noqa: E402
from vhost_ipvlan.errors import VhostIpvlanError  # noqa: E402
from vhost_ipvlan.virtio import net  # noqa: E402
from vhost_ipvlan.virtio.virtqueue import VRING_DESC_F_INDIRECT, VRING_DESC_F_WRITE  # noqa: E402

FRAME_AIM = 1e-3
BURST_AIM = 10e-3
SHARE_AIM = 0.5  # the pair keeps at least half of what it keeps beside an ordinary flood
GOOD_FRAMES = 128  # frames guest a queues per turn
MAX_TABLE = 32768  # the largest indirect table the audit used (virtio's MAX_QUEUE_SIZE)

# --- addresses ---------------------------------------------------------------------------


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


A_MAC, B_MAC, H_MAC = _mac("02:00:00:00:00:0a"), _mac("02:00:00:00:00:0b"), _mac("02:00:00:00:00:66")
A4, B4, H4 = _ip("10.0.0.10"), _ip("10.0.0.11"), _ip("10.0.0.66")
A6, B6, H6 = _ip("fd00::10"), _ip("fd00::11"), _ip("fd00::66")
OUT_MAC = _mac("02:00:00:00:00:fe")  # a host on the wire (the gateway)
OUT4 = _ip("198.51.100.1")
L3_PREFIX = "10.99"  # l3-unresolved: the master's on-link /16 in its namespace
BROADCAST = b"\xff" * 6

# --- frames --------------------------------------------------------------------------------


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def eth(dst: bytes, src: bytes, etype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", etype) + payload


def ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, *, options: bytes = b"", ttl: int = 64) -> bytes:
    ihl = 5 + len(options) // 4
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 4 * ihl + len(payload), 0, 0, ttl, proto, 0, src, dst)
    hdr += options
    return hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:] + payload


def udp4_frame(dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, size: int) -> bytes:
    """An Ethernet frame of ``size`` bytes carrying UDP (checksum 0, as allowed in IPv4)."""
    body = bytes(max(0, size - 14 - 20 - 8))
    udp = struct.pack("!HHHH", 1234, 5678, 8 + len(body), 0) + body
    return eth(dst_mac, src_mac, 0x0800, ipv4(src, dst, 17, udp))


def ipv6(src: bytes, dst: bytes, nh: int, payload: bytes, hlim: int = 255) -> bytes:
    return struct.pack("!IHBB", 0x60000000, len(payload), nh, hlim) + src + dst + payload


def icmp6(src: bytes, dst: bytes, body: bytes) -> bytes:
    """``body`` is the ICMPv6 message with a zero checksum; returns it checksummed."""
    pseudo = src + dst + struct.pack("!I3xB", len(body), 58)
    c = _csum(pseudo + body)
    return body[:2] + struct.pack("!H", c) + body[4:]


def arp_request(src_mac: bytes, src_ip: bytes, target: bytes) -> bytes:
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + src_mac + src_ip + bytes(6) + target
    return eth(BROADCAST, src_mac, 0x0806, arp + bytes(18))


def neighbour_solicitation(src_mac: bytes, src: bytes, target: bytes) -> bytes:
    group = bytes.fromhex("ff0200000000000000000001ff") + target[13:]
    body = struct.pack("!BBHI", 135, 0, 0, 0) + target + struct.pack("!BB", 1, 1) + src_mac
    return eth(b"\x33\x33" + group[12:], src_mac, 0x86DD, ipv6(src, group, 58, icmp6(src, group, body)))


def toggle_records(alen: int, count: int, joined: int) -> list[tuple[int, bytes]]:
    """``joined`` groups kept (MODE_IS_EXCLUDE), then one group joined and left ``count`` times."""
    def group(i: int) -> bytes:
        if alen == 4:
            return bytes((239, 1, i >> 8, i & 0xFF))
        return bytes.fromhex("ff0e" + "00" * 10) + struct.pack("!I", i)

    records = [(2, group(1000 + i)) for i in range(joined)]
    records += [(4 if k % 2 == 0 else 3, group(1)) for k in range(count)]
    return records


def igmpv3_report(src_mac: bytes, src: bytes, records: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(struct.pack("!BBH", rtype, 0, 0) + g for rtype, g in records)
    igmp = struct.pack("!BBHHH", 0x22, 0, 0, 0, len(records)) + body
    igmp = igmp[:2] + struct.pack("!H", _csum(igmp)) + igmp[4:]
    ip = ipv4(src, _ip("224.0.0.22"), 2, igmp, options=b"\x94\x04\x00\x00", ttl=1)
    return eth(_mac("01:00:5e:00:00:16"), src_mac, 0x0800, ip)


def mldv2_report(src_mac: bytes, src: bytes, records: list[tuple[int, bytes]]) -> bytes:
    dst = _ip("ff02::16")
    body = b"".join(struct.pack("!BBH", rtype, 0, 0) + g for rtype, g in records)
    mld = icmp6(src, dst, struct.pack("!BBHHH", 143, 0, 0, 0, len(records)) + body)
    hbh = bytes((58, 0, 5, 2, 0, 0, 1, 0))  # next header ICMPv6, Router Alert, PadN
    return eth(_mac("33:33:00:00:00:16"), src_mac, 0x86DD, ipv6(src, dst, 0, hbh + mld, hlim=1))


def gso_tcp4_frame(dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, size: int) -> tuple[bytes, bytes]:
    """(virtio_net_hdr, frame): a ``size``-byte TCPv4 super-frame the guest asks to segment."""
    payload = bytes(size - 14 - 20 - 20)
    tcp = struct.pack("!HHIIBBHHH", 1234, 80, 1, 0, 5 << 4, 0x18, 65535, 0, 0) + payload
    frame = eth(dst_mac, src_mac, 0x0800, ipv4(src, dst, 6, tcp))
    hdr = struct.pack("<BBHHHHH", net.HDR_F_NEEDS_CSUM, net.GSO_TCPV4, 54, 1448, 34, 16, 0)
    return hdr, frame


# --- interrupting a call that runs too long --------------------------------------------------


class BurstCut(BaseException):
    """Raised by SIGALRM inside a daemon call that ran past ``--cut`` (a BaseException, so that
    a data path catching Exception does not swallow it)."""


_armed = False


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    if _armed:
        raise BurstCut()


class Took(NamedTuple):
    wall: float  # seconds elapsed: what the other guests waited, on this machine as loaded as it is
    held: float  # seconds the call held the event loop: elapsed minus the time this thread sat preempted
    cut: bool  # interrupted at ``--cut`` seconds
    escaped: str = ""  # the type of an exception that escaped the daemon call (it would reach the event loop)


class _Preempted:
    """Nanoseconds the calling thread has spent runnable but not running (schedstat's run-queue
    wait); None without /proc/<pid>/task/<tid>/schedstat."""

    def __init__(self) -> None:
        try:
            self.fd: int | None = os.open(f"/proc/self/task/{threading.get_native_id()}/schedstat", os.O_RDONLY)
        except OSError:
            self.fd = None

    def __call__(self) -> int | None:
        if self.fd is None:
            return None
        return int(os.pread(self.fd, 128, 0).split()[1])


_preempted: _Preempted | None = None


def timed(fn: Callable[[], None], cut: float) -> Took:
    """Run ``fn`` and time it."""
    global _armed, _preempted
    if _preempted is None:
        _preempted = _Preempted()
    done = False
    escaped = ""
    w0 = _preempted()
    c0 = time.thread_time()
    t0 = time.perf_counter()
    try:
        _armed = True
        signal.setitimer(signal.ITIMER_REAL, cut)
        try:
            fn()
        except Exception as e:
            escaped = type(e).__name__
        done = True
    except BurstCut:
        pass
    finally:
        _armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
    wall = time.perf_counter() - t0
    cpu = time.thread_time() - c0
    w1 = _preempted()
    held = cpu if w0 is None or w1 is None else max(cpu, wall - (w1 - w0) / 1e9)
    return Took(wall, held, not done, escaped)


@contextmanager
def burst_size(n: int) -> Iterator[None]:
    saved = device.BURST
    device.BURST = n
    try:
        yield
    finally:
        device.BURST = saved


# --- the rig: a port with the pair, idle guests and h ------------------------------------------


class Rig:
    """One port for one phase of a round: the pair a -> b, h, and ``idle`` idle guests."""

    def __init__(self, scenario: Scenario, idle: int) -> None:
        guests = [
            ("a", [A4, A6], A_MAC, True),
            ("b", [B4, B6], B_MAC, True),
            ("h", [H4, H6], H_MAC, scenario.h_posts_rx),
        ]
        guests += [(f"i{k}", [_ip(f"10.0.1.{k + 1}")], _mac(f"02:00:00:00:01:{k + 1:02x}"), True)
                   for k in range(idle)]
        self.port = HostilePort(guests, mode=scenario.mode, regions=scenario.regions())
        self.a = self.port.frontends["a"]
        self.b = self.port.frontends["b"]
        self.h = self.port.frontends["h"]
        self.adev = self.port.device("a")
        self.hdev = self.port.device("h")
        self.good = udp4_frame(B_MAC, A_MAC, A4, B4, 64)
        self.handled = 0  # hostile frames the daemon took (chains used, wire frames read)
        self.escaped: dict[str, int] = {}  # exceptions out of daemon calls, by type

    def close(self) -> None:
        self.port.close()

    def note(self, took: Took) -> None:
        if took.escaped:
            self.escaped[took.escaped] = self.escaped.get(took.escaped, 0) + 1

    def broken(self) -> str:
        """Which of h's queues a guest error broke ('' if none)."""
        which = [name for name, q in (("rx", self.hdev.rx), ("tx", self.hdev.tx)) if q is None]
        if which:
            return "+".join(which)
        return "a queue" if self.hdev.drops[DropReason.QUEUE_BROKEN] else ""

    def good_turn(self, cut: float) -> tuple[Took, int]:
        """Guest b empties its ring, guest a queues a turn's frames, the daemon drains a
        (timed), b counts what it got from a. (the daemon's time, frames)."""
        self.b.receive()
        self.a.reclaim_tx()
        for _ in range(min(GOOD_FRAMES, len(self.a.txq.free))):
            self.a.transmit(self.good)
        took = timed(self.adev.drain_tx, cut)
        self.note(took)
        self.a.reclaim_tx()
        got = sum(1 for _, f in self.b.receive() if f[26:30] == A4 and f[12:14] == b"\x08\x00")
        return took, got


# --- scenarios ---------------------------------------------------------------------------------


class Scenario:
    """One hostile input. ``prepare`` writes h's memory once per port; ``arm`` is the guest's
    (or the wire's) side before each daemon call; ``call`` is the timed daemon call."""

    name = ""
    what = ""
    kind = "tx"  # "tx": one drain_tx of h; "wire": one read of the uplink
    mode = "l2"
    h_posts_rx = True
    descs_per_frame = 1
    needs_root = False

    def __init__(self) -> None:
        self.heads: list[int] = []

    def prepare(self, rig: Rig) -> None:
        raise NotImplementedError

    def regions(self) -> dict[str, list[tuple[int, int, int, int]]]:
        """Extra memory regions per guest name (gpa, size, uva, offset) for SET_MEM_TABLE."""
        return {}

    def finish(self) -> None:
        """Release what ``prepare`` took besides the port."""

    def arm(self, rig: Rig) -> None:
        if self.kind == "tx":
            rig.h.top_up(rig.h.txq, self.heads)
        else:
            q = rig.port.uplink.queue
            while len(q) < device.BURST:
                q.append(self.wire_frame(rig))

    def wire_frame(self, rig: Rig) -> bytes:
        raise NotImplementedError

    def call(self, rig: Rig) -> Callable[[], None]:
        if self.kind == "tx":
            return rig.hdev.drain_tx
        return rig.port.uplink_burst

    def taken(self, rig: Rig) -> int:
        """Hostile frames the daemon took since the last call (chains used, wire frames read)."""
        if self.kind == "tx":
            return rig.h.forget_used(rig.h.txq)
        n = rig.port.uplink.read - rig.handled
        rig.handled = rig.port.uplink.read
        return n

    # helpers for TX scenarios
    def single(self, rig: Rig, data: bytes, count: int = 256) -> None:
        """Every TX head one descriptor holding ``data`` (12-byte header + frame)."""
        gpa = rig.h.scratch(len(data))
        rig.h.write(gpa, data)
        rig.h.set_heads(rig.h.txq, range(count), gpa, len(data), 0)
        self.heads = list(range(count))

    def indirect(self, rig: Rig, lengths: list[int], data: bytes = b"", flags: int = 0) -> tuple[int, int]:
        """A shared indirect table of ``lengths``-long descriptors over ``data``; (gpa, bytes)."""
        data_gpa = rig.h.scratch(max(1, len(data)))
        rig.h.write(data_gpa, data)
        table = rig.h.scratch(16 * len(lengths))
        size = rig.h.write_chain(table, lengths, data_gpa, flags)
        return table, size


class ControlPlain(Scenario):
    name = "control-plain"
    what = "reference: an ordinary flood, 1514-byte UDP frames to the wire, one descriptor each"

    def prepare(self, rig: Rig) -> None:
        self.single(rig, bytes(net.HDR_LEN) + udp4_frame(OUT_MAC, H_MAC, H4, OUT4, 1514))


class IndirectZero(Scenario):
    name = "r1-indirect-32k"
    what = "r1: every TX chain an indirect table of 32768 zero-length descriptors"
    descs_per_frame = MAX_TABLE + 1

    def prepare(self, rig: Rig) -> None:
        table, size = self.indirect(rig, [0] * MAX_TABLE)
        rig.h.set_heads(rig.h.txq, range(256), table, size, VRING_DESC_F_INDIRECT)
        self.heads = list(range(256))


class IndirectOneByte(Scenario):
    name = "indirect-256x1B"
    what = "TX chains: an indirect table of 256 (the queue size) 1-byte descriptors, 244-byte frame to the wire"
    descs_per_frame = 257

    def prepare(self, rig: Rig) -> None:
        data = bytes(net.HDR_LEN) + udp4_frame(OUT_MAC, H_MAC, H4, OUT4, 244)
        table, size = self.indirect(rig, [1] * len(data), data)
        rig.h.set_heads(rig.h.txq, range(256), table, size, VRING_DESC_F_INDIRECT)
        self.heads = list(range(256))


class DirectOneByte(Scenario):
    name = "chain-256x1B-same-head"
    what = "one direct chain of 256 1-byte descriptors (the whole table); every avail entry names it"
    descs_per_frame = 256

    def prepare(self, rig: Rig) -> None:
        data = bytes(net.HDR_LEN) + udp4_frame(OUT_MAC, H_MAC, H4, OUT4, 244)
        data_gpa = rig.h.scratch(len(data))
        rig.h.write(data_gpa, data)
        rig.h.write_chain(rig.h.txq.desc, [1] * rig.h.txq.num, data_gpa)
        self.heads = [0]


class Runts(Scenario):
    name = "runts"
    what = "zero-length and 1..11-byte chains (shorter than the virtio header), one descriptor each"

    def prepare(self, rig: Rig) -> None:
        gpa = rig.h.scratch(64)
        rig.h.write(gpa, b"\xff" * 64)
        for i in range(256):
            rig.h.txq.set_desc(i, gpa, i % 12, 0)
        self.heads = list(range(256))


class AvailOverrun(Scenario):
    name = "avail-overrun"
    what = "the avail index runs one entry more than the queue size ahead"

    def prepare(self, rig: Rig) -> None:
        self.single(rig, bytes(net.HDR_LEN) + udp4_frame(OUT_MAC, H_MAC, H4, OUT4, 60))

    def arm(self, rig: Rig) -> None:
        q = rig.h.txq
        rig.h.set_avail_idx(q, q.used_idx() + q.num + 1)


class MrgZeroSelf(Scenario):
    name = "r2-mrg-zero-self"
    what = "r2: 256 zero-capacity indirect RX chains (32768 descriptors each), MRG_RXBUF; h sends to itself"
    h_posts_rx = False
    descs_per_frame = 256 * (MAX_TABLE + 1)

    def prepare(self, rig: Rig) -> None:
        table, size = self.indirect(rig, [0] * MAX_TABLE, flags=VRING_DESC_F_WRITE)
        rig.h.set_heads(rig.h.rxq, range(256), table, size, VRING_DESC_F_INDIRECT)
        self.rx_heads = list(range(256))
        rig.h.top_up(rig.h.rxq, self.rx_heads)
        if self.kind == "tx":
            self.single(rig, bytes(net.HDR_LEN) + udp4_frame(H_MAC, H_MAC, H4, H4, 60))

    def arm(self, rig: Rig) -> None:
        rig.h.top_up(rig.h.rxq, self.rx_heads)
        super().arm(rig)


class MrgZeroWire(MrgZeroSelf):
    name = "r2-mrg-zero-wire"
    what = "r2: the same RX ring; broadcast ARP requests from the wire (flooded to every guest)"
    kind = "wire"

    def wire_frame(self, rig: Rig) -> bytes:
        return bytes(net.HDR_LEN) + arp_request(OUT_MAC, _ip("10.0.0.1"), _ip("10.0.0.250"))


class MrgOneByteSelf(MrgZeroSelf):
    name = "r2-mrg-1B-self"
    what = ("r2 within a queue-size cap: 256 indirect RX chains of 256 descriptors holding 1 byte in all "
            "(255 empty + 1 byte), MRG_RXBUF; h sends 1514-byte frames to itself")
    descs_per_frame = 256 * 257

    def prepare(self, rig: Rig) -> None:
        table, size = self.indirect(rig, [0] * 255 + [1], bytes(1), flags=VRING_DESC_F_WRITE)
        rig.h.set_heads(rig.h.rxq, range(256), table, size, VRING_DESC_F_INDIRECT)
        self.rx_heads = list(range(256))
        rig.h.top_up(rig.h.rxq, self.rx_heads)
        self.single(rig, bytes(net.HDR_LEN) + udp4_frame(H_MAC, H_MAC, H4, H4, 1514))

    def arm(self, rig: Rig) -> None:
        rig.h.forget_used(rig.h.rxq)
        super().arm(rig)


class IgmpToggle(Scenario):
    name = "r3-igmpv3-toggle"
    what = ("r3: 64 KB IGMPv3 reports of 8100 records toggling one group (the first of every 256 frames "
            "joins 255 other groups first)")
    count = 8100

    def report(self, joined: int) -> bytes:
        return igmpv3_report(H_MAC, H4, toggle_records(4, self.count - joined, joined))

    def prepare(self, rig: Rig) -> None:
        q = rig.h.txq
        for head, joined in ((0, 255), (1, 0)):
            data = bytes(net.HDR_LEN) + self.report(joined)
            assert len(data) <= net.MAX_BUFFER, len(data)
            gpa = rig.h.scratch(len(data))
            rig.h.write(gpa, data)
            q.set_desc(head, gpa, len(data), 0)
        self.heads = [0] + [1] * (q.num - 1)


class MldToggle(IgmpToggle):
    name = "r3-mldv2-toggle"
    what = ("r3: 64 KB MLDv2 reports (after Hop-by-Hop) of 3250 records toggling one group (the first of "
            "every 256 frames joins 255 other groups first)")
    count = 3250

    def report(self, joined: int) -> bytes:
        return mldv2_report(H_MAC, H6, toggle_records(16, self.count - joined, joined))


class MaxSplit(Scenario):
    name = "gso-64k-256-descs"
    what = "maximal GSO TCP frames (64 KB) in an indirect table of 256 descriptors of 256 bytes, to the wire"
    descs_per_frame = 257

    def prepare(self, rig: Rig) -> None:
        hdr, frame = gso_tcp4_frame(OUT_MAC, H_MAC, H4, OUT4, 65536 - net.HDR_LEN)
        data = hdr + frame
        table, size = self.indirect(rig, [256] * (len(data) // 256), data)
        rig.h.set_heads(rig.h.txq, range(256), table, size, VRING_DESC_F_INDIRECT)
        self.heads = list(range(256))


class ArpFlood(Scenario):
    name = "arp-flood"
    what = "broadcast ARP requests for 256 different unowned targets (flooded to every guest and the wire)"

    def frames(self) -> list[bytes]:
        return [arp_request(H_MAC, H4, _ip(f"10.0.2.{k}")) for k in range(256)]

    def prepare(self, rig: Rig) -> None:
        frames = self.frames()
        slot = max(len(f) for f in frames) + net.HDR_LEN
        gpa = rig.h.scratch(slot * len(frames))
        for k, f in enumerate(frames):
            data = bytes(net.HDR_LEN) + f
            rig.h.write(gpa + k * slot, data)
            rig.h.txq.set_desc(k, gpa + k * slot, len(data), 0)
        self.heads = list(range(len(frames)))


class NsFlood(ArpFlood):
    name = "ns-flood"
    what = "IPv6 neighbour solicitations for 256 different unowned targets (solicited-node multicast)"

    def frames(self) -> list[bytes]:
        return [neighbour_solicitation(H_MAC, H6, _ip(f"fd00::2:{k:x}")) for k in range(256)]


class L3Unresolved(Scenario):
    name = "l3-unresolved"
    what = "l3: UDP to ever new on-link destinations nobody answers (real next-hop lookups, own netns)"
    mode = "l3"
    needs_root = True

    def prepare(self, rig: Rig) -> None:
        from vhost_ipvlan.daemon.routing import Router

        index = int(os.environ["HOSTILE_L3_INDEX"])
        self.loop: asyncio.AbstractEventLoop | None = None
        if "loop" in inspect.signature(Router).parameters:  # lookups answered on the event loop
            self.loop = asyncio.new_event_loop()
            router = Router(index, self.loop)  # type: ignore[call-arg, unused-ignore]
        else:  # lookups block the caller
            router = Router(index)  # type: ignore[call-arg, unused-ignore]
        rig.port.dp.router = router
        self.router = router
        self.next = 0
        self.data_gpa = rig.h.scratch(256 * 128)
        self.heads = list(range(256))

    def finish(self) -> None:
        router = getattr(self, "router", None)
        if router is not None:
            router.close()
        loop = getattr(self, "loop", None)
        if loop is not None:
            loop.close()

    def arm(self, rig: Rig) -> None:
        if self.loop is not None:  # one turn of the event loop: answers from the netlink worker go in
            self.loop.call_soon(self.loop.stop)
            self.loop.run_forever()
        q = rig.h.txq
        want = q.num - rig.h.outstanding(q)
        for _ in range(want):
            k = self.next
            self.next += 1
            dst = bytes((10, 99, 1 + (k >> 8) % 250, k & 0xFF))
            data = bytes(net.HDR_LEN) + udp4_frame(OUT_MAC, H_MAC, H4, dst, 60)
            head = q.avail_idx % q.num
            gpa = self.data_gpa + 128 * head
            rig.h.write(gpa, data)
            q.set_desc(head, gpa, len(data), 0)
            rig.h.offer(q, [head])


class RegionEnd64(Scenario):
    name = "region-end-2^64"
    what = ("audit r16: h's memory table has a region ending exactly at 2^64 (as the C accelerator cannot "
            "store); guest a sends to h")

    def regions(self) -> dict[str, list[tuple[int, int, int, int]]]:
        return {"h": [(2**64 - 4096, 4096, UVA_BASE + (1 << 40), 0)]}

    def prepare(self, rig: Rig) -> None:
        self.frame = udp4_frame(H_MAC, A_MAC, A4, H4, 64)

    def arm(self, rig: Rig) -> None:
        rig.a.reclaim_tx()
        for _ in range(len(rig.a.txq.free) - GOOD_FRAMES):  # leave room for the pair's turn
            rig.a.transmit(self.frame)

    def call(self, rig: Rig) -> Callable[[], None]:
        return rig.adev.drain_tx

    def taken(self, rig: Rig) -> int:
        return len(rig.h.receive())


SCENARIOS: dict[str, type[Scenario]] = {cls.name: cls for cls in (
    ControlPlain, IndirectZero, IndirectOneByte, DirectOneByte, Runts, AvailOverrun, MrgZeroSelf, MrgZeroWire,
    MrgOneByteSelf, IgmpToggle, MldToggle, MaxSplit, ArpFlood, NsFlood, L3Unresolved, RegionEnd64,
)}

# --- one round ------------------------------------------------------------------------------


@dataclass
class Round:
    scenario: str
    path: str
    round: int
    outcome: str = "ok"
    frame_worst: float = 0.0  # wall
    frame_worst_held: float = 0.0
    frame_typical: float = 0.0  # held
    frame_cut: bool = False
    frame_calls: int = 0
    burst_worst: float = 0.0  # wall
    burst_worst_held: float = 0.0
    burst_cut: bool = False
    bursts: int = 0
    frames: int = 0
    pair_alone: float = 0.0
    pair_with: float = 0.0
    ratio: float = 0.0
    notes: list[str] = field(default_factory=list)
    drops: dict[str, int] = field(default_factory=dict)
    h_tx_bytes: int = 0
    escaped: dict[str, int] = field(default_factory=dict)


@dataclass
class Knobs:
    cut: float = 5.0
    idle: int = 4
    frame_calls: int = 20
    phase_seconds: float = 1.0


@contextmanager
def rig_for(cls: type[Scenario], knobs: Knobs, r: Round) -> Iterator[tuple[Rig, Scenario]]:
    scenario = cls()
    rig = Rig(scenario, knobs.idle)
    try:
        scenario.prepare(rig)
        yield rig, scenario
    finally:
        for kind, n in rig.escaped.items():
            r.escaped[kind] = r.escaped.get(kind, 0) + n
        try:
            scenario.finish()
        finally:
            rig.close()


def _frame_phase(cls: type[Scenario], knobs: Knobs, r: Round) -> None:
    times: list[float] = []
    with burst_size(1), rig_for(cls, knobs, r) as (rig, sc):
        t_end = time.monotonic() + knobs.phase_seconds
        while r.frame_calls < knobs.frame_calls and (r.frame_calls == 0 or time.monotonic() < t_end):
            sc.arm(rig)
            took = timed(sc.call(rig), knobs.cut)
            rig.note(took)
            r.frame_calls += 1
            times.append(took.held)
            r.frame_worst = max(r.frame_worst, took.wall)
            r.frame_worst_held = max(r.frame_worst_held, took.held)
            r.frame_typical = statistics.median(times)
            if took.cut:
                r.frame_cut = True
                return
            r.frames += sc.taken(rig)
            if rig.broken():
                return


def _share_phase(cls: type[Scenario], knobs: Knobs, r: Round) -> None:
    with rig_for(cls, knobs, r) as (rig, sc):
        # the pair alone
        good_t, good_n = 0.0, 0
        t_end = time.monotonic() + knobs.phase_seconds / 2
        while time.monotonic() < t_end:
            took, n = rig.good_turn(knobs.cut)
            good_t += took.held
            good_n += n
        r.pair_alone = good_n / good_t if good_t else 0.0
        # the pair with h flooding: one burst of each in turn
        spent, good_n = 0.0, 0
        t_end = time.monotonic() + knobs.phase_seconds
        while r.bursts < 2 or time.monotonic() < t_end:
            sc.arm(rig)
            took = timed(sc.call(rig), knobs.cut)
            rig.note(took)
            r.bursts += 1
            r.burst_worst = max(r.burst_worst, took.wall)
            r.burst_worst_held = max(r.burst_worst_held, took.held)
            spent += took.held
            if took.cut:
                r.burst_cut = True
                break
            r.frames += sc.taken(rig)
            took, n = rig.good_turn(knobs.cut)
            spent += took.held
            good_n += n
        r.pair_with = good_n / spent if spent else 0.0
        r.ratio = r.pair_with / r.pair_alone if r.pair_alone else 0.0
        broken = rig.broken()
        if broken:
            r.outcome = f"queue broken ({broken})"
        r.drops = dict(sorted(counts(rig.hdev.drops).items()))
        r.h_tx_bytes = rig.hdev.counters()["tx_bytes"]


def run_round(name: str, knobs: Knobs, index: int) -> Round:
    path = "c" if fastpath.accelerated() else "pure"
    r = Round(name, path, index)
    cls = SCENARIOS[name]
    try:
        _frame_phase(cls, knobs, r)
        _share_phase(cls, knobs, r)
    except BurstCut:  # a late alarm outside a daemon call
        r.notes.append("cut outside a daemon call")
    except VhostIpvlanError as e:  # the daemon refused the set-up (or a step of it)
        r.outcome = f"refused: {type(e).__name__}: {e}"[:160]
    except Exception as e:
        r.outcome = f"bench error: {type(e).__name__}: {e}"[:160]
    if r.burst_cut or r.frame_cut:
        r.outcome = "cut" if r.outcome == "ok" else r.outcome
    if r.escaped:
        escaped = "exception out of the data path: " + ", ".join(sorted(r.escaped))
        r.outcome = escaped if r.outcome == "ok" else f"{r.outcome}; {escaped}"
    return r


def worker(name: str, rounds: int, knobs: Knobs) -> int:
    import logging

    logging.disable(logging.CRITICAL)  # the daemon's per-queue warnings; the outcome says it
    signal.signal(signal.SIGALRM, _on_alarm)
    for i in range(rounds):
        r = run_round(name, knobs, i)
        print("ROUND " + json.dumps(asdict(r)), flush=True)
    return 0


# --- the driver: one worker process per (scenario, path) ---------------------------------------------


@contextmanager
def l3_namespace() -> Iterator[tuple[list[str], dict[str, str]]]:
    """A network namespace with a veth pair, the master hbm0 holding 10.99.0.1/16 (nobody answers
    for the rest of the /16): (command prefix, extra environment)."""
    ns = f"hostile-bench-{os.getpid()}"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    ip("netns", "add", ns)
    try:
        ip("-n", ns, "link", "add", "hbm0", "type", "veth", "peer", "name", "hbm1")
        ip("-n", ns, "addr", "add", f"{L3_PREFIX}.0.1/16", "dev", "hbm0")
        ip("-n", ns, "link", "set", "hbm0", "up")
        ip("-n", ns, "link", "set", "hbm1", "up")
        out = subprocess.run(["ip", "-n", ns, "-o", "link", "show", "hbm0"], check=True, capture_output=True,
                             text=True, timeout=30).stdout
        index = out.split(":", 1)[0].strip()
        yield ["ip", "netns", "exec", ns], {"HOSTILE_L3_INDEX": index}
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def run_worker(name: str, path: str, rounds: int, knobs: Knobs) -> list[Round]:
    env = dict(os.environ)
    env.pop("VHOST_IPVLAN_PURE", None)
    if path == "pure":
        env["VHOST_IPVLAN_PURE"] = "1"
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--rounds", str(rounds),
            "--cut", str(knobs.cut), "--idle", str(knobs.idle), "--frame-calls", str(knobs.frame_calls),
            "--phase-seconds", str(knobs.phase_seconds)]
    limit = rounds * (3 * knobs.phase_seconds + 2 * knobs.cut + 60) + 60
    with contextlib_nullable(SCENARIOS[name].needs_root) as (prefix, extra):
        env.update(extra)
        try:
            proc = subprocess.run(prefix + argv, env=env, capture_output=True, text=True, timeout=limit)
            out, err, rc = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            err, rc = f"worker timed out after {limit:.0f} s", -1
    done = [Round(**json.loads(line[6:])) for line in out.splitlines() if line.startswith("ROUND ")]
    if rc != 0 or len(done) < rounds:
        tail = (err.strip().splitlines() or [f"exit status {rc}"])[-1]
        done.append(Round(name, path, len(done), outcome=f"worker failed: {tail}"[:160]))
    return done


@contextmanager
def contextlib_nullable(needs_ns: bool) -> Iterator[tuple[list[str], dict[str, str]]]:
    if not needs_ns:
        yield [], {}
        return
    with l3_namespace() as got:
        yield got


# --- the table -------------------------------------------------------------------------------


@dataclass
class Row:
    """One scenario and path over its rounds: for each "worst", the median over the rounds of
    each round's worst, and the max of all rounds; ``held`` (the loop held) and ``wall`` (elapsed)."""

    scenario: str
    path: str
    rounds: int
    outcome: str
    frames: int
    descs_per_frame: int
    frame_typical_ms: float
    frame_held_median_ms: float
    frame_held_max_ms: float
    frame_wall_max_ms: float
    frame_cut: bool
    burst_held_median_ms: float
    burst_held_max_ms: float
    burst_wall_max_ms: float
    burst_cut: bool
    pair_alone_kfps: float
    pair_with_kfps: float
    ratio_alone: float
    vs_ordinary: float = 0.0
    verdict: str = ""
    notes: list[str] = field(default_factory=list)


def _median_max_ms(xs: list[float]) -> tuple[float, float]:
    return (statistics.median(xs) * 1e3, max(xs) * 1e3) if xs else (0.0, 0.0)


def summarise(name: str, path: str, rounds: list[Round]) -> Row:
    measured = [r for r in rounds if not r.outcome.startswith(("worker failed", "refused", "bench error"))]
    outcomes = sorted({r.outcome for r in rounds})
    fmed, fmax = _median_max_ms([r.frame_worst_held for r in measured])
    bmed, bmax = _median_max_ms([r.burst_worst_held for r in measured])
    alone = statistics.median([r.pair_alone for r in measured]) if measured else 0.0
    with_h = statistics.median([r.pair_with for r in measured]) if measured else 0.0
    notes = sorted({n for r in measured for n in r.notes})
    negative = min((r.h_tx_bytes for r in measured), default=0)
    if negative < 0:
        notes.append(f"h tx_bytes went negative: {negative} (audit 11)")
    drops: dict[str, int] = {}
    for r in measured:
        for k, v in r.drops.items():
            drops[k] = drops.get(k, 0) + v
    escaped: dict[str, int] = {}
    for r in measured:
        for k, v in r.escaped.items():
            escaped[k] = escaped.get(k, 0) + v
    if escaped:
        notes.append("exceptions out of daemon calls: " + ", ".join(f"{k} x{v}" for k, v in sorted(escaped.items())))
    if drops:
        top = sorted(drops.items(), key=lambda kv: -kv[1])[:3]
        notes.append("h drops: " + ", ".join(f"{k} {v}" for k, v in top))
    return Row(
        scenario=name, path=path, rounds=len(measured), outcome="; ".join(outcomes),
        frames=sum(r.frames for r in measured), descs_per_frame=SCENARIOS[name].descs_per_frame,
        frame_typical_ms=statistics.median([r.frame_typical for r in measured]) * 1e3 if measured else 0.0,
        frame_held_median_ms=fmed, frame_held_max_ms=fmax,
        frame_wall_max_ms=max((r.frame_worst for r in measured), default=0.0) * 1e3,
        frame_cut=any(r.frame_cut for r in measured),
        burst_held_median_ms=bmed, burst_held_max_ms=bmax,
        burst_wall_max_ms=max((r.burst_worst for r in measured), default=0.0) * 1e3,
        burst_cut=any(r.burst_cut for r in measured),
        pair_alone_kfps=alone / 1e3, pair_with_kfps=with_h / 1e3, ratio_alone=with_h / alone if alone else 0.0,
        notes=notes,
    )


def judge(rows: list[Row]) -> None:
    """The share yardstick (beside the ordinary flood of the same path) and the verdicts (on held time)."""
    control = {r.path: r for r in rows if r.scenario == ControlPlain.name and r.rounds}
    for r in rows:
        ref = control.get(r.path)
        r.vs_ordinary = r.pair_with_kfps / ref.pair_with_kfps if ref is not None and ref.pair_with_kfps else 0.0
        verdict = []
        if not r.rounds:
            verdict.append("refused" if r.outcome.startswith("refused") else "NOT MEASURED")
        else:
            if r.frame_held_max_ms > FRAME_AIM * 1e3 or r.frame_cut:
                verdict.append("frame>1ms")
            if r.burst_held_max_ms > BURST_AIM * 1e3 or r.burst_cut:
                verdict.append("burst>10ms")
            if ref is not None and r.vs_ordinary < SHARE_AIM:
                verdict.append("share")
            if "exception out of the data path" in r.outcome:
                verdict.append("exception")
        r.verdict = " ".join(verdict) or "ok"


def _ms(v: float, cut: bool = False) -> str:
    return (">=" if cut else "") + (f"{v:.3f}" if v < 1 else f"{v:.1f}" if v < 100 else f"{v:.0f}")


def print_table(rows: list[Row]) -> None:
    head = (f"{'':<29}{'':>7}{'':>8}  {'frame ms (held)':^22} {'wall':>6}  {'burst ms (held)':^13} {'wall':>6}  "
            f"{'pair kfps':^13} {'vs':>4}")
    cols = (f"{'scenario':<24}{'path':<5}{'frames':>7}{'desc/fr':>8}  {'typ':>6} {'worst':>7} {'max':>7} {'max':>6}  "
            f"{'worst':>6} {'max':>6} {'max':>6}  {'alone':>6} {'with':>6} {'ord':>4}  verdict [outcome]")
    print(head)
    print(cols)
    print("-" * len(cols))
    for r in rows:
        outcome = "" if r.outcome == "ok" else f" [{r.outcome}]"
        print(f"{r.scenario:<24}{r.path:<5}{r.frames:>7}{r.descs_per_frame:>8}  "
              f"{_ms(r.frame_typical_ms):>6} {_ms(r.frame_held_median_ms):>7} "
              f"{_ms(r.frame_held_max_ms, r.frame_cut):>7} "
              f"{_ms(r.frame_wall_max_ms):>6}  "
              f"{_ms(r.burst_held_median_ms):>6} {_ms(r.burst_held_max_ms, r.burst_cut):>6} "
              f"{_ms(r.burst_wall_max_ms):>6}  "
              f"{r.pair_alone_kfps:>6.0f} {r.pair_with_kfps:>6.1f} {r.vs_ordinary:>4.2f}  {r.verdict}{outcome}")
        for note in r.notes:
            print(f"{'':<29}{note}")


def markdown_table(rows: list[Row]) -> str:
    """The rows as a markdown table (for bench/README.md)."""
    out = ["| scenario | path | frame ms held: typ / worst / max | burst ms held: worst / max | burst ms wall max "
           "| pair kfps alone / with | vs ord | verdict [outcome] |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        outcome = "" if r.outcome == "ok" else f" [{r.outcome}]"
        out.append(
            f"| {r.scenario} | {r.path} | {_ms(r.frame_typical_ms)} / {_ms(r.frame_held_median_ms)} / "
            f"{_ms(r.frame_held_max_ms, r.frame_cut)} | {_ms(r.burst_held_median_ms)} / "
            f"{_ms(r.burst_held_max_ms, r.burst_cut)} | {_ms(r.burst_wall_max_ms)} | {r.pair_alone_kfps:.0f} / "
            f"{r.pair_with_kfps:.1f} | {r.vs_ordinary:.2f} | {r.verdict}{outcome} |")
    return "\n".join(out)


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} x {model or platform.machine()}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="hostile inputs through the real data path: worst frame and burst")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--scenarios", default="", help="comma-separated names (default: all; see --list)")
    p.add_argument("--modes", default="c,pure", help="c (the C accelerator), pure (VHOST_IPVLAN_PURE=1)")
    p.add_argument("--cut", type=float, default=5.0, help="interrupt a daemon call after this many seconds")
    p.add_argument("--idle", type=int, default=4, help="idle guests besides the pair and h")
    p.add_argument("--frame-calls", type=int, default=20, help="single-frame calls per round (at most)")
    p.add_argument("--phase-seconds", type=float, default=1.0, help="seconds per measuring phase and round")
    p.add_argument("--json", action="store_true", help="also print the rows and every round as JSON")
    p.add_argument("--markdown", action="store_true", help="also print the rows as a markdown table")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    knobs = Knobs(args.cut, args.idle, args.frame_calls, args.phase_seconds)
    if args.worker:
        return worker(args.worker, args.rounds, knobs)
    if args.list:
        for name, cls in SCENARIOS.items():
            print(f"{name:<24}{cls.what}")
        return 0
    names = [n for n in args.scenarios.split(",") if n] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(unknown)} (see --list)")
    if ControlPlain.name not in names:  # the yardstick of the share column
        names.insert(0, ControlPlain.name)
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in ("c", "pure") for m in modes):
        p.error("--modes takes c and/or pure")
    if "c" in modes and not fastpath.accelerated():
        print("hostile.py: the C accelerator is not built (or VHOST_IPVLAN_PURE=1): pure Python only",
              file=sys.stderr)
        modes = [m for m in modes if m != "c"] or ["pure"]
    rows: list[Row] = []
    every: list[dict[str, Any]] = []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load0 = os.getloadavg()[0]
    for name in names:
        if SCENARIOS[name].needs_root and os.geteuid() != 0:
            print(f"hostile.py: {name} skipped: needs root (a network namespace)", file=sys.stderr)
            continue
        for mode in modes:
            rounds = run_worker(name, mode, args.rounds, knobs)
            rows.append(summarise(name, mode, rounds))
            every += [asdict(r) for r in rounds]
            print(f"[hostile] {name} {mode}: done", file=sys.stderr, flush=True)
    judge(rows)
    meta = {"started": started, "machine": machine(), "rounds": args.rounds, "cut": args.cut, "idle": args.idle,
            "load_before": load0, "load_after": os.getloadavg()[0]}
    print(f"hostile.py: {started}, {meta['machine']}, {args.rounds} round(s), cut at {args.cut:g} s, "
          f"{args.idle} idle guests, load average {load0:.2f} -> {meta['load_after']:.2f}")
    print("frame: one daemon call handling one frame; burst: one call at the normal burst size. typ = the median "
          "call; worst = a round's worst, median over the rounds; max = over all rounds.")
    print("held = how long the call held the event loop (elapsed minus the time the thread sat preempted); "
          "wall = elapsed. pair kfps: the pair's frames per")
    print("second of held time alone / with h flooding (one burst each in turn); vs ord: 'with' over 'with' "
          f"beside the ordinary flood ({ControlPlain.name}).")
    print(f"Aim (verdict, on held): frame <= {FRAME_AIM * 1e3:g} ms, burst <= {BURST_AIM * 1e3:g} ms, "
          f"vs ord >= {SHARE_AIM:g}.")
    print_table(rows)
    if args.markdown:
        print(markdown_table(rows))
    if args.json:
        print(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows], "rounds": every}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
