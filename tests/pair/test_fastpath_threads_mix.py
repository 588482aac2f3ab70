"""Two threads bursting at once with every path of the C accelerator that takes the GIL
back in play (written by the review of the GIL-free bursts).

Each of two in-process ports has a sender a (IPv4 and IPv6 addresses, sent from in
turn), and nine targets b0..b8 (b0 and
b8 share a cache way: .2 and .10), b1 with two queue pairs (the flow's ring), every
guest migrating (dirty log on). Each thread drives its own port; every target must
get exactly its own port's frames, whole, its counters must agree, and its log must be
marked.
"""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from tests.support.inproc import InprocPort, burst_from_threads
from vhost_ipvlan.daemon import fastpath

pytestmark = pytest.mark.skipif(not fastpath.accelerated(), reason="the C accelerator is not built")

A, A4, A6 = "02:00:00:00:00:0a", "10.0.0.1", "2001:db8::1"
TARGETS, ROUNDS = 9, 40


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def tmac(i: int) -> str:
    return f"02:00:00:00:01:{i:02x}"


def make_port() -> InprocPort:
    a_ips = [ipaddress.ip_address(A4).packed, ipaddress.ip_address(A6).packed]
    guests: list[tuple[str, list[bytes], bytes | None]] = [("a", a_ips, mac(A))]
    guests += [(f"b{i}", [ipaddress.ip_address(f"10.0.0.{2 + i}").packed,
                          ipaddress.ip_address(f"2001:db8::{2 + i:x}").packed], mac(tmac(i)))
               for i in range(TARGETS)]
    p = InprocPort(guests, queues={"b1": (2, 2)})
    mark = fastpath.log_mark()
    for name, fe in p.frontends.items():
        session = p.device(name).session
        assert session is not None
        session.log_mark = mark
        fe.start_dirty_log()
        fe.clear_log()
    return p


def frames(port_id: int) -> list[bytes]:
    out = []
    for i in range(TARGETS):
        for v6 in (False, True):
            l3 = IPv6(src=A6, dst=f"2001:db8::{2 + i:x}") if v6 else IP(src=A4, dst=f"10.0.0.{2 + i}")
            for sport in (1000, 1001):  # two flows: both of b1's rings
                out.append(bytes(Ether(src=A, dst=tmac(i)) / l3 / UDP(sport=sport, dport=port_id) /
                                 (bytes([port_id]) * 600)))
    return out


def test_two_threads_with_cache_misses_multiqueue_and_dirty_logs() -> None:
    ports = [make_port(), make_port()]
    try:
        fs = [frames(1), frames(2)]
        got: list[dict[str, list[bytes]]] = [{f"b{i}": [] for i in range(TARGETS)} for _ in range(2)]

        def take(k: int) -> None:
            for i in range(TARGETS):
                for ring in ports[k].frontends[f"b{i}"].receive_all():
                    got[k][f"b{i}"].extend(frame for _, frame in ring)

        burst_from_threads(ports, fs, ROUNDS, after_round=take)
        for k in range(2):
            for i in range(TARGETS):
                name = f"b{i}"
                want = sorted(f for f in fs[k] if f[:6] == mac(tmac(i))) * ROUNDS
                assert sorted(got[k][name]) == sorted(want), f"port {k + 1} {name}"
                assert ports[k].device(name).counters()["rx_packets"] == len(want)
                assert ports[k].frontends[name].dirty_pages(), f"port {k + 1} {name}: nothing logged"
            assert ports[k].device("a").counters()["tx_packets"] == ROUNDS * len(fs[k])
    finally:
        for p in ports:
            p.close()
