"""The uplink's RX ring (``daemon/uplink.py`` RxRing, ``_fastpath.c`` ring_t) on a real veth.

The differential tests of ``test_fastpath.py`` with the master a real packet socket:
the frames from the wire reach the same guests, with the same drops and counters,
whether C reads the RX ring, C reads the socket (recvmmsg: ``VHOST_IPVLAN_RING=0`` or
a kernel that refuses the ring), or Python reads it (pure Python); frames longer than
a ring slot (jumbo, GSO) arrive whole; closing the uplink unmaps the ring.
Needs root (namespaces).
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
from functools import partial
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from tests.pair.test_fastpath import B4, MASTER, OUT, OUT4, B, flat, mac, make_port, run_from_wire, wire_frames
from tests.support.inproc import MASTER_MAC, pure_python
from tests.support.netns import link_down, link_up
from tests.support.vethuplink import VethUplink
from vhost_ipvlan.daemon import fastpath, uplink
from vhost_ipvlan.drops import counts
from vhost_ipvlan.virtio import net

pytestmark = [
    pytest.mark.skipif(not fastpath.accelerated(), reason="the C accelerator is not built"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

MTU = 9000


def sendable(frames: list[bytes]) -> list[bytes]:
    """The datagrams a packet socket can put on the veth: no runt, nothing longer than
    the MTU unless it is a GSO frame."""
    return [d for d in frames if len(d) >= 10 + 14 and (len(d) - 10 <= 14 + MTU or d[1] != 0)]


def big_frames() -> list[bytes]:
    """Frames longer than a ring slot (2048 bytes): jumbo UDP and a GSO TCP frame of 60 kB."""
    hdr = bytes(10)
    out = Ether(src=OUT, dst=MASTER) / IP(src=OUT4, dst=B4)
    gso = struct.pack("<BBHHHH", net.HDR_F_NEEDS_CSUM, net.GSO_TCPV4, 54, 1448, 34, 16)
    return [hdr + bytes(out / UDP(sport=9, dport=7) / (b"j" * n)) for n in (2100, 5000, 8900)] + \
        [gso + bytes(out / TCP(sport=9, dport=7) / (b"g" * 60000))]


def veth(ring: bool | None) -> partial[VethUplink]:
    return partial(VethUplink, MASTER_MAC, ring=ring, mtu=MTU)


def three_ways(frames: list[bytes], **kw: object) -> tuple[dict[str, object], dict[str, object], dict[str, object]]:
    """run_from_wire with C on the ring, C on the socket (recvmmsg), pure Python."""
    ring = run_from_wire(frames, uplink=veth(True), **kw)  # type: ignore[arg-type]
    mmsg = run_from_wire(frames, uplink=veth(False), **kw)  # type: ignore[arg-type]
    with pure_python():
        pure = run_from_wire(frames, uplink=veth(None), **kw)  # type: ignore[arg-type]
    return ring, mmsg, pure


@pytest.mark.parametrize(("mode", "flag", "b_queues"), [
    ("l2", "bridge", 1), ("l2", "private", 1), ("l2", "vepa", 1), ("l3", "bridge", 1), ("l3s", "bridge", 1),
    ("l2", "bridge", 2), ("l2", "vepa", 2)])
def test_the_ring_recvmmsg_and_python_give_the_guests_the_same_frames(mode: str, flag: str, b_queues: int) -> None:
    frames = sendable(wire_frames()) + big_frames()
    ring, mmsg, pure = three_ways(frames, mode=mode, flag=flag, b_queues=b_queues)
    assert ring == mmsg == pure
    if mode == "l2":
        assert ring["uplink_rx"] == len(frames)


def test_frames_longer_than_a_ring_slot_arrive_whole() -> None:
    """Jumbo and GSO frames do not fit a 2048-byte slot: the kernel queues them whole
    on the socket (TP_STATUS_COPY) and C reads them from there, in order."""
    frames = big_frames()
    small = bytes(10) + bytes(Ether(src=OUT, dst=MASTER) / IP(src=OUT4, dst=B4) / UDP(sport=9, dport=7) / b"s")
    mixed = [small, frames[0], small, frames[1], small, frames[2], small, frames[3], small]
    ring, _, pure = three_ways(mixed, before=lambda p: p.port.wire_macs.add(mac(OUT)))
    assert ring == pure
    received = ring["received"]
    assert isinstance(received, dict)
    got = [f for _, f in flat(received["b"])]
    assert [len(f) for f in got] == [len(d) - 10 for d in mixed]
    assert [f[14:] for f in got] == [d[24:] for d in mixed]
    assert all(f[:6] == mac(B) for f in got)


def test_the_ring_is_used_and_torn_down_on_close() -> None:
    """With C the uplink reads a ring (counted in its stats); close unmaps it (the
    socket's mapping leaves /proc/self/maps) and closes the socket."""
    v = VethUplink(MASTER_MAC, mtu=MTU)
    try:
        up = v.uplink
        assert (up.rx_mechanism, up.ring_bytes) == ("ring", 4 << 20)
        inode = os.fstat(up.fileno()).st_ino
        assert f"socket:[{inode}]" in Path("/proc/self/maps").read_text()
        ring = up.ring
        assert ring is not None
    finally:
        v.close()
    assert up.ring is None and up.sock.fileno() == -1 and ring.map.closed
    assert f"socket:[{inode}]" not in Path("/proc/self/maps").read_text()


@pytest.mark.parametrize("why", ["refused", "disabled", "pure"])
def test_without_a_ring_the_socket_is_read(why: str, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """The kernel refusing the ring (here: a slot size that is not a multiple of 16, a
    real EINVAL) is logged once and leaves the socket readable: C's recvmmsg and
    Python's recv take the frames. ``VHOST_IPVLAN_RING=0`` and pure Python read the
    socket too."""
    expected = "recvmmsg"
    if why == "refused":
        monkeypatch.setattr(uplink, "RING_FRAME_SIZE", 2040)
    elif why == "disabled":
        monkeypatch.setenv("VHOST_IPVLAN_RING", "0")
    else:
        monkeypatch.setattr(fastpath, "ext", None)
        expected = "recvmsg"
    with caplog.at_level(logging.WARNING, logger="vhost_ipvlan.daemon.uplink"):
        v = VethUplink(MASTER_MAC, mtu=MTU)
    try:
        assert (v.uplink.rx_mechanism, v.uplink.ring_bytes) == (expected, 0)
        assert ("no RX ring" in caplog.text) == (why == "refused")
        frames = [bytes(10) + bytes(Ether(src=OUT, dst=MASTER) / IP(src=OUT4, dst=B4) / UDP() / b"x"), *big_frames()]
        v.inject(*frames)
        buf = memoryview(bytearray(net.MAX_BUFFER))
        got = []
        for _ in frames:
            n = v.recv(buf)
            got.append(bytes(buf[12:n]))
        assert got == [d[10:] for d in frames] and v.recv(buf) == 0
    finally:
        v.close()


@pytest.mark.parametrize("ring", [True, False])
def test_the_master_going_down_is_one_read_error_then_frames_flow(ring: bool) -> None:
    """The kernel leaves ENETDOWN on the socket when the master goes down; recvmmsg
    returns it once. The ring path takes it off the same way (one uplink_read_error, the
    burst ends), else poll would report POLLERR for ever and the daemon spin on it."""
    p = make_port(uplink=veth(ring))
    try:
        v = p.uplink
        assert isinstance(v, VethUplink) and v.uplink.rx_mechanism == ("ring" if ring else "recvmmsg")
        p.port.wire_macs.add(mac(OUT))
        link_down(v.host, "vim0")
        link_up(v.host, "vim0")
        frame = bytes(Ether(src=OUT, dst=MASTER) / IP(src=OUT4, dst=B4) / UDP(sport=9, dport=7) / b"after")
        v.inject(bytes(10) + frame)
        p.dp._uplink_readable()
        assert counts(p.dp.drops) == {"uplink_read_error": 1}
        poller = select.poll()
        poller.register(v.fileno(), select.POLLIN)
        assert poller.poll(0) == [(v.fileno(), select.POLLIN)]  # the frame; the error is gone
        p.dp._uplink_readable()
        assert [f for _, f in p.frontends["b"].receive()] == [mac(B) + frame[6:]]
        assert poller.poll(0) == [] and counts(p.dp.drops) == {"uplink_read_error": 1}
    finally:
        p.close()


@pytest.mark.parametrize("ring", [True, False])
def test_frames_the_kernel_dropped_at_a_full_socket_are_counted(ring: bool) -> None:
    """Frames from the wire that find the master's socket full (its 2048-slot RX ring,
    or without one its receive buffer, made small here) are dropped by the kernel and
    counted: ``socket_counts`` (``rx_dropped`` in the master's stats) sums the kernel's
    PACKET_STATISTICS, which restart at each read; frames read afterwards add none."""
    v = VethUplink(MASTER_MAC, ring=ring, mtu=MTU)
    try:
        up = v.uplink
        assert up.socket_counts() == (0, 0)
        if not ring:
            up.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel's minimum and a bit
        frame = bytes(10) + bytes(Ether(src=OUT, dst=MASTER) / IP(src=OUT4, dst=B4) / UDP() / b"x")
        sent = 2400 if ring else 300
        for _ in range(sent // 100):  # in steps the veth's backlog always takes
            v.inject(*[frame] * 100)
        taken, dropped = up.socket_counts()
        assert taken == sent
        if ring:
            assert dropped == sent - uplink.RING_FRAMES  # every slot held a frame
        else:
            assert 0 < dropped < sent
        assert up.socket_counts() == (taken, dropped)  # a second read adds nothing
        buf = memoryview(bytearray(net.MAX_BUFFER))
        got = 0
        while up.recv(buf) > 0:
            got += 1
        assert got == sent - dropped
        v.inject(frame)
        assert up.recv(buf) > 0
        assert up.socket_counts() == (sent + 1, dropped)
    finally:
        v.close()
    assert v.uplink.socket_counts() == (sent + 1, dropped)  # closed: the last counts
