"""The daemon's DHCPv6 server and Router Advertisements on an in-process port: a fake
front-end sends SOLICIT/REQUEST/CONFIRM and Router Solicitations; the answers arrive in its
own RX ring only; nothing reaches the wire or the other guests. l2 with a router on the
wire (an RA seen, or an IPv6 default route): the RS is flooded as before, no RA from the
daemon, DHCPv6 still answered."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from scapy.layers.dhcp6 import (
    DUID_LL,
    DHCP6_Advertise,
    DHCP6_Confirm,
    DHCP6_Reply,
    DHCP6_Request,
    DHCP6_Solicit,
    DHCP6OptClientId,
    DHCP6OptDNSServers,
    DHCP6OptIA_NA,
    DHCP6OptIAAddress,
    DHCP6OptServerId,
    DHCP6OptStatusCode,
)
from scapy.layers.inet import UDP
from scapy.layers.inet6 import (
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptDNSSL,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptRDNSS,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from tests.support.frontend import QSIZE
from tests.support.inproc import MASTER_MAC, InprocPort
from vhost_ipvlan import config as cfg
from vhost_ipvlan.drops import counts
from vhost_ipvlan.net import dhcp6, ra
from vhost_ipvlan.net.dhcp import Lease
from vhost_ipvlan.switch.port import LINK_ROUTER_TICKS
from vhost_ipvlan.vhost_user import codec
from vhost_ipvlan.vhost_user.codec import Request

A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
A_LL = "fe80::aa"
A6, B6, A4 = "fd00::a", "fd00::b", "10.0.0.10"
MASTER = ":".join(f"{b:02x}" for b in MASTER_MAC)
MASTER_LL = "fe80::ff:fe00:1"  # EUI-64 of 02:00:00:00:00:01


def packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


@pytest.fixture(params=["l2", "l3", "l3s"])
def port(request: pytest.FixtureRequest) -> Iterator[InprocPort]:
    p = InprocPort([("a", [packed(A4), packed(A6)], mac(A)), ("b", [packed(B6)], mac(B))], mode=request.param)
    p.dp.dns = ((packed("10.0.0.53"), packed("fd00::53")), ("example.org",))
    for name, addr in (("a", A6), ("b", B6)):
        p.device(name).slave.dhcp6 = Lease(((packed(addr), 64),), name)
    try:
        yield p
    finally:
        p.close()


def dhcp6_frame(msg: Packet, *options: Packet) -> bytes:
    opts: Packet = DHCP6OptClientId(duid=DUID_LL(lladdr=A))
    for o in options:
        opts = opts / o
    return bytes(Ether(src=A, dst="33:33:00:01:00:02") / IPv6(src=A_LL, dst="ff02::1:2")
                 / UDP(sport=546, dport=547) / msg / opts)


def rs() -> bytes:
    return bytes(Ether(src=A, dst="33:33:00:00:00:02") / IPv6(src=A_LL, dst="ff02::2", hlim=255) / ICMPv6ND_RS())


def exchange(port: InprocPort, frame: bytes) -> list[Packet]:
    """``frame`` sent by guest a: what a received (nothing went to b or the wire)."""
    port.frontends["a"].transmit(frame)
    port.device("a").drain_tx()
    got: list[Packet] = [Ether(f) for _, f in port.frontends["a"].receive()]
    assert port.uplink.sent == [] and port.frontends["b"].receive() == []
    return got


def server_id() -> DHCP6OptServerId:
    return DHCP6OptServerId(duid=DUID_LL(lladdr=MASTER))


def test_solicit_and_request_are_answered_into_the_senders_ring_only(port: InprocPort) -> None:
    [adv] = exchange(port, dhcp6_frame(DHCP6_Solicit(trid=5), DHCP6OptIA_NA(iaid=1)))
    assert adv.haslayer(DHCP6_Advertise) and (adv.src, adv.dst, adv[IPv6].src, adv[IPv6].dst) == \
        (MASTER, A, MASTER_LL, A_LL)
    assert adv[DHCP6OptIAAddress].addr == A6 and adv[DHCP6OptDNSServers].dnsservers == ["fd00::53"]
    assert bytes(adv[DHCP6OptServerId].duid) == dhcp6.duid_ll(MASTER_MAC)
    [rep] = exchange(port, dhcp6_frame(DHCP6_Request(trid=6), server_id(),
                                       DHCP6OptIA_NA(iaid=1, ianaopts=[DHCP6OptIAAddress(addr=A6)])))
    assert rep.haslayer(DHCP6_Reply) and rep[DHCP6OptIAAddress].addr == A6
    assert port.device("a").dhcp6_stats() == {"advertised": 1, "assigned": 1}
    assert not counts(port.device("a").drops, port.device("a").slave.drops)


def test_another_guests_address_is_refused(port: InprocPort) -> None:
    [rep] = exchange(port, dhcp6_frame(DHCP6_Request(), server_id(),
                                       DHCP6OptIA_NA(iaid=1, ianaopts=[DHCP6OptIAAddress(addr=B6)])))
    assert rep[DHCP6OptIA_NA][DHCP6OptStatusCode].statuscode == dhcp6.NOT_ON_LINK
    assert not rep[DHCP6OptIA_NA].haslayer(DHCP6OptIAAddress)
    [rep] = exchange(port, dhcp6_frame(DHCP6_Confirm(), DHCP6OptIA_NA(iaid=1, ianaopts=[DHCP6OptIAAddress(addr=B6)])))
    assert rep[DHCP6OptStatusCode].statuscode == dhcp6.NOT_ON_LINK
    assert port.device("a").dhcp6_stats() == {"refused": 2}


def test_a_malformed_message_is_a_counted_drop(port: InprocPort) -> None:
    frame = bytes(Ether(src=A, dst="33:33:00:01:00:02") / IPv6(src=A_LL, dst="ff02::1:2")
                  / UDP(sport=546, dport=547) / Raw(b"\x01\x00\x00\x01\x00\x01\x00\x40"))  # option past the end
    assert exchange(port, frame) == []
    assert counts(port.device("a").drops) == {"dhcp6_malformed": 1}


def test_a_router_solicitation_gets_an_advert(port: InprocPort) -> None:
    [adv] = exchange(port, rs())
    r = adv[ICMPv6ND_RA]
    assert (adv.src, adv.dst, adv[IPv6].src, adv[IPv6].dst) == (MASTER, A, MASTER_LL, A_LL)
    assert (r.M, r.O) == (1, 1)
    # the daemon routes in l3/l3s; in l2 it forwards nothing off the link
    assert r.routerlifetime == (0 if port.port.mode == "l2" else ra.ROUTER_LIFETIME)
    assert adv[ICMPv6NDOptSrcLLAddr].lladdr == MASTER and adv[ICMPv6NDOptMTU].mtu == 1500
    assert (adv[ICMPv6NDOptPrefixInfo].prefix, adv[ICMPv6NDOptPrefixInfo].A) == ("fd00::", 0)
    assert adv[ICMPv6NDOptRDNSS].dns == ["fd00::53"] and adv[ICMPv6NDOptDNSSL].searchlist == ["example.org."]
    assert port.device("a").dhcp6_stats() == {"ra_sent": 1}


def test_rings_starting_get_one_unsolicited_advert(port: InprocPort) -> None:
    port.dp._first_advert(port.device("a"))
    [adv] = [Ether(f) for _, f in port.frontends["a"].receive()]
    assert (adv.dst, adv[IPv6].dst) == ("33:33:00:00:00:01", "ff02::1") and adv.haslayer(ICMPv6ND_RA)
    assert port.frontends["b"].receive() == [] and port.uplink.sent == []


def test_an_ipv4_only_slave_gets_no_advert() -> None:
    """No IPv6 address configured: no RA, no DHCPv6 (an IPv4-only link stays so); in l3
    its RS is the switch's as any multicast from a guest (dropped: l3 floods nothing)."""
    p = InprocPort([("a", [packed(A4)], mac(A)), ("b", [], mac(B))], mode="l3")
    try:
        sc = cfg.SlaveConfig("a", Path("/a.sock"), "server", (ipaddress.ip_interface(A4 + "/24"),), None)
        p.device("a").slave.dhcp6 = cfg.dhcp6_lease(sc)
        assert p.device("a").slave.dhcp6 is None
        p.frontends["a"].transmit(rs())
        p.device("a").drain_tx()
        assert p.frontends["a"].receive() == [] and p.device("a").ra_sent == 0
    finally:
        p.close()


def wire_ra() -> bytes:
    return bytes(10) + bytes(Ether(src="02:99:00:00:00:01", dst="33:33:00:00:00:01")
                             / IPv6(src="fe80::1", dst="ff02::1", hlim=255) / ICMPv6ND_RA(routerlifetime=1800))


@pytest.mark.parametrize("how", ["ra-on-wire", "default-route", "router-guest"])
def test_l2_with_a_router_on_the_wire(how: str) -> None:
    """The wire's router (or a guest allowed to route) answers: the guest's RS is flooded
    as before (the wire and the other guests), its RA reaches the guests; DHCPv6 is still
    answered by the daemon."""
    p = InprocPort([("a", [packed(A6)], mac(A)), ("b", [packed(B6)], mac(B))], mode="l2")
    try:
        for name, addr in (("a", A6), ("b", B6)):
            p.device(name).slave.dhcp6 = Lease(((packed(addr), 64),), name)
        assert p.port.advertises
        if how == "ra-on-wire":
            p.uplink.inject(wire_ra())
            p.dp._uplink_readable()
            assert [Ether(f)[IPv6].src for _, f in p.frontends["a"].receive()] == ["fe80::1"]
            p.frontends["b"].receive()
        elif how == "router-guest":  # b may route (allow_router): its RA passes the guard, flooded
            p.device("b").slave.allow_router = True
            p.frontends["b"].transmit(wire_ra()[10:].replace(mac("02:99:00:00:00:01"), mac(B)))
            p.device("b").drain_tx()
            assert len(p.frontends["a"].receive()) == 1 and len(p.uplink.sent) == 1
            p.uplink.sent.clear()
        else:
            p.port.gateway_v6 = packed("fe80::1")
        assert not p.port.advertises
        p.frontends["a"].transmit(rs())
        p.device("a").drain_tx()
        assert p.frontends["a"].receive() == []
        assert len(p.uplink.sent) == 1 and len(p.frontends["b"].receive()) == 1
        p.dp._first_advert(p.device("a"))
        assert p.frontends["a"].receive() == []  # no unsolicited RA either
        p.frontends["a"].transmit(dhcp6_frame(DHCP6_Solicit(), DHCP6OptIA_NA(iaid=1)))
        p.device("a").drain_tx()
        [adv] = [Ether(f) for _, f in p.frontends["a"].receive()]
        assert adv[DHCP6OptIAAddress].addr == A6 and len(p.uplink.sent) == 1
    finally:
        p.close()


def test_without_a_lease_the_messages_are_switched_as_before(port: InprocPort) -> None:
    port.device("a").slave.dhcp6 = None
    for frame in (rs(), dhcp6_frame(DHCP6_Solicit())):
        port.frontends["a"].transmit(frame)
    port.device("a").drain_tx()
    assert port.frontends["a"].receive() == []
    if port.port.mode == "l2":  # flooded: the other guest and the wire
        assert len(port.frontends["b"].receive()) == 2 and len(port.uplink.sent) == 2
    else:  # l3: multicast from a guest is dropped
        assert counts(port.device("a").slave.drops) == {"multicast_dst": 2}


def test_who_is_answered() -> None:
    def slave(addresses: tuple[str, ...], **kw: object) -> cfg.SlaveConfig:
        return cfg.SlaveConfig("vm1", Path("/run/vm1.sock"), "server",
                               tuple(ipaddress.ip_interface(a) for a in addresses), None, **kw)  # type: ignore[arg-type]

    assert cfg.dhcp6_lease(slave(("fd00::1/64", "10.0.0.5/24", "fe80::5/64"))) == \
        Lease(((packed("fd00::1"), 64),), "vm1")
    assert cfg.dhcp6_lease(slave(("10.0.0.5/24",))) is None  # IPv4 only: no RA, no DHCPv6
    assert cfg.dhcp6_lease(slave(())) is None
    assert cfg.dhcp6_lease(slave(("fd00::1/64",), dhcp=False)) is None
    assert cfg.dhcp6_lease(slave(("fd00::1/64",), learn=True)) is None


def test_ra_sent_counts_only_the_adverts_that_reached_the_ring(port: InprocPort) -> None:
    """An RS flood beyond the guest's receive buffers: each RA that found no buffer is a
    counted RX drop, not an RA sent as well (``ra_sent`` is what went into the ring)."""
    dev = port.device("a")
    for _ in range(QSIZE + 5):
        port.frontends["a"].transmit(rs())
        dev.drain_tx()
    got = port.frontends["a"].receive()
    dropped = sum(counts(dev.drops).values())
    assert len(got) == QSIZE and dropped == 5
    assert dev.dhcp6_stats() == {"ra_sent": QSIZE}


def test_a_front_end_toggling_its_rx_ring_gets_one_pending_unsolicited_advert(port: InprocPort,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Each time the slave comes up, an unsolicited RA is due ``ra.FIRST_DELAY`` later: a
    front-end toggling SET_VRING_ENABLE must not pile up timers (and then RAs built at once,
    on the loop every guest shares); one is pending per guest at a time."""
    timers: list[tuple[Callable[..., object], tuple[object, ...]]] = []

    def call_later(delay: float, callback: Callable[..., object], *args: object) -> object:
        timers.append((callback, args))
        return None

    monkeypatch.setattr(port.dp.loop, "call_later", call_later)
    fe = port.frontends["a"]
    for _ in range(100):
        fe.send(Request.SET_VRING_ENABLE, codec.VRING_STATE.pack(0, 0))
        fe.send(Request.SET_VRING_ENABLE, codec.VRING_STATE.pack(0, 1))
    assert len(timers) == 1
    for callback, args in timers:
        callback(*args)
    assert len(fe.receive()) == 1 and port.device("a").dhcp6_stats() == {"ra_sent": 1}
    port.dp.slave_up(port.device("a"))  # the next start: due again
    assert len(timers) == 2


def test_l2_forgets_a_wire_router_it_no_longer_hears() -> None:
    """One RA from the wire (a router, or any host sending one once) stopped the daemon's
    RAs for every l2 guest until it restarted; a router advertises at least every 1800 s
    (RFC 4861 MaxRtrAdvInterval), so one not heard for ``LINK_ROUTER_TICKS`` RA intervals
    is forgotten, and each RA it sends starts the count again."""
    p = InprocPort([("a", [packed(A6)], mac(A))], mode="l2")
    try:
        p.device("a").slave.dhcp6 = Lease(((packed(A6), 64),), "a")
        p.uplink.inject(wire_ra())
        p.dp._uplink_readable()
        assert not p.port.advertises
        for _ in range(LINK_ROUTER_TICKS):
            p.dp._ra_tick()
        p.uplink.inject(wire_ra())  # still there: heard again
        p.dp._uplink_readable()
        for _ in range(LINK_ROUTER_TICKS):
            p.dp._ra_tick()
        assert not p.port.advertises and p.device("a").ra_sent == 0
        p.dp._ra_tick()  # forgotten: this tick's RA goes out
        assert p.port.advertises and p.device("a").ra_sent == 1
    finally:
        p.close()
