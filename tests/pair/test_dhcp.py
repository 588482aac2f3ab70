"""The daemon's DHCPv4 server on an in-process port: a fake front-end sends DISCOVER and
REQUEST; the OFFER and ACK arrive in its own RX ring; nothing reaches the wire or the
other guests; a slave without a lease (``dhcp = false``, learning) is switched as before."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from tests.support.inproc import MASTER_MAC, InprocPort
from vhost_ipvlan.config import SlaveConfig, dhcp_lease
from vhost_ipvlan.daemon.datapath import DHCP_FALLBACK_ROUTER
from vhost_ipvlan.drops import counts
from vhost_ipvlan.net.dhcp import MAGIC, Lease, Outcome

A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
A4, B4, HOST4, GW4 = "10.0.0.10", "10.0.0.11", "10.0.0.1", "10.0.0.254"
MASTER = ":".join(f"{b:02x}" for b in MASTER_MAC)


def packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


@pytest.fixture(params=["l2", "l3", "l3s"])
def port(request: pytest.FixtureRequest) -> Iterator[InprocPort]:
    p = InprocPort([("a", [packed(A4)], mac(A)), ("b", [packed(B4)], mac(B))], mode=request.param)
    p.port.master_addresses = frozenset({packed(HOST4)})
    p.port.gateway_v4 = packed(GW4)
    p.dp.dns = ((packed("10.0.0.53"),), ("example.org",))
    for name, addr in (("a", A4), ("b", B4)):
        p.device(name).slave.dhcp = Lease(((packed(addr), 24),), name)
    try:
        yield p
    finally:
        p.close()


def discover(client_id: bytes | None = None, kind: str = "discover", **extra: object) -> bytes:
    opts: list[object] = [("message-type", kind), *extra.items()]
    if client_id is not None:
        opts.append(("client_id", client_id))
    return bytes(Ether(src=A, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
                 / UDP(sport=68, dport=67) / BOOTP(chaddr=mac(A), xid=7) / DHCP(options=[*opts, "end"]))


def options(frame: bytes) -> dict[str, object]:
    return {o[0]: o[1] for o in Ether(frame)[DHCP].options if isinstance(o, tuple) and len(o) == 2}


@pytest.mark.parametrize("client_id", [None, b"\xff\x00\x00\x00\x01\x00\x04" + bytes(16)], ids=["chaddr", "client-id"])
def test_discover_and_request_are_answered_into_the_senders_ring_only(port: InprocPort,
                                                                       client_id: bytes | None) -> None:
    a = port.frontends["a"]
    a.transmit(discover(client_id))
    port.device("a").drain_tx()
    got = a.receive()
    assert len(got) == 1
    offer = Ether(got[0][1])
    assert (offer.src, offer.dst, offer[IP].dst, offer[BOOTP].yiaddr) == (MASTER, A, A4, A4)
    o = options(got[0][1])
    assert o["message-type"] == 2 and o["subnet_mask"] == "255.255.255.0" and o["name_server"] == "10.0.0.53"
    if port.port.mode == "l2":  # the master's gateway; the server identifier is the master's address
        assert (o["router"], o["server_id"]) == (GW4, HOST4)
    else:  # the daemon is the router: the master's address
        assert (o["router"], o["server_id"]) == (HOST4, HOST4)
    a.transmit(discover(client_id, "request", server_id=o["server_id"], requested_addr=A4))
    port.device("a").drain_tx()
    ack = a.receive()
    assert len(ack) == 1 and options(ack[0][1])["message-type"] == 5
    assert port.uplink.sent == [] and port.frontends["b"].receive() == []
    assert port.device("a").dhcp_stats() == {"offered": 1, "acked": 1}
    assert not counts(port.device("a").drops, port.device("a").slave.drops)


def test_a_request_for_another_guests_address_gets_a_nak(port: InprocPort) -> None:
    a = port.frontends["a"]
    a.transmit(discover(kind="request", requested_addr=B4))
    port.device("a").drain_tx()
    got = a.receive()
    assert len(got) == 1 and options(got[0][1])["message-type"] == 6
    assert port.uplink.sent == [] and port.frontends["b"].receive() == []
    assert port.device("a").dhcp_stats() == {"naked": 1}


def test_a_malformed_message_is_a_counted_drop(port: InprocPort) -> None:
    a = port.frontends["a"]
    a.transmit(bytes(Ether(src=A, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
                     / UDP(sport=68, dport=67) / BOOTP(chaddr=mac(A)) / Raw(MAGIC + b"\x35\x09\x01")))  # past the end
    port.device("a").drain_tx()
    assert a.receive() == [] and port.uplink.sent == [] and port.frontends["b"].receive() == []
    assert counts(port.device("a").drops) == {"dhcp_malformed": 1}


def test_without_a_lease_the_message_is_switched_as_before(port: InprocPort) -> None:
    port.device("a").slave.dhcp = None
    port.frontends["a"].transmit(discover())
    port.device("a").drain_tx()
    assert port.frontends["a"].receive() == []
    if port.port.mode == "l2":  # flooded: the other guest and the wire
        assert len(port.frontends["b"].receive()) == 1 and len(port.uplink.sent) == 1
    else:  # l3: a broadcast from a guest is dropped
        assert counts(port.device("a").slave.drops) == {"multicast_dst": 1}


def test_an_address_less_master_in_l3_uses_the_link_local_router() -> None:
    p = InprocPort([("a", [packed(A4)], mac(A))], mode="l3")
    try:
        lease = Lease(((packed(A4), 32),), "a")
        net = p.dp.dhcp_network(lease)
        assert net.router == net.server_id == DHCP_FALLBACK_ROUTER
        l2 = InprocPort([("a", [packed(A4)], mac(A))], mode="l2")
        try:
            assert l2.dp.dhcp_network(lease).router is None  # no gateway known: no router option
        finally:
            l2.close()
    finally:
        p.close()


def test_who_is_answered() -> None:
    from pathlib import Path

    def slave(addresses: tuple[str, ...], **kw: object) -> SlaveConfig:
        return SlaveConfig("vm1", Path("/run/vm1.sock"), "server",
                           tuple(ipaddress.ip_interface(a) for a in addresses), None, **kw)  # type: ignore[arg-type]

    assert dhcp_lease(slave(("fd00::1/64", "10.0.0.5/24", "10.0.1.5/16"))) == \
        Lease(((packed("10.0.0.5"), 24), (packed("10.0.1.5"), 16)), "vm1")
    assert dhcp_lease(slave(("fd00::1/64",))) is None  # no IPv4 address
    assert dhcp_lease(slave(("10.0.0.5/24",), dhcp=False)) is None
    assert dhcp_lease(slave(("10.0.0.5/24",), learn=True)) is None  # a learning slave
    assert len(Outcome) == 8


def test_a_renewal_unicast_to_the_server_is_answered_too(port: InprocPort) -> None:
    """RENEWING (RFC 2131 §4.4.5): from the guest's address to the server identifier, by the
    master's MAC; answered (unicast ACK) and never routed, sent to the host or the wire."""
    a = port.frontends["a"]
    a.transmit(bytes(Ether(src=A, dst=MASTER) / IP(src=A4, dst=HOST4) / UDP(sport=68, dport=67)
                     / BOOTP(chaddr=mac(A), xid=9, ciaddr=A4) / DHCP(options=[("message-type", "request"), "end"])))
    port.device("a").drain_tx()
    got = a.receive()
    assert len(got) == 1 and options(got[0][1])["message-type"] == 5
    ack = Ether(got[0][1])
    assert (ack.dst, ack[IP].dst, ack[BOOTP].ciaddr) == (A, A4, A4)
    assert port.uplink.sent == [] and port.frontends["b"].receive() == []
    assert not counts(port.device("a").drops, port.device("a").slave.drops)
