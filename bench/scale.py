#!/usr/bin/env python3
"""Scale: start-up, control requests, stats, memory and fds with N slaves on one master.

For each N (``--n 10,100,1000``) it builds a namespace with one veth master and N
slaves (server sockets, configured MACs, one IPv4 + one IPv6 address each; nothing
connected) and measures, on the daemon as run in production (``vhost-ipvlan serve``
in its own process, ready = ``READY=1`` on ``$NOTIFY_SOCKET``):

Slave sockets go to ``--socket-dir`` (default ``/dev/shm``, a tmpfs as ``/run`` is
under systemd: creating a socket is a few directory operations, much dearer on a
journalling file system), the state file and logs to a temporary directory on disk.

- ``ready``: from exec of ``serve --config`` (fresh, no state file) to READY=1;
- ``ready_state``: the same after SIGTERM, from the state file (restart);
- ``add`` / ``change`` / ``remove``: median latency of ``slave.add``, ``slave.change``
  (new addresses, in place) and ``slave.remove`` over the control socket
  (``--rounds`` each), with N slaves present: each reply comes after the state
  file is written, nftables and host routes are updated and the socket listens;
- ``stats``: median of the control ``stats`` request; ``scrape``: median of a
  Prometheus ``GET /metrics`` (0.6 s apart, the exporter's snapshot interval);
- ``rss``: VmRSS of the daemon; ``kib/slave``: (RSS(N) - RSS(0 slaves)) / N;
- ``fds``: open descriptors of the daemon.

``--frontends`` also connects a fake front-end (``tests/support/frontend.py``: a
memfd of guest memory, two rings, kick/call eventfds, QEMU's set-up sequence) to
every slave, one after the other, and reports the time until all of them are up
(``slave.list``), and the daemon's RSS and fds with them connected.

``--profile DIR`` runs every daemon under cProfile (``DIR/N.prof``; start-up and the
control requests; read with ``python -m pstats``). ``--nofile 1024`` starts the
daemon with that soft fd limit (systemd's default). ``--json`` also prints the
figures as JSON.

Usage: python bench/scale.py [--n 10,100,1000] [--rounds 15] [--nofile 1024] [--frontends] [--profile DIR] [--json]
Needs root (network namespaces, nftables).
"""

from __future__ import annotations

import argparse
import http.client
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from pyroute2 import netns as pyroute2_netns  # noqa: E402

from tests.support.frontend import FakeFrontend  # noqa: E402
from tests.support.netns import Netns  # noqa: E402
from tests.support.scale import Daemon, config_text, make_namespace, slave_table  # noqa: E402
from vhost_ipvlan.control.client import Client  # noqa: E402

METRICS = "127.0.0.1:9109"


def _ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


def _timed(c: Client, method: str, params: dict[str, Any] | None = None) -> float:
    t = time.perf_counter()
    c.call(method, params)
    return time.perf_counter() - t


def _scrape(ns: Netns) -> float:
    """One GET /metrics inside ``ns``: the socket is made there (it stays there)."""
    pyroute2_netns.pushns(ns.name)
    try:
        host, port = METRICS.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.connect()
    finally:
        pyroute2_netns.popns()
    t = time.perf_counter()
    conn.request("GET", "/metrics")
    conn.getresponse().read()
    took = time.perf_counter() - t
    conn.close()
    return took


def control_figures(d: Daemon, ns: Netns, n: int, rounds: int, sockdir: Path) -> dict[str, float]:
    adds, changes, removes, stats, scrapes = [], [], [], [], []
    with Client(d.control) as c:
        for r in range(rounds):
            t = slave_table(1_000_000 + r, sockdir, prefix="x")
            adds.append(_timed(c, "slave.add", {"master": "vsm0", **t}))
        for r in range(rounds):
            name = f"x{1_000_000 + r}"
            other = slave_table(2_000_000 + r, sockdir, prefix="y")["addresses"]
            changes.append(_timed(c, "slave.change", {"name": name, "addresses": other}))
        for r in range(rounds):
            name = f"x{1_000_000 + r}"
            removes.append(_timed(c, "slave.remove", {"name": name}))
        for _ in range(max(3, rounds // 3)):
            stats.append(_timed(c, "stats"))
            time.sleep(0.6)  # past the exporter's snapshot interval: each scrape computes
            scrapes.append(_scrape(ns))
        listed = len(c.call("slave.list"))
    if listed != n:
        raise RuntimeError(f"slave.list has {listed} slaves, expected {n}")
    return {"add_ms": _ms(adds), "change_ms": _ms(changes), "remove_ms": _ms(removes),
            "stats_ms": _ms(stats), "scrape_ms": _ms(scrapes)}


def frontend_figures(d: Daemon, n: int, sockdir: Path, idle_rss: int) -> dict[str, Any]:
    """Connect a fake front-end to every slave; the time until all are up, RSS and fds."""
    frontends = []
    t = time.perf_counter()
    try:
        for i in range(n):
            fe = FakeFrontend()
            frontends.append(fe)
            fe.connect(str(sockdir / f"s{i}.sock"))
            fe.setup()
        with Client(d.control) as c:
            while not all(s["up"] for s in c.call("slave.list")):
                time.sleep(0.05)
        took = time.perf_counter() - t
        rss, fds = d.rss_kib(), d.fds()
        with Client(d.control) as c:
            stats = _ms([_timed(c, "stats") for _ in range(5)])
    finally:
        for fe in frontends:
            fe.close()
    return {"fe_up_s": round(took, 2), "fe_rss_kib": rss, "fe_kib_per_guest": round((rss - idle_rss) / n, 1),
            "fe_fds": fds, "fe_stats_ms": stats}


def measure(n: int, args: argparse.Namespace, baseline_rss: int | None) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"vi-scale-{n}-"))
    sockdir = Path(tempfile.mkdtemp(prefix=f"vi-scale-{n}-", dir=args.socket_dir))
    sockdir.chmod(0o750)
    conf = work / "config.toml"
    conf.write_text(config_text(n, sockdir))
    prof = args.profile / f"{n}.prof" if args.profile else None
    out: dict[str, Any] = {"n": n}
    with make_namespace() as ns:
        d = Daemon(ns, work, config=conf, nofile=args.nofile, metrics=METRICS, profile=prof)
        try:
            out["ready_s"] = round(d.ready(), 3)
            out["nofile"] = d.nofile()
            out["fds"] = d.fds()
            out["rss_kib"] = d.rss_kib()
            if baseline_rss is not None and n:
                out["kib_per_slave"] = round((out["rss_kib"] - baseline_rss) / n, 1)
            out.update(control_figures(d, ns, n, args.rounds, sockdir))
            if args.frontends and n:
                out.update(frontend_figures(d, n, sockdir, out["rss_kib"]))
        finally:
            d.stop()
        # the restart: from the state file the first run left behind
        d = Daemon(ns, work, config=conf, nofile=args.nofile,
                   profile=args.profile / f"{n}-restart.prof" if args.profile else None)
        try:
            out["ready_state_s"] = round(d.ready(), 3)
        finally:
            d.stop()
    out["log"] = str(work / "daemon.log")
    shutil.rmtree(sockdir, ignore_errors=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="10,100,1000", help="slave counts, comma-separated (default 10,100,1000)")
    ap.add_argument("--rounds", type=int, default=15, help="requests of each kind per N (default 15)")
    ap.add_argument("--nofile", metavar="SOFT[:HARD]",
                    help="the daemon's RLIMIT_NOFILE (e.g. 1024:524288, systemd's default)")
    ap.add_argument("--profile", type=Path, metavar="DIR", help="run the daemons under cProfile, output in DIR")
    ap.add_argument("--socket-dir", type=Path, default=Path("/dev/shm"),
                    help="where the slave sockets go (default /dev/shm: tmpfs, as /run is under systemd); "
                    "the state file and logs go to a temporary directory on disk")
    ap.add_argument("--frontends", action="store_true", help="also connect a fake front-end to every slave")
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = ap.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    counts = [int(x) for x in args.n.split(",")]
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # our front-ends' memfds, eventfds and sockets
    base = measure(0, argparse.Namespace(**{**vars(args), "profile": None, "rounds": 3}), None)
    rows = [measure(n, args, base["rss_kib"]) for n in counts]
    cols = ["n", "ready_s", "ready_state_s", "add_ms", "change_ms", "remove_ms", "stats_ms", "scrape_ms",
            "rss_kib", "kib_per_slave", "fds"]
    print(f"baseline (0 slaves): ready {base['ready_s']} s, RSS {base['rss_kib']} KiB, {base['fds']} fds, "
          f"RLIMIT_NOFILE {base['nofile']}")
    print(" ".join(f"{c:>13}" for c in cols))
    for r in rows:
        print(" ".join(f"{r.get(c, '-')!s:>13}" for c in cols))
    if args.frontends:
        fcols = ["n", "fe_up_s", "fe_rss_kib", "fe_kib_per_guest", "fe_fds", "fe_stats_ms"]
        print("with a front-end connected to every slave:")
        print(" ".join(f"{c:>16}" for c in fcols))
        for r in rows:
            print(" ".join(f"{r.get(c, '-')!s:>16}" for c in fcols))
    if args.json:
        print(json.dumps({"baseline": base, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
