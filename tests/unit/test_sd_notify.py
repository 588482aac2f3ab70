"""``sd_notify``: the datagram systemd's ``Type=notify`` waits for, to a real socket.

``$NOTIFY_SOCKET`` is a path, or ``@name`` for the abstract namespace (systemd's own
default since v254); unset, or a socket nobody reads, must not stop the daemon.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from vhost_ipvlan.daemon.server import sd_notify


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.settimeout(10)
    try:
        yield s
    finally:
        s.close()


def test_path_socket(receiver: socket.socket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    receiver.bind(str(tmp_path / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    sd_notify("READY=1")
    sd_notify("STOPPING=1")
    assert receiver.recv(64) == b"READY=1"
    assert receiver.recv(64) == b"STOPPING=1"


def test_abstract_socket(receiver: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"vhost-ipvlan-test-{secrets.token_hex(6)}"
    receiver.bind(f"\0{name}")
    monkeypatch.setenv("NOTIFY_SOCKET", f"@{name}")
    sd_notify("READY=1")
    assert receiver.recv(64) == b"READY=1"


def test_unset_or_unreachable_is_quiet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    sd_notify("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    sd_notify("READY=1")
