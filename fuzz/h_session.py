"""Harness (a): a vhost-user message stream into a ``Session`` (codec + state machine).

Input: ``u16 ramlen, ram[ramlen]`` (the start of every guest memory file), then
records ``ctl u8, header[12], payload[size]``: ``ctl & 3`` file descriptors ride
along with the message, of kind ``ctl >> 2 & 3`` (0..1 memory file of
``SIZES[ctl >> 4 & 3]`` bytes, 2 eventfd, 3 anything else: not mappable).
Descriptors are fake numbers owned by a fake ``Host``; mapping is an anonymous
mmap (lazily zero) with ``ram`` at its start. The device is the daemon's
``NetDevice`` on an l2 bridge port (fake loop and uplink): after every message its
TX ring is drained and a frame delivered to its RX ring.

Invariants beyond "no crash":
- ``decode_header`` and ``handle`` raise nothing but ``FrontendError``;
- a reply is a well-formed REPLY-flagged message for the same request;
- the session maps and closes only descriptors it was given and has not closed,
  each exactly once, and after ``close()`` (what the daemon does when it drops the
  connection, after any error) nothing it was given is left open;
- the data path on the session's rings raises nothing (a broken ring is counted).
"""

from __future__ import annotations

import mmap
from typing import Any

from vhost_ipvlan.daemon.datapath import PortDatapath
from vhost_ipvlan.daemon.device import NetDevice
from vhost_ipvlan.errors import FrontendError
from vhost_ipvlan.switch.port import Port
from vhost_ipvlan.vhost_user import codec
from vhost_ipvlan.vhost_user.session import Session, Vring

from .common import IdleLoop, Reader, WireSink, check

SIZES = (64 << 10, 1 << 20, 8 << 20, 16 << 20)
FD_BASE = 1 << 20  # fake descriptor numbers: never a real open fd
KIND_MEM, KIND_EVENT, KIND_OTHER = 0, 2, 3


class FakeHost:
    def __init__(self, ram: bytes) -> None:
        self.ram = ram
        self.open: dict[int, tuple[int, int]] = {}  # fd -> (kind, file size)
        self.next_fd = FD_BASE

    def new_fd(self, kind: int, size: int) -> int:
        fd = self.next_fd
        self.next_fd += 1
        self.open[fd] = (kind, size)
        return fd

    def map_region(self, fd: int, size: int, offset: int) -> memoryview:
        check(fd in self.open, f"map_region of fd {fd}, which is not open")
        kind, fsize = self.open[fd]
        if kind >= KIND_EVENT:
            raise OSError(19, "No such device")  # mmap of an eventfd or a socket
        if size <= 0 or offset < 0 or offset + size > fsize:
            raise OSError(22, "Invalid argument")  # the fake: no mapping past the file's end
        m = mmap.mmap(-1, fsize)
        m[: len(self.ram)] = self.ram
        return memoryview(m)[offset : offset + size]

    def close_fd(self, fd: int) -> None:
        check(fd in self.open, f"close_fd({fd}): not open (closed twice, or never given)")
        del self.open[fd]

    def fence(self) -> None:
        pass

    def eventfd_problem(self, fd: int) -> str | None:
        check(fd in self.open, f"eventfd_problem({fd}): not open")
        return None if self.open[fd][0] == KIND_EVENT else "a memory file, not an eventfd"

    def __getattr__(self, name: str) -> Any:  # a Host method this fake does not know yet
        raise AttributeError(f"FakeHost has no {name}: teach fuzz/h_session.py the Host protocol")


class FakeDevice(NetDevice):
    """The daemon's ``NetDevice`` (on an l2 bridge port, fake loop and uplink) that also
    checks it is told of starts and stops in step."""

    def __init__(self) -> None:
        port = Port("fuzz", bytes.fromhex("020000000001"), "l2", "bridge")
        slave = port.add_slave("a", [bytes([10, 0, 0, 10])], mac=bytes.fromhex("02000000000a"))
        dp = PortDatapath(port, WireSink(), IdleLoop())
        super().__init__(slave, dp)
        dp.devices["a"] = self
        self.started: set[int] = set()

    def vring_started(self, vring: Vring) -> None:
        check(vring.queue is not None, "vring_started without a queue")
        check(vring.index not in self.started, f"vring {vring.index} started twice")
        self.started.add(vring.index)
        super().vring_started(vring)

    def vring_stopped(self, vring: Vring) -> None:
        check(vring.index in self.started, f"vring {vring.index} stopped but not started")
        self.started.discard(vring.index)
        super().vring_stopped(vring)


def _check_reply(request: int, reply: bytes) -> None:
    check(len(reply) >= codec.HEADER_SIZE, "reply shorter than a header")
    req, flags, size = codec.HEADER.unpack_from(reply)
    check(req == request, f"reply to {request} says request {req}")
    check(flags & codec.FLAG_VERSION_MASK == codec.FLAG_VERSION and flags & codec.FLAG_REPLY, "reply flags")
    check(size == len(reply) - codec.HEADER_SIZE, "reply size field")


ARP = bytes(12) + bytes.fromhex("ffffffffffff02000000000a0806") + bytes(28)


def _exercise(device: FakeDevice) -> None:
    """The data path on the session's rings: drain TX, deliver one frame to RX."""
    device.drain_tx()
    device.deliver(memoryview(bytearray(ARP)))
    device.flush_rx()


def test_one_input(data: bytes) -> None:
    r = Reader(data)
    host = FakeHost(r.take(min(r.u16(), 16384)))
    device = FakeDevice()
    session = Session(host, device)
    device.attach(session)
    given: list[int] = []
    try:
        while r.left() >= 1 + codec.HEADER_SIZE:
            ctl = r.u8()
            header = r.take(codec.HEADER_SIZE)
            request, flags, size = codec.decode_header(header)
            payload = r.take(size)
            if len(payload) < size:
                break  # the connection ends mid-message
            kind = (ctl >> 2) & 3
            fds = [host.new_fd(kind, SIZES[(ctl >> 4) & 3]) for _ in range(ctl & 3)]
            given.extend(fds)
            reply = session.handle(codec.Message(request, flags, payload, fds))
            check(not fds, "handle left descriptors in the message")
            if reply is not None:
                _check_reply(request, reply)
            _exercise(device)
    except FrontendError:
        pass
    for vring in session.vrings:
        check(vring.started == (vring.index in device.started), f"vring {vring.index}: device out of step")
        for fd in (vring.kick_fd, vring.call_fd, vring.err_fd):
            check(fd is None or fd in host.open, f"vring {vring.index} keeps fd {fd}, already closed")
    session.close()
    leaked = [fd for fd in given if fd in host.open]
    check(not leaked, f"descriptors left open after close(): {leaked}")
    check(not device.started, "vrings still started after close()")
