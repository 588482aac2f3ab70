"""The master as a real ``daemon.uplink.Uplink`` on a veth pair (needs root).

``VethUplink`` is a ``seams.UplinkPort`` for ``inproc.InprocPort`` whose wire is a veth
pair between two fresh namespaces: the daemon's end ``vim0`` (the master, with the
port's MAC) read and written by ``Uplink`` (its RX ring, or recvmmsg/recvmsg without
one), the outside's end ``vio0`` a packet socket with PACKET_VNET_HDR. ``inject``
sends datagrams (10-byte ``virtio_net_hdr`` + frame) from the outside and returns
once the master's socket has taken them all (PACKET_STATISTICS, with a deadline);
``sent`` reads what reached the outside (all the master sent); ``refuse`` takes
the master down (every send fails). IPv6 is off in both namespaces, so the
kernel itself sends nothing on the link. Both ends get a pfifo qdisc: a veth has
none (noqueue), and the kernel then drops a frame sent while the veth's TX queue is
stopped (QDISC_DROP, seen at times under load: a reply missing from ``sent``), where
a queue holds it; the wire in these tests loses nothing. Everything is deleted by ``close``, also
when the constructor fails.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import TypeVar

from pyroute2 import netns as pyroute2_netns

from vhost_ipvlan.daemon.uplink import PACKET_STATISTICS, SOL_PACKET, Uplink

from .netns import Netns, link_down, veth_pair
from .wait import wait_until

QUEUE = 10000  #: frames each end's qdisc holds while the veth's TX queue is stopped
T = TypeVar("T")


def in_netns(ns: Netns, make: Callable[[], T]) -> T:
    """``make()`` run inside ``ns`` (sockets it opens stay there)."""
    pyroute2_netns.pushns(ns.name)
    try:
        return make()
    finally:
        pyroute2_netns.popns()


def _outside_socket(dev: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.setsockopt(SOL_PACKET, 15, 1)  # PACKET_VNET_HDR
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((dev, 3))  # ETH_P_ALL
    s.setblocking(False)
    return s


class VethUplink:
    master = "vim0"

    def __init__(self, mac: bytes, *, ring: bool | None = None, mtu: int = 9000) -> None:
        self.host, self.out = Netns(), Netns()
        self._peer_count = 0
        self._sent: list[bytes] = []
        try:
            for ns in (self.host, self.out):
                ns.sysctl("net.ipv6.conf.all.disable_ipv6", 1)
                ns.sysctl("net.ipv6.conf.default.disable_ipv6", 1)
            veth_pair(self.host, "vim0", self.out, "vio0", a_mac=mac.hex(":"), mtu=mtu)
            for ns, dev in ((self.host, "vim0"), (self.out, "vio0")):
                with ns.ipr() as ipr:  # a queue: a veth's own is none, and it drops at times
                    ipr.tc("add", "pfifo", ns.ifindex(dev), handle="1:", limit=QUEUE)
            self.uplink = in_netns(self.host, lambda: Uplink("vim0", ring=ring))
            self.peer = in_netns(self.out, lambda: _outside_socket("vio0"))
        except BaseException:
            self.host.close()
            self.out.close()
            raise
        self.ifindex = self.uplink.ifindex

    def taken(self) -> int:
        """Frames the master's socket took so far (its ring or queue, or dropped)."""
        return self.uplink.socket_counts()[0]

    def inject(self, *datagrams: bytes) -> None:
        want = self.taken() + len(datagrams)
        for d in datagrams:
            self.peer.send(d)
        wait_until(lambda: self.taken() >= want, 10, 0.01, "the master took the frames")

    def _peer_taken(self) -> int:
        packets, _drops = struct.unpack("II", self.peer.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        self._peer_count += packets
        return self._peer_count

    def _master_tx(self) -> int:
        with self.host.ipr() as ipr:
            tx: int = ipr.get_links(self.host.ifindex("vim0"))[0].get_attr("IFLA_STATS64")["tx_packets"]
        return tx

    @property
    def sent(self) -> list[bytes]:
        """What the master sent, once all of it reached the outside's socket (the veth
        hands frames over in a softirq, which a loaded machine may defer)."""
        wait_until(lambda: self._peer_taken() >= self._master_tx(), 10, 0.01, "the outside got the frames")
        while True:
            try:
                self._sent.append(self.peer.recv(1 << 17))
            except BlockingIOError:
                return self._sent

    def refuse(self) -> None:
        """Every send fails from now on (the master is down: ENETDOWN)."""
        link_down(self.host, "vim0")

    def fileno(self) -> int:
        return self.uplink.fileno()

    def batch_fd(self) -> int:
        return self.uplink.batch_fd()

    def batch_rx(self) -> int | tuple[object, ...]:
        return self.uplink.batch_rx()

    def recv(self, buf: memoryview) -> int:
        return self.uplink.recv(buf)

    def send(self, buf: memoryview, length: int) -> bool:
        return self.uplink.send(buf, length)

    def close(self) -> None:
        self.uplink.close()
        self.peer.close()
        self.host.close()
        self.out.close()
