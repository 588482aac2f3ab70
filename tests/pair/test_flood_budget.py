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
