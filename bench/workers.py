#!/usr/bin/env python3
"""Worker scaling: two guests on two masters, guest -> wire, ``workers = 1`` against ``workers = 2``.

    guest a (198.18.0.1...) == vhost-ipvlan == vim0 (ns host) <== veth ==> vio0 (ns out): dropped at ingress
    guest b (198.51.100.10) ==  (1 or 2   == vim1 (ns host) <== veth ==> vio1 (ns out): dropped at ingress
                                 workers)

The aim of issue 11: with two workers (two pairs of guests), the aggregate >= 1.6x of one
worker. On a 2-core machine the peers must leave both cores to the daemon, so the guests
are light front-ends (``tests/support/frontend.py``'s set-up, then a loop of their own, one
process each): a 1024-entry TX ring whose descriptors all hold the same UDP frame, every
one of them made available again as soon as the daemon has used it (one index store, a
kick when the daemon asks for kicks), then a 0.2 ms sleep; they never touch a frame. The
outside drops every frame at vio0/vio1's ingress (an nftables netdev chain, which also
counts them), so the wire costs the kernel's veth transmit and that drop, in the daemon's
``sendmmsg``. The figure: frames the two masters sent per second (the daemon's
``uplink_tx_packets``, read over the control socket at both ends of the window), and
the control API's latency (``stats``, every 20 ms during the window: p50, p99, max).

Rounds alternate ``workers = 1`` and ``workers = 2`` (a fresh daemon each); the table gives
the median and range of each and the ratio of the medians.

Usage: python bench/workers.py [--size 64] [--rounds 5] [--seconds 5] [--json]
Needs root (network namespaces).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.synchronize
import os
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402

from bench import ControlProbe, Result, log  # noqa: E402  (bench/bench.py)
from tests.support.frontend import _FENCE as FENCE  # noqa: E402
from tests.support.frontend import DriverQueue, FakeFrontend  # noqa: E402
from tests.support.lab import MASTER, MASTER2, SlaveSpec, TwoPortLab, sh  # noqa: E402
from vhost_ipvlan.control.client import Client  # noqa: E402
from vhost_ipvlan.virtio import net  # noqa: E402
from vhost_ipvlan.virtio.virtqueue import VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY  # noqa: E402

A_MAC, A_IP = "02:00:00:00:00:0a", "192.0.2.10"
B_MAC, B_IP = "02:00:00:00:00:0b", "198.51.100.10"
OUTSIDE_MAC = "02:00:00:00:99:99"  #: no host's: the outside drops the frames at ingress anyway
A2_MAC, A2_IP = "02:00:00:00:00:1a", "192.0.2.20"
B2_MAC, B2_IP = "02:00:00:00:00:1b", "198.51.100.20"
RING = 1024  #: the daemon's largest (session.MAX_RING_SIZE): the front-end may sleep longer
BUF = 2048
PASS_SLEEP = 0.0002  #: a front-end's sleep between passes (``--pass-sleep``)


def light_guest(path: str, frame: bytes | None, stop: multiprocessing.synchronize.Event,
                ready: multiprocessing.synchronize.Event, pass_sleep: float = PASS_SLEEP) -> None:
    """A light guest, set up as QEMU does: with ``frame``, a sender keeping every TX
    descriptor (each holding ``frame``) available; without, a receiver keeping every RX
    buffer available. Ring slot i holds descriptor i for good: the daemon uses them in
    order, so making them available again is one store of the avail index."""
    fe = FakeFrontend()
    rx = DriverQueue(fe.mem, 0, num=RING)
    tx = DriverQueue(fe.mem, rx.end, num=RING)
    fe.vqs = [rx, tx]
    fe.rxqs, fe.txqs = [rx], [tx]
    fe.rxq, fe.txq = rx, tx
    fe.buffers = (tx.end + 4095) & ~4095
    fe.connect(path)
    fe.setup()
    fe.sync()
    if frame is not None:
        q, kick = tx, fe.kick[1]
        data = bytes(net.HDR_LEN) + frame
        addr = fe.buffers + RING * BUF  # after the RX buffers
        fe.mem[addr : addr + len(data)] = data
        for i in range(RING):
            q.set_desc(i, addr, len(data), 0)
    else:
        q, kick = rx, fe.kick[0]
        for i in range(RING):
            q.set_desc(i, fe.buffers + i * BUF, BUF, VRING_DESC_F_WRITE)
    for i in range(RING):
        struct.pack_into("<H", fe.mem, q.avail + 4 + 2 * i, i)
    avail_idx = q.avail_idx if frame is None else 0
    ready.set()
    while not stop.is_set():
        used = q.used_idx()
        if (avail_idx - used) & 0xFFFF < RING:
            avail_idx = (used + RING) & 0xFFFF
            q.avail_idx = avail_idx
            q.publish_avail()  # one 16-bit store
            with FENCE:  # a full barrier between the avail index and used.flags, as a driver's
                pass
            if not q.used_flags() & VRING_USED_F_NO_NOTIFY:
                os.eventfd_write(kick, 1)
        time.sleep(pass_sleep)
    fe.close()


def frame_for(mac: str, ip: str, dst_mac: str, dst: str, size: int) -> bytes:
    f = bytes(Ether(src=mac, dst=dst_mac) / IP(src=ip, dst=dst) / UDP(sport=9, dport=9))
    return f + bytes(max(0, size - len(f)))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid``, all its threads (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: daemon CPU (cores busy) in each round's window, by (workers, round)
CPU: dict[tuple[int, int], float] = {}


def moved(client: Client, traffic: str) -> int:
    """Frames moved so far: sent by both masters (wire), or received by a2 and b2 (g2g)."""
    stats = client.call("stats")
    if traffic == "wire":
        return int(stats[MASTER]["uplink_tx_packets"]) + int(stats[MASTER2]["uplink_tx_packets"])
    return int(stats[MASTER]["slaves"]["a2"]["rx_packets"]) + int(stats[MASTER2]["slaves"]["b2"]["rx_packets"])


def run_one(workers: int, rnd: int, args: argparse.Namespace, base: Path) -> Result:
    work = Path(tempfile.mkdtemp(prefix=f"workers{workers}-{rnd}-", dir=base))
    res = Result(backend=f"workers={workers}", size=args.size, topology=args.traffic, ok=True, seconds=args.seconds)
    g2g = args.traffic == "g2g"
    first, second = [SlaveSpec("a", [f"{A_IP}/24"], A_MAC)], [SlaveSpec("b", [f"{B_IP}/24"], B_MAC)]
    if g2g:
        first.append(SlaveSpec("a2", [f"{A2_IP}/24"], A2_MAC))
        second.append(SlaveSpec("b2", [f"{B2_IP}/24"], B2_MAC))
    guests: list[tuple[str, bytes | None]] = [
        ("a", frame_for(A_MAC, A_IP, A2_MAC if g2g else OUTSIDE_MAC, A2_IP if g2g else "192.0.2.1", args.size)),
        ("b", frame_for(B_MAC, B_IP, B2_MAC if g2g else OUTSIDE_MAC, B2_IP if g2g else "198.51.100.1", args.size)),
        *((("a2", None), ("b2", None)) if g2g else ())]
    with TwoPortLab(work, first, second, workers=workers, ipv6=False) as lab:
        for dev in ("vio0", "vio1"):
            sh("ip", "netns", "exec", lab.out, "nft",
               f"table netdev drop_{dev} {{ chain c {{ type filter hook ingress device {dev} priority 0; "
               "counter drop; }; }")
        ctx = multiprocessing.get_context("fork")
        stop = ctx.Event()
        procs = []
        for name, frame in sorted(guests, key=lambda g: g[1] is not None):  # receivers first
            ready = ctx.Event()
            p = ctx.Process(target=light_guest, args=(str(lab.sock(name)), frame, stop, ready, args.pass_sleep),
                            daemon=True)
            p.start()
            procs.append((p, ready))
        try:
            for _, ready in procs:
                if not ready.wait(30):
                    raise SystemExit("workers.py: a front-end did not come up")
            assert lab.daemon is not None
            pid = lab.daemon.pid  # ip netns exec and taskset exec: the daemon itself
            with Client(lab.control) as client, ControlProbe(lab.control) as probe:
                time.sleep(args.warmup)
                n0, t0, c0 = moved(client, args.traffic), time.perf_counter(), cpu_seconds(pid)
                probe.measuring.set()
                time.sleep(args.seconds)
                probe.measuring.clear()
                n1, t1, c1 = moved(client, args.traffic), time.perf_counter(), cpu_seconds(pid)
                CPU[workers, rnd] = (c1 - c0) / (t1 - t0)
                probe.record(res)
            res.tx_pps = (n1 - n0) / (t1 - t0)
            res.tx_packets = n1 - n0
            lab.check_daemon()
        finally:
            stop.set()
            for p, _ in procs:
                p.join(10)
                if p.is_alive():
                    p.kill()
    log(f"round {rnd} workers={workers}: {res.tx_pps / 1e6:.3f} Mpps, control p99 {res.control_p99_ms:.1f} ms")
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64, help="frame size in bytes (default 64)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--traffic", choices=("wire", "g2g"), default="wire",
                   help="wire: a -> the wire, b -> the wire; g2g: a -> a2, b -> b2 (default wire)")
    p.add_argument("--pass-sleep", type=float, default=PASS_SLEEP,
                   help=f"a front-end's sleep between passes over its ring, s (default {PASS_SLEEP})")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("workers.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="vhost-ipvlan-workers-") as tmp:
        for rnd in range(args.rounds):
            for workers in (1, 2):
                results.append(run_one(workers, rnd, args, Path(tmp)))
    what = "guest -> wire, two guests" if args.traffic == "wire" else "guest -> guest, two pairs of guests"
    print(f"{what} on two masters, {args.size} B frames, {args.rounds} rounds of "
          f"{args.seconds:g} s (median, range)")
    print("| workers | Mpps | daemon CPU (cores) | daemon CPU per frame (ns) | control stats p50 / p99 / max (ms) |")
    print("| --- | --- | --- | --- | --- |")
    med = {}
    for workers in (1, 2):
        rs = [r for r in results if r.backend == f"workers={workers}"]
        pps = [r.tx_pps / 1e6 for r in rs]
        med[workers] = statistics.median(pps)
        p99 = statistics.median(r.control_p99_ms for r in rs)
        cores = statistics.median(CPU[workers, rnd] for rnd in range(args.rounds))
        per_frame = statistics.median(CPU[workers, rnd] / r.tx_pps * 1e9 for rnd, r in enumerate(rs) if r.tx_pps)
        print(f"| {workers} | {med[workers]:.3f} ({min(pps):.3f}-{max(pps):.3f}) | {cores:.2f} | {per_frame:.0f} | "
              f"{statistics.median(r.control_p50_ms for r in rs):.1f} / {p99:.1f} / "
              f"{max(r.control_max_ms for r in rs):.1f} |")
    print(f"two workers / one: {med[2] / med[1]:.2f}x")
    if args.json:
        print(json.dumps([asdict(r) for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
