"""The exception tree (``vhost_ipvlan.errors``): one module, one root, the real cause
reaches the control API's client, each code documented; the control server's method tables."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fuzz.h_control import fake_io, handle, make_server
from vhost_ipvlan import errors
from vhost_ipvlan.control import protocol
from vhost_ipvlan.control.server import _answerable

PACKAGE = Path(errors.__file__).resolve().parent
ROOT = PACKAGE.parent


def _classes_raised_elsewhere() -> list[str]:
    """Public exception classes defined outside errors.py (``_Private`` control flow is allowed)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_") and any(
                    ast.unparse(b).rsplit(".", 1)[-1].endswith(("Error", "Exception", "Conflict")) for b in node.bases):
                found.append(f"{path.relative_to(PACKAGE)}: {node.name}")
    return found


def test_every_exception_class_is_in_errors_py() -> None:
    assert _classes_raised_elsewhere() == []


def test_one_root_and_no_builtin_mixin() -> None:
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, BaseException)]
    for c in classes:
        assert issubclass(c, errors.VhostIpvlanError), c
        assert [b for b in c.__mro__ if b.__module__ == "builtins"] == [Exception, BaseException, object], c


def test_at_keeps_the_class_and_adds_the_key_path() -> None:
    e = errors.AddressInUse("address 192.0.2.1 is already in use").at("params.addresses")
    assert type(e) is errors.AddressInUse and e.code == "address_in_use"
    assert str(e) == "params.addresses: address 192.0.2.1 is already in use"


def _call(server: Any, method: str, params: dict[str, Any]) -> dict[str, Any]:
    line = json.dumps({"id": 1, "method": method, "params": params}).encode()
    answer: dict[str, Any] = handle(server, line)
    return answer


def test_a_refused_address_change_reports_its_real_cause() -> None:
    """slave.change with an address the switch refuses as not unicast (class E passes the
    config's parser) used to be reported as address_in_use."""
    with fake_io():
        server = make_server()
        _call(server, "port.add", {"master": "eth0"})
        for name, addr in (("a", "192.0.2.10/24"), ("b", "192.0.2.11/24")):
            assert "result" in _call(server, "slave.add", {"master": "eth0", "name": name,
                                                           "socket": f"/nonexistent/{name}.sock", "addresses": [addr]})
        answer = _call(server, "slave.change", {"name": "a", "addresses": ["192.0.2.10/24", "240.0.0.1/32"]})
        assert answer["error"]["code"] == "invalid_params", answer
        assert answer["error"]["message"] == "params.addresses: 240.0.0.1 cannot be a slave address (not unicast)"
        answer = _call(server, "slave.change", {"name": "a", "addresses": ["192.0.2.11/24"]})
        assert answer["error"]["code"] == "address_in_use", answer


def test_committed_error_code_table_is_the_generators_output() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_error_codes.py")], capture_output=True,
                         text=True, check=True).stdout
    assert (ROOT / "docs" / "control-api.md").read_text() == out, (
        "docs/control-api.md is stale: python3 scripts/gen_error_codes.py --write")


@pytest.mark.parametrize(("line", "code"), [
    (b"{", "bad_request"),
    (b'{"method": "nope"}', "unknown_method"),
    (b'{"method": "stats", "params": []}', "invalid_params"),
    (b"x" * (protocol.MAX_LINE + 1), "request_too_large"),
])
def test_protocol_refusals_carry_their_class_code(line: bytes, code: str) -> None:
    with pytest.raises(errors.RequestError) as info:
        protocol.parse(line)
    assert info.value.code == code


def test_unexpected_exceptions_are_answered_with_a_code() -> None:
    assert type(_answerable("port.add", OSError(28, "No space left on device"))) is errors.StateError
    try:
        raise KeyError("x")
    except KeyError as e:
        assert type(_answerable("port.add", e)) is errors.InternalError
    refusal = errors.NotFound("params.name: no slave named 'x'")
    assert _answerable("slave.remove", refusal) is refusal


def test_the_dispatch_tables_serve_every_method_once() -> None:
    with fake_io():
        server = make_server()
    queries, changes = set(server._queries), set(server._changes)
    assert not queries & changes
    assert queries | changes == set(protocol.METHODS)


def test_errors_py_is_importable_by_the_pure_core() -> None:
    tree = ast.parse((PACKAGE / "errors.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "re", "typing"}


def _drawn_tree() -> list[tuple[int, str]]:
    """(depth, name) of each class drawn in errors.py's docstring."""
    out = []
    for line in (errors.__doc__ or "").splitlines():
        text = line.strip(" |")
        if text == "VhostIpvlanError":
            out.append((0, text))
        elif text.startswith("+-- "):
            out.append(((line.index("+--") - 5) // 5 + 1, text[4:].split()[0]))
    return out


def _real_tree(cls: type[BaseException], depth: int = 0) -> list[tuple[int, str]]:
    out = [(depth, cls.__name__)]
    for sub in cls.__subclasses__():
        if sub.__module__ == errors.__name__:
            out += _real_tree(sub, depth + 1)
    return out


def test_the_drawn_tree_is_the_tree() -> None:
    assert _drawn_tree() == _real_tree(errors.VhostIpvlanError)
