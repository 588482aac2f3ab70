"""A slave's socket when accepting fails for want of resources: the daemon backs off.

``accept`` failing with EMFILE (the daemon out of descriptors), ENFILE, ENOBUFS or
ENOMEM leaves the connection queued and the socket readable; an event loop that kept
reading it would spin at full speed and starve every guest. The endpoint stops reading
it for ``ACCEPT_RETRY`` seconds and then takes the connection. The test ends the back-off
itself and looks at the loop's watched descriptors: nothing depends on timing.
"""

from __future__ import annotations

import concurrent.futures
import errno
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.wait import wait_until
from tests.unit.test_log_flood import Daemon
from vhost_ipvlan.daemon import endpoint

T = TypeVar("T")


class Refusing:
    """The listener, whose ``accept`` fails with ``err`` while ``refuse`` is set."""

    def __init__(self, sock: socket.socket, err: int) -> None:
        self.sock, self.err = sock, err
        self.refuse = True
        self.calls = 0

    def accept(self) -> tuple[socket.socket, Any]:
        self.calls += 1
        if self.refuse:
            raise OSError(self.err, "refused by the test")
        return self.sock.accept()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def on_loop(d: Daemon, f: Callable[[], T]) -> T:
    """``f()`` run on the daemon's loop thread (its state is the loop's)."""
    done: concurrent.futures.Future[T] = concurrent.futures.Future()
    d.loop.call_soon_threadsafe(lambda: done.set_result(f()))
    return done.result(10)


@pytest.mark.parametrize("err", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
def test_accept_out_of_resources_backs_off_then_takes_the_connection(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    """One failed accept, then the socket is no longer watched (no spin) until the
    back-off ends; then the queued connection is taken."""
    monkeypatch.setattr(endpoint, "ACCEPT_RETRY", 600.0)  # ended by the test, not by time
    d = Daemon(tmp_path / "s.sock", "acc")
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener = d.endpoint.listener
        assert listener is not None
        refusing = Refusing(listener, err)
        on_loop(d, lambda: setattr(d.endpoint, "listener", refusing))
        client.connect(str(d.endpoint.path))  # queued: the socket is readable from now on
        wait_until(lambda: on_loop(d, lambda: d.endpoint._retry is not None), 5, 0.005, what="the back-off")
        watched = on_loop(d, lambda: listener.fileno() in d.loop._selector.get_map())  # type: ignore[attr-defined]
        assert not watched and refusing.calls == 1  # one accept, then the socket is left alone
        refusing.refuse = False

        def resume() -> None:
            retry = d.endpoint._retry
            assert retry is not None
            retry.cancel()
            d.endpoint._resume_accepting()

        on_loop(d, resume)
        wait_until(lambda: d.endpoint.conn is not None, 5, 0.01, what="the connection taken")
        assert refusing.calls == 2
    finally:
        client.close()
        d.close()
