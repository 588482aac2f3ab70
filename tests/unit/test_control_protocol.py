"""Control protocol decoding and the state file's round trip (pure)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from vhost_ipvlan.config import load, parse, to_data
from vhost_ipvlan.control import protocol, state
from vhost_ipvlan.errors import RequestError

GOOD = {"port": [{"master": "veth0", "slave": [
    {"name": "vm1", "socket": "/run/a \"q\" \\ é.sock", "addresses": ["192.0.2.10/24", "2001:db8::10/64"]},
    {"name": "vm2", "socket": "/run/b.sock", "socket_mode": "client", "mac": "52:54:00:00:00:02"},
]}, {"master": "veth1"}]}


def test_state_round_trip(tmp_path: Path) -> None:
    cfg = parse(GOOD)
    path = tmp_path / "sub" / "state.toml"
    state.write(path, cfg)
    assert load(path) == cfg
    assert parse(tomllib.loads(state.dumps(cfg))) == cfg == parse(to_data(cfg))
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["state.toml"]


def test_state_keeps_the_daemon_table(tmp_path: Path) -> None:
    """Socket owner, group and mode survive a restart from the state file."""
    cfg = parse({**GOOD, "daemon": {"socket_owner": 0, "socket_group": 0, "socket_permissions": 0o600}})
    assert (cfg.daemon.socket_owner, cfg.daemon.socket_group, cfg.daemon.socket_permissions) == (0, 0, 0o600)
    state.write(tmp_path / "state.toml", cfg)
    assert load(tmp_path / "state.toml") == cfg


@pytest.mark.parametrize("adaptive", [0, 32, 500])
def test_state_always_records_adaptive_polling(tmp_path: Path, adaptive: int) -> None:
    """Its default changed (0, then 32): the state file records it whatever its value,
    and the daemon reads it back the same."""
    cfg = parse({**GOOD, "daemon": {"adaptive_poll_us": adaptive}})
    state.write(tmp_path / "state.toml", cfg)
    assert f"adaptive_poll_us = {adaptive}\n" in (tmp_path / "state.toml").read_text()
    assert state.load(tmp_path / "state.toml") == cfg == load(tmp_path / "state.toml")


def test_a_state_file_from_before_adaptive_polling_was_on_keeps_it_off(tmp_path: Path) -> None:
    """A state file without ``adaptive_poll_us`` was written while its default was 0 (an
    explicit 0 was left out): after an upgrade the daemon starts with it off, as before."""
    path = tmp_path / "state.toml"
    path.write_text(state.HEADER + '[daemon]\nsocket_permissions = 384\n\n[[port]]\nmaster = "veth1"\n')
    cfg = state.load(path)
    assert cfg.daemon.adaptive_poll_us == 0 and cfg.daemon.socket_permissions == 0o600
    assert load(path).daemon.adaptive_poll_us == 32  # a configuration file's default
    path.write_text(state.HEADER + '[[port]]\nmaster = "veth1"\n')
    assert state.load(path).daemon.adaptive_poll_us == 0


def test_request_parse() -> None:
    req = protocol.parse(b'{"id": 7, "method": "slave.remove", "params": {"name": "a"}}\n')
    assert (req.id, req.method, req.params) == (7, "slave.remove", {"name": "a"})
    assert protocol.parse(b'{"method": "stats"}').params == {}


@pytest.mark.parametrize(("line", "code", "rid"), [
    (b"{", "bad_request", None),
    (b'{"id": 3, "method": "x.y"}', "unknown_method", 3),
    (b'{"id": 3, "method": "stats", "params": 1}', "invalid_params", 3),
    (b'{"id": true, "method": "stats"}', "bad_request", None),
    (b'{"id": 1, "method": "stats", "jsonrpc": "2.0"}', "bad_request", 1),
    (b"x" * (protocol.MAX_LINE + 1), "request_too_large", None),
])
def test_request_errors(line: bytes, code: str, rid: object) -> None:
    with pytest.raises(RequestError) as info:
        protocol.parse(line)
    assert (info.value.code, info.value.id) == (code, rid)


def test_error_is_one_bounded_line() -> None:
    out = protocol.error(1, "invalid_params", "a\nb" + "x" * 5000)
    assert out.count(b"\n") == 1 and len(out) < protocol.MAX_MESSAGE + 100
