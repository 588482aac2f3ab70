"""Host <-> guest on an in-process port: the real ``PortDatapath`` and switch with a
fake host link (``seams.HostPort``), no tap, no namespace. The component test
``tests/component/test_hostlink.py`` runs the same paths through a real tap."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

from tests.support.inproc import MASTER_MAC, FakeHostLink, InprocPort
from vhost_ipvlan.daemon.routing import LOCAL
from vhost_ipvlan.drops import counts
from vhost_ipvlan.virtio import net

A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
A4, B4, HOST4 = "10.0.0.10", "10.0.0.11", "10.0.0.1"
A6 = "fd00::10"
MASTER = ":".join(f"{b:02x}" for b in MASTER_MAC)
TAP = ":".join(f"{b:02x}" for b in FakeHostLink.mac)


def packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


@pytest.fixture(params=["l2", "l3"])
def port(request: pytest.FixtureRequest) -> Iterator[tuple[InprocPort, FakeHostLink]]:
    p = InprocPort([("a", [packed(A4), packed(A6)], bytes.fromhex(A.replace(":", ""))),
                    ("b", [packed(B4)], bytes.fromhex(B.replace(":", "")))], mode=request.param)
    p.port.master_addresses = frozenset({packed(HOST4)})
    link = FakeHostLink()
    p.dp.hostlink = link
    try:
        yield p, link
    finally:
        p.close()


def from_host(frame: bytes, flags: int = 0) -> bytes:
    return bytes([flags]) + bytes(net.HDR_LEN - 1) + frame


def test_the_hosts_unicast_goes_to_the_owner_as_the_masters(port: tuple[InprocPort, FakeHostLink]) -> None:
    p, link = port
    link.queue += [
        from_host(bytes(Ether(src=TAP, dst=TAP) / IP(src=HOST4, dst=A4) / UDP(dport=7) / b"v4"), flags=2),
        from_host(bytes(Ether(src=TAP, dst=TAP) / IPv6(src="fd00::1", dst=A6) / UDP(dport=7) / b"v6")),
    ]
    p.dp._host_readable()
    got = p.frontends["a"].receive()
    assert [(Ether(f).dst, Ether(f).src, bytes(Ether(f)[UDP].payload)) for _, f in got] == \
        [(A, MASTER, b"v4"), (A, MASTER, b"v6")]
    assert got[0][0][0] == 0  # DATA_VALID is not passed on
    assert p.frontends["b"].receive() == [] and not counts(p.dp.drops)


def test_what_the_host_sends_to_no_guest_is_counted_on_the_port(port: tuple[InprocPort, FakeHostLink]) -> None:
    p, link = port
    link.queue += [
        from_host(bytes(Ether(src=TAP, dst=TAP) / IP(src=HOST4, dst="10.0.0.99") / UDP())),
        from_host(bytes(Ether(src=TAP, dst="33:33:00:00:00:16") / IPv6(src="fd00::1", dst="ff02::16") / UDP())),
    ]
    p.dp._host_readable()
    assert counts(p.dp.drops) == {"host_no_guest": 1, "host_not_unicast_ip": 1}
    assert p.frontends["a"].receive() == [] and p.frontends["b"].receive() == []


def test_a_guest_reaches_the_host_through_the_link(port: tuple[InprocPort, FakeHostLink]) -> None:
    p, link = port
    p.router.mac = LOCAL  # l3 routes it: the host's tables say the address is local
    a = p.frontends["a"]
    a.transmit(bytes(Ether(src=A, dst=MASTER) / IP(src=A4, dst=HOST4) / UDP(dport=9) / b"hi"))
    if p.port.mode == "l2":  # l2: the daemon answers for the host's addresses
        a.transmit(bytes(Ether(src=A, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=A, psrc=A4, pdst=HOST4)))
    p.device("a").drain_tx()
    sent = [Ether(f[net.HDR_LEN :]) for f in link.sent]
    assert [(e.dst, e.src, bytes(e[UDP].payload)) for e in sent] == [(TAP, MASTER, b"hi")]
    if p.port.mode == "l2":
        (reply,) = [Ether(f) for _, f in a.receive()]
        assert reply[ARP].op == 2 and reply[ARP].hwsrc == MASTER and reply[ARP].psrc == HOST4
