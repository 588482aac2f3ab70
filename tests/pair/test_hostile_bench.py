"""bench/hostile.py runs end to end: workers start, scenarios drive the real data path, the table prints.

A smoke test, not a timing assertion: one short round of two cheap scenarios (plus the
ordinary flood every run includes as the share yardstick), in pure Python and, when it
is built, with the C accelerator.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(ROOT / "bench" / "hostile.py"), "--rounds", "1", "--phase-seconds", "0.05",
            "--frame-calls", "2", "--idle", "1", "--cut", "20", *args]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=240)


def test_hostile_bench_prints_its_table() -> None:
    proc = run_bench("--scenarios", "runts,avail-overrun", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "worst" in out and "verdict" in out, out
    table, _, rest = out.partition("\n{")
    for name in ("control-plain", "runts", "avail-overrun"):
        assert f"\n{name} " in table, table
    report = json.loads("{" + rest)
    rows = {(r["scenario"], r["path"]): r for r in report["rows"]}
    assert ("runts", "pure") in rows
    for row in rows.values():
        assert row["rounds"] == 1, row  # measured, not refused and no worker failure
        assert "worker failed" not in row["outcome"], row


def test_hostile_bench_lists_scenarios() -> None:
    proc = run_bench("--list")
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    assert {"r1-indirect-32k", "r2-mrg-zero-self", "r3-igmpv3-toggle"} <= set(names), names
