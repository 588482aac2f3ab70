"""Per-frame cost of the data path, in-process: no sockets, no syscalls, no other process.

    .venv/bin/python bench/micro.py [--size 64] [--frames 20000] [--dirty-log] [--targets 1] [--burst 200]

Fake guests on an in-process port (``tests/support/inproc.py``: the real
``NetDevice``, ``PortDatapath``, switch and virtqueue code); guest a transmits
UDP frames to guest b0 in bursts of 200 (``--burst``: a drain's share of the
daemon's per-burst work grows as bursts shrink; ``--targets N``: to N guests in turn, one
frame each, as a server answering several clients), and only the daemon's side
(``drain_tx``) is timed, with and without the C accelerator (``--dirty-log``: also
with the guests' dirty logs on, as during a live migration). It isolates the interpreter's cost
per frame from the I/O that ``bench.py`` includes. Needs no root.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.support.inproc import InprocPort, pure_python
from vhost_ipvlan.daemon import fastpath

A = "02:00:00:00:00:0a"
A4 = "198.18.0.1"


MARK = fastpath.log_mark()  # the daemon's marks with the accelerator built (taken before pure_python())


def measure(size: int, frames: int, dirty_log: bool = False, targets: int = 1, burst: int = 200) -> float:
    """Microseconds of daemon time per frame."""
    dests = [(f"b{i}", f"198.18.0.{2 + i}", f"02:00:00:00:01:{i:02x}") for i in range(targets)]
    port = InprocPort([
        ("a", [ipaddress.ip_address(A4).packed], bytes.fromhex(A.replace(":", ""))),
        *((name, [ipaddress.ip_address(ip).packed], bytes.fromhex(mac.replace(":", ""))) for name, ip, mac in dests),
    ])
    try:
        if dirty_log:  # as the daemon: exact marks when the module is built, whole bytes without
            for name, fe in port.frontends.items():
                session = port.device(name).session
                if session is not None:
                    session.log_mark = MARK if fastpath.accelerated() else None
                fe.start_dirty_log()
        out = []
        for _, ip, mac in dests:
            frame = bytes(Ether(src=A, dst=mac) / IP(src=A4, dst=ip) / UDP())
            out.append(frame + bytes(max(0, size - len(frame))))
        a, dev = port.frontends["a"], port.device("a")
        spent = 0.0
        done = 0
        while done < frames:
            for i in range(burst):
                a.transmit(out[i % targets])
            t0 = time.perf_counter()
            dev.drain_tx()
            spent += time.perf_counter() - t0
            a.reclaim_tx()
            got = sum(len(port.frontends[name].receive()) for name, _, _ in dests)
            if got != burst:
                raise SystemExit(f"micro.py: the guests received {got} of {burst} frames")
            done += got
        return spent / done * 1e6
    finally:
        port.close()


def main() -> int:
    p = argparse.ArgumentParser(description="per-frame daemon cost, in-process")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--frames", type=int, default=20000)
    p.add_argument("--dirty-log", action="store_true", help="also measure with the dirty logs on (migration)")
    p.add_argument("--targets", type=int, default=1, help="guests a sends to in turn (default 1)")
    p.add_argument("--burst", type=int, default=200, help="frames per drain (default 200)")
    args = p.parse_args()
    rows = []
    for logged in (False, True) if args.dirty_log else (False,):
        tag = ", dirty log" if logged else ""
        if fastpath.accelerated():
            rows.append((f"C accelerator{tag}", measure(args.size, args.frames, logged, args.targets, args.burst)))
        with pure_python():
            rows.append((f"pure Python{tag}", measure(args.size, args.frames, logged, args.targets, args.burst)))
    for name, us in rows:
        print(f"{name:<25} {us:6.2f} us/frame  ({1 / us:5.2f} Mpps of daemon time), {args.size}-byte frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
