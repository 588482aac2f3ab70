#!/usr/bin/env python3
"""Outage window of a daemon restart, seen by two live QEMU guests (one per socket role).

Boots the test lab (tests/support/lab.py) with two TCG guests, vm1 (the daemon
listens, QEMU ``reconnect=1``) and vm2 (QEMU listens, the daemon reconnects), then
restarts the daemon ``--rounds`` times with SIGTERM and as often with SIGKILL while
the outside host pings both guests every 50 ms (``ping -D -O``). Per restart and guest
it prints the outage window (the longest gap between two replies), when the first
reply came after the signal, and how many echo requests went unanswered. The guests
are checked not to have rebooted (same boot id).

Usage: python bench/restart_outage.py [--rounds 3] [--json] [--workdir DIR]
Needs root, qemu-system-x86_64 and the tiny guest image (vm-images/build-tiny.sh).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.support.restart import KINDS, ROLES, Outage, RestartWorld  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="restarts of each kind (default 3)")
    ap.add_argument("--json", action="store_true", help="also print every measurement as JSON")
    ap.add_argument("--workdir", type=Path, help="keep logs here (default: a temporary directory)")
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vi-restart-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results: list[Outage] = []
    with RestartWorld(workdir) as world:
        boot = {name: world.boot_id(name) for name in world.guests}
        for _ in range(args.rounds):
            for kind in KINDS:
                for o in world.restart(kind).values():
                    results.append(o)
                    print(f"  {kind:4} {o.guest}: window {o.window:.2f} s, first reply {o.recovered_after:.2f} s "
                          f"after the signal, {o.lost} lost", flush=True)
        rebooted = [name for name in world.guests if world.boot_id(name) != boot[name]]
    print(f"\nrestart outage, {args.rounds} restart(s) of each kind, ping every 50 ms from the outside host")
    print(f"{'guest (socket role)':46} {'restart':8} {'window median':>13} {'max':>6} {'lost median':>11}")
    for name, role in ROLES.items():
        for kind in KINDS:
            rows = [o for o in results if o.guest == name and o.kind == kind]
            label = "SIGTERM" if kind == "term" else "SIGKILL"
            print(f"{name + ' (' + role + ')':46} {label:8} {statistics.median(o.window for o in rows):12.2f}s "
                  f"{max(o.window for o in rows):5.2f}s {statistics.median(o.lost for o in rows):11.0f}")
    print(f"guests rebooted: {', '.join(rebooted) or 'none'}; logs in {workdir}")
    if args.json:
        print(json.dumps([asdict(o) for o in results], indent=1))
    return 1 if rebooted else 0


if __name__ == "__main__":
    sys.exit(main())
