"""Coverage-guided fuzzing of vhost-ipvlan's hostile-input surfaces with atheris.

One harness per surface (``fuzz/h_*.py``), each a ``test_one_input(data)`` that
raises only when an invariant breaks (an exception other than the project's own
error classes, C and Python disagreeing, a leaked descriptor, ...). Run one with
``fuzz/run HARNESS [-runs=N]`` or ``python -m fuzz HARNESS -runs=N``; see
``fuzz/README.md``.
"""

HARNESSES = ("session", "rings", "switch", "control", "domain")
