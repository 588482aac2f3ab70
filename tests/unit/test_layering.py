"""The sans-I/O core imports no I/O (the layering of docs/design.md §1, enforced), and
the package's imports run one way: no import-time cycle, no private name imported
across modules."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "vhost_ipvlan"
PURE = ["net", "switch", "virtio", "vhost_user"]
FORBIDDEN = {
    "socket", "mmap", "asyncio", "os", "subprocess", "select", "selectors", "fcntl", "threading", "time", "pyroute2",
}
DAEMON = "vhost_ipvlan.daemon"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package(path: Path) -> str:
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _walk(node: ast.AST, import_time: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements under ``node``; with ``import_time``, only those run
    when the module is imported (not in functions, not under ``if TYPE_CHECKING``)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif import_time and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        elif import_time and isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            for c in child.orelse:
                yield from _walk_one(c, import_time)
        else:
            yield from _walk(child, import_time)


def _walk_one(node: ast.AST, import_time: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    else:
        yield from _walk(node, import_time)


def imported(path: Path, import_time: bool = False, source: str | None = None) -> Iterator[tuple[str, str]]:
    """(module, name) per imported name, modules absolute (relative ones resolved);
    ``import x.y`` gives ("x.y", ""). ``source`` is the text of ``path``, if given."""
    tree = ast.parse(path.read_text() if source is None else source)
    for node in _walk(tree, import_time):
        if isinstance(node, ast.Import):
            yield from ((a.name, "") for a in node.names)
            continue
        base = node.module or ""
        if node.level:
            package = _package(path).split(".")
            base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
        yield from ((base, a.name) for a in node.names)


def imports(path: Path, source: str | None = None) -> set[str]:
    """Every module ``path`` imports or may import (``from m import x``: m and m.x)."""
    names: set[str] = set()
    for module, name in imported(path, source=source):
        names.add(module)
        if name:
            names.add(f"{module}.{name}")
    return names


def _is_module(qualified: str) -> bool:
    target = ROOT.parent.joinpath(*qualified.split("."))
    return target.is_dir() or any(target.with_suffix(s).exists() for s in (".py", ".c"))


def bad_imports(path: Path, source: str | None = None) -> set[str]:
    """What a pure module must not import: I/O, or the daemon."""
    return {n for n in imports(path, source) if n.split(".")[0] in FORBIDDEN or n.startswith(DAEMON)}


@pytest.mark.parametrize("package", PURE)
def test_pure_packages_do_no_io(package: str) -> None:
    files = sorted((ROOT / package).glob("*.py"))
    assert files
    for f in files:
        bad = bad_imports(f)
        assert not bad, f"{f.relative_to(ROOT.parent)} imports {sorted(bad)}"


def test_every_import_form_is_seen() -> None:
    probe = ROOT / "switch" / "probe.py"  # not a file: the source is given
    for source in ("from .. import daemon", "from ..daemon import x", "from ..daemon.x import y",
                   "import vhost_ipvlan.daemon", "from vhost_ipvlan import daemon", "import time",
                   "import pyroute2.netlink", "from os import path"):
        assert bad_imports(probe, source), source
    assert not bad_imports(probe, "from . import table\nfrom ..net import frames")


def _modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def test_no_import_time_cycle() -> None:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for module, imp in imported(path, import_time=True):
            target = f"{module}.{imp}" if imp and f"{module}.{imp}" in modules else module
            if target in modules and target != name:
                edges.add(target)
        graph[name] = edges
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_no_private_name_is_imported_across_modules() -> None:
    bad = []
    for name, path in _modules().items():
        for module, imp in imported(path):
            private = imp.startswith("_") and not imp.endswith("__")
            if module.startswith("vhost_ipvlan") and private and not _is_module(f"{module}.{imp}"):
                bad.append(f"{name}: from {module} import {imp}")
    assert not bad, bad
