"""``rx_dropped``: the kernel's drops at the uplink's socket (PACKET_STATISTICS) are
never lost: what it counted since the last read is read as the socket closes, and a
master that goes and comes back goes on from its old socket's count."""

from __future__ import annotations

import asyncio
import errno
import struct
from types import SimpleNamespace
from typing import Any

import pytest

from vhost_ipvlan.daemon import master
from vhost_ipvlan.daemon.master import Master, MasterMonitor
from vhost_ipvlan.daemon.netlink import LinkState
from vhost_ipvlan.daemon.uplink import Uplink

MAC = b"\x02\x00\x00\x00\x00\x01"


class Stats:
    """A packet socket's PACKET_STATISTICS: ``pending`` until read, then restarted."""

    def __init__(self) -> None:
        self.pending = (0, 0)
        self.closed = False

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        if self.closed:
            raise OSError(errno.EBADF, "Bad file descriptor")
        data, self.pending = struct.pack("II", *self.pending), (0, 0)
        return data

    def close(self) -> None:
        self.closed = True

    def fileno(self) -> int:
        return -1 if self.closed else 99


def uplink_on(sock: Stats) -> Uplink:
    up = Uplink.__new__(Uplink)  # no interface: the socket is the fake
    up.sock, up.ring, up.master, up.ifindex = sock, None, "m0", 7  # type: ignore[assignment]
    up._taken = up._dropped = 0
    return up


def test_counts_not_yet_read_are_kept_when_the_socket_closes() -> None:
    sock = Stats()
    up = uplink_on(sock)
    sock.pending = (10, 4)
    assert up.socket_counts() == (10, 4)
    sock.pending = (5, 3)  # the kernel counted more, nobody read them before the master went
    up.close()
    assert up.socket_counts() == (15, 7)


def test_rx_dropped_goes_on_across_the_master_gone_and_back(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.new_event_loop()
    try:
        old_sock, new_sock = Stats(), Stats()
        port = SimpleNamespace(master="m0", master_mac=MAC, max_frame=0, by_addr={})
        dp: Any = SimpleNamespace(port=port, uplink=uplink_on(old_sock), hostlink=None, router=None, devices={},
                                  max_frame=0, wire_up=True)
        dp.close_uplink = lambda: dp.uplink.close()
        dp.open_uplink = lambda up: setattr(dp, "uplink", up)
        chain = SimpleNamespace(release=lambda: None, forget=lambda: None, reapply=lambda by_addr: None)
        mon = MasterMonitor(loop)
        mon.masters["m0"] = Master(dp, chain=chain, index=7)  # type: ignore[arg-type]
        old_sock.pending = (100, 40)
        assert mon.stats("m0")["rx_dropped"] == 40
        old_sock.pending = (10, 2)  # not read before the master goes
        mon.handle(LinkState("m0", 7, False, False, 1500, None))  # deleted
        assert mon.stats("m0")["rx_dropped"] == 42
        monkeypatch.setattr(master, "Uplink", lambda name: uplink_on(new_sock))
        mon.handle(LinkState("m0", 8, True, True, 1500, MAC))  # back, a new socket
        assert dp.uplink.sock is new_sock
        assert mon.stats("m0")["rx_dropped"] == 42  # never goes back
        new_sock.pending = (5, 1)
        assert mon.stats("m0")["rx_dropped"] == 43
    finally:
        loop.close()


def test_rx_dropped_is_absent_for_an_uplink_that_does_not_count() -> None:
    loop = asyncio.new_event_loop()
    try:
        port = SimpleNamespace(master="m0", master_mac=MAC)
        dp: Any = SimpleNamespace(port=port, uplink=object())
        mon = MasterMonitor(loop)
        mon.masters["m0"] = Master(dp, chain=None, index=7)  # type: ignore[arg-type]
        assert "rx_dropped" not in mon.stats("m0")
    finally:
        loop.close()
