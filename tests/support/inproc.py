"""An in-process port: the real ``PortDatapath``/``NetDevice``/switch, fake guests, no sockets.

Each guest is a ``FakeFrontend`` whose vhost-user messages go straight into a
``Session``; the event loop is never run (readers are not registered), so a test
drives the data path by calling ``NetDevice.drain_tx`` itself. Used by the
differential tests of the C accelerator and by the microbenchmark.
"""

from __future__ import annotations

import mmap
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from tests.support.frontend import FakeFrontend
from vhost_ipvlan.daemon import fastpath
from vhost_ipvlan.daemon.datapath import PortDatapath
from vhost_ipvlan.daemon.device import NetDevice
from vhost_ipvlan.daemon.host import eventfd_problem
from vhost_ipvlan.daemon.uplink import recv_vnet
from vhost_ipvlan.drops import DropReason
from vhost_ipvlan.switch.port import Port
from vhost_ipvlan.vhost_user import codec
from vhost_ipvlan.vhost_user.session import Session

if TYPE_CHECKING:
    from tests.support.vethuplink import VethUplink

MASTER_MAC = bytes.fromhex("020000000001")
NEXT_HOP_MAC = bytes.fromhex("0200000000fe")


class _Host:
    def map_region(self, fd: int, size: int, offset: int) -> memoryview:
        return memoryview(mmap.mmap(fd, offset + size))[offset : offset + size]

    def close_fd(self, fd: int) -> None:
        os.close(fd)

    def fence(self) -> None:
        pass

    def eventfd_problem(self, fd: int) -> str | None:
        return eventfd_problem(fd)


class _Uplink:
    """The master (a ``seams.UplinkPort``) as one end of a datagram socket pair.

    Both Python (``send``, ``recv``) and the C accelerator (``batch_fd``: sendmmsg,
    recvmmsg) use that end, one datagram per frame (10-byte ``virtio_net_hdr`` +
    Ethernet frame, as AF_PACKET with PACKET_VNET_HDR has it). ``sent`` reads what
    went out from the other end, ``inject`` writes frames from the wire into it;
    ``refuse`` closes it: every send fails.
    """

    master = "inproc"
    ifindex = 0

    def __init__(self) -> None:
        self._sent: list[bytes] = []
        self.sock, self._peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s, opt, force in ((self.sock, socket.SO_SNDBUF, 32), (self._peer, socket.SO_RCVBUF, 33)):
            try:
                s.setsockopt(socket.SOL_SOCKET, force, 16 << 20)  # SO_*BUFFORCE (root)
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, opt, 16 << 20)
        self.sock.setblocking(False)
        self._peer.setblocking(False)

    @property
    def sent(self) -> list[bytes]:
        """Every frame sent so far, in order."""
        if self._peer.fileno() >= 0:
            while True:
                try:
                    self._sent.append(self._peer.recv(1 << 17))
                except BlockingIOError:
                    break
        return self._sent

    def refuse(self) -> None:
        self._peer.close()

    def inject(self, *datagrams: bytes) -> None:
        """Frames arriving from the wire: 10-byte virtio_net_hdr + Ethernet frame each."""
        for d in datagrams:
            self._peer.send(d)

    def fileno(self) -> int:
        return -1

    def batch_fd(self) -> int:
        return self.sock.fileno()

    def batch_rx(self) -> int:
        return self.batch_fd()

    def recv(self, buf: memoryview) -> int:
        return recv_vnet(self.sock, buf)

    def send(self, buf: memoryview, length: int) -> bool:
        try:
            self.sock.sendmsg((buf[:10], buf[12:length]))
        except OSError:
            return False
        return True

    def close(self) -> None:
        self.sock.close()
        self._peer.close()


class FakeHostLink:
    """The host's stack (a ``seams.HostPort``) without a tap: ``queue`` holds frames
    (12-byte header + Ethernet) for the port to read, ``sent`` what it wrote."""

    name = "inproc-host"
    mac = bytes.fromhex("0200000000f0")

    def __init__(self) -> None:
        self.queue: list[bytes] = []
        self.sent: list[bytes] = []
        self.rx_packets = self.tx_packets = 0
        self.synced = 0

    def fileno(self) -> int:
        return -1

    def recv(self, buf: memoryview) -> int:
        if not self.queue:
            return 0
        data = self.queue.pop(0)
        buf[: len(data)] = data
        self.rx_packets += 1
        return len(data)

    def send(self, buf: memoryview, length: int) -> bool:
        buf[12:18] = self.mac
        self.sent.append(bytes(buf[:length]))
        self.tx_packets += 1
        return True

    def sync(self) -> None:
        self.synced += 1

    def enable_forwarding(self) -> None:
        pass

    def needs_forwarding(self, family: int, index: int, master_index: int) -> bool:
        return False

    def check_forwarding(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Timer:
    def cancel(self) -> None:
        pass


class _Loop:
    """Just enough of an event loop (a ``seams.Loop``) for the data path when nothing
    runs it: readers, callbacks and timers are accepted and never fire."""

    def add_reader(self, fd: int, callback: Callable[..., object], *args: object) -> None:
        pass

    def remove_reader(self, fd: int) -> bool:
        return False

    def call_soon(self, callback: Callable[..., object], *args: object) -> None:
        pass

    def call_later(self, delay: float, callback: Callable[..., object], *args: object) -> _Timer:
        return _Timer()


class FixedRouter:
    """l3 next hops without netlink: every destination resolves to ``mac``."""

    def __init__(self, mac: bytes) -> None:
        self.mac = mac
        self.asked: list[bytes] = []

    def next_hop_mac(self, dst: bytes, guest: str = "") -> bytes:
        self.asked.append(dst)
        return self.mac

    def invalidate(self, master_index: int | None = None) -> None:
        pass

    def close(self) -> None:
        pass

    def hold(self, dst: bytes, guest: str, frame: memoryview) -> DropReason | None:
        return DropReason.NEIGH_UNRESOLVED  # nothing is ever being resolved


class InprocPort:
    def __init__(self, guests: list[tuple[str, list[bytes], bytes | None]], *, mergeable: bool = True,
                 event_idx: bool = True, flag: str = "bridge", mode: str = "l2",
                 queues: dict[str, tuple[int, int]] | None = None,
                 uplink: Callable[[], VethUplink] | None = None) -> None:
        """``queues``: guest name -> (queue pairs, how many of them the guest enables); default (1, 1).
        ``event_idx``: whether the front-ends take VIRTIO_RING_F_EVENT_IDX (DPDK's split rings do not).
        ``uplink``: makes the master (``vethuplink.VethUplink``); default a socket pair."""
        self.port = Port("inproc", MASTER_MAC, mode, flag)
        self.uplink: _Uplink | VethUplink = _Uplink() if uplink is None else uplink()
        self.dp = PortDatapath(self.port, self.uplink, _Loop())
        self.router = FixedRouter(NEXT_HOP_MAC)
        if mode != "l2":
            self.dp.router = self.router
        self.frontends: dict[str, FakeFrontend] = {}
        for name, addresses, mac in guests:
            slave = self.port.add_slave(name, addresses, mac=mac)
            pairs, enabled = (queues or {}).get(name, (1, 1))
            dev = NetDevice(slave, self.dp, queues=pairs)
            self.dp.devices[name] = dev
            session = Session(_Host(), dev)
            dev.attach(session)
            fe = FakeFrontend(mergeable=mergeable, event_idx=event_idx, queues=pairs, enabled=enabled)

            def transport(data: bytes, fds: list[int], session: Session = session) -> bytes | None:
                request, flags, _ = codec.decode_header(data)
                reply = session.handle(codec.Message(request, flags, data[codec.HEADER_SIZE :],
                                                     [os.dup(fd) for fd in fds]))
                return None if reply is None else reply[codec.HEADER_SIZE :]

            fe.transport = transport
            fe.setup()
            self.frontends[name] = fe

    def device(self, name: str) -> NetDevice:
        return self.dp.devices[name]

    def close(self) -> None:
        for name, fe in self.frontends.items():
            session = self.dp.devices[name].session
            if session is not None:
                session.close()
            fe.close()
        self.uplink.close()


@contextmanager
def pure_python() -> Iterator[None]:
    """Run the data path without the C accelerator."""
    saved = fastpath.ext
    fastpath.ext = None
    try:
        yield
    finally:
        fastpath.ext = saved


def burst_from_threads(ports: list[InprocPort], frames: list[list[bytes]], rounds: int,
                       after_round: Callable[[int], None] | None = None,
                       meanwhile: Callable[[], None] | None = None) -> None:
    """Guest a of ``ports[k]`` transmits ``frames[k]`` ``rounds`` times on a thread of its own
    per port, all starting together, one drain per round (the frames must fit a drain's
    budget), then ``after_round(k)`` on that thread; ``meanwhile()`` runs again and again on
    the calling thread until they end. Raises the first exception a thread raised."""
    start = threading.Barrier(len(ports))
    errors: list[BaseException] = []

    def drive(k: int) -> None:
        try:
            fe, dev = ports[k].frontends["a"], ports[k].device("a")
            start.wait()
            for _ in range(rounds):
                for f in frames[k]:
                    fe.transmit(f)
                dev.drain_tx()
                fe.reclaim_tx()
                if after_round is not None:
                    after_round(k)
        except BaseException as e:  # raised below, on the calling thread
            errors.append(e)

    threads = [threading.Thread(target=drive, args=(k,)) for k in range(len(ports))]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        if meanwhile is not None:
            meanwhile()
        threads[0].join(0.01)
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
