"""The drop-reason registry (``vhost_ipvlan/drops.py``) is the only vocabulary of drops.

Every member is documented, counted somewhere, and nowhere repeated: not by the C
accelerator, not by a hand-written table (``docs/drop-reasons.md`` is generated).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from vhost_ipvlan.drops import N_DROP_REASONS, REASONS, DropReason, counts, new_counters
from vhost_ipvlan.switch.table import TABLE

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "vhost_ipvlan"


def test_members_index_the_counter_lists() -> None:
    assert [int(r) for r in DropReason] == list(range(N_DROP_REASONS))
    assert len(new_counters()) == N_DROP_REASONS


def test_every_member_has_a_place_an_owner_and_a_one_line_meaning() -> None:
    assert set(REASONS) == set(DropReason)
    for r, row in REASONS.items():
        assert row.where and row.on and row.meaning, r
        assert "\n" not in row.meaning and not row.meaning.endswith("."), r
        assert r.where == row.where and r.meaning == row.meaning


def test_every_member_is_counted_somewhere() -> None:
    """A dead member (``TO_HOST_UNSUPPORTED`` was one) has no counting site."""
    code = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py") if p.name != "drops.py")
    named = set(re.findall(r"DropReason\.([A-Z0-9_]+)", code))
    from_table = {rule.reason.upper() for rule in TABLE.values() if rule.reason}
    dead = [r.label for r in DropReason if r.name not in named | from_table]
    assert not dead, f"never counted: {dead}"


def test_counts_adds_the_lists_and_keeps_the_non_zero() -> None:
    a, b = new_counters(), new_counters()
    a[DropReason.RUNT] = 2
    b[DropReason.RUNT] = 1
    b[DropReason.HOST_SEND_FAILED] = 4
    assert counts(a, b) == {"runt": 3, "host_send_failed": 4}
    assert counts(new_counters()) == {}


def _c_code(path: Path) -> str:
    """``path`` without its comments and string literals."""
    text = re.sub(r"/\*.*?\*/", " ", path.read_text(), flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    return re.sub(r'"(\\.|[^"\\])*"', '""', text)


def test_the_c_accelerator_holds_no_copy_of_the_registry() -> None:
    """``forward_burst`` and ``uplink_burst`` hand every frame they do not forward back to
    Python, which counts it; the drops a worker's ``WorkerCore`` counts itself
    (RX_RING_FULL, CALL_FAILED, UPLINK_SEND_FAILED) it counts under the ``DropReason``
    members Python passes it (``workers.py``). So ``_fastpath.c`` holds no index or name of
    the registry that could drift from ``drops.py``."""
    text = (PACKAGE / "_fastpath.c").read_text()
    code = _c_code(PACKAGE / "_fastpath.c")
    assert "forward_burst" in code and "WorkerCore" in text
    for reason in DropReason:
        assert reason.name not in code, f"_fastpath.c names {reason.name}: take it from Python"
        assert f'"{reason.label}"' not in text, f"_fastpath.c names {reason.label!r}: take it from Python"
    assert not re.search(r"\bdrops?\s*\[", code), "_fastpath.c indexes a drop array: take the keys from Python"


def test_committed_docs_are_the_generators_output() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_drop_reasons.py")], capture_output=True,
                         text=True, check=True).stdout
    assert (ROOT / "docs" / "drop-reasons.md").read_text() == out, (
        "docs/drop-reasons.md is stale: python3 scripts/gen_drop_reasons.py > docs/drop-reasons.md")


@pytest.mark.parametrize(("heading", "anchor"), [
    ("### Drop reasons of the switch", "switch"),
    ("### Drop reasons of the rings", "ring"),
    ("## Modes l3 and l3s", "route"),
])
def test_the_readme_points_at_the_generated_docs_instead_of_copying_them(heading: str, anchor: str) -> None:
    readme = (ROOT / "README.md").read_text()
    part = readme.split(heading + "\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    assert f"(docs/drop-reasons.md#{anchor})" in part
    copied = [r.label for r in DropReason if f"| `{r.label}` |" in readme]
    assert not copied, f"README repeats rows of docs/drop-reasons.md: {copied}"
    assert f"\n## {anchor}\n" in (ROOT / "docs" / "drop-reasons.md").read_text()
