"""A slave's socket when accepting fails for want of resources: the daemon backs off.

``accept`` failing with EMFILE (the daemon out of descriptors), ENFILE, ENOBUFS or
ENOMEM leaves the connection queued and the socket readable; an event loop that kept
reading it would spin at full speed and starve every guest. The endpoint stops reading
it for ``ACCEPT_RETRY`` seconds and then takes the connection.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.support.wait import wait_until
from tests.unit.test_log_flood import Daemon
from vhost_ipvlan.daemon import endpoint


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


@pytest.mark.parametrize("err", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
def test_accept_out_of_resources_backs_off_then_takes_the_connection(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    monkeypatch.setattr(endpoint, "ACCEPT_RETRY", 0.3, raising=False)
    d = Daemon(tmp_path / "s.sock", "acc")
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener = d.endpoint.listener
        assert listener is not None
        refusing = Refusing(listener, err)
        d.endpoint.listener = refusing  # type: ignore[assignment]
        client.connect(str(d.endpoint.path))  # queued: the socket is readable from now on
        wait_until(lambda: refusing.calls >= 1, 5, 0.005, what="an accept")
        wait_until(lambda: d.endpoint._retry is not None, 5, 0.005, what="the back-off")
        calls = refusing.calls
        # the loop does not spin on the readable socket while it backs off
        wait_until(lambda: refusing.calls > calls, 2, 0.01, what="the retry after the back-off")
        assert refusing.calls <= calls + 2
        refusing.refuse = False
        wait_until(lambda: d.endpoint.conn is not None, 5, 0.01, what="the connection taken")
        assert refusing.calls <= calls + 4  # a few retries in all, not thousands
    finally:
        client.close()
        d.close()
