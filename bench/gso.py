"""GSO-sized frames: bulk TCP between two QEMU guests, testpmd's C vhost back-end vs vhost-ipvlan.

    sudo .venv/bin/python bench/gso.py [--mib 64] [--rounds 3] [--json]

DPDK's virtio-user front-end caps its MTU at 9698 bytes, so ``bench.py`` cannot
offer 64 KB frames. Here two tiny TCG guests (Linux virtio-net with TSO/GSO)
move a file over HTTP (guest A serves, guest B downloads to /dev/null) through
(a) testpmd's own vhost back-end (``net_vhost0/1`` with ``tso=1``, io forwarding
between the two ports, pinned to core 1) and (b) vhost-ipvlan (l2/bridge, pinned
to core 1). Both pass the guests' TSO frames (up to 64 KB) through whole; the
average frame size the sender's side saw is printed to show it. The guests run
on TCG, so they, not the back-end, may well be the limit: the figure says
whether the back-end slows bulk traffic down, not its peak.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.guest import Guest
from tests.support.lab import Lab, SlaveSpec
from tests.support.testpmd import reference_backend

A_IP, B_IP = "192.0.2.10", "192.0.2.11"
A_MAC, B_MAC = "52:54:00:00:00:0a", "52:54:00:00:00:0b"


@contextmanager
def guests(work: Path, a_sock: Path, b_sock: Path) -> Iterator[tuple[Guest, Guest]]:
    a = Guest("ga", work, vhost_socket=a_sock, mac=A_MAC, ip4=f"{A_IP}/24")
    b = Guest("gb", work, vhost_socket=b_sock, mac=B_MAC, ip4=f"{B_IP}/24")
    try:
        a.start()
        b.start()
        a.wait_ready(240)
        b.wait_ready(240)
        yield a, b
    finally:
        a.stop()
        b.stop()


def transfer(a: Guest, b: Guest, mib: int, rounds: int) -> list[float]:
    """Mbit/s of each download of ``mib`` MiB from a to b."""
    a.check(f"mkdir -p /w && dd if=/dev/zero of=/w/blob bs=1M count={mib} 2>/dev/null && httpd -p 8080 -h /w")
    b.check(f"wget -q -O /dev/null http://{A_IP}:8080/blob", timeout=600)  # warm-up (ARP, TCP windows)
    rates = []
    for _ in range(rounds):
        t0 = time.monotonic()
        b.check(f"wget -q -O /dev/null http://{A_IP}:8080/blob", timeout=600)
        rates.append(mib * 8 * 1.048576 / (time.monotonic() - t0))
    return rates


def run_reference(work: Path, mib: int, rounds: int) -> dict[str, object]:
    a_sock, b_sock = work / "a.sock", work / "b.sock"
    with reference_backend("gso-ref", work, [a_sock, b_sock], lcores="0@1,1@1", mem_mb=512,
                           vdev_options=",tso=1") as be, guests(work, a_sock, b_sock) as (a, b):
        rates = transfer(a, b, mib, rounds)
        st = be.port_stats()[0]  # port 0 receives what guest A sends
        return {"mbit_s": rates, "avg_frame_bytes": st.rx_bytes / max(1, st.rx_packets)}


def run_ipvlan(work: Path, mib: int, rounds: int) -> dict[str, object]:
    slaves = [SlaveSpec("ga", [f"{A_IP}/24"], A_MAC), SlaveSpec("gb", [f"{B_IP}/24"], B_MAC)]
    with Lab(work, slaves, ipv6=False, cpus="1") as lab, guests(work, lab.sock("ga"), lab.sock("gb")) as (a, b):
        rates = transfer(a, b, mib, rounds)
        st = lab.slave_stats("ga")
        return {"mbit_s": rates, "avg_frame_bytes": st["tx_bytes"] / max(1, st["tx_packets"])}


def main() -> int:
    p = argparse.ArgumentParser(description="bulk TCP between two guests: testpmd vhost vs vhost-ipvlan")
    p.add_argument("--mib", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("gso.py: must run as root (namespaces, QEMU)", file=sys.stderr)
        return 2
    results: dict[str, dict[str, object]] = {}
    for name, fn in (("reference", run_reference), ("ipvlan", run_ipvlan)):
        with tempfile.TemporaryDirectory(prefix=f"vi-gso-{name}-") as d:
            print(f"[gso] {name}: {args.mib} MiB x {args.rounds} ...", file=sys.stderr)
            results[name] = fn(Path(d), args.mib, args.rounds)
    print(f"{'backend':<10} {'median Mbit/s':>14} {'all runs':>24} {'avg frame':>10}")
    for name, r in results.items():
        rates = r["mbit_s"]
        assert isinstance(rates, list)
        runs = ", ".join(f"{x:.0f}" for x in rates)
        print(f"{name:<10} {statistics.median(rates):>14.0f} {runs:>24} {r['avg_frame_bytes']:>9.0f}B")
    ref = statistics.median(results["reference"]["mbit_s"])  # type: ignore[arg-type]
    ipv = statistics.median(results["ipvlan"]["mbit_s"])  # type: ignore[arg-type]
    print(f"ratio vhost-ipvlan / testpmd: {ipv / ref:.2f}   (load average {os.getloadavg()[0]:.1f})")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
