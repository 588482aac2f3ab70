"""The sans-I/O core imports no I/O: the layering of docs/design.md §1, enforced."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "vhost_ipvlan"
PURE = ["net", "switch", "virtio", "vhost_user"]
FORBIDDEN = {"socket", "mmap", "asyncio", "os", "subprocess", "select", "selectors", "fcntl", "threading"}


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (isinstance(node, ast.ImportFrom) and node.level and node.module
              and node.module.split(".")[0] in ("daemon", "control", "libvirt")):
            names.add("vhost_ipvlan." + node.module)
    return names


@pytest.mark.parametrize("package", PURE)
def test_pure_packages_do_no_io(package: str) -> None:
    files = sorted((ROOT / package).glob("*.py"))
    assert files
    for f in files:
        bad = {n for n in imports(f) if n in FORBIDDEN or n.startswith("vhost_ipvlan.daemon")}
        assert not bad, f"{f.relative_to(ROOT.parent)} imports {sorted(bad)}"
