#!/usr/bin/env python3
"""Guest <-> wire packet rate: vhost-ipvlan vs testpmd's vhost back-end + net_af_packet.

The topology of issue 11 (see bench/README.md, "wire"):

  guest A (virtio-user) == switch == vim0 (ns host) <== veth ==> vio0 (ns out) == outside host

- the guest and the outside host are ONE dpdk-testpmd in the outside namespace, on core 0:
  port 0 = ``net_virtio_user0`` on slave a's socket (MAC 02:00:00:00:00:0a, 198.18.0.1),
  port 1 = ``net_af_packet0,iface=vio0,framecnt=4096``; forward mode ``5tswap`` with
  ``--port-topology=loop``: each port answers what it receives on itself, with MACs,
  IPs and UDP ports swapped. A injects 16 (``--bursts``) x 32 UDP frames to the outside
  (``start tx_first``; ``--bursts``), then the frames ping-pong: guest -> wire -> outside -> wire ->
  guest -> ... (a UDP ping-pong with a fixed number of frames in flight). An nftables
  netdev chain drops them on vio0's ingress after the packet socket saw them, so the
  outside kernel never answers them.
- the switch, alone on core 1, either
  (a) "anchor": testpmd ``net_vhost0`` (a's socket) + ``net_af_packet0,iface=vim0,
      qdisc_bypass=1,framecnt=4096`` in io forwarding: DPDK's C back-end and AF_PACKET PMD on the
      same kernel uplink, no lookup, no MAC translation; or
  (b) "ipvlan": ``vhost-ipvlan serve`` (mode l2, flag bridge, slave a) in the tests'
      lab (``tests/support/lab.py``), master vim0, reading the wire through its RX ring;
  (c) "ipvlan-socket" (not run by default): the same with ``VHOST_IPVLAN_RING=0``, reading
      the master's socket with recvmmsg (the mechanism before the ring), for a before/after
      comparison in one run.

The figure is the guest's received frames per second (wire -> guest; in a closed loop
the other direction carries the same rate). Rounds alternate anchor and ipvlan in one
run; the table gives the median and range of each and the ratio of the medians.

Usage: python bench/wire.py [--sizes 64,1500] [--rounds 3] [--seconds 5] [--json]
                            [--sample S] [--no-machine-probe]
The guest's rate is read every ``--sample`` seconds with ``bench/c2c.c`` beside it, and
the samples split by the machine's mode, as in bench.py.
Needs root (network namespaces) and dpdk-testpmd.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import (  # noqa: E402  (bench/bench.py)
    A_IP,
    A_MAC,
    BACKEND_LCORES,
    DAEMON_CPUS,
    FRONTEND_LCORES,
    PREFIX,
    Result,
    Window,
    _measure,
    add_probe_args,
    big_frame_args,
    fmt_pps,
    fmt_samples,
    log,
    modes_json,
    prepare_probe,
    print_modes,
)
from tests.support.lab import MASTER, OUT_IP, DaemonError, Lab, SlaveSpec, sh  # noqa: E402
from tests.support.testpmd import Testpmd, TestpmdError, testpmd_path, virtio_user_vdev  # noqa: E402

BACKENDS = ("anchor", "ipvlan", "ipvlan-socket")
#: the daemon's environment per back-end
DAEMON_ENV = {"ipvlan": {}, "ipvlan-socket": {"VHOST_IPVLAN_RING": "0"}}
#: net_af_packet ring frames (DPDK's default 512 would drop a loop of more than 16 bursts)
AF_PACKET_FRAMES = 4096
#: the outside's end of the veth (tests/support/lab.py)
OUTSIDE = "vio0"


class BareLab(Lab):
    """The lab's namespaces and veth without the daemon (the anchor's uplink)."""

    def start_daemon(self) -> None:
        pass


@contextlib.contextmanager
def wire_switch(backend: str, work: Path, args: argparse.Namespace) -> Iterator[Lab]:
    """The lab with the switch under test running on core 1; yields the lab (slave a's socket)."""
    slaves = [SlaveSpec("a", [f"{A_IP}/{PREFIX}"], A_MAC)]
    if backend in DAEMON_ENV:
        with Lab(work, slaves, ipv6=False, cpus=DAEMON_CPUS, pure_python=args.pure,
                 daemon_env=DAEMON_ENV[backend]) as lab:
            yield lab
            lab.check_daemon()
        return
    with BareLab(work, slaves, ipv6=False) as lab:
        vdevs = [f"net_vhost0,iface={lab.sock('a')}",
                 f"net_af_packet0,iface={MASTER},qdisc_bypass=1,framecnt={AF_PACKET_FRAMES}"]
        with Testpmd("anchor", work, vdevs=vdevs, lcores=BACKEND_LCORES, mem_mb=args.mem_mb,
                     forward_mode="io", netns=lab.host, extra_args=big_frame_args(args.size)) as be:
            be.cmd("start")
            yield lab


def run_pingpong(lab: Lab, work: Path, size: int, args: argparse.Namespace) -> Window:
    """The guest + outside testpmd (see the module docstring); (guest rx pps, outside rx pps, ...)."""
    # the outside kernel must not answer (ICMP) what its packet socket reads
    sh("ip", "netns", "exec", lab.out, "nft",
       f"table netdev wb {{ chain in {{ type filter hook ingress device {OUTSIDE} priority 0; drop; }}; }}")
    fe = Testpmd(
        "guest+outside",
        work,
        vdevs=[virtio_user_vdev(0, lab.sock("a"), A_MAC, args.queue_size),
               f"net_af_packet0,iface={OUTSIDE},framecnt={AF_PACKET_FRAMES}"],
        lcores=FRONTEND_LCORES,
        mem_mb=args.mem_mb,
        forward_mode="5tswap",
        eth_peers={0: lab.out_mac},
        txpkts=size,
        tx_ip=(A_IP, OUT_IP),
        total_mbufs=32768 if size <= 2000 else 4096,
        extra_args=["--no-flush-rx", "--port-topology=loop", *big_frame_args(size)],
        netns=lab.out,
    )
    with fe:
        fe.wait_link_up(0)
        fe.wait_link_up(1)
        fe.cmd("set portlist 0")  # the guest alone injects
        fe.cmd(f"start tx_first {args.bursts}")
        fe.cmd("stop")
        fe.cmd("set portlist 0,1")
        fe.cmd("start")
        return _measure(fe, 0, fe, 1, args)


def run_one(backend: str, size: int, rnd: int, args: argparse.Namespace, base: Path) -> Result:
    res = Result(backend=backend, size=size, topology="wire-5tswap", ok=False)
    res.load_before = os.getloadavg()[0]
    work = base / f"{backend}-{size}-{rnd}"
    work.mkdir(parents=True, exist_ok=True)
    args.size = size
    try:
        with wire_switch(backend, work, args) as lab:
            w = run_pingpong(lab, work, size, args)
        res.ok = w.rx > 0
        res.rx_pps, res.tx_pps, res.rx_packets, res.tx_packets, res.seconds = w.rx_pps, w.tx_pps, w.rx, w.tx, w.seconds
        res.samples = w.samples
        res.error = "" if res.ok else "the guest received nothing in the window"
    except (TestpmdError, DaemonError, TimeoutError, OSError) as e:
        res.error = f"{type(e).__name__}: {e}"
        log(f"{backend} {size}B round {rnd} failed: {res.error.splitlines()[0]} (logs in {work})")
    res.load_after = os.getloadavg()[0]
    return res


def summary(results: list[Result], sizes: list[int]) -> dict[str, dict[str, float | int | None]]:
    """Per size: each back-end's median and range (rx pps) over its good rounds, the ratio of medians
    (``ratio``: ipvlan's; ``ratio_ipvlan-socket``: that back-end's)."""
    out: dict[str, dict[str, float | int | None]] = {}
    for size in sizes:
        row: dict[str, float | int | None] = {}
        for b in BACKENDS:
            pps = [r.rx_pps for r in results if r.backend == b and r.size == size and r.ok]
            row[f"{b}_median"] = statistics.median(pps) if pps else None
            row[f"{b}_min"] = min(pps) if pps else None
            row[f"{b}_max"] = max(pps) if pps else None
            row[f"{b}_rounds"] = len(pps)
        a = row["anchor_median"]
        for b in BACKENDS[1:]:
            i = row[f"{b}_median"]
            row["ratio" if b == "ipvlan" else f"ratio_{b}"] = i / a if a and i is not None else None
        out[str(size)] = row
    return out


def print_table(results: list[Result], sizes: list[int]) -> None:
    print("guest <-> wire, UDP ping-pong (5tswap), guest rx pps: median (range) over rounds")
    print("  guest+outside: one testpmd (virtio-user + net_af_packet on vio0), core 0; switch: core 1")
    shown = [b for b in BACKENDS if any(r.backend == b for r in results)]
    names = {"anchor": "anchor (testpmd vhost+af_packet)", "ipvlan": "vhost-ipvlan",
             "ipvlan-socket": "vhost-ipvlan, RING=0"}
    hdr = f"{'size':>6} | " + " | ".join(f"{names[b]:>34}" for b in shown) + \
        "".join(f" | {'ratio' if b == 'ipvlan' else 'ratio, RING=0':>13}" for b in shown[1:])
    print(hdr)
    print("-" * len(hdr))

    def cell(row: dict[str, float | int | None], b: str) -> str:
        med, lo, hi = row[f"{b}_median"], row[f"{b}_min"], row[f"{b}_max"]
        if med is None or lo is None or hi is None:
            return f"{'FAILED':>34}"
        return f"{fmt_pps(med)} ({fmt_pps(lo)}-{fmt_pps(hi)}) x{row[f'{b}_rounds']}".rjust(34)

    for size, row in summary(results, sizes).items():
        qs = [row["ratio" if b == "ipvlan" else f"ratio_{b}"] for b in shown[1:]]
        print(f"{size:>6} | " + " | ".join(cell(row, b) for b in shown) +
              "".join(f" | {'-' if q is None else f'{q:.3f}':>13}" for q in qs))
    print_modes(results, sizes, "anchor", "ipvlan")
    for r in results:
        if not r.ok:
            print(f"{r.backend} {r.size}B: {(r.error.splitlines() or ['failed'])[0]}")
    busy = max((max(r.load_before, r.load_after) for r in results), default=0.0)
    if busy > 2.5:
        print(f"warning: load average reached {busy:.2f} on 2 cores; figures are low and noisy")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1] if __doc__ else None)
    p.add_argument("--sizes", default="64,1500", help="frame sizes in bytes (default 64,1500)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per back-end and size (default 3)")
    p.add_argument("--seconds", type=float, default=5.0, help="measurement window (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up before t0 (default 1)")
    p.add_argument("--backends", default="anchor,ipvlan",
                   help="comma-separated: anchor, ipvlan, ipvlan-socket (default anchor,ipvlan)")
    p.add_argument("--bursts", type=int, default=16,
                   help="bursts of 32 frames the guest injects: the frames in flight (default 16)")
    p.add_argument("--pure", action="store_true", help="run the daemon without its C accelerator")
    p.add_argument("--queue-size", type=int, default=1024, help="virtqueue size (default 1024)")
    p.add_argument("--mem-mb", type=int, default=256, help="testpmd -m (default 256)")
    p.add_argument("--json", action="store_true", help="also print the results as JSON")
    p.add_argument("--workdir", type=Path, default=None, help="keep logs here")
    add_probe_args(p)
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in BACKENDS:
            p.error(f"unknown backend {b!r}")
    if testpmd_path() is None:
        print("dpdk-testpmd not found (apt-get install dpdk)", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("wire.py needs root (testpmd, network namespaces)", file=sys.stderr)
        return 2
    results: list[Result] = []
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vib-wire-")))
        else:
            base = args.workdir
            base.mkdir(parents=True, exist_ok=True)
        prepare_probe(args, base)
        for size in sizes:
            for rnd in range(args.rounds):
                for backend in backends:  # alternating rounds
                    r = run_one(backend, size, rnd, args, base)
                    log(f"{backend} {size}B round {rnd}: "
                        + (f"{fmt_pps(r.rx_pps)}pps; {fmt_samples(r)}" if r.ok else "FAILED"))
                    results.append(r)
    print_table(results, sizes)
    if args.json:
        print(json.dumps({"results": [r.__dict__ for r in results], "summary": summary(results, sizes),
                          "ratio_by_machine_mode": modes_json(results, sizes, "anchor", "ipvlan")}, indent=2))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
