"""A Daemon after ``close()``: the signal handlers stay on the loop, which runs once more
(``asyncio.Runner`` shutting down), so a SIGHUP queued by then must change nothing: a
reload would make again the ports, sockets and nftables rules close() removed."""

from __future__ import annotations

from typing import Any

from vhost_ipvlan.daemon.server import Daemon


class _Untouchable:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"used after close(): .{name}")


def test_a_sighup_after_close_changes_nothing() -> None:
    daemon = Daemon.__new__(Daemon)  # no loop, ports or masters: none may be used
    daemon.closed = True
    daemon.masters = _Untouchable()  # type: ignore[assignment]
    daemon.topology = _Untouchable()  # type: ignore[assignment]
    daemon.reload()
