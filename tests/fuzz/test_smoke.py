"""The fuzz harnesses (``fuzz/``): a short smoke run of each, and every corpus input replayed.

The smoke runs each harness under atheris for a few thousand executions from its
committed corpus (``fuzz/run HARNESS -runs=N``, the ASan/UBSan C accelerator for
``rings``) and fails on any crash. The replay runs every committed input, seeds and
the crashes found so far (``crash-*``, each fixed), through its harness in process:
the regression tests of what fuzzing found. Long runs stay outside the suite
(fuzz/README.md).
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz import HARNESSES

pytestmark = pytest.mark.fuzz

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "fuzz" / "corpus"
RUNS = {"session": 3000, "rings": 1000, "switch": 3000, "control": 2000, "domain": 2000}


def _have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _have_atheris(), reason="atheris is not installed (dev extra)")
@pytest.mark.parametrize("harness", HARNESSES)
def test_smoke(harness: str, tmp_path: Path) -> None:
    if harness == "rings" and not (shutil.which("clang") or shutil.which("clang-14") or shutil.which("gcc")):
        pytest.skip("no C compiler for the sanitized accelerator")
    work, crashes = tmp_path / "work", tmp_path / "crashes"
    work.mkdir()
    crashes.mkdir()
    env = {**os.environ, "PY": sys.executable, "FUZZ_BUILD_DIR": str(tmp_path / "build")}
    proc = subprocess.run(
        [str(ROOT / "fuzz" / "run"), harness, f"-runs={RUNS[harness]}", "-seed=1", f"-artifact_prefix={crashes}/",
         str(work), str(CORPUS / harness)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and f"Done {RUNS[harness]} runs" in out, out[-4000:]
    assert not list(crashes.iterdir()), out[-4000:]


def _inputs() -> list[tuple[str, Path]]:
    return [(h, p) for h in HARNESSES for p in sorted((CORPUS / h).iterdir())]


@pytest.mark.parametrize(("harness", "path"), _inputs(), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_corpus_replays(harness: str, path: Path) -> None:
    mod = importlib.import_module(f"fuzz.h_{harness}")
    logging.disable(logging.CRITICAL)  # hostile input logs warnings by design
    try:
        mod.test_one_input(path.read_bytes())
    finally:
        logging.disable(logging.NOTSET)
