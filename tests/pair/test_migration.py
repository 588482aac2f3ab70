"""A guest moving between two hosts (two ports, each with its own slave for the guest):
announcements on resume, and never a frame into both guests' rings.

Each ``InprocPort`` is one host's daemon; the guest's two slaves have the same
addresses and MAC. The source stops its rings as QEMU's source does at switch-over
(GET_VRING_BASE); the destination's rings then start at the bases the source
returned (SET_VRING_BASE), as QEMU's destination does.
"""

from __future__ import annotations

import os

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6ND_NA
from scapy.layers.l2 import ARP, Ether

from tests.support.inproc import MASTER_MAC, InprocPort, _Host
from vhost_ipvlan.daemon import device
from vhost_ipvlan.vhost_user import codec
from vhost_ipvlan.vhost_user.codec import Request
from vhost_ipvlan.vhost_user.session import Session

GUEST_MAC = bytes.fromhex("525400000020")
ADDRS = [bytes([192, 0, 2, 20]), bytes.fromhex("20010db8000000000000000000000020")]


def host() -> InprocPort:
    return InprocPort([("vm", ADDRS, GUEST_MAC)])


def stop_rings(p: InprocPort) -> list[int]:
    """GET_VRING_BASE on every ring (QEMU's source at switch-over); the bases returned."""
    fe = p.frontends["vm"]
    bases = []
    for i in range(len(fe.vqs)):
        reply = fe.send(Request.GET_VRING_BASE, codec.VRING_STATE.pack(i, 0), reply=True)
        assert reply is not None
        bases.append(codec.VRING_STATE.unpack(reply)[1])
    return bases


def start_rings(p: InprocPort, bases: list[int]) -> None:
    """SET_VRING_BASE + SET_VRING_KICK on every ring (QEMU's destination when the guest runs)."""
    fe = p.frontends["vm"]
    for i, base in enumerate(bases):
        fe.send(Request.SET_VRING_BASE, codec.VRING_STATE.pack(i, base))
        fe.send(Request.SET_VRING_KICK, codec.U64.pack(i), [fe.kick[i]])


def from_wire(p: InprocPort, tag: bytes) -> None:
    frame = Ether(src="02:00:00:00:00:99", dst=MASTER_MAC) / IP(src="192.0.2.1", dst="192.0.2.20") / UDP() / tag
    p.uplink.inject(bytes(10) + bytes(frame))
    p.dp._uplink_readable()


def received(p: InprocPort) -> list[bytes]:
    return [f[-3:] for _, f in p.frontends["vm"].receive()]


def test_a_fresh_guest_is_not_announced() -> None:
    p = host()
    try:
        assert p.device("vm").slave.up
        assert p.uplink.sent == [] and p.device("vm").announcements == 0
    finally:
        p.close()


def test_a_resuming_guest_is_announced_once_from_the_master_mac() -> None:
    p = host()
    try:
        stop_rings(p)
        assert not p.device("vm").slave.up
        start_rings(p, [7, 9])
        assert p.device("vm").slave.up
        sent = [Ether(d[10:]) for d in p.uplink.sent]
        assert [s.src for s in sent] == ["02:00:00:00:00:01"] * 2
        assert sent[0][ARP].psrc == sent[0][ARP].pdst == "192.0.2.20" and sent[0][ARP].hwsrc == "02:00:00:00:00:01"
        assert sent[1][ICMPv6ND_NA].tgt == "2001:db8::20"
        assert p.device("vm").announcements == 2 and p.dp.uplink_tx == 2
        stop_rings(p)  # the same connection stopping and resuming again: not announced twice
        start_rings(p, [7, 9])
        assert len(p.uplink.sent) == 2
    finally:
        p.close()


def test_a_frame_reaches_only_the_slave_whose_rings_run() -> None:
    src, dst = host(), host()
    try:
        stop_rings(dst)  # the destination's guest is not running yet
        received(src)
        for p in (src, dst):
            from_wire(p, b"one")  # both hosts see it (one LAN): only the running one delivers
        assert (received(src), received(dst)) == ([b"one"], [])
        bases = stop_rings(src)  # switch-over
        for p in (src, dst):
            from_wire(p, b"two")
        assert (received(src), received(dst)) == ([], [])
        start_rings(dst, bases)
        for p in (src, dst):
            from_wire(p, b"thr")
        assert (received(src), received(dst)) == ([], [b"thr"])
        assert dst.device("vm").slave.up and not src.device("vm").slave.up
    finally:
        src.close()
        dst.close()


def reconnect(p: InprocPort) -> None:
    """The front-end goes and a new connection sets the device up again (a new Session)."""
    dev = p.device("vm")
    old = dev.session
    assert old is not None
    old.close()
    session = Session(_Host(), dev)
    dev.attach(session)

    def transport(data: bytes, fds: list[int]) -> bytes | None:
        request, flags, _ = codec.decode_header(data)
        reply = session.handle(codec.Message(request, flags, data[codec.HEADER_SIZE :], [os.dup(fd) for fd in fds]))
        return None if reply is None else reply[codec.HEADER_SIZE :]

    p.frontends["vm"].transport = transport
    p.frontends["vm"].setup()


def test_a_front_end_reconnecting_at_a_non_zero_base_cannot_flood_the_wire(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each new connection resuming at a non-zero base is announced; a front-end doing it in
    a loop gets ``ANNOUNCE_BURST`` announcements at once, then one every
    ``ANNOUNCE_INTERVAL`` (a slave's announcement is one frame per address: up to 256)."""
    now = [1000.0]
    monkeypatch.setattr(device, "_clock", lambda: now[0])
    p = host()
    try:
        for _ in range(20):
            reconnect(p)  # (the fake front-end starts its rings at 0: stopped again, resumed at 7 and 9)
            stop_rings(p)
            start_rings(p, [7, 9])
            assert p.device("vm").slave.up
        assert len(p.uplink.sent) == 2 * device.ANNOUNCE_BURST
        now[0] += device.ANNOUNCE_INTERVAL
        reconnect(p)
        stop_rings(p)
        start_rings(p, [7, 9])
        assert len(p.uplink.sent) == 2 * device.ANNOUNCE_BURST + 2
    finally:
        p.close()
