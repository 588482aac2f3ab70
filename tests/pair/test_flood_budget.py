"""A flood costs the burst one unit per copy: one guest's broadcasts cannot hold the loop.

Audit follow-up (bench/hostile.py): a burst was bounded in frames taken, but a
multicast or broadcast frame is copied into every other guest's RX ring, so a
burst of BURST group frames cost BURST x guests deliveries. Each copy now counts
against the burst's budget, from a guest's TX ring and from the wire alike; and a
group frame longer than the master's MTU (GSO or not) is dropped ``mtu_exceeded``
before it is copied anywhere (the wire could not carry it either).
"""

from __future__ import annotations

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.pair.test_fastpath import A4, A, both_ways, drain_until_idle, make_port, outcome
from vhost_ipvlan.daemon import device
from vhost_ipvlan.vhost_user import codec
from vhost_ipvlan.vhost_user.codec import Request

BCAST = "ff:ff:ff:ff:ff:ff"


def broadcast(tag: bytes, size: int = 0) -> bytes:
    frame = bytes(Ether(src=A, dst=BCAST) / IP(src=A4, dst="10.0.0.255") / UDP(sport=1, dport=2) / tag)
    return frame + bytes(max(0, size - len(frame)))


def test_flooded_copies_count_against_the_burst() -> None:
    frames = 200

    def scenario() -> dict[str, object]:
        p = make_port()
        try:
            a = p.frontends["a"]
            for i in range(frames):
                a.transmit(broadcast(b"b%d" % i))
            drains = drain_until_idle(p)
            return {"drains": [taken for _, taken, _ in drains], **outcome(p)}
        finally:
            p.close()

    result = both_ways(scenario)
    taken = result["drains"]
    assert isinstance(taken, list)
    # two other guests (b, c): each frame costs 1 + 2 copies
    assert taken[0] == -(-device.BURST // 3)
    assert taken[-1] == frames
    received = result["received"]
    assert isinstance(received, dict)
    assert len(received["b"]) == len(received["c"]) == frames


def test_a_group_frame_over_the_mtu_is_not_copied() -> None:
    def scenario() -> dict[str, object]:
        p = make_port()
        try:
            p.frontends["a"].transmit(broadcast(b"big", 4000))
            p.frontends["a"].transmit(broadcast(b"small"))
            drain_until_idle(p)
            return outcome(p)
        finally:
            p.close()

    result = both_ways(scenario)
    received, drops = result["received"], result["drops"]
    assert isinstance(received, dict) and isinstance(drops, dict)
    assert [len(f) for _, f in received["b"]] == [len(broadcast(b"small"))]
    assert drops["a"][0] == {"mtu_exceeded": 1}


def test_a_flood_follows_the_guests_up_state() -> None:
    """The flood walks a list of the up guests (``PortDatapath.receivers``): it must
    follow every change, a disabled or re-enabled RX ring, a front-end gone, a slave removed."""
    def scenario() -> dict[str, object]:
        p = make_port()
        try:
            a, b, c = (p.frontends[n] for n in "abc")
            copies: list[tuple[int, int]] = []

            def broadcast_once(tag: bytes) -> None:
                a.transmit(broadcast(tag))
                drain_until_idle(p)
                copies.append((len(b.receive()), len(c.receive())))

            b.send(Request.SET_VRING_ENABLE, codec.VRING_STATE.pack(0, 0))  # b's RX ring disabled
            broadcast_once(b"b disabled")
            b.send(Request.SET_VRING_ENABLE, codec.VRING_STATE.pack(0, 1))
            broadcast_once(b"b enabled")
            b.send(Request.SET_VRING_ENABLE, codec.VRING_STATE.pack(0, 0))
            broadcast_once(b"b disabled again")
            b.send(Request.SET_VRING_ENABLE, codec.VRING_STATE.pack(0, 1))
            session = p.device("c").session
            assert session is not None
            session.close()  # c's front-end gone: its rings stopped
            broadcast_once(b"c gone")
            p.device("c").detach()
            broadcast_once(b"c detached")
            b_dev = p.device("b")
            p.port.remove_slave(b_dev.slave)
            del p.dp.devices["b"]
            del p.frontends["b"]
            broadcast_once(b"b removed")
            return {"copies": copies, **outcome(p)}
        finally:
            p.close()
            b.close()

    result = both_ways(scenario)
    assert result["copies"] == [(0, 1), (1, 1), (0, 1), (1, 0), (1, 0), (0, 0)]
