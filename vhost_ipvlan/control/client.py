"""A blocking client of the control socket (the CLI uses it; so do the tests).

Rules: one request at a time on one connection; the old default path
(``LEGACY_SOCKET``, in the socket directory) means the new one (``DEFAULT_SOCKET``,
in its own root-only directory) when that exists; a daemon refusal is a
``RemoteError`` carrying the protocol's ``code`` and one-line ``message``; a
socket problem (no daemon, connection dropped) is a ``ControlUnavailable``.
"""

from __future__ import annotations

import itertools
import json
import socket
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from ..errors import ControlUnavailable, RemoteError
from . import protocol

DEFAULT_SOCKET = Path("/run/vhost-ipvlan/ctl/control.sock")  # ctl/: 0700 root, nobody else can swap it
LEGACY_SOCKET = Path("/run/vhost-ipvlan/control.sock")  # before 2026-12: hooks installed then name it


def resolve(path: Path) -> Path:
    """``path``, except the old default when the new default exists (a hook installed earlier)."""
    if path == LEGACY_SOCKET and DEFAULT_SOCKET.exists():
        return DEFAULT_SOCKET
    return path


class Client:
    def __init__(self, path: Path = DEFAULT_SOCKET, timeout: float = 30) -> None:
        path = resolve(path)
        self.path = path
        self._ids = itertools.count(1)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except OSError as e:
            self.sock.close()
            raise ControlUnavailable(f"cannot connect to the daemon at {path}: {e.strerror or e}") from None
        self._file = self.sock.makefile("rb")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()
        self.sock.close()

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Send one request and return its result; raise ``RemoteError`` for a refusal."""
        rid = next(self._ids)
        try:
            self.sock.sendall(protocol.request(rid, method, params))
            line = self._file.readline(protocol.MAX_LINE * 64)
        except OSError as e:
            raise ControlUnavailable(f"connection to the daemon at {self.path} failed: {e}") from None
        if not line.endswith(b"\n"):
            raise ControlUnavailable(f"the daemon at {self.path} closed the connection")
        reply = json.loads(line)
        if "error" in reply:
            err = reply["error"]
            raise RemoteError(str(err.get("code")), str(err.get("message")))
        return reply["result"]
