"""The C accelerator changes nothing but speed: same deliveries, drops and counters.

Every scenario is run twice on an in-process port (real data path and switch,
fake guests): once with ``vhost_ipvlan._fastpath`` and once in pure Python.
"""

from __future__ import annotations

import ipaddress
import os
import random
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6ND_NS, IPv6
from scapy.layers.l2 import ARP, Ether

from tests.support import frontend
from tests.support.inproc import MASTER_MAC, NEXT_HOP_MAC, InprocPort, pure_python
from tests.support.vethuplink import VethUplink
from vhost_ipvlan.daemon import device, fastpath
from vhost_ipvlan.drops import DropReason, counts
from vhost_ipvlan.virtio import net

pytestmark = pytest.mark.skipif(not fastpath.accelerated(), reason="the C accelerator is not built")

A, B, C = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
A4, B4, C4 = "10.0.0.10", "10.0.0.11", "10.0.0.12"
A6, B6 = "fd00::10", "fd00::11"
MASTER = ":".join(f"{b:02x}" for b in MASTER_MAC)


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def make_port(flag: str = "bridge", mode: str = "l2", b_queues: int = 1,
              uplink: Callable[[], VethUplink] | None = None, event_idx: bool = True) -> InprocPort:
    """Guests a, b and c; b with ``b_queues`` queue pairs, every one enabled; ``uplink``
    and ``event_idx`` (the front-ends') as ``InprocPort``'s."""
    import ipaddress

    def ip(t: str) -> bytes:
        return ipaddress.ip_address(t).packed

    return InprocPort([
        ("a", [ip(A4), ip(A6)], mac(A)),
        ("b", [ip(B4), ip(B6)], mac(B)),
        ("c", [ip(C4)], mac(C)),
    ], flag=flag, mode=mode, queues={"b": (b_queues, b_queues)}, uplink=uplink, event_idx=event_idx)


def received_by(fe: frontend.FakeFrontend) -> object:
    """What a guest received: [(virtio_net_hdr, frame), ...], or with several queue
    pairs such a list per RX ring."""
    return fe.receive() if fe.queues == 1 else fe.receive_all()


def flat(received: object) -> list[tuple[bytes, bytes]]:
    """``received_by``'s frames, every ring's together."""
    assert isinstance(received, list)
    return [f for ring in received for f in ring] if received and isinstance(received[0], list) else received


CSUM_HDR = struct.pack("<BBHHHHH", net.HDR_F_NEEDS_CSUM, 0, 0, 0, 34, 6, 0)
Frames = list[tuple[bytes, bytes, bool]]  # (frame, virtio header, split descriptors)


def scenario() -> Frames:
    udp4 = Ether(src=A, dst=B) / IP(src=A4, dst=B4) / UDP(sport=1, dport=2)
    plain = bytes(net.HDR_LEN)
    out: Frames = [
        (bytes(udp4 / b"fast-v4"), plain, False),
        (bytes(Ether(src=A, dst=B) / IPv6(src=A6, dst=B6) / UDP(dport=3) / b"fast-v6"), plain, False),
        (bytes(Ether(src=A, dst=B) / IPv6(src=A6, dst=B6) / ICMPv6EchoRequest()), plain, False),
        (bytes(Ether(src=A, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=A, psrc=A4, pdst=B4)), plain, False),
        (bytes(Ether(src=A, dst=B) / IP(src=C4, dst=B4) / UDP()), plain, False),  # spoofed IP
        (bytes(Ether(src=C, dst=B) / IP(src=A4, dst=B4) / UDP()), plain, False),  # spoofed MAC
        (bytes(Ether(src=A, dst=MASTER) / IP(src=A4, dst=B4) / UDP(dport=4)), plain, False),
        (bytes(Ether(src=A, dst=C) / IP(src=A4, dst=B4) / UDP(dport=5)), plain, False),
        (bytes(Ether(src=A, dst="02:99:00:00:00:01") / IP(src=A4, dst="192.0.2.1") / UDP()), plain, False),
        (bytes(udp4)[:20] + b"\xff\xff" + bytes(udp4)[22:], plain, False),  # bad total length
        (bytes(udp4 / b"offload"), CSUM_HDR, False),
        (bytes(udp4 / b"split"), plain, True),
        (bytes(udp4 / (b"x" * 3000)), plain, False),  # more than one RX buffer
        (bytes(Ether(src=A, dst=B))[:10], plain, False),  # runt
        (bytes(Ether(src=A, dst=B) / IP(src=A4, dst=B4, options=b"\x01\x01\x01\x00") / UDP()), plain, False),
        (bytes(Ether(src=A, dst=A) / IP(src=A4, dst=A4) / ICMP()), plain, False),  # to itself
        (bytes(Ether(src=A, dst=C) / IP(src=A4, dst=C4) / UDP(dport=6) / b"to-c"), plain, False),
    ]
    rng = random.Random(7)
    for i in range(40):  # a run of fast frames with a slow one now and then
        size = rng.choice([0, 10, 100, 1400])
        out.append((bytes(udp4 / (bytes([i]) * size)), plain, False))
        if i % 9 == 0:
            out.append((bytes(Ether(src=A, dst="ff:ff:ff:ff:ff:ff") / IP(src=A4, dst="10.0.0.255") / UDP()),
                        plain, False))
    return out


def run(frames: Frames, before: Callable[[InprocPort], None] | None = None, flag: str = "bridge",
        mode: str = "l2", b_queues: int = 1) -> dict[str, object]:
    p = make_port(flag, mode, b_queues)
    try:
        if before is not None:
            before(p)
        a = p.frontends["a"]
        for i in range(0, len(frames), 20):  # bursts of 20
            for frame, hdr, split in frames[i : i + 20]:
                a.transmit(frame, hdr, split=split)
            p.device("a").drain_tx()
            a.reclaim_tx()
        received = {name: received_by(fe) for name, fe in p.frontends.items()}
        return {
            "received": received,
            "queues": {n: d.queue_stats() for n, d in p.dp.devices.items()},
            "uplink": p.uplink.sent,
            "counters": {n: d.counters() for n, d in p.dp.devices.items()},
            "drops": {n: (counts(d.drops), d.slave.drop_counts()) for n, d in p.dp.devices.items()},
            "routed": list(p.router.asked),
            "uplink_tx": p.dp.uplink_tx,
        }
    finally:
        p.close()


@pytest.mark.parametrize("b_queues", [1, 2])
def test_same_results_with_and_without_the_accelerator(b_queues: int) -> None:
    """b_queues=2: b's frames in the same rings (per ring, in order, per-ring counters)."""
    frames = scenario()
    fast = run(frames, b_queues=b_queues)
    with pure_python():
        pure = run(frames, b_queues=b_queues)
    assert fast == pure
    received = fast["received"]
    assert isinstance(received, dict)
    assert len(flat(received["b"])) >= 30  # the scenario did exercise delivery
    assert sum(frame.endswith(b"to-c") for _, frame in received["c"]) == 1


def test_frames_the_guards_decide_are_never_fast_forwarded() -> None:
    """Unicast DHCP(v6) server replies and NDP behind a Hop-by-Hop header went
    guest to guest through C, past the guards Python applies (dhcp_guard,
    ndp_ext_header)."""
    from scapy.layers.dhcp import BOOTP, DHCP
    from scapy.layers.dhcp6 import DHCP6_Reply
    from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6ExtHdrHopByHop

    plain = bytes(net.HDR_LEN)
    frames: Frames = [
        (bytes(Ether(src=A, dst=B) / IP(src=A4, dst=B4) / UDP(sport=67, dport=68) / BOOTP(op=2, yiaddr=B4)
               / DHCP(options=[("message-type", "nak"), "end"])), plain, False),
        (bytes(Ether(src=A, dst=B) / IPv6(src=A6, dst=B6) / UDP(sport=1234, dport=546) / DHCP6_Reply()),
         plain, False),
        (bytes(Ether(src=A, dst=B) / IPv6(src=A6, dst=B6) / IPv6ExtHdrHopByHop()
               / ICMPv6ND_NA(tgt="fd00::12", O=1) / ICMPv6NDOptDstLLAddr(lladdr=A)), plain, False),
        (bytes(Ether(src=A, dst=B) / IP(src=A4, dst=B4) / UDP(sport=68, dport=67) / b"client"), plain, False),
    ]
    fast = run(frames)
    with pure_python():
        pure = run(frames)
    assert fast == pure
    drops = fast["drops"]
    assert isinstance(drops, dict)
    assert drops["a"][1] == {"dhcp_guard": 2, "ndp_ext_header": 1}


def test_target_down_is_not_fast_forwarded() -> None:
    frames = scenario()

    def c_down(p: InprocPort) -> None:
        c = p.device("c")
        c.rx_enabled = False
        c.slave.up = False
        p.dp.fast_table.invalidate()

    fast = run(frames, c_down)
    with pure_python():
        pure = run(frames, c_down)
    assert fast == pure
    drops = fast["drops"]
    assert isinstance(drops, dict)
    assert drops["a"][1].get("target_down") == 1


def test_the_accelerator_does_forward() -> None:
    p = make_port()
    try:
        a = p.frontends["a"]
        frame = bytes(Ether(src=A, dst=B) / IP(src=A4, dst=B4) / UDP() / b"x")
        for _ in range(50):
            a.transmit(frame)
        mac_, owned, table, wire = p.dp.fast_args(p.device("a")) or (None, None, None, None)
        status, _, nf, nb, sent, failed = fastpath.ext.forward_burst(  # type: ignore[union-attr]
            p.device("a").tx, p.device("a").buf, mac_, owned, table, 256, p.dp.dirty, wire)
        assert (status, nf, nb, sent, failed) == (0, 50, 50 * len(frame), 0, 0)
    finally:
        p.close()


@pytest.mark.parametrize("flag", ["private", "vepa"])
def test_private_and_vepa_never_fast_forward(flag: str) -> None:
    """The accelerator switches guest -> guest unicast; private must drop it and vepa
    send it to the wire, so its table is empty for them (it still sends to the wire)
    and results equal pure Python."""
    p = make_port(flag)
    try:
        args = p.dp.fast_args(p.device("a"))
        assert args is not None and args[2] == {} and args[3] is not None
    finally:
        p.close()
    frames = scenario()
    fast = run(frames, flag=flag)
    with pure_python():
        pure = run(frames, flag=flag)
    assert fast == pure
    received, drops, uplink = fast["received"], fast["drops"], fast["uplink"]
    assert isinstance(received, dict) and isinstance(drops, dict) and isinstance(uplink, list)
    unicast_to_b = [f for _, f in received["b"] if f[:6] == mac(B)]
    assert unicast_to_b == []  # only broadcasts reached b
    assert any(f[:6] == b"\xff" * 6 for _, f in received["b"])
    if flag == "private":
        assert drops["a"][1].get("private", 0) >= 40
    else:
        assert drops["a"][1].get("private") is None
        assert sum(f[10:16] == mac(B) for f in uplink) == 0  # no guest MAC as destination on the wire
        assert len(uplink) >= 40


@pytest.mark.parametrize("mode", ["l3", "l3s"])
@pytest.mark.parametrize("flag", ["bridge", "private", "vepa"])
def test_l3_modes_equal_pure_python(mode: str, flag: str) -> None:
    """l3/l3s never use the accelerator (it implements l2 bridge switching only);
    deliveries, drops, routed packets and the wire are those of pure Python, and
    the flags do what docs/kernel-behaviour.md §4 ``ipvlan_xmit_mode_l3`` says."""
    p = make_port(flag, mode)
    try:
        assert p.dp.fast_args(p.device("a")) is None
    finally:
        p.close()
    frames = scenario()
    fast = run(frames, flag=flag, mode=mode)
    with pure_python():
        pure = run(frames, flag=flag, mode=mode)
    assert fast == pure
    received, drops, uplink, routed = fast["received"], fast["drops"], fast["uplink"], fast["routed"]
    assert isinstance(received, dict) and isinstance(drops, dict)
    assert isinstance(uplink, list) and isinstance(routed, list)
    to_b = [f for _, f in received["b"] if f[:6] == mac(B)]
    assert not any(f[:6] == b"\xff" * 6 for _, f in received["b"])  # l3: no broadcast reaches a guest
    b4 = ipaddress.ip_address(B4).packed
    if flag == "bridge":
        assert len(to_b) >= 30 and all(f[6:12] == MASTER_MAC for f in to_b)  # src MAC: the router's
        assert b4 not in routed
    elif flag == "private":
        assert to_b == [] and drops["a"][1].get("private", 0) >= 40
        assert b4 not in routed
    else:  # vepa: routed, never delivered locally
        assert to_b == [] and drops["a"][1].get("private") is None
        assert routed.count(b4) >= 40
        # out the master to the next hop, from the master's MAC (l3s too: only guest -> guest is routed)
        out = [f for f in uplink if f[40:44] == b4]
        assert len(out) >= 40 and all(f[10:16] == NEXT_HOP_MAC and f[16:22] == MASTER_MAC for f in out)


@settings(max_examples=150, deadline=None)
@given(table=st.binary(min_size=16 * 8, max_size=16 * 8), heads=st.lists(st.integers(0, 300), max_size=12),
       idx=st.integers(0, 0xFFFF))
def test_hostile_tx_rings_never_crash(table: bytes, heads: list[int], idx: int) -> None:
    """Random descriptors and avail entries: the C code only hands over to Python."""
    p = make_port()
    try:
        a = p.frontends["a"]
        q = a.txq
        a.mem[q.desc : q.desc + len(table)] = table
        for i, h in enumerate(heads):
            struct.pack_into("<H", a.mem, q.avail + 4 + 2 * i, h)
        struct.pack_into("<H", a.mem, q.avail + 2, idx if heads else len(heads))
        # also point one descriptor at a valid frame, so some get through
        frame = bytes(Ether(src=A, dst=B) / IP(src=A4, dst=B4) / UDP())
        a.mem[a.buffers : a.buffers + 12 + len(frame)] = bytes(12) + frame
        struct.pack_into("<QIHH", a.mem, q.desc, a.buffers, 12 + len(frame), 0, 0)
        os.eventfd_write(a.kick[1], 1)
        p.device("a").drain_tx()  # GuestError is handled inside (queue broken); nothing else escapes
    finally:
        p.close()


def test_chained_descriptor_is_left_to_python() -> None:
    p = make_port()
    try:
        a = p.frontends["a"]
        a.transmit(bytes(Ether(src=A, dst=B) / IP(src=A4, dst=B4) / UDP() / b"chained"), split=True)
        mac_, owned, table, wire = p.dp.fast_args(p.device("a")) or (None, None, None, None)
        status, *_ = fastpath.ext.forward_burst(  # type: ignore[union-attr]
            p.device("a").tx, p.device("a").buf, mac_, owned, table, 256, p.dp.dirty, wire)
        assert status == fastpath.ext.SLOW_CHAIN  # type: ignore[union-attr]
        tx = p.device("a").tx
        assert tx is not None and a.txq.avail_idx == 1 and tx.last_avail == 0  # nothing was taken
    finally:
        p.close()


@pytest.mark.parametrize("bad", ["mac", "rings", "caps", "shape"])
def test_a_malformed_table_entry_is_an_error_that_gives_the_frame_back(bad: str) -> None:
    """The table is Python's (PortTable) and never malformed; if it were, C checks an
    entry when it caches it, before reading it without the GIL: the burst ends with
    ERROR (the exception), the frame's chain given back for Python to take again."""
    p = make_port()
    try:
        a = p.frontends["a"]
        a.transmit(bytes(Ether(src=A, dst=B) / IP(src=A4, dst=B4) / UDP() / b"x"))
        mac_, owned, table, wire = p.dp.fast_args(p.device("a")) or (None, None, None, None)
        assert isinstance(table, dict)
        key = ipaddress.ip_address(B4).packed
        rings, bmac, caps, dev = table[key]
        table = {**table, key: {"mac": (rings, b"short", caps, dev), "rings": ((), bmac, caps, dev),
                                "caps": (rings, bmac, "x", dev), "shape": (rings, bmac)}[bad]}
        status, exc, nframes, *_ = fastpath.ext.forward_burst(  # type: ignore[union-attr]
            p.device("a").tx, p.device("a").buf, mac_, owned, table, 256, p.dp.dirty, wire)
        assert status == fastpath.ext.ERROR and nframes == 0  # type: ignore[union-attr]
        assert isinstance(exc, TypeError) and "bad table entry" in str(exc)
        tx = p.device("a").tx
        assert tx is not None and tx.last_avail == 0  # given back
    finally:
        p.close()


# -- bounded work and hostile guests: the same decisions, drain by drain ------------------

Record = tuple[int, int, bool]  # (descriptors walked, last_avail, rescheduled) after one drain


def drain_until_idle(p: InprocPort, name: str = "a") -> list[Record]:
    """Drain like the event loop would: again as long as a drain rescheduled itself."""
    dev = p.device(name)
    out: list[Record] = []
    while True:
        q = dev.tx
        assert q is not None
        before = q.walked
        dev._drain_scheduled = False
        dev.drain_tx()
        out.append((q.walked - before, q.last_avail, dev._drain_scheduled))
        if not dev._drain_scheduled or len(out) > 1000:
            return out


def both_ways(scenario: Callable[[], dict[str, object]]) -> dict[str, object]:
    """Run ``scenario`` with the accelerator and in pure Python; the results must be equal."""
    fast = scenario()
    with pure_python():
        pure = scenario()
    assert fast == pure
    return fast


def frame_to_b(tag: bytes) -> bytes:
    return bytes(Ether(src=A, dst=B) / IP(src=A4, dst=B4) / UDP(sport=1, dport=2) / tag)


def outcome(p: InprocPort) -> dict[str, object]:
    return {
        "received": {name: received_by(fe) for name, fe in p.frontends.items()},
        "queues": {n: d.queue_stats() for n, d in p.dp.devices.items()},
        "counters": {n: d.counters() for n, d in p.dp.devices.items()},
        "drops": {n: (counts(d.drops), d.slave.drop_counts()) for n, d in p.dp.devices.items()},
    }


def test_a_drain_is_bounded_in_descriptors_not_only_frames() -> None:
    """Audit r1 within the queue size: chains of 256 zero-length descriptors (an
    indirect table each). A drain stops after DESC_BUDGET descriptors (+ one chain)
    and reschedules; the frames queued behind them still go, exactly as in Python."""
    num = frontend.QSIZE

    def scenario() -> dict[str, object]:
        p = make_port()
        try:
            a = p.frontends["a"]
            for i in range(10):
                a.transmit(frame_to_b(b"early%d" % i))
            frontend.transmit_indirect_zero_length(a, 40, num)
            for i in range(10):
                a.transmit(frame_to_b(b"late%d" % i))
            drains = drain_until_idle(p)
            return {"drains": drains, **outcome(p)}
        finally:
            p.close()

    result = both_ways(scenario)
    drains = result["drains"]
    assert isinstance(drains, list)
    assert all(walked <= device.DESC_BUDGET + num + 1 for walked, _, _ in drains)
    assert len(drains) >= 40 * (num + 1) // (device.DESC_BUDGET + num + 1)
    assert drains[-1][1] == 60 and not drains[-1][2]  # everything taken, the last drain did not reschedule
    got = [f for _, f in result["received"]["b"]]  # type: ignore[index]
    assert [f[42:] for f in got] == [b"early%d" % i for i in range(10)] + [b"late%d" % i for i in range(10)]
    counters, drops = result["counters"], result["drops"]
    assert isinstance(counters, dict) and isinstance(drops, dict)
    assert counters["a"]["tx_packets"] == 20  # the 40 empty chains are runts, not packets
    assert counters["a"]["tx_bytes"] == sum(len(f) for f in got)
    assert drops["a"][0] == {"runt": 40}


def test_indirect_tables_beyond_the_queue_size_break_the_queue_at_once() -> None:
    """Audit r1 as found: 256 chains of one 32768-entry table (2.7 s in one drain).
    The table is longer than the 256-entry queue: a GuestError at the first chain."""

    def scenario() -> dict[str, object]:
        p = make_port()
        try:
            frontend.transmit_indirect_zero_length(p.frontends["a"], 256, 32768)
            q = p.device("a").tx
            assert q is not None
            drains = drain_until_idle(p)
            return {"drains": drains, "broken": p.device("a").tx is None, **outcome(p)}
        finally:
            p.close()

    result = both_ways(scenario)
    assert result["drains"] == [(0, 1, False)] and result["broken"]
    drops = result["drops"]
    assert isinstance(drops, dict) and drops["a"][0] == {"queue_broken": 1}


def test_runts_are_drops_and_add_nothing_to_tx_counters() -> None:
    """Chains shorter than the virtio_net_hdr drove tx_bytes negative (audit r1:
    -3072). Now they are ``runt`` drops; a bare 12-byte header is a packet of 0
    bytes that the switch drops as an Ethernet runt."""

    def scenario() -> dict[str, object]:
        p = make_port()
        try:
            a = p.frontends["a"]
            frontend.transmit_runts(a, [0, 1, 11, 12])
            a.transmit(frame_to_b(b"fine"))
            drain_until_idle(p)
            return outcome(p)
        finally:
            p.close()

    result = both_ways(scenario)
    counters, drops = result["counters"], result["drops"]
    assert isinstance(counters, dict) and isinstance(drops, dict)
    assert counters["a"]["tx_packets"] == 2
    assert counters["a"]["tx_bytes"] == len(frame_to_b(b"fine"))
    assert drops["a"] == ({"runt": 3}, {"runt": 1})


@pytest.mark.parametrize("entries", [256, 32768])
def test_zero_capacity_rx_chains_cost_one_chain_per_frame(entries: int) -> None:
    """Audit r2: b's receive chains have no writable room (256 indirect tables of
    zero-length descriptors): one 60-byte frame walked every chain (2 s with 32768-entry
    tables). Now a frame looks at one chain and is dropped ``rx_bad_buffer``, the
    chain stays the guest's (the next frames do not walk it again); tables beyond
    the queue size break b's RX queue."""

    def scenario() -> dict[str, object]:
        p = make_port()
        try:
            frontend.make_rx_zero_capacity(p.frontends["b"], entries)
            rxq = p.device("b").rx
            assert rxq is not None
            for i in range(5):
                p.frontends["a"].transmit(frame_to_b(b"%d" % i))
            drain_until_idle(p)
            return {"rx_walked": rxq.walked, "rx_pending": rxq.pending(), "broken": p.device("b").rx is None,
                    **outcome(p)}
        finally:
            p.close()

    result = both_ways(scenario)
    drops = result["drops"]
    assert isinstance(drops, dict)
    if entries == 256:
        assert drops["b"][0] == {"rx_bad_buffer": 5}
        # one walk: the chain stays first in the ring, so the next frames know it is bad
        assert result["rx_walked"] == entries + 1 and result["rx_pending"] == frontend.QSIZE
    else:
        assert result["broken"] and drops["b"][0] == {"queue_broken": 1}
        assert drops["a"][1] == {"target_down": 4}  # b is down once its queue broke


def test_a_receiver_that_keeps_changing_its_ring_costs_one_budget_per_burst(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """b's receive chains are 12 bytes spread over ``num`` descriptors, and b makes one
    more available after every frame (a vCPU spinning on its avail index while
    frames come): the remembered failure never matched, every frame walked ``num``
    descriptors (a 32768-entry ring: about 15 ms per frame, seconds per burst). Now
    failed walks have a budget per receiver and burst."""
    real = net.rx_deliver
    frames = 200

    def scenario() -> dict[str, object]:
        p = make_port()
        try:
            b = p.frontends["b"]
            make_rx_twelve_bytes_spread(b)
            posted = set(range(b.rxq.num)) - set(b.rxq.free)
            head = posted.pop()
            b.rxq.avail_idx = (b.rxq.avail_idx - len(posted) - 1) & 0xFFFF  # one chain left available
            struct.pack_into("<H", b.mem, b.rxq.avail + 2, b.rxq.avail_idx)
            b.rxq.make_available(head)

            def spinning(*args: Any) -> int:
                rc = real(*args)
                b.rxq.make_available(head)  # b moves its ring after every frame
                return rc

            monkeypatch.setattr(net, "rx_deliver", spinning)
            rxq = p.device("b").rx
            assert rxq is not None
            before = rxq.walked
            for i in range(frames):
                p.frontends["a"].transmit(frame_to_b(b"%d" % i))
            p.device("a").drain_tx()
            return {"rx_walked": rxq.walked - before, **outcome(p)}
        finally:
            monkeypatch.setattr(net, "rx_deliver", real)
            p.close()

    result = both_ways(scenario)
    drops = result["drops"]
    assert isinstance(drops, dict) and sum(drops["b"][0].values()) == frames  # ring full, then bad buffers
    walked = result["rx_walked"]
    assert isinstance(walked, int) and walked <= device.RX_WASTE_BUDGET + 2 * (frontend.QSIZE + 1)


def make_rx_twelve_bytes_spread(fe: frontend.FakeFrontend) -> None:
    """Every posted RX chain: an indirect table of ``num`` writable descriptors, the
    first of 12 bytes (room for a header), the others empty."""
    table = frontend.write_zero_length_table(fe, fe.rxq.num, writable=True)
    struct.pack_into("<I", fe.mem, table + 8, net.HDR_LEN)
    for i in set(range(fe.rxq.num)) - set(fe.rxq.free):
        fe.rxq.set_desc(i, table, 16 * fe.rxq.num, 4)  # VRING_DESC_F_INDIRECT


@pytest.fixture
def error_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh rate limit for internal-error log lines."""
    monkeypatch.setattr(device.internal_error_log, "next_at", 0.0)
    monkeypatch.setattr(device.internal_error_log, "suppressed", 0)


def test_an_internal_error_costs_one_frame_counted_and_logged_once(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, error_log: None) -> None:
    """A bug (here: an injected RuntimeError in the switch) while handling one frame:
    that frame is dropped ``internal_error``, its chain is returned, the rest of the
    burst and other guests go on; the traceback is logged once, not per frame."""

    def scenario() -> dict[str, object]:
        p = make_port()
        try:
            real = p.dp.from_guest

            def from_guest(dev: device.NetDevice, length: int) -> int:
                if bytes(dev.view[length - 4 : length]) == b"boom":
                    raise RuntimeError("injected")
                return real(dev, length)

            monkeypatch.setattr(p.dp, "from_guest", from_guest)
            a = p.frontends["a"]
            bcast = Ether(src=A, dst="ff:ff:ff:ff:ff:ff") / IP(src=A4, dst="10.0.0.255") / UDP(dport=9)
            for payload in (b"one", b"boom", b"two", b"boom"):
                a.transmit(bytes(bcast / payload))
                a.transmit(frame_to_b(payload + b"!"))
            drain_until_idle(p)
            a.reclaim_tx()
            return {"returned": len(a.txq.free), **outcome(p)}
        finally:
            p.close()

    with caplog.at_level("ERROR", logger="vhost_ipvlan.daemon.device"):
        result = both_ways(scenario)
    assert result["returned"] == frontend.QSIZE  # every chain came back
    drops = result["drops"]
    received = result["received"]
    assert isinstance(drops, dict) and isinstance(received, dict)
    assert drops["a"][0] == {"internal_error": 2}
    assert [f[42:] for _, f in received["b"]] == [b"one", b"one!", b"boom!", b"two", b"two!", b"boom!"]
    errors = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert len(errors) == 1 and errors[0].exc_info is not None  # once for both runs: rate-limited


def test_a_failing_accelerator_gives_the_frame_back(caplog: pytest.LogCaptureFixture, error_log: None) -> None:
    """The C accelerator failing on a frame it took (here: an OverflowError from a
    corrupted table entry, as a region ending at 2**64 did in audit r16) loses
    nothing: it gives the chain back, Python switches it and the rest of the drain."""

    def scenario(corrupt: bool) -> dict[str, object]:
        p = make_port()
        try:
            dev = p.device("a")
            if corrupt:
                p.dp.fast_args(dev)
                b4 = ipaddress.ip_address(B4).packed
                rings, bmac, _, bdev = p.dp.fast_table.table[b4]
                p.dp.fast_table.table[b4] = (rings, bmac, 2**70, bdev)
            for i in range(3):
                p.frontends["a"].transmit(frame_to_b(b"%d" % i))
            drain_until_idle(p)
            result = outcome(p)
            drops = result["drops"]
            assert isinstance(drops, dict)
            drops["a"][0].pop("internal_error", None)
            return {"internal_errors": dev.drops[DropReason.INTERNAL_ERROR], **result}
        finally:
            p.close()

    with caplog.at_level("ERROR", logger="vhost_ipvlan.daemon.device"):
        fast = scenario(True)
    with pure_python():
        pure = scenario(False)
    assert fast.pop("internal_errors") == 1 and pure.pop("internal_errors") == 0
    assert fast == pure
    received = fast["received"]
    assert isinstance(received, dict) and len(received["b"]) == 3
    assert any("OverflowError" in r.exc_text for r in caplog.records if r.exc_text)


@pytest.mark.parametrize("pure", [False, True])
def test_an_internal_error_on_a_frame_from_the_wire_costs_that_frame(
        monkeypatch: pytest.MonkeyPatch, error_log: None, pure: bool) -> None:
    """The uplink's burst, too: a bug while switching one frame read from the master
    drops that frame (``internal_error`` on the master), the next ones are delivered;
    with the accelerator, for a frame it gave to Python (each from a MAC not seen yet)."""
    p = make_port()
    try:
        p.uplink.inject(*(bytes(10) + bytes(Ether(src=f"02:99:00:00:00:0{i}", dst=MASTER)
                                             / IP(src="192.0.2.1", dst=B4) / UDP(dport=5) / tag)
                          for i, tag in enumerate((b"one", b"boom", b"two"))))
        real = p.port.from_uplink

        def from_uplink(frame: memoryview) -> tuple[int, object]:
            if bytes(frame[-4:]) == b"boom":
                raise RuntimeError("injected")
            return real(frame)

        monkeypatch.setattr(p.port, "from_uplink", from_uplink)
        if pure:
            monkeypatch.setattr(fastpath, "ext", None)
        p.dp._uplink_readable()
        assert [f[42:] for _, f in p.frontends["b"].receive()] == [b"one", b"two"]
        assert counts(p.dp.drops) == {"internal_error": 1} and p.dp.uplink_rx == 3
    finally:
        p.close()


Chain = tuple[str, int]  # (kind, size): a good frame, a runt, an indirect table, a split frame


@settings(max_examples=25, deadline=None)
@given(chains=st.lists(st.tuples(st.sampled_from(["frame", "runt", "indirect", "split"]), st.integers(0, 300)),
                       min_size=1, max_size=60),
       rx_buffer=st.sampled_from([0, 8, 12, 100, 2048]))
def test_hostile_mixes_take_the_same_decisions_drain_by_drain(chains: list[Chain], rx_buffer: int) -> None:
    """Random mixes of good frames, runts, indirect tables of zero-length descriptors
    and split frames, to a receiver whose buffers may be too small for anything: the
    accelerator and pure Python stop each drain at the same chain and count the same."""

    def scenario() -> dict[str, object]:
        p = make_port()
        try:
            a = p.frontends["a"]
            if rx_buffer == 0:
                frontend.make_rx_zero_capacity(p.frontends["b"], 16)
            elif rx_buffer != 2048:
                frontend.make_rx_small_buffers(p.frontends["b"], rx_buffer)
            for kind, size in chains:
                if kind == "frame":
                    a.transmit(frame_to_b(bytes(size)))
                elif kind == "runt":
                    frontend.transmit_runts(a, [size % 12])
                elif kind == "indirect":
                    frontend.transmit_indirect_zero_length(a, 1, 1 + size % 257)  # 257: too long
                else:
                    a.transmit(frame_to_b(bytes(size)), split=True)
            drains = drain_until_idle(p)
            rxq = p.device("b").rx
            return {"drains": drains, "rx_walked": rxq.walked if rxq is not None else None, **outcome(p)}
        finally:
            p.close()

    result = both_ways(scenario)
    drains = result["drains"]
    assert isinstance(drains, list)
    assert all(walked <= device.DESC_BUDGET + frontend.QSIZE + 1 for walked, _, _ in drains)


# -- guest -> wire: l2 unicast to an off-host MAC, sent by C in batches ------------------

OUT, OUT4, OUT6 = "02:99:00:00:00:01", "192.0.2.1", "2001:db8::1"
GSO_HDR = struct.pack("<BBHHHHH", net.HDR_F_NEEDS_CSUM, net.GSO_TCPV4, 54, 1448, 34, 16, 0)


def wire_scenario() -> Frames:
    """Runs of frames for the wire (more than one sendmmsg batch) mixed with every
    frame the accelerator must hand over: to the master's MAC, to a guest's MAC,
    multicast, spoofed, too big for the master without GSO, NDP, a DHCP client."""
    plain = bytes(net.HDR_LEN)
    out4 = Ether(src=A, dst=OUT) / IP(src=A4, dst=OUT4) / UDP(sport=7, dport=9)
    out6 = Ether(src=A, dst=OUT) / IPv6(src=A6, dst=OUT6) / UDP(sport=7, dport=9)
    slow: Frames = [
        (bytes(Ether(src=A, dst=MASTER) / IP(src=A4, dst=OUT4) / UDP()), plain, False),  # the host's
        (bytes(Ether(src=A, dst=B) / IP(src=A4, dst=OUT4) / UDP()), plain, False),  # a guest's MAC
        (bytes(Ether(src=A, dst=B) / IP(src=A4, dst=B4) / UDP() / b"to-b"), plain, False),
        (bytes(Ether(src=A, dst="ff:ff:ff:ff:ff:ff") / IP(src=A4, dst="10.0.0.255") / UDP()), plain, False),
        (bytes(Ether(src=A, dst=OUT) / IP(src=C4, dst=OUT4) / UDP()), plain, False),  # spoofed IP
        (bytes(Ether(src=C, dst=OUT) / IP(src=A4, dst=OUT4) / UDP()), plain, False),  # spoofed MAC
        (bytes(out4 / (b"m" * 1600)), plain, False),  # over the master's MTU: mtu_exceeded
        (bytes(Ether(src=A, dst=OUT) / IP(src=A4, dst=OUT4) / TCP() / (b"g" * 4000)), GSO_HDR, False),  # GSO
        (bytes(Ether(src=A, dst=OUT) / IPv6(src=A6, dst=OUT6) / ICMPv6EchoRequest()), plain, False),
        (bytes(Ether(src=A, dst=OUT) / IP(src=A4, dst=OUT4) / UDP(sport=68, dport=67) / b"dhcp"), plain, False),
        (bytes(out4 / b"offload"), CSUM_HDR, False),
        (bytes(out4 / b"split"), plain, True),  # two descriptors: Python's
    ]
    rng = random.Random(11)
    frames: Frames = []
    for i in range(150):
        base = out4 if i % 3 else out6
        frames.append((bytes(base / (bytes([i]) * rng.choice([0, 18, 1400]))), plain, False))
        if i % 13 == 0:
            frames.append(slow[(i // 13) % len(slow)])
    return frames + slow


@pytest.mark.parametrize("flag", ["bridge", "private", "vepa"])
def test_the_wire_gets_the_same_frames_with_and_without_the_accelerator(flag: str) -> None:
    """Every l2 flag: the same frames on the wire, in the same order, from the
    master's MAC; the same deliveries, drops and counters (uplink_tx included)."""
    frames = wire_scenario()
    fast = run(frames, flag=flag)
    with pure_python():
        pure = run(frames, flag=flag)
    assert fast == pure
    uplink, drops = fast["uplink"], fast["drops"]
    assert isinstance(uplink, list) and isinstance(drops, dict)
    to_out = [f for f in uplink if f[10:16] == mac(OUT)]
    assert len(to_out) >= 150 and all(f[16:22] == MASTER_MAC for f in to_out)
    assert fast["uplink_tx"] == len(uplink)
    assert drops["a"][0].get("mtu_exceeded", 0) >= 1  # counted by Python
    assert drops["a"][1].get("src_ip_spoof", 0) >= 1


def test_the_accelerator_does_send_to_the_wire() -> None:
    p = make_port("private")
    try:
        a = p.frontends["a"]
        frame = bytes(Ether(src=A, dst=OUT) / IP(src=A4, dst=OUT4) / UDP() / b"x")
        for _ in range(100):
            a.transmit(frame)
        mac_, owned, table, wire = p.dp.fast_args(p.device("a")) or (None, None, None, None)
        status, _, nf, nb, sent, failed = fastpath.ext.forward_burst(  # type: ignore[union-attr]
            p.device("a").tx, p.device("a").buf, mac_, owned, table, 256, p.dp.dirty, wire)
        assert (status, nf, nb, sent, failed) == (0, 100, 100 * len(frame), 100, 0)
        out = frame[:6] + MASTER_MAC + frame[12:]
        assert p.uplink.sent == [bytes(10) + out] * 100
    finally:
        p.close()


@pytest.mark.parametrize("trouble", ["master_down", "send_fails", "no_batch_fd"])
def test_wire_trouble_is_counted_the_same(trouble: str) -> None:
    """A master that is down (master_down, Python's), sends that fail (counted from C's
    sendmmsg as from Python's send: uplink_send_failed) and an uplink without a batch
    descriptor (Python sends) change nothing between the two paths."""

    def before(p: InprocPort) -> None:
        if trouble == "master_down":
            p.dp.wire_up = False
        elif trouble == "send_fails":
            p.uplink.refuse()
        else:
            p.uplink.batch_fd = lambda: -1  # type: ignore[method-assign]

    frames = wire_scenario()
    fast = run(frames, before)
    with pure_python():
        pure = run(frames, before)
    assert fast == pure
    drops = fast["drops"]
    assert isinstance(drops, dict)
    if trouble == "master_down":
        assert drops["a"][0].get("master_down", 0) >= 150
    elif trouble == "send_fails":
        assert drops["a"][0].get("uplink_send_failed", 0) >= 150 and fast["uplink_tx"] == 0
    else:
        assert fast["uplink_tx"] == len(fast["uplink"])  # type: ignore[arg-type]


# -- wire -> guest: recvmmsg, demux by destination address, MAC translation ---------------

def wire_frames() -> list[bytes]:
    """Datagrams from the wire (10-byte virtio_net_hdr + frame): runs of common unicast
    (to the master's MAC and to a guest's, IPv4 and IPv6) to every guest, more than one
    burst of them, mixed with everything C must give to Python in order: a source MAC
    not seen yet, broadcast ARP, NS, multicast, an unknown destination, an IPv6
    link-local source, a runt, a truncated frame, a GSO frame the guests did not take,
    a DHCP reply."""
    hdr = bytes(10)
    gso = struct.pack("<BBHHH", net.HDR_F_NEEDS_CSUM, net.GSO_TCPV4, 54, 1448, 34) + b"\x10\x00"
    out4 = Ether(src=OUT, dst=MASTER) / IP(src=OUT4, dst=B4) / UDP(sport=9, dport=7)
    slow = [
        bytes(Ether(src="02:99:00:00:00:02", dst=MASTER) / IP(src=OUT4, dst=A4) / UDP() / b"new-mac"),
        bytes(Ether(src=OUT, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=OUT, psrc=OUT4, pdst=B4)),
        bytes(Ether(src=OUT, dst="33:33:ff:00:00:11") / IPv6(src=OUT6, dst="ff02::1:ff00:11")
              / ICMPv6ND_NS(tgt=B6)),
        bytes(Ether(src=OUT, dst="01:00:5e:00:00:fb") / IP(src=OUT4, dst="224.0.0.251") / UDP() / b"mdns"),
        bytes(Ether(src=OUT, dst=MASTER) / IP(src=OUT4, dst="10.0.0.99") / UDP() / b"nobody"),
        bytes(Ether(src=OUT, dst=MASTER) / IPv6(src="fe80::99", dst=B6) / UDP() / b"link-local"),
        bytes(Ether(src=OUT, dst=MASTER))[:9],
        bytes(out4 / b"truncated") + b"t" * 66000,  # longer than the daemon's buffer
        bytes(Ether(src=OUT, dst=MASTER) / IP(src=OUT4, dst=B4, flags=0) / UDP(sport=67, dport=68) / b"dhcp"),
    ]
    frames = [hdr + bytes(out4 / b"first")]  # the outside's MAC is not known yet: Python's
    rng = random.Random(5)
    for i in range(400):
        dst4, dst6, mac_ = [(A4, A6, A), (B4, B6, B), (C4, None, C)][i % 3]
        to = MASTER if i % 4 else mac_
        if i % 5 == 0 and dst6 is not None:
            f = Ether(src=OUT, dst=to) / IPv6(src=OUT6, dst=dst6) / UDP(sport=9, dport=7)
        else:
            f = Ether(src=OUT, dst=to) / IP(src=OUT4, dst=dst4) / UDP(sport=9, dport=7)
        frames.append(hdr + bytes(f / (bytes([i % 256]) * rng.choice([0, 30, 1400]))))
        if i % 29 == 0:
            frames.append(hdr + slow[(i // 29) % len(slow)])
    frames.append(gso + bytes(Ether(src=OUT, dst=MASTER) / IP(src=OUT4, dst=B4) / TCP() / (b"g" * 3000)))
    return frames + [hdr + f for f in slow]


def run_from_wire(frames: list[bytes], flag: str = "bridge", mode: str = "l2",
                  before: Callable[[InprocPort], None] | None = None, b_queues: int = 1,
                  uplink: Callable[[], VethUplink] | None = None) -> dict[str, object]:
    p = make_port(flag, mode, b_queues, uplink)
    try:
        if before is not None:
            before(p)
        for i in range(0, len(frames), 100):
            p.uplink.inject(*frames[i : i + 100])
            for _ in range(3):  # 100 frames and their floods fit in three bursts
                p.dp._uplink_readable()
        return {
            **outcome(p),
            "uplink": p.uplink.sent,
            "uplink_rx": p.dp.uplink_rx,
            "port_drops": (counts(p.dp.drops), counts(p.port.uplink_drops)),
            "seen": (sorted(p.port.wire_macs), sorted(p.port.wire_link_locals)),
        }
    finally:
        p.close()


@pytest.mark.parametrize(("mode", "flag", "b_queues"), [
    ("l2", "bridge", 1), ("l2", "private", 1), ("l2", "vepa", 1), ("l3", "bridge", 1), ("l3s", "bridge", 1),
    ("l2", "bridge", 2), ("l2", "vepa", 2)])
def test_the_guests_get_the_same_frames_from_the_wire_with_and_without_the_accelerator(
        mode: str, flag: str, b_queues: int) -> None:
    """Every mode and flag: the same frames reach the same guests in the same order,
    translated the same way; the same drops, counters and wire-side learning. With two
    queue pairs for b: the same frames in each of its rings."""
    frames = wire_frames()
    fast = run_from_wire(frames, flag, mode, b_queues=b_queues)
    with pure_python():
        pure = run_from_wire(frames, flag, mode, b_queues=b_queues)
    assert fast == pure
    received = fast["received"]
    assert isinstance(received, dict)
    if mode == "l2":
        to_b = [f for _, f in flat(received["b"]) if f[:6] == mac(B) and f[6:12] == mac(OUT)]
        assert len(to_b) >= 130
        truncated = sum(len(f) > net.MAX_BUFFER - 2 for f in frames)
        assert truncated == 2 and fast["uplink_rx"] == len(frames) - truncated


@pytest.mark.parametrize(("trouble", "b_queues"), [("c_down", 1), ("b_small_buffers", 1), ("b_ring_full", 1),
                                                   ("b_small_buffers", 2), ("b_ring_full", 2)])
def test_receivers_that_cannot_take_a_frame_from_the_wire_count_the_same(trouble: str, b_queues: int) -> None:
    """b_queues=2: the trouble is in b's first RX ring only; the flows for the other
    still arrive, through C."""
    def before(p: InprocPort) -> None:
        if trouble == "c_down":
            c = p.device("c")
            c.rx_enabled = False
            c.slave.up = False
            p.dp.fast_table.invalidate()
        elif trouble == "b_small_buffers":
            frontend.make_rx_small_buffers(p.frontends["b"], 100)
        else:
            frontend.make_rx_zero_capacity(p.frontends["b"], 16)

    frames = wire_frames()
    fast = run_from_wire(frames, before=before, b_queues=b_queues)
    with pure_python():
        pure = run_from_wire(frames, before=before, b_queues=b_queues)
    assert fast == pure
    if b_queues == 2:
        received = fast["received"]
        assert isinstance(received, dict) and len(received["b"][1]) >= 20


def test_the_accelerator_does_deliver_from_the_wire() -> None:
    p = make_port("vepa")
    try:
        out = bytes(Ether(src=OUT, dst=MASTER) / IP(src=OUT4, dst=B4) / UDP() / b"x")
        p.port.wire_macs.add(mac(OUT))
        p.uplink.inject(*[bytes(10) + out] * 100)
        table = p.dp.fast_table.rx_table()
        assert table is not None and fastpath.ext is not None
        handed: list[int] = []
        status, _, delivered = fastpath.ext.uplink_burst(
            p.uplink.batch_fd(), p.dp.buf, table, MASTER_MAC, p.port.wire_macs, 256, p.dp.dirty, handed.append)
        assert (status, delivered, handed) == (fastpath.ext.EMPTY, 100, [])
        p.dp.flush()
        assert [f for _, f in p.frontends["b"].receive()] == [mac(B) + out[6:]] * 100
    finally:
        p.close()


def test_a_read_error_on_the_uplink_is_counted_once_per_burst() -> None:
    """recvmmsg failing (here: not a socket) ends the burst as Python's recv failing
    does: one uplink_read_error on the port, nothing delivered."""
    import errno

    p = make_port()
    fd = os.eventfd(0)
    try:
        table = p.dp.fast_table.rx_table()
        assert table is not None and fastpath.ext is not None
        status, detail, delivered = fastpath.ext.uplink_burst(
            fd, p.dp.buf, table, MASTER_MAC, p.port.wire_macs, 256, p.dp.dirty, lambda n: 0)
        assert (status, detail, delivered) == (fastpath.ext.READ_ERROR, errno.ENOTSOCK, 0)
        p.uplink.batch_fd = lambda: fd  # type: ignore[method-assign]
        p.dp._uplink_readable()
        assert counts(p.dp.drops) == {"uplink_read_error": 1} and p.dp.uplink_rx == 0
    finally:
        os.close(fd)
        p.close()


# Guests whose addresses and MACs fall into the same ways of the accelerator's lookup
# caches (their last byte) as b's: d owns 10.0.1.11 and 02:00:00:00:01:0b.
D, D4 = "02:00:00:00:01:0b", "10.0.1.11"
ELSEWHERE = "02:99:00:00:00:0b"  # outside, and the same last byte again


def colliding_port() -> InprocPort:
    def ip(t: str) -> bytes:
        return ipaddress.ip_address(t).packed

    return InprocPort([("a", [ip(A4)], mac(A)), ("b", [ip(B4)], mac(B)), ("d", [ip(D4)], mac(D))])


def colliding_from_a() -> Frames:
    """a's frames, in turn: to b, to d, to an address nobody owns behind d's MAC, to an
    outside MAC: every key shares its cache way with the one before."""
    plain = bytes(net.HDR_LEN)
    cycle = [
        Ether(src=A, dst=B) / IP(src=A4, dst=B4) / UDP(dport=1),
        Ether(src=A, dst=D) / IP(src=A4, dst=D4) / UDP(dport=2),
        Ether(src=A, dst=D) / IP(src=A4, dst="10.0.2.11") / UDP(dport=3),
        Ether(src=A, dst=ELSEWHERE) / IP(src=A4, dst=OUT4) / UDP(dport=4),
        Ether(src=A, dst=B) / IP(src=A4, dst=D4) / UDP(dport=5),  # d's address behind b's MAC
    ]
    return [(bytes(cycle[i % len(cycle)] / bytes([i])), plain, False) for i in range(100)]


def test_keys_sharing_a_cache_way_get_the_tables_answers() -> None:
    """The accelerator remembers a burst's lookups by the key's last byte; keys that share
    one (addresses and MACs, a guest's and the outside's) still get each its own answer:
    the same deliveries, wire frames, drops and counters as pure Python, and the frames to
    b and d in turn forwarded by C in one call."""

    def run_colliding() -> dict[str, object]:
        p = colliding_port()
        try:
            a = p.frontends["a"]
            frames = colliding_from_a()
            for i in range(0, len(frames), 20):
                for frame, hdr, split in frames[i : i + 20]:
                    a.transmit(frame, hdr, split=split)
                p.device("a").drain_tx()
                a.reclaim_tx()
            return {**outcome(p), "uplink": p.uplink.sent}
        finally:
            p.close()

    received = both_ways(run_colliding)["received"]
    # d gets its own address behind b's MAC too (Python's verdict, the kernel's l2)
    assert isinstance(received, dict) and len(received["b"]) == 20 and len(received["d"]) == 40

    p = colliding_port()
    try:
        a = p.frontends["a"]
        to_b, to_d = colliding_from_a()[0][0], colliding_from_a()[1][0]
        for _ in range(50):
            a.transmit(to_b)
            a.transmit(to_d)
        mac_, owned, table, wire = p.dp.fast_args(p.device("a")) or (None, None, None, None)
        status, _, nf, _, sent, _ = fastpath.ext.forward_burst(  # type: ignore[union-attr]
            p.device("a").tx, p.device("a").buf, mac_, owned, table, 256, p.dp.dirty, wire)
        assert (status, nf, sent) == (fastpath.ext.EMPTY, 100, 0)  # type: ignore[union-attr]
        p.dp.flush()
        assert [f for _, f in p.frontends["b"].receive()] == [to_b] * 50
        assert [f for _, f in p.frontends["d"].receive()] == [to_d] * 50
    finally:
        p.close()


def test_keys_sharing_a_cache_way_from_the_wire_get_the_tables_answers() -> None:
    """From the wire: destinations b and d (the same way) in turn, sources OUT and a MAC
    of the same last byte not seen yet (Python's, which learns it), a destination nobody
    owns of that way: the same as pure Python."""
    hdr = bytes(10)
    other = "02:99:00:00:01:01"  # OUT's last byte, not seen on the wire yet
    cycle = [
        Ether(src=OUT, dst=MASTER) / IP(src=OUT4, dst=B4) / UDP(dport=1),
        Ether(src=OUT, dst=MASTER) / IP(src=OUT4, dst=D4) / UDP(dport=2),
        Ether(src=other, dst=MASTER) / IP(src=OUT4, dst=B4) / UDP(dport=3),
        Ether(src=OUT, dst=MASTER) / IP(src=OUT4, dst="10.0.2.11") / UDP(dport=4),
        Ether(src=OUT, dst=D) / IP(src=OUT4, dst=D4) / UDP(dport=5),
    ]
    frames = [hdr + bytes(Ether(src=OUT, dst=MASTER) / IP(src=OUT4, dst=A4) / UDP())]  # OUT is seen first
    frames += [hdr + bytes(cycle[i % len(cycle)] / bytes([i])) for i in range(100)]

    def run_colliding() -> dict[str, object]:
        p = colliding_port()
        try:
            for i in range(0, len(frames), 50):
                p.uplink.inject(*frames[i : i + 50])
                for _ in range(3):
                    p.dp._uplink_readable()
            return {**outcome(p), "uplink_rx": p.dp.uplink_rx, "seen": sorted(p.port.wire_macs),
                    "port_drops": (counts(p.dp.drops), counts(p.port.uplink_drops))}
        finally:
            p.close()

    received = both_ways(run_colliding)["received"]
    assert isinstance(received, dict) and len(received["b"]) == 40 and len(received["d"]) == 40



def break_rx_chain(fe: frontend.FakeFrontend, nth: int) -> None:
    """The guest's ``nth`` next RX chain (0: the next): a writable descriptor chained to
    one past its table (Python's walk raises GuestError: the queue is broken by it)."""
    rxq = fe.rxq
    posted = len(set(range(rxq.num)) - set(rxq.free))
    slot = (rxq.avail_idx - posted + nth) % rxq.num
    head = struct.unpack_from("<H", fe.mem, rxq.avail + 4 + 2 * slot)[0]
    rxq.set_desc(head, fe._buf_addr(0, head), frontend.BUF_SIZE, 2 | 1, rxq.num + 5)  # WRITE | NEXT


@pytest.mark.parametrize("broken", [0, 1])
def test_a_queue_python_breaks_during_a_wire_burst_gets_nothing_more_from_c(broken: int) -> None:
    """A wire frame C hands to Python (its source not seen yet) breaks b's RX queue in
    Python's delivery (b is down: Python drops the rest, target_down); the frames to b
    after it in the same burst must not go into the broken ring from C, whether C had
    looked b's address up before (broken=1: in its cache) or not (0: the burst's table)."""
    hdr = bytes(10)
    new = "02:99:00:00:00:02"
    frames = [hdr + bytes(Ether(src=OUT, dst=MASTER) / IP(src=OUT4, dst=A4) / UDP() / b"seen")]
    frames += [hdr + bytes(Ether(src=OUT, dst=MASTER) / IP(src=OUT4, dst=B4) / UDP(dport=1) / b"fast")] * broken
    frames += [hdr + bytes(Ether(src=new, dst=MASTER) / IP(src=OUT4, dst=B4) / UDP(dport=2) / b"slow")]
    frames += [hdr + bytes(Ether(src=OUT, dst=MASTER) / IP(src=OUT4, dst=B4) / UDP(dport=3) / bytes([i]))
               for i in range(10)]

    def scenario() -> dict[str, object]:
        p = make_port()
        try:
            p.port.wire_macs.add(mac(OUT))
            break_rx_chain(p.frontends["b"], broken)
            p.uplink.inject(*frames)
            p.dp._uplink_readable()
            return {**outcome(p), "uplink_rx": p.dp.uplink_rx,
                    "port_drops": (counts(p.dp.drops), counts(p.port.uplink_drops))}
        finally:
            p.close()

    result = both_ways(scenario)
    assert result["port_drops"] == ({}, {"target_down": 10})


def test_an_rx_buffer_overlapping_the_frames_tx_buffer_gets_the_frame_python_would_deliver() -> None:
    """A guest sending to itself (C forwards it) whose next RX buffer lies 64 bytes into
    the TX buffer of that very frame: Python delivers the frame as taken; C's head
    (128 bytes, copied first) must not overwrite the tail before the tail is copied."""
    frame = bytes(Ether(src=A, dst=A) / IP(src=A4, dst=A4) / UDP(dport=9) / (bytes(range(256)) * 4))

    def scenario() -> dict[str, object]:
        p = make_port()
        try:
            fe = p.frontends["a"]
            rxq, tx_addr = fe.rxq, fe._buf_addr(1, fe.txq.free[-1])
            posted = len(set(range(rxq.num)) - set(rxq.free))
            head = struct.unpack_from("<H", fe.mem, rxq.avail + 4 + 2 * ((rxq.avail_idx - posted) % rxq.num))[0]
            rxq.set_desc(head, tx_addr + 64, frontend.BUF_SIZE, 2)  # WRITE
            fe.transmit(frame)
            p.device("a").drain_tx()
            used = rxq.pop_used()
            assert used is not None and used[0] == head
            return {"got": bytes(fe.mem[tx_addr + 64 : tx_addr + 64 + used[1]]), **outcome(p)}
        finally:
            p.close()

    result = both_ways(scenario)
    assert result["got"] == struct.pack("<10xH", 1) + frame


def test_an_rx_avail_index_past_the_ring_is_taken_in_c_as_in_python() -> None:
    """b's driver moves its RX avail index more entries ahead than the ring holds. Python's
    put checks each chain, not the index (``has_pending``), and so does C's rx_put, which
    keeps the index it read for the next frames (``avail_seen``): both deliver into the
    chains that are there, and the same frames."""

    def scenario() -> dict[str, object]:
        p = make_port()
        try:
            rxq = p.frontends["b"].rxq
            struct.pack_into("<H", p.frontends["b"].mem, rxq.avail + 2, (rxq.avail_idx + rxq.num + 5) & 0xFFFF)
            p.frontends["a"].transmit(frame_to_b(b"past"))
            p.device("a").drain_tx()
            p.frontends["a"].transmit(frame_to_b(b"again"))
            p.device("a").drain_tx()
            return outcome(p)
        finally:
            p.close()

    received = both_ways(scenario)["received"]
    assert isinstance(received, dict) and [f[-4:] for _, f in received["b"]] == [b"past", b"gain"]


def test_every_ring_uses_its_chains_in_the_order_they_were_made_available() -> None:
    """VIRTIO_F_IN_ORDER is offered: a driver that acks it (DPDK's virtio-user) takes the
    used ring's n-th entry for its n-th chain. Whether C or Python takes a chain (a plain
    frame, one in two descriptors, a broadcast ARP, a spoofed source dropped) and whether
    C or Python fills an RX chain, the used entries name the chains in avail order; the
    TX heads come from a free list reused last-in first-out, so they are not sequential."""
    def kind(k: int, i: int) -> tuple[bytes, bool]:
        """A frame of kind ``k`` (tagged ``i``) and whether it comes in two descriptors."""
        if k == 0:
            return frame_to_b(bytes([i])), False
        if k == 1:
            return frame_to_b(bytes([i])), True
        if k == 2:
            return bytes(Ether(src=A, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=A, psrc=A4, pdst=B4)), False
        if k == 3:  # spoofed source: dropped
            return bytes(Ether(src=A, dst=B) / IP(src=C4, dst=B4) / UDP()), False
        return bytes(Ether(src=A, dst=C) / IP(src=A4, dst=C4) / UDP() / bytes([i])), False

    rng = random.Random(35)

    def scenario() -> dict[str, tuple[int, bool, int, bool]]:
        p = make_port()
        try:
            a = p.frontends["a"]
            for i in range(120):
                frame, split = kind(rng.randrange(5), i)
                a.transmit(frame, split=split)
                if rng.random() < 0.2:
                    p.device("a").drain_tx()
                    for fe in p.frontends.values():
                        fe.receive()
            p.device("a").drain_tx()
            for fe in p.frontends.values():
                fe.receive()
                fe.reclaim_tx()
            return {name: (len(fe.txq.used_order), fe.txq.used_in_order(), len(fe.rxq.used_order),
                           fe.rxq.used_in_order()) for name, fe in p.frontends.items()}
        finally:
            p.close()

    fast = scenario()
    rng.seed(35)
    with pure_python():
        pure = scenario()
    assert fast == pure
    assert fast["a"][:2] == (120, True)
    assert all(tx_ok and rx_ok for _, tx_ok, _, rx_ok in fast.values())
    assert fast["b"][2] > 0 and fast["c"][2] > 0
