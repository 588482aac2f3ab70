"""bench/bench.py's summary of alternating rounds: medians, ranges, the ratio of the
medians, failed rounds left out, and ``--queue-size default``."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest


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
