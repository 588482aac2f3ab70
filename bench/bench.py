#!/usr/bin/env python3
"""Packet-rate benchmark: testpmd's C vhost backend vs vhost-ipvlan.

Two virtio-user front-ends, A (198.18.0.1, 02:00:00:00:00:0a) and B (198.18.0.2,
02:00:00:00:00:0b), both played by dpdk-testpmd, exchange frames A -> B through

  (a) "reference": a third testpmd with ``net_vhost0`` (A's socket) and ``net_vhost1``
      (B's socket) in io forwarding mode;
  (b) "ipvlan": ``vhost-ipvlan serve --config FILE`` in a network namespace with a veth
      master (mode l2, flag bridge, slaves a and b on A's and B's sockets).

B's received packets are read at t0 (after a warm-up) and t1; rx pps = delta / (t1 - t0).
See bench/README.md for the topologies (``loop``, the default, ``pingpong`` and
``split``) and why. ``--rounds N`` alternates the back-ends N times and gives each one's
median and range, and the ratio of the medians; ``--queue-size default`` leaves the
ring size to DPDK (256).

Usage: python bench/bench.py [--sizes 64,1500] [--seconds 10] [--rounds N] [--topology loop|pingpong|split]
                             [--queue-size N|default] [--json] [--backends ...] [--idle-slaves N]
                             [--control-probe] [--sample S] [--no-machine-probe]
The window is read every ``--sample`` seconds with ``bench/c2c.c`` beside it, and each
back-end's samples are split by the machine's mode (``MachineProbe``).
Needs root (network namespaces) and dpdk-testpmd.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.support.lab import DaemonError, Lab, SlaveSpec  # noqa: E402
from tests.support.testpmd import (  # noqa: E402
    Testpmd,
    TestpmdError,
    reference_backend,
    testpmd_path,
    virtio_user_vdev,
)
from tests.support.wait import wait_until  # noqa: E402
from vhost_ipvlan.control.client import Client  # noqa: E402

A_MAC = "02:00:00:00:00:0a"
B_MAC = "02:00:00:00:00:0b"
A_IP = "198.18.0.1"
B_IP = "198.18.0.2"
PREFIX = 15

# CPU placement (2 cores): everything on the front-end side on core 0, the switch
# under test (testpmd vhost backend or the vhost-ipvlan daemon) alone on core 1.
FRONTEND_LCORES = "0@0,1@0"
BACKEND_LCORES = "0@1,1@1"
DAEMON_CPUS = "1"

# frames kept in flight by the loop topology (bursts of 32 injected from A)
LOOP_BURSTS = 16


@dataclass
class Result:
    backend: str
    size: int
    topology: str
    ok: bool
    rx_pps: float = 0.0
    tx_pps: float = 0.0
    rx_packets: int = 0
    tx_packets: int = 0
    seconds: float = 0.0
    error: str = ""
    # 1-minute load average before and after: other busy processes skew everything
    load_before: float = 0.0
    load_after: float = 0.0
    # --control-probe: the control API's ``stats`` answered during the run (ms; calls)
    control_p50_ms: float = 0.0
    control_p99_ms: float = 0.0
    control_max_ms: float = 0.0
    control_calls: int = 0
    # the window read every ``--sample`` seconds: (seconds, rx pps, machine probe ns or 0)
    samples: list[tuple[float, float, float]] = field(default_factory=list)


class ControlProbe:
    """Calls the daemon's control API (``stats``, the largest answer) every ``interval``
    seconds from a thread, timing each answer given while ``measuring`` is set (by
    ``_measure``, for its window: the frames flow at full rate)."""

    #: the probe of the run in progress, for ``_measure``
    current: ControlProbe | None = None

    def __init__(self, path: Path, interval: float = 0.02) -> None:
        self.path, self.interval = path, interval
        self.times: list[float] = []
        self.error = ""
        self.measuring = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ControlProbe:
        ControlProbe.current = self
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        ControlProbe.current = None
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        try:
            with Client(self.path) as c:
                while not self._stop.wait(self.interval):
                    if not self.measuring.is_set():
                        continue
                    t0 = time.perf_counter()
                    c.call("stats")
                    if self.measuring.is_set():
                        self.times.append(time.perf_counter() - t0)
        except Exception as e:  # the run's result says so; the frames' figure stands
            self.error = f"{type(e).__name__}: {e}"

    def record(self, res: Result) -> None:
        if self.error:
            log(f"control probe failed: {self.error}")
        t = sorted(self.times)
        if t:
            res.control_calls = len(t)
            res.control_p50_ms = 1e3 * t[len(t) // 2]
            res.control_p99_ms = 1e3 * t[min(len(t) - 1, int(len(t) * 0.99))]
            res.control_max_ms = 1e3 * t[-1]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def ipvlan_backend(work: Path, idle: int = 0, workers: int = 1,
                   busy_poll_us: int = 0, adaptive_poll_us: int | None = None) -> Iterator[tuple[Path, Path, Path]]:
    """The daemon in a Lab (IPv6 off on the veth: no ND/MLD noise); yields A's and B's sockets.
    ``idle`` more slaves (never connected) show that the per-frame cost does not grow with them;
    ``workers``: ``[daemon] workers`` (with 2, the one port runs on a worker thread);
    ``busy_poll_us``, ``adaptive_poll_us``: those ``[daemon]`` settings (None: the default)."""
    slaves = [SlaveSpec("a", [f"{A_IP}/{PREFIX}"], A_MAC), SlaveSpec("b", [f"{B_IP}/{PREFIX}"], B_MAC)]
    slaves += [SlaveSpec(f"i{i}", [f"10.{64 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}/8"],
                         f"52:54:00:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}") for i in range(idle)]
    head = "[daemon]\n" + (f"workers = {workers}\n" if workers != 1 else "") + (
        f"busy_poll_us = {busy_poll_us}\n" if busy_poll_us else "") + (
        f"adaptive_poll_us = {adaptive_poll_us}\n" if adaptive_poll_us is not None else "")
    with Lab(work, slaves, ipv6=False, cpus=DAEMON_CPUS, config_head=head) as lab:
        yield lab.sock("a"), lab.sock("b"), lab.control
        lab.check_daemon()


#: the machine probe's round trip (ns) that splits its modes: 54-80 ns in the fast one,
#: 320-340 ns in the slow one, on this machine alone or beside a bench (bench/README.md)
PROBE_SPLIT_NS = 200.0
#: above this the probe's threads were put off by the scheduler: the sample has no mode
PROBE_UNREAD_NS = 5000.0


def machine_mode(ns: float) -> str | None:
    """A sample's machine mode, "fast" or "slow", from the probe; None if it was not read."""
    if ns <= 0 or ns > PROBE_UNREAD_NS:
        return None
    return "fast" if ns < PROBE_SPLIT_NS else "slow"


class MachineProbe:
    """``bench/c2c.c`` beside a measurement window: the time one cache line takes to go from
    CPU 0 to CPU 1 and back, measured for ``duty`` of every second.

    The machine has modes lasting seconds in which that round trip costs 3-5 times more,
    and every back-end's rate falls with it (bench/README.md, "The machine's modes");
    reading the probe beside each second of a round says which mode the second was in."""

    def __init__(self, exe: Path, duty: float = 0.02) -> None:
        self.exe, self.duty = exe, duty
        self.readings: list[tuple[float, float]] = []  # (monotonic time read, ns)
        self._proc: subprocess.Popen[str] | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> MachineProbe:
        self._proc = subprocess.Popen([str(self.exe), "3600", str(self.duty)], stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        self._thread.join(10)
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            m = re.search(r": ([0-9.]+) ns", line)
            if m:
                self.readings.append((time.monotonic(), float(m.group(1))))

    def between(self, t0: float, t1: float) -> float:
        """The median round trip read in (t0, t1], in ns: 0 if none was read there, or if
        the readings fall in different machine modes (``machine_mode``) and so say none."""
        got = [ns for t, ns in self.readings if t0 < t <= t1 and machine_mode(ns) is not None]
        if not got or len({machine_mode(ns) for ns in got}) > 1:
            return 0.0
        return statistics.median(got)


def build_machine_probe(base: Path) -> Path | None:
    """Compile bench/c2c.c into ``base``; None (and a line saying why) without a C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        log("no C compiler: the machine probe (bench/c2c.c) is off")
        return None
    exe = base / "c2c"
    done = subprocess.run([cc, "-O2", "-pthread", "-o", str(exe), str(REPO_ROOT / "bench" / "c2c.c")],
                          capture_output=True, text=True)
    if done.returncode != 0:
        log(f"bench/c2c.c did not build, the machine probe is off: {done.stderr.strip()}")
        return None
    return exe


def positive_seconds(text: str) -> float:
    """``--sample``: seconds, more than 0."""
    try:
        v = float(text)
    except ValueError:
        v = 0.0
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected seconds (more than 0), got {text!r}")
    return v


def add_probe_args(p: argparse.ArgumentParser) -> None:
    """``--sample`` and ``--no-machine-probe``, for every bench that uses ``_measure``."""
    p.add_argument("--sample", type=positive_seconds, default=1.0,
                   help="read the receiver every SECONDS in the window (default 1): the rate's modes")
    p.add_argument("--no-machine-probe", dest="machine_probe", action="store_false",
                   help="do not run bench/c2c.c beside the windows (it takes 2%% of each CPU)")


def prepare_probe(args: argparse.Namespace, base: Path) -> None:
    """Sets ``args.probe_exe`` for ``_measure``: the built probe, or None."""
    args.probe_exe = build_machine_probe(base) if args.machine_probe else None


@dataclass
class Window:
    """What ``_measure`` read: the whole window's deltas and its samples."""

    rx_pps: float
    tx_pps: float
    rx: int
    tx: int
    seconds: float
    samples: list[tuple[float, float, float]]


def _measure(read: Testpmd, rx_port: int, send: Testpmd, tx_port: int, args: argparse.Namespace) -> Window:
    """Warm up, then B rx / A tx deltas over ``args.seconds``, B's rx read every
    ``args.sample`` seconds (with the machine probe beside it when ``args.probe_exe``)."""
    # warm-up: wait until B receives anything, then let it settle
    wait_until(
        lambda: read.port_stats()[rx_port].rx_packets > 0,
        max(10.0, args.warmup),
        interval=0.1,
        what="B to receive frames",
        fatal=(TestpmdError,),
    )
    with contextlib.ExitStack() as stack:
        machine = stack.enter_context(MachineProbe(args.probe_exe)) if args.probe_exe else None
        time.sleep(args.warmup)
        r0 = read.port_stats()[rx_port].rx_packets
        s0 = send.port_stats()[tx_port].tx_packets
        t0 = time.monotonic()
        probe = ControlProbe.current
        if probe is not None:
            probe.measuring.set()
        samples: list[tuple[float, float, float]] = []
        t, r = t0, r0
        end = t0 + args.seconds
        while (now := time.monotonic()) < end - 1e-3:
            time.sleep(min(args.sample, end - now))
            rn, tn = read.port_stats()[rx_port].rx_packets, time.monotonic()
            samples.append((round(tn - t0, 3), (rn - r) / (tn - t), machine.between(t, tn) if machine else 0.0))
            t, r = tn, rn
        if probe is not None:
            probe.measuring.clear()
        r1 = read.port_stats()[rx_port].rx_packets
        s1 = send.port_stats()[tx_port].tx_packets
        dt = time.monotonic() - t0
    return Window((r1 - r0) / dt, (s1 - s0) / dt, r1 - r0, s1 - s0, dt, samples)


def big_frame_args(size: int) -> list[str]:
    """testpmd options for frames that do not fit a default 2 KB mbuf (one mbuf per frame)."""
    if size <= 2000:
        return []
    return [f"--mbuf-size={min(65535, size + 256)}", f"--max-pkt-len={size}"]


def run_loop(
    work: Path, a_sock: Path, b_sock: Path, size: int, args: argparse.Namespace
) -> Window:
    """One testpmd with both front-ends (port 0 = A, port 1 = B) on one forwarding lcore.

    A injects LOOP_BURSTS x 32 frames (txonly, to B's MAC/IP), then
    - ``loop``: io forwarding sends every frame B receives out of A again, unchanged:
      a closed loop of valid A -> B frames;
    - ``pingpong``: 5tswap with ``--port-topology=loop`` sends every frame a port
      receives back out of the same port, MACs, IPs and UDP ports swapped: A -> B -> A
      -> ..., both directions through the switch (what a run-to-completion guest does);
    with no two busy-polling threads sharing a core.
    """
    pingpong = args.topology == "pingpong"
    fe = Testpmd(
        "frontends",
        work,
        vdevs=[
            virtio_user_vdev(0, a_sock, A_MAC, args.queue_size),
            virtio_user_vdev(1, b_sock, B_MAC, args.queue_size),
        ],
        lcores=FRONTEND_LCORES,
        mem_mb=args.mem_mb,
        forward_mode="5tswap" if pingpong else "io",
        eth_peers={0: B_MAC, 1: A_MAC},
        txpkts=size,
        tx_ip=(A_IP, B_IP),
        total_mbufs=32768 if size <= 2000 else 4096,
        extra_args=["--no-flush-rx", *(["--port-topology=loop"] if pingpong else []), *big_frame_args(size)],
    )
    with fe:
        fe.wait_link_up(0)
        fe.wait_link_up(1)
        # inject from A only (B's txonly frames would carry A's source address)
        fe.cmd("set portlist 0")
        fe.cmd(f"start tx_first {LOOP_BURSTS}")
        fe.cmd("stop")
        fe.cmd("set portlist 0,1")
        fe.cmd("start")
        return _measure(fe, 1, fe, 0, args)


def run_split(
    work: Path, a_sock: Path, b_sock: Path, size: int, args: argparse.Namespace
) -> Window:
    """A (txonly) and B (rxonly) as two testpmd processes, both on core 0."""
    b = Testpmd(
        "B",
        work,
        vdevs=[virtio_user_vdev(0, b_sock, B_MAC, args.queue_size)],
        lcores=FRONTEND_LCORES,
        mem_mb=args.mem_mb,
        forward_mode="rxonly",
    )
    a = Testpmd(
        "A",
        work,
        vdevs=[virtio_user_vdev(0, a_sock, A_MAC, args.queue_size)],
        lcores=FRONTEND_LCORES,
        mem_mb=args.mem_mb,
        forward_mode="txonly",
        eth_peers={0: B_MAC},
        txpkts=size,
        tx_ip=(A_IP, B_IP),
    )
    with b, a:
        a.wait_link_up(0)
        b.wait_link_up(0)
        b.cmd("start")
        a.cmd("start")
        try:
            return _measure(b, 0, a, 0, args)
        finally:
            a.cmd("stop")
            b.cmd("stop")


def run_one(backend: str, size: int, args: argparse.Namespace, base: Path, rnd: int = 0) -> Result:
    res = Result(backend=backend, size=size, topology=args.topology, ok=False)
    res.load_before = os.getloadavg()[0]
    work = base / f"{backend}-{size}-{rnd}"
    work.mkdir(parents=True, exist_ok=True)
    probe: ControlProbe | None = None
    try:
        with contextlib.ExitStack() as stack:
            if backend == "reference":
                a_sock, b_sock = work / "a.sock", work / "b.sock"
                stack.enter_context(
                    reference_backend("ref-backend", work, [a_sock, b_sock], lcores=BACKEND_LCORES, mem_mb=args.mem_mb)
                )
            else:
                a_sock, b_sock, control = stack.enter_context(
                    ipvlan_backend(work, args.idle_slaves, args.workers, args.busy_poll_us,
                                   args.adaptive_poll_us))
                if args.control_probe:
                    probe = stack.enter_context(ControlProbe(control))
            runner = run_split if args.topology == "split" else run_loop
            w = runner(work, a_sock, b_sock, size, args)
        res.ok = True
        res.rx_pps, res.tx_pps, res.rx_packets, res.tx_packets, res.seconds = w.rx_pps, w.tx_pps, w.rx, w.tx, w.seconds
        res.samples = w.samples
        if w.rx == 0:
            res.ok = False
            res.error = "B received nothing in the window"
    except (TestpmdError, DaemonError, TimeoutError, OSError) as e:
        res.error = f"{type(e).__name__}: {e}"
        log(f"{backend} {size}B failed: {res.error} (logs in {work})")
    res.load_after = os.getloadavg()[0]
    if probe is not None:
        probe.record(res)
    return res


def placement(topology: str) -> dict[str, str]:
    fe = (
        "A (txonly) and B (rxonly): two testpmd, each main+forwarding lcore on core 0"
        if topology == "split"
        else f"one testpmd ({'5tswap, port-topology loop' if topology == 'pingpong' else 'io'}), "
        "ports A and B, main+forwarding lcore on core 0"
    )
    return {
        "frontends": fe,
        "reference": f"testpmd net_vhost0/1 io, --lcores {BACKEND_LCORES} (core 1)",
        "ipvlan": f"vhost-ipvlan serve, taskset -c {DAEMON_CPUS} (core 1)",
    }


@dataclass
class Rounds:
    """One back-end's good rounds at one size: rx and tx pps medians and the rx range."""

    rx: float
    tx: float
    lo: float
    hi: float
    n: int


def rounds(results: list[Result], backend: str, size: int) -> Rounds | None:
    ok = [r for r in results if r.backend == backend and r.size == size and r.ok]
    if not ok:
        return None
    rx = [r.rx_pps for r in ok]
    return Rounds(statistics.median(rx), statistics.median(r.tx_pps for r in ok), min(rx), max(rx), len(ok))


def ratio(results: list[Result], size: int) -> float | None:
    """ipvlan rx pps / reference rx pps at ``size`` (the medians of their rounds), when both ran."""
    ref, ipv = rounds(results, "reference", size), rounds(results, "ipvlan", size)
    if ref is None or ipv is None or ref.rx <= 0:
        return None
    return ipv.rx / ref.rx


def by_mode(results: list[Result], backend: str, size: int, mode: str) -> list[float]:
    """Every sample's rx pps, over one back-end's good rounds at one size, in one machine mode."""
    return [pps for r in results if r.backend == backend and r.size == size and r.ok
            for _, pps, ns in r.samples if machine_mode(ns) == mode]


def mode_ratio(results: list[Result], size: int, mode: str, anchor: str = "reference",
               other: str = "ipvlan") -> tuple[float, float, int, int] | None:
    """(``anchor``'s median, ``other``'s median, their sample counts) in one machine mode,
    when both have samples in it and the anchor's median is not 0."""
    ref, ipv = by_mode(results, anchor, size, mode), by_mode(results, other, size, mode)
    if not ref or not ipv or statistics.median(ref) <= 0:
        return None
    return statistics.median(ref), statistics.median(ipv), len(ref), len(ipv)


def modes_json(results: list[Result], sizes: list[int], anchor: str = "reference",
               other: str = "ipvlan") -> dict[str, dict[str, float | None]]:
    """``ratio_by_machine_mode`` of the JSON output: per size and mode, other / anchor."""
    return {str(size): {mode: (q[1] / q[0] if (q := mode_ratio(results, size, mode, anchor, other)) else None)
                        for mode in ("fast", "slow")} for size in sizes}


def fmt_samples(r: Result) -> str:
    """Each sample's rx rate (M) with the machine probe's round trip (ns), if it ran."""
    return " ".join(f"{pps / 1e6:.2f}" + (f"@{ns:.0f}" if ns else "") for _, pps, ns in r.samples)


def fmt_pps(v: float) -> str:
    return f"{v / 1e6:.3f} M" if v >= 1e5 else f"{v / 1e3:.1f} k"


def print_modes(results: list[Result], sizes: list[int], anchor: str = "reference", other: str = "ipvlan") -> None:
    """Each back-end's median rate in each machine mode, from the samples the probe read.
    The samples of one round are not independent: a mode's figures resting on few rounds
    say less than their sample counts suggest (the rounds are given)."""
    if not any(ns for r in results for _, _, ns in r.samples):
        return
    print(f"  by machine mode (bench/c2c.c beside each sample; fast: a round trip under {PROBE_SPLIT_NS:.0f} ns):"
          " rx pps, median of the samples [samples/rounds]")

    def rounds_in(backend: str, size: int, mode: str) -> int:
        return sum(1 for r in results if r.backend == backend and r.size == size and r.ok
                   and any(machine_mode(ns) == mode for _, _, ns in r.samples))

    for size in sizes:
        for mode in ("fast", "slow"):
            n = {b: f"{len(by_mode(results, b, size, mode))}/{rounds_in(b, size, mode)}" for b in (anchor, other)}
            got = mode_ratio(results, size, mode, anchor, other)
            if got is None:
                print(f"{size:>6}   {mode}: {anchor} [{n[anchor]}], {other} [{n[other]}]: no ratio")
                continue
            ref, ipv, _, _ = got
            print(f"{size:>6}   {mode}: {anchor} {fmt_pps(ref)} [{n[anchor]}], {other} {fmt_pps(ipv)} [{n[other]}]"
                  f" | {ipv / ref:.4f}")


def print_table(results: list[Result], sizes: list[int], topology: str, queue_size: int | None) -> None:
    print(f"topology: {topology}, ring size {queue_size or 'DPDK default (256)'}")
    for k, v in placement(topology).items():
        print(f"  {k:10s} {v}")
    many = any(g.n > 1 for b in ("reference", "ipvlan") for s in sizes if (g := rounds(results, b, s)))
    if many:
        print("  rx pps: median (range) xrounds; tx pps: median")
    hdr = f"{'size':>6} | {'ref rx pps':>28} {'ref tx pps':>12} | {'ipvlan rx pps':>28} "
    hdr += f"{'ipvlan tx pps':>13} | {'b/a':>7}"
    print(hdr)
    print("-" * len(hdr))
    for size in sizes:
        cells = [f"{size:>6}"]
        for b, w in (("reference", 12), ("ipvlan", 13)):
            got = rounds(results, b, size)
            if got is None:
                ran = any(x.backend == b and x.size == size for x in results)
                cells.append(f"{'FAILED' if ran else 'skipped':>28} {'':>{w}}")
            else:
                rx = f"{fmt_pps(got.rx)} ({fmt_pps(got.lo)}-{fmt_pps(got.hi)}) x{got.n}" if many else fmt_pps(got.rx)
                cells.append(f"{rx:>28} {fmt_pps(got.tx):>{w}}")
        q = ratio(results, size)
        print(" | ".join(cells) + f" | {'-' if q is None else f'{q:.4f}':>7}")
    print_modes(results, sizes)
    for r in results:
        if not r.ok:
            lines = [ln for ln in r.error.splitlines() if ln.strip()] or ["failed"]
            why = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
            print(f"{r.backend} {r.size}B: {why}")
    for size in sizes:
        probed = [r for r in results if r.size == size and r.control_calls]
        if probed:
            p99 = statistics.median(r.control_p99_ms for r in probed)
            print(f"{size:>6}   control API stats under load: p50 "
                  f"{statistics.median(r.control_p50_ms for r in probed):.2f} ms, p99 {p99:.2f} ms "
                  f"(median of {len(probed)} runs), max {max(r.control_max_ms for r in probed):.2f} ms, "
                  f"{sum(r.control_calls for r in probed)} calls")
    busy = max((max(r.load_before, r.load_after) for r in results), default=0.0)
    if busy > 1.5:
        print(
            f"warning: load average reached {busy:.2f} on 2 cores during the runs; "
            "other processes competed for the CPUs, figures are low and noisy"
        )


def queue_size(text: str) -> int | None:
    """``--queue-size``: a ring size, or ``default`` (None: DPDK's own, 256)."""
    if text == "default":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a ring size or 'default', got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1] if __doc__ else None)
    p.add_argument("--sizes", default="64,1500", help="frame sizes in bytes (default 64,1500)")
    p.add_argument("--seconds", type=float, default=10.0, help="measurement window (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up before t0 (default 2)")
    p.add_argument("--json", action="store_true", help="also print the results as JSON")
    p.add_argument(
        "--backends",
        default="reference,ipvlan",
        help="comma-separated: reference, ipvlan (default both)",
    )
    p.add_argument(
        "--topology",
        choices=("loop", "pingpong", "split"),
        default="loop",
        help="loop: one front-end testpmd loops B's rx out of A (default); "
        "pingpong: the same testpmd in 5tswap, each port answering what it receives; "
        "split: A txonly and B rxonly as separate processes sharing core 0",
    )
    p.add_argument("--queue-size", type=queue_size, default=1024,
                   help="virtqueue size, or 'default' for DPDK's (256) (default 1024)")
    p.add_argument("--rounds", type=int, default=1, help="rounds per back-end and size, alternating (default 1)")
    p.add_argument("--busy-poll-us", type=int, default=0,
                   help="the daemon's [daemon] busy_poll_us (default 0: no busy polling)")
    p.add_argument("--adaptive-poll-us", type=int, default=None,
                   help="the daemon's [daemon] adaptive_poll_us (default: the daemon's, 32; 0: none)")
    p.add_argument("--workers", type=int, default=1,
                   help="the daemon's [daemon] workers (default 1; 2: its port on a worker thread, WorkerCore)")
    p.add_argument("--mem-mb", type=int, default=256, help="testpmd -m (default 256)")
    p.add_argument("--workdir", type=Path, default=None, help="keep logs here")
    p.add_argument("--control-probe", action="store_true",
                   help="time the control API's stats every 20 ms in the daemon's measurement windows "
                   "(p50/p99/max)")
    p.add_argument("--idle-slaves", type=int, default=0, metavar="N",
                   help="configure N more slaves, never connected (the rate must not depend on them)")
    add_probe_args(p)
    args = p.parse_args(argv)

    sizes = [int(s) for s in args.sizes.split(",") if s]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in ("reference", "ipvlan"):
            p.error(f"unknown backend {b!r}")
    if testpmd_path() is None:
        print("dpdk-testpmd not found (apt-get install dpdk)", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("bench.py needs root (testpmd, network namespaces)", file=sys.stderr)
        return 2

    results: list[Result] = []
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vib-bench-")))
        else:
            base = args.workdir
            base.mkdir(parents=True, exist_ok=True)
        prepare_probe(args, base)
        for size in sizes:
            for rnd in range(args.rounds):
                for backend in backends:  # alternating rounds
                    log(f"{backend}, {size}-byte frames, round {rnd}, {args.seconds:g}s ...")
                    r = run_one(backend, size, args, base, rnd)
                    log(
                        f"  rx {r.rx_pps:.0f} pps, tx {r.tx_pps:.0f} pps; {fmt_samples(r)}"
                        if r.ok
                        else f"  FAILED: {r.error.splitlines()[0] if r.error else ''}"
                    )
                    results.append(r)
        print_table(results, sizes, args.topology, args.queue_size)
        if args.json:
            out = {
                "topology": args.topology,
                "queue_size": args.queue_size,
                "placement": placement(args.topology),
                "seconds": args.seconds,
                "results": [asdict(r) for r in results],
                "ratio": {str(size): ratio(results, size) for size in sizes},
                "ratio_by_machine_mode": modes_json(results, sizes),
            }
            print(json.dumps(out, indent=2))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
