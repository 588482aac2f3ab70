"""bench/bench.py's summary of alternating rounds: medians, ranges, the ratio of the
medians, failed rounds left out, ``--queue-size default``, and the samples split by the
machine probe (bench/c2c.c)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.wait import wait_until


def load_bench() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "bench.py"
    spec = importlib.util.spec_from_file_location("bench_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = load_bench()


def result(backend: str, rx: float, ok: bool = True) -> object:
    return bench.Result(backend=backend, size=64, topology="pingpong", ok=ok, rx_pps=rx, tx_pps=rx + 1)


def test_the_ratio_is_of_the_medians_and_failed_rounds_do_not_count() -> None:
    results = [result("reference", 100.0), result("ipvlan", 10.0), result("reference", 300.0),
               result("ipvlan", 90.0), result("reference", 200.0), result("ipvlan", 0.0, ok=False),
               result("reference", 1.0, ok=False), result("ipvlan", 70.0)]
    ref, ipv = bench.rounds(results, "reference", 64), bench.rounds(results, "ipvlan", 64)
    assert (ref.rx, ref.lo, ref.hi, ref.n, ref.tx) == (200.0, 100.0, 300.0, 3, 201.0)
    assert (ipv.rx, ipv.lo, ipv.hi, ipv.n) == (70.0, 10.0, 90.0, 3)
    assert bench.ratio(results, 64) == pytest.approx(0.35)
    assert bench.rounds(results, "ipvlan", 1500) is None and bench.ratio(results, 1500) is None


def test_queue_size_default_leaves_the_ring_to_dpdk() -> None:
    assert bench.queue_size("default") is None
    assert bench.queue_size("1024") == 1024
    with pytest.raises(argparse.ArgumentTypeError, match="expected a ring size or 'default', got 'big'"):
        bench.queue_size("big")


def sampled(backend: str, samples: list[tuple[float, float, float]]) -> object:
    r = bench.Result(backend=backend, size=64, topology="pingpong", ok=True, rx_pps=1.0)
    r.samples = samples
    return r


def test_samples_are_split_by_the_machine_probe() -> None:
    """The probe's round trip says each sample's machine mode; a sample it did not read (0) or
    read while the scheduler put its threads off (over 5 us) counts in neither."""
    assert [bench.machine_mode(ns) for ns in (0.0, 60.0, 199.0, 330.0, 4999.0, 200316.0)] == \
        [None, "fast", "fast", "slow", "slow", None]
    results = [
        sampled("reference", [(1, 5.5e6, 70.0), (2, 2.5e6, 330.0), (3, 2.7e6, 325.0), (4, 9e6, 0.0)]),
        sampled("ipvlan", [(1, 5.6e6, 65.0), (2, 5.4e6, 80.0), (3, 2.0e6, 340.0), (4, 1e6, 123865.0)]),
        bench.Result(backend="ipvlan", size=64, topology="pingpong", ok=False),
    ]
    assert bench.by_mode(results, "reference", 64, "slow") == [2.5e6, 2.7e6]
    assert bench.mode_ratio(results, 64, "fast") == (5.5e6, 5.5e6, 1, 2)
    ref, ipv, n_ref, n_ipv = bench.mode_ratio(results, 64, "slow")
    assert (ref, ipv, n_ref, n_ipv) == (2.6e6, 2.0e6, 2, 1)
    assert bench.mode_ratio(results, 1500, "slow") is None


def test_a_sample_whose_readings_disagree_has_no_mode(tmp_path: Path) -> None:
    """Two readings in one sample, one per mode, say no mode (their median, 195 ns, would
    say "fast"); an unread one (the scheduler put the probe off) does not count."""
    probe = bench.MachineProbe(tmp_path / "c2c")
    probe.readings = [(1.0, 60.0), (1.9, 330.0), (2.5, 70.0), (2.6, 200000.0), (3.5, 320.0), (3.6, 340.0)]
    assert probe.between(0.5, 2.0) == 0.0
    assert probe.between(2.0, 3.0) == 70.0
    assert probe.between(3.0, 4.0) == 330.0
    assert probe.between(4.0, 5.0) == 0.0


def test_no_ratio_against_an_anchor_that_stalled() -> None:
    results = [sampled("reference", [(1, 0.0, 70.0), (2, 0.0, 70.0)]), sampled("ipvlan", [(1, 5e6, 70.0)])]
    assert bench.mode_ratio(results, 64, "fast") is None
    assert bench.modes_json(results, [64]) == {"64": {"fast": None, "slow": None}}
    wire = [sampled("anchor", [(1, 4e5, 70.0)]), sampled("ipvlan", [(1, 2e5, 65.0)])]
    assert bench.modes_json(wire, [64], "anchor", "ipvlan") == {"64": {"fast": 0.5, "slow": None}}


def test_sample_must_be_positive_seconds() -> None:
    assert bench.positive_seconds("0.5") == 0.5
    for bad in ("0", "-1", "x", "nan"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected seconds"):
            bench.positive_seconds(bad)


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or not {0, 1} <= os.sched_getaffinity(0),
                    reason="the probe runs on CPUs 0 and 1")
def test_the_machine_probe_builds_and_reads(tmp_path: Path) -> None:
    """bench/c2c.c, built as bench.py builds it, gives a round trip every second at a 2% duty."""
    exe = bench.build_machine_probe(tmp_path)
    assert exe is not None and exe.exists()
    t0 = time.monotonic()
    with bench.MachineProbe(exe) as probe:
        wait_until(lambda: len(probe.readings) >= 2, 10, interval=0.05, what="two probe readings")
    assert 0 < probe.between(t0, time.monotonic()) < 1e6
    assert probe.between(0, t0) == 0.0
