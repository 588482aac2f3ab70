"""``python -m fuzz HARNESS [--runs N] [libFuzzer flags] [CORPUS_DIR ...]``

Runs one harness under atheris (libFuzzer). Without corpus directories it reads
the committed seeds (``fuzz/corpus/HARNESS``) and writes what it discovers to
``fuzz/work/HARNESS`` (not committed); crashing inputs land in
``fuzz/crashes/HARNESS/``. ``--runs N`` is libFuzzer's ``-runs=N``. The native
accelerator is the ASan/UBSan build when ``fuzz/run`` set it up (``rings``).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from . import HARNESSES
from .common import quiet

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in HARNESSES:
        sys.exit(f"usage: python -m fuzz {{{','.join(HARNESSES)}}} [--runs N] [libFuzzer flags] [CORPUS_DIR ...]")
    name, rest = argv[0], argv[1:]
    args: list[str] = []
    while rest:
        a = rest.pop(0)
        if a == "--runs" and rest:
            args.append(f"-runs={rest.pop(0)}")
        elif a.startswith("--runs="):
            args.append("-runs=" + a.split("=", 1)[1])
        else:
            args.append(a)
    if not any(not a.startswith("-") for a in args):
        work = HERE / "work" / name
        work.mkdir(parents=True, exist_ok=True)
        args += [str(work), str(HERE / "corpus" / name)]
    if not any(a.startswith("-artifact_prefix=") for a in args):
        crashes = HERE / "crashes" / name
        crashes.mkdir(parents=True, exist_ok=True)
        args.append(f"-artifact_prefix={crashes}/")
    if not any(a.startswith("-max_len=") for a in args):
        args.append("-max_len=20000")
    import atheris

    quiet()
    os.environ.setdefault("VHOST_IPVLAN_FUZZ", "1")
    with atheris.instrument_imports(include=["vhost_ipvlan", f"fuzz.h_{name}"]):
        harness = importlib.import_module(f"fuzz.h_{name}")
    atheris.Setup([f"fuzz-{name}", *args], harness.test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv[1:])
