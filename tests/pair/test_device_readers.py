"""The device's kick readers follow the session's rings: none is left behind (audit 4, r8/r8b, r13).

A fake front-end drives a real ``Session`` and ``NetDevice`` in-process; the event
loop only records which descriptors have a reader.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from tests.support.frontend import MEM_SIZE, UVA_BASE, FakeFrontend
from tests.support.inproc import MASTER_MAC, _Host, _Timer, _Uplink
from vhost_ipvlan.daemon.datapath import PortDatapath
from vhost_ipvlan.daemon.device import NetDevice
from vhost_ipvlan.errors import FrontendError
from vhost_ipvlan.switch.port import Port
from vhost_ipvlan.vhost_user import codec
from vhost_ipvlan.vhost_user.codec import Request
from vhost_ipvlan.vhost_user.session import RX, TX, Session
from vhost_ipvlan.virtio import net


class RecordingLoop:
    def __init__(self) -> None:
        self.readers: dict[int, Callable[..., object]] = {}

    def add_reader(self, fd: int, callback: Callable[..., object], *args: object) -> None:
        self.readers[fd] = callback

    def remove_reader(self, fd: int) -> bool:
        return self.readers.pop(fd, None) is not None

    def call_soon(self, *args: object) -> None:
        pass

    def call_later(self, *args: object) -> _Timer:
        return _Timer()


class Rig:
    def __init__(self) -> None:
        self.loop = RecordingLoop()
        port = Port("inproc", MASTER_MAC, "l2", "bridge")
        self.dp = PortDatapath(port, _Uplink(), self.loop)
        slave = port.add_slave("c", [], mac=bytes.fromhex("02000000000c"))
        self.dev = self.dp.devices["c"] = NetDevice(slave, self.dp)
        self.session = Session(_Host(), self.dev)
        self.dev.attach(self.session)
        self.fe = FakeFrontend()
        self.fe.transport = self._transport

    def _transport(self, data: bytes, fds: list[int]) -> bytes | None:
        request, flags, _ = codec.decode_header(data)
        msg = codec.Message(request, flags, data[codec.HEADER_SIZE :], [os.dup(fd) for fd in fds])
        reply = self.session.handle(msg)
        return None if reply is None else reply[codec.HEADER_SIZE :]


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.session.close()
    r.fe.close()


def test_bad_mem_table_then_close_leaves_no_reader_and_no_ring(rig: Rig) -> None:
    rig.fe.setup()
    kicks = {v.kick_fd for v in rig.session.vrings}
    assert set(rig.loop.readers) == kicks and rig.dev.rx is not None and rig.dev.slave.up
    region = codec.MEM_REGION.pack(0, MEM_SIZE, UVA_BASE + (1 << 40), 0)  # the rings are not in it
    with pytest.raises(FrontendError, match="vring 0"):
        rig.fe.send(Request.SET_MEM_TABLE, codec.MEM_HEADER.pack(1, 0) + region, [rig.fe.fd])
    assert rig.dev.rx is None and rig.dev.tx is None and not rig.dev.slave.up
    assert rig.loop.readers == {}
    rig.session.close()
    rig.dev.detach()
    assert rig.loop.readers == {}


def test_kick_descriptor_that_fails_to_read_is_no_longer_watched(rig: Rig) -> None:
    rig.fe.setup()
    for which, handler in ((RX, rig.dev._rx_kick), (TX, rig.dev._tx_kick)):
        fd = rig.session.vrings[which].kick_fd
        assert fd is not None and fd in rig.loop.readers
        os.close(fd)  # reads now fail with EBADF: the reader must go, not fire forever
        handler(fd, which)
        assert fd not in rig.loop.readers
        rig.session.vrings[which].kick_fd = None  # already closed


def test_the_frame_buffer_is_made_when_the_tx_queue_starts_and_kept(rig: Rig) -> None:
    """A slave whose guest never started its TX queue holds no 64 KiB buffer; one that
    did keeps it (a plain attribute: the data path reads it once per frame)."""
    assert len(rig.dev.buf) == 0
    rig.fe.setup()
    buf = rig.dev.buf
    assert len(buf) == net.MAX_BUFFER and rig.dev.view.obj is buf
    rig.session.close()
    rig.dev.detach()
    assert rig.dev.buf is buf
