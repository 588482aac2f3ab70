"""Multiqueue guests in-process: N queue pairs, each ring enabled on its own, RX by flow.

Guest b has two queue pairs (``FakeFrontend(queues=2)``); a and c have one. The
scenarios run with the C accelerator and in pure Python, and must agree.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether

from tests.support.flows import random_flow
from tests.support.inproc import MASTER_MAC, InprocPort, _Host, pure_python
from vhost_ipvlan.daemon import fastpath
from vhost_ipvlan.drops import DropReason, counts
from vhost_ipvlan.net.frames import flow_hash
from vhost_ipvlan.vhost_user.session import Session

A, B, C = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
A4, B4, C4 = "10.0.0.10", "10.0.0.11", "10.0.0.12"
MASTER = ":".join(f"{b:02x}" for b in MASTER_MAC)
FLOWS = 16

PATHS = ["pure"] + (["fast"] if fastpath.accelerated() else [])


def path(which: str) -> AbstractContextManager[None]:
    return pure_python() if which == "pure" else nullcontext()


def make_port(b_enabled: int = 2) -> InprocPort:
    def ip(t: str) -> bytes:
        return ipaddress.ip_address(t).packed

    def mac(t: str) -> bytes:
        return bytes.fromhex(t.replace(":", ""))

    return InprocPort([("a", [ip(A4)], mac(A)), ("b", [ip(B4)], mac(B)), ("c", [ip(C4)], mac(C))],
                      queues={"b": (2, b_enabled)})


@pytest.fixture(params=PATHS)
def port(request: pytest.FixtureRequest) -> Iterator[InprocPort]:
    with path(request.param):
        p = make_port()
        try:
            yield p
        finally:
            p.close()


def flow(i: int, seq: int, src: str = A, src4: str = A4) -> bytes:
    return bytes(Ether(src=src, dst=B) / IP(src=src4, dst=B4) / UDP(sport=1000 + i, dport=53) / seq.to_bytes(2, "big"))


def send_flows(p: InprocPort, per_flow: int = 3) -> None:
    a = p.frontends["a"]
    for seq in range(per_flow):
        for i in range(FLOWS):
            a.transmit(flow(i, seq))
        p.device("a").drain_tx()
        a.reclaim_tx()


def by_flow(frames: list[tuple[bytes, bytes]]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for _hdr, frame in frames:
        pkt = Ether(frame)
        out.setdefault(pkt[UDP].sport - 1000, []).append(int.from_bytes(bytes(pkt[UDP].payload)[:2], "big"))
    return out


def test_flows_spread_over_the_enabled_rings_each_flow_in_one_ring_in_order(port: InprocPort) -> None:
    send_flows(port)
    rings = port.frontends["b"].receive_all()
    flows = [by_flow(r) for r in rings]
    assert all(flows), "both RX rings get flows"
    assert set(flows[0]).isdisjoint(flows[1]) and set(flows[0]) | set(flows[1]) == set(range(FLOWS))
    assert all(seqs == [0, 1, 2] for f in flows for seqs in f.values())  # every frame, in order
    for ring, f in enumerate(flows):  # the ring is the flow hash's choice
        assert all(flow_hash(flow(i, 0)) % 2 == ring for i in f)
    stats = port.device("b").queue_stats()
    assert stats["queue_pairs"] == 2 and stats["queue_pairs_enabled"] == 2
    per_queue = stats["per_queue"]
    assert isinstance(per_queue, list)
    assert [q["rx_packets"] for q in per_queue] == [sum(map(len, f.values())) for f in flows]
    assert port.device("b").counters()["rx_packets"] == 3 * FLOWS


def test_only_enabled_rings_receive_and_enabling_a_pair_takes_it_into_use() -> None:
    for which in PATHS:
        with path(which):
            p = make_port(b_enabled=1)
            try:
                b = p.frontends["b"]
                send_flows(p, per_flow=1)
                assert len(b.receive(0)) == FLOWS and b.receive(1) == []
                assert p.device("b").queue_stats()["queue_pairs_enabled"] == 1
                b.enable_pair(1)
                send_flows(p, per_flow=1)
                assert b.receive(0) and b.receive(1)
                b.enable_pair(0, False)  # the guest may use pair 1 alone
                send_flows(p, per_flow=1)
                assert b.receive(0) == [] and len(b.receive(1)) == FLOWS
            finally:
                p.close()


def test_no_enabled_ring_is_rx_not_ready_and_the_slave_down(port: InprocPort) -> None:
    b = port.frontends["b"]
    b.enable_pair(0, False)
    assert port.device("b").slave.up
    b.enable_pair(1, False)
    assert not port.device("b").slave.up
    port.frontends["a"].transmit(bytes(Ether(src=A, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=A, psrc=A4, pdst=B4)))
    port.device("a").drain_tx()
    assert b.receive_all() == [[], []]


def test_enabling_and_disabling_a_ring_of_several_pairs_is_logged(port: InprocPort,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """The guest's choice of pairs (ethtool -L) shows in the log, ring by ring, once per change."""
    with caplog.at_level("INFO", logger="vhost_ipvlan.daemon.device"):
        port.frontends["b"].enable_pair(1, False)
        port.frontends["b"].enable_pair(1, False)
        port.frontends["b"].enable_pair(1, True)
    lines = [r.getMessage() for r in caplog.records if "queue" in r.getMessage()]
    assert lines == ["slave b: rx1 queue disabled", "slave b: tx1 queue disabled",
                     "slave b: rx1 queue enabled", "slave b: tx1 queue enabled"]


def test_every_tx_ring_is_switched(port: InprocPort) -> None:
    b, c = port.frontends["b"], port.frontends["c"]
    for pair in (0, 1):
        b.transmit(bytes(Ether(src=B, dst=C) / IP(src=B4, dst=C4) / UDP(dport=7) / bytes([pair])), pair=pair)
    port.device("b").drain_tx()
    got = [bytes(Ether(f)[UDP].payload) for _h, f in c.receive()]
    assert got == [b"\x00", b"\x01"]
    per_queue = port.device("b").queue_stats()["per_queue"]
    assert isinstance(per_queue, list) and [q["tx_packets"] for q in per_queue] == [1, 1]


def test_a_disabled_tx_ring_is_drained_and_its_frames_discarded(port: InprocPort) -> None:
    b, c = port.frontends["b"], port.frontends["c"]
    b.enable_pair(1, False)
    b.transmit(bytes(Ether(src=B, dst=C) / IP(src=B4, dst=C4) / UDP(dport=7)), pair=1)
    port.device("b").drain_tx()
    assert c.receive() == []
    assert b.txqs[1].used_idx() == 1  # taken and given back, not left in the ring


def test_a_broken_rx_ring_leaves_the_other_pair_serving() -> None:
    for which in PATHS:
        with path(which):
            p = make_port()
            try:
                b = p.frontends["b"]
                victim = flow_hash(flow(0, 0)) % 2
                b.rxqs[victim].make_available(b.rxq.num + 5)  # a head beyond the ring: GuestError
                send_flows(p, per_flow=1)
                dev = p.device("b")
                assert dev.drops[DropReason.QUEUE_BROKEN] == 1 and dev.slave.up
                assert [pp.rx is None for pp in dev.pairs] == [victim == 0, victim == 1]
                send_flows(p, per_flow=1)
                assert len(b.receive(1 - victim)) >= FLOWS  # every flow now goes to the one ring left
            finally:
                p.close()


def run_both(scenario: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for which in PATHS:
        with path(which):
            p = make_port(b_enabled=1 if scenario == "one" else 2)
            try:
                send_flows(p)
                p.frontends["b"].transmit(bytes(Ether(src=B, dst=A) / IP(src=B4, dst=A4) / UDP()), pair=1)
                p.device("b").drain_tx()
                out[which] = {
                    "received": {n: fe.receive_all() for n, fe in p.frontends.items()},
                    "counters": {n: d.counters() for n, d in p.dp.devices.items()},
                    "queues": {n: d.queue_stats() for n, d in p.dp.devices.items()},
                }
            finally:
                p.close()
    return out


@pytest.mark.skipif(not fastpath.accelerated(), reason="the C accelerator is not built")
@pytest.mark.parametrize("scenario", ["one", "two"])
def test_the_accelerator_agrees_with_python(scenario: str) -> None:
    out = run_both(scenario)
    assert out["fast"] == out["pure"]


def test_a_reconnection_keeps_the_device_totals() -> None:
    """The pairs (and their counters) are the connection's; the device's totals are not:
    what the accelerator delivered on the last connection's rings stays counted."""
    for which in PATHS:
        with path(which):
            p = make_port(b_enabled=1)  # one ready ring: the accelerator delivers to b
            try:
                send_flows(p, per_flow=1)
                dev = p.device("b")
                assert dev.counters()["rx_packets"] == FLOWS
                assert dev.session is not None
                dev.session.close()
                dev.detach()
                dev.attach(Session(_Host(), dev))
                assert dev.counters()["rx_packets"] == FLOWS
                assert dev.queue_stats()["per_queue"] == [
                    {"rx": "stopped", "tx": "stopped", "rx_packets": 0, "tx_packets": 0}] * 2
            finally:
                p.close()


# -- many random flows into a 2-pair guest, from a guest and from the wire: C and Python alike --

OUT, OUT_MAC = "02:99:00:00:00:01", bytes.fromhex("029900000001")
A4S, B4S = [A4, "10.0.1.10", "10.0.2.10"], [B4, "10.0.1.11", "10.0.2.11"]
A6S, B6S = ["fd00::10", "fd00::1:10"], ["fd00::11", "fd00::1:11"]
OUT4S, OUT6S = ["192.0.2.1", "198.51.100.7", "203.0.113.9"], ["2001:db8::1", "2001:db8:1::5"]


def make_many_address_port() -> InprocPort:
    def ips(*groups: list[str]) -> list[bytes]:
        return [ipaddress.ip_address(t).packed for g in groups for t in g]

    def mac(t: str) -> bytes:
        return bytes.fromhex(t.replace(":", ""))

    return InprocPort([("a", ips(A4S, A6S), mac(A)), ("b", ips(B4S, B6S), mac(B)), ("c", ips([C4]), mac(C))],
                      queues={"b": (2, 2)})


def random_flows(origin: str, count: int = 600) -> list[bytes]:
    """``count`` frames for b (one in eight for c) from guest a or from the wire (with
    the 10-byte virtio_net_hdr the uplink reads), of every kind ``random_flow`` draws."""
    rng = random.Random(23)
    out: list[bytes] = []
    for i in range(count):
        to_c = i % 8 == 7
        dst_mac, dsts4, dsts6 = (C, [C4], []) if to_c else (B, B4S, B6S)
        if origin == "guest":
            out.append(random_flow(rng, A, dst_mac, A4S, dsts4, A6S, dsts6))
        else:
            to = dst_mac if i % 3 == 0 else MASTER
            out.append(bytes(10) + random_flow(rng, OUT, to, OUT4S, dsts4, OUT6S, dsts6))
    return out


def run_flows(origin: str, frames: list[bytes]) -> tuple[dict[str, object], list[int]]:
    """What every guest received per ring, in order, with the counters and drops; and
    how many frames the accelerator itself delivered into each of b's rings."""
    p = make_many_address_port()
    try:
        p.port.wire_macs.add(OUT_MAC)
        received: dict[str, list[list[tuple[bytes, bytes]]]] = {n: [[] for _ in fe.rxqs]
                                                                for n, fe in p.frontends.items()}
        for i in range(0, len(frames), 50):
            if origin == "guest":
                for f in frames[i : i + 50]:
                    p.frontends["a"].transmit(f)
                p.device("a").drain_tx()
                p.frontends["a"].reclaim_tx()
            else:
                p.uplink.inject(*frames[i : i + 50])
                p.dp._uplink_readable()
            for n, fe in p.frontends.items():
                for ring, got in enumerate(fe.receive_all()):
                    received[n][ring] += got
        outcome = {
            "received": received,
            "counters": {n: d.counters() for n, d in p.dp.devices.items()},
            "queues": {n: d.queue_stats() for n, d in p.dp.devices.items()},
            "drops": {n: counts(d.drops) for n, d in p.dp.devices.items()},
            "port_drops": counts(p.dp.drops),
            "uplink": p.uplink.sent,
        }
        return outcome, [fastpath.counts(pair.fast_rx)[0] for pair in p.device("b").pairs]
    finally:
        p.close()


@pytest.mark.skipif(not fastpath.accelerated(), reason="the C accelerator is not built")
@pytest.mark.parametrize("origin", ["guest", "wire"])
def test_c_puts_every_flow_into_python_s_ring(origin: str) -> None:
    """A 2-pair guest: the same frames in the same rings in the same order, the same
    counters per ring, with and without C; C itself delivers into both rings (the
    frames it does not take, ICMPv6 and IPv6 extension headers, go through Python
    and land in the same ring)."""
    frames = random_flows(origin)
    fast, by_c = run_flows(origin, frames)
    with pure_python():
        pure, by_python = run_flows(origin, frames)
    assert fast == pure
    assert by_python == [0, 0] and min(by_c) > 50, by_c
    received = fast["received"]
    assert isinstance(received, dict)
    b_rings = received["b"]
    assert sum(map(len, b_rings)) > 400 and all(b_rings)
    for ring, got in enumerate(b_rings):  # the flow hash's choice, every frame
        assert all(flow_hash(f) % 2 == ring for _h, f in got)
