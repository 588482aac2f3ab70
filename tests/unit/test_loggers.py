"""Every module logs under its own name (``logging.getLogger(__name__)``), so a logger
name says which file wrote the line and a test's ``caplog`` names the module."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "vhost_ipvlan"
THIRD_PARTY = ("pyroute2", "qemu.qmp")  # their loggers, quietened by us


def test_loggers_are_named_by_module() -> None:
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("getLogger"):
                arg = ast.unparse(node.args[0]) if node.args else ""
                if arg != "__name__" and arg.strip("'\"") not in THIRD_PARTY:
                    bad.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: getLogger({arg})")
    assert bad == []
