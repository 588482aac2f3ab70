"""Listening sockets get their mode and owner without a path another user can swap (audit 5, r10).

The race of r10 is simulated deterministically: right after ``bind()`` an "attacker"
with write access to the socket's directory moves the fresh socket away and plants a
symlink to a victim file at its name (and swaps any staging directory for a symlink
to a directory of its own). The victim file must keep its mode and group.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from vhost_ipvlan.control.server import ControlServer
from vhost_ipvlan.daemon.endpoint import Endpoint
from vhost_ipvlan.errors import UplinkError

GID = 12345


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    target = tmp_path / "shadow"
    target.write_text("root:secret\n")
    target.chmod(0o640)
    os.chown(target, 0, 0)
    return target


def attack_after_bind(monkeypatch: pytest.MonkeyPatch, directory: Path, name: str, target: Path) -> None:
    real = socket.socket.bind
    evil = directory.parent / "evil"

    def bind(self: socket.socket, address: Any) -> None:
        real(self, address)
        final = directory / name
        if final.exists() or final.is_symlink():
            final.rename(directory / f"{name}.moved")
        final.symlink_to(target)
        for entry in list(directory.iterdir()):  # a staging directory: swap it for one of ours
            if entry.is_dir() and not entry.is_symlink():
                evil.mkdir(exist_ok=True)
                for n in ("s", name):
                    if not (evil / n).is_symlink():
                        (evil / n).symlink_to(target)
                entry.rename(directory / f"{entry.name}.away")
                entry.symlink_to(evil)

    monkeypatch.setattr(socket.socket, "bind", bind)


def unchanged(target: Path) -> None:
    st = target.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, 0)
    assert target.read_text() == "root:secret\n"


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_slave_socket_symlink_swap_leaves_the_target_alone(tmp_path: Path, victim: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           loop: asyncio.AbstractEventLoop) -> None:
    sockdir = tmp_path / "sockets"
    sockdir.mkdir()
    device: Any = SimpleNamespace(slave=SimpleNamespace(name="vm1"))
    ep = Endpoint(sockdir / "vm1.sock", "server", device, loop, 0o660, -1, GID)
    attack_after_bind(monkeypatch, sockdir, "vm1.sock", victim)
    ep.start()
    monkeypatch.undo()
    try:
        unchanged(victim)
        st = (sockdir / "vm1.sock").lstat()  # the daemon's socket, not the planted link
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == GID
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(str(sockdir / "vm1.sock"))
    finally:
        ep.close()


def test_control_socket_symlink_swap_leaves_the_target_alone(tmp_path: Path, victim: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    ctl = tmp_path / "ctl"
    ctl.mkdir(mode=0o700)
    server = ControlServer(ctl / "control.sock", None, dict)  # type: ignore[arg-type]
    attack_after_bind(monkeypatch, ctl, "control.sock", victim)
    server.bind()
    monkeypatch.undo()
    try:
        unchanged(victim)
        st = (ctl / "control.sock").lstat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    finally:
        assert server.sock is not None
        server.sock.close()


def test_stale_socket_is_replaced_and_other_files_are_not(tmp_path: Path,
                                                          loop: asyncio.AbstractEventLoop) -> None:
    device: Any = SimpleNamespace(slave=SimpleNamespace(name="vm1"))
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "vm1.sock"))
    stale.close()
    ep = Endpoint(tmp_path / "vm1.sock", "server", device, loop)
    ep.start()
    assert ep.listener is not None
    ep.close()
    (tmp_path / "vm1.sock").write_text("not a socket")
    with pytest.raises(UplinkError, match=r"^slave vm1: .*vm1.sock exists and is not a socket$"):
        Endpoint(tmp_path / "vm1.sock", "server", device, loop).start()
    assert (tmp_path / "vm1.sock").read_text() == "not a socket"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vm1.sock"]  # no staging directory left


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o1777])
def test_control_socket_refused_in_a_directory_others_can_write(tmp_path: Path, mode: int) -> None:
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    ctl.chmod(mode)
    server = ControlServer(ctl / "control.sock", None, dict)  # type: ignore[arg-type]
    with pytest.raises(UplinkError, match=r"^control socket .*: its directory .* is mode \d+ \(group/other-writable\)"):
        server.bind()
    assert not (ctl / "control.sock").exists()


@pytest.mark.parametrize(("peer", "attached"), [((None, None), True), ((0, 0), True), ((0, None), True),
                                                ((12345, None), False), ((None, 12345), False)])
def test_a_slave_pinned_to_a_peer_refuses_other_processes(tmp_path: Path, loop: asyncio.AbstractEventLoop,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           peer: tuple[int | None, int | None],
                                                           attached: bool) -> None:
    """audit 12: any process in group kvm could connect to an idle slave and be it."""
    device: Any = SimpleNamespace(slave=SimpleNamespace(name="vm1"))
    mine = (os.geteuid(), os.getegid())  # 0 in the parameters: this process's id
    uid, gid = (mine[i] if v == 0 else v for i, v in enumerate(peer))
    ep = Endpoint(tmp_path / "vm1.sock", "server", device, loop, peer=(uid, gid))
    got: list[socket.socket] = []
    monkeypatch.setattr(ep, "_attach", got.append)
    ep.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(str(tmp_path / "vm1.sock"))
            ep._accept()
            assert bool(got) == attached
            if not attached:
                assert c.recv(1) == b""  # closed by the daemon
    finally:
        for s in got:
            s.close()
        ep.close()


def test_client_role_never_blocks_on_a_full_backlog(tmp_path: Path, loop: asyncio.AbstractEventLoop,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A front-end listening (libvirt mode='server') that fills its own backlog and
    never accepts: the daemon's blocking connect() hung the event loop forever."""
    path = tmp_path / "vm1.sock"
    device: Any = SimpleNamespace(slave=SimpleNamespace(name="vm1"))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(0)
        fillers = []
        for _ in range(4):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(str(path))
            except BlockingIOError:
                pass
            fillers.append(s)
        ep = Endpoint(path, "client", device, loop)
        got: list[socket.socket] = []
        monkeypatch.setattr(ep, "_attach", got.append)
        attempt = threading.Thread(target=ep._connect, daemon=True)  # a thread: the old code never returned
        try:
            attempt.start()
            attempt.join(10)
            assert not attempt.is_alive(), "connect() blocked the event loop"
            assert not got and ep._retry is not None  # no connection; a retry is scheduled
        finally:
            for s in fillers:
                s.close()
    attempt.join(10)
    ep.close()


def test_refused_peers_are_logged_within_a_budget(tmp_path: Path, loop: asyncio.AbstractEventLoop,
                                                  caplog: pytest.LogCaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A process in group kvm connecting in a loop to a pinned slave logged one
    WARNING per attempt (log flooding, audit 12)."""
    from vhost_ipvlan.daemon import endpoint
    from vhost_ipvlan.daemon.lograte import RateLimitedLog

    monkeypatch.setattr(endpoint, "_refusals", RateLimitedLog(endpoint.log))  # a fresh budget
    device: Any = SimpleNamespace(slave=SimpleNamespace(name="vm1"))
    ep = Endpoint(tmp_path / "vm1.sock", "server", device, loop, peer=(os.geteuid() + 1, None))
    ep.start()
    try:
        with caplog.at_level("WARNING", logger="vhost_ipvlan.daemon.endpoint"):
            for _ in range(50):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
                    c.connect(str(tmp_path / "vm1.sock"))
                    ep._accept()
        refused = [r for r in caplog.records if "refused a front-end" in r.getMessage()]
        assert 1 <= len(refused) <= 10
    finally:
        ep.close()


def test_client_role_never_connects_through_a_symlink(tmp_path: Path, loop: asyncio.AbstractEventLoop,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """QEMU-listens sockets sit in a directory group kvm can write: a hostile QEMU
    linked its socket's name to another VM's listening socket, and the root daemon
    connected there (that VM's QEMU became this slave)."""
    qemu = tmp_path / "qemu"
    qemu.mkdir()
    device: Any = SimpleNamespace(slave=SimpleNamespace(name="vm1"))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other_vm:
        other_vm.bind(str(qemu / "vm2.sock"))
        other_vm.listen(1)
        (qemu / "vm1.sock").symlink_to(qemu / "vm2.sock")
        ep = Endpoint(qemu / "vm1.sock", "client", device, loop)
        got: list[socket.socket] = []
        monkeypatch.setattr(ep, "_attach", got.append)
        try:
            ep._connect()
            assert not got and ep._retry is not None
            (qemu / "vm1.sock").unlink()
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as vm1:
                vm1.bind(str(qemu / "vm1.sock"))
                vm1.listen(1)
                ep._connect()  # a real socket at the path: connected
                assert len(got) == 1
        finally:
            for s in got:
                s.close()
            ep.close()
