"""``python -m fuzz HARNESS [--runs N] [libFuzzer flags] [CORPUS_DIR ...]``

Runs one harness under atheris (libFuzzer). Without corpus directories it reads
the committed seeds (``fuzz/corpus/HARNESS``) and writes what it discovers to
``fuzz/work/HARNESS`` (not committed); crashing inputs land in
``fuzz/crashes/HARNESS/``. Defaults: ``-max_len=20000``, ``-timeout=10`` (an input that
takes 10 s is reported), ``-dict=fuzz/dict/HARNESS.dict`` where one exists.
``--runs N`` is libFuzzer's ``-runs=N``. The native accelerator is the ASan/UBSan build
when ``fuzz/run`` set it up (``rings``).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from . import HARNESSES
from .common import quiet

HERE = Path(__file__).resolve().parent
# What atheris instruments (Python coverage): the code under test. rings instruments
# only virtio/ (speed: the switch is harness switch's), and the C accelerator, whose
# coverage comes from its sanitizer build.
INSTRUMENT = {
    "rings": ["vhost_ipvlan.virtio"],
}


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
    dictionary = HERE / "dict" / f"{name}.dict"
    if dictionary.exists() and not any(a.startswith("-dict=") for a in args):
        args.append(f"-dict={dictionary}")
    if not any(a.startswith("-timeout=") for a in args):
        args.append("-timeout=10")  # bounded cost: one input taking 10 s is a finding
    if not any(a.startswith("-max_len=") for a in args):
        args.append("-max_len=20000")
    import atheris

    quiet()
    os.environ.setdefault("VHOST_IPVLAN_FUZZ", "1")
    with atheris.instrument_imports(include=INSTRUMENT.get(name, ["vhost_ipvlan"])):
        harness = importlib.import_module(f"fuzz.h_{name}")
    atheris.Setup([f"fuzz-{name}", *args], harness.test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv[1:])
