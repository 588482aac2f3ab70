"""The daemon's DHCPv4 server with the real daemon, a veth master and fake guests (l2, l3, l3s).

    fake guests a (192.0.2.10/24), b (192.0.2.11/24)
        -- vhost-ipvlan -- vim0 (ns host, 192.0.2.2/24, default via 192.0.2.1) <== veth ==> vio0 (ns out)

a's DISCOVER and REQUEST are answered into a's RX ring; nothing reaches the wire
(an nftables counter on the outside's ingress) or b. l2: the router is the master's
default gateway; l3, l3s: the master's own address (the daemon is the guest's router).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from tests.component.test_hostlink import A_IP, A_IP6, HOST_IP, MAC_A, Lab
from tests.support.lab import MASTER, OUT_IP, SlaveSpec, nothing_received, receive, sh
from tests.support.wait import wait_until
from vhost_ipvlan.control.client import Client

pytestmark = [pytest.mark.netns]

MAC_B = "02:00:00:00:00:0b"
B_IP = "192.0.2.11"


class DhcpLab(Lab):
    """The host-link lab, with a default route through the master before the daemon starts."""

    def start_daemon(self) -> None:
        if "default" not in sh("ip", "-n", self.host, "route", "show"):
            sh("ip", "-n", self.host, "route", "add", "default", "via", OUT_IP, "dev", MASTER)
        super().start_daemon()


@pytest.fixture(params=["l2", "l3", "l3s"])
def lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[DhcpLab]:
    with DhcpLab(tmp_path, request.param, [SlaveSpec("b", [f"{B_IP}/24"], MAC_B)]) as lab:
        yield lab


def client(kind: str, **options: object) -> bytes:
    return bytes(Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
                 / UDP(sport=68, dport=67) / BOOTP(chaddr=bytes.fromhex(MAC_A.replace(":", "")), xid=42)
                 / DHCP(options=[("message-type", kind), *options.items(), "end"]))


def options(p: Packet) -> dict[str, object]:
    return {o[0]: o[1] for o in p[DHCP].options if isinstance(o, tuple) and len(o) == 2}


def is_dhcp(p: Packet) -> bool:
    return UDP in p and {p[UDP].sport, p[UDP].dport} & {67, 68} != set()


def test_a_guest_gets_its_address_from_the_daemon_only(lab: DhcpLab) -> None:
    lab.wire_counter("udp dport 67")
    a, b = lab.frontend("a"), lab.frontend("b")
    a.transmit(client("discover"))
    offer = receive(a, lambda p: DHCP in p and options(p).get("message-type") == 2, "OFFER at a")
    o = options(offer)
    assert offer[BOOTP].yiaddr == A_IP and offer[Ether].src == lab.master_mac and offer[Ether].dst == MAC_A
    assert o["subnet_mask"] == "255.255.255.0" and o["server_id"] == HOST_IP
    assert o["router"] == (OUT_IP if lab.mode == "l2" else HOST_IP)
    a.transmit(client("request", server_id=HOST_IP, requested_addr=A_IP))
    ack = receive(a, lambda p: DHCP in p and options(p).get("message-type") == 5, "ACK at a")
    assert ack[BOOTP].yiaddr == A_IP
    a.transmit(client("request", requested_addr=B_IP))  # another guest's address
    receive(a, lambda p: DHCP in p and options(p).get("message-type") == 6, "NAK at a")
    wait_until(lambda: lab.slave_stats("a").get("dhcp") == {"offered": 1, "acked": 1, "naked": 1}, 10,
               what="dhcp counted on a")
    assert lab.wire_count() == 0
    assert nothing_received(b, is_dhcp)


def test_dns_follows_sighup_and_dhcp_turns_off_in_place(tmp_path: Path) -> None:
    """``[daemon] dns`` changed by SIGHUP reaches the next OFFER; ``slave.change dhcp=false``
    (the guest stays connected) gives the kernel's behaviour: the DISCOVER is flooded."""
    with DhcpLab(tmp_path, "l2", [SlaveSpec("b", [f"{B_IP}/24"], MAC_B)]) as lab:
        a, b = lab.frontend("a"), lab.frontend("b")
        lab.config_head = '[daemon]\ndns = ["198.51.100.53"]\ndns_search = ["sighup.example"]\n'
        lab.config.write_text(lab.config_text())
        n = lab.log_text().count("reloaded ")
        assert lab.daemon is not None
        os.kill(lab.daemon.pid, signal.SIGHUP)
        lab.wait_log("reloaded ", n)
        a.transmit(client("discover"))
        offer = receive(a, lambda p: DHCP in p and options(p).get("message-type") == 2, "OFFER at a")
        assert options(offer)["name_server"] == "198.51.100.53" and options(offer)["domain"] == b"sighup.example"
        with Client(lab.control) as c:
            info = c.call("slave.change", {"name": "a", "dhcp": False})
            assert info["dhcp"] is False and info["dhcp_answered"] is False and info["connected"] is True
        lab.wire_counter("udp dport 67")
        a.transmit(client("discover"))
        receive(b, is_dhcp, "a's DISCOVER flooded to b")
        wait_until(lambda: lab.wire_count() == 1, 10, what="a's DISCOVER on the wire")
        assert nothing_received(a, lambda p: DHCP in p)


def test_ipv6_answers_follow_sighup_and_turn_off_in_place(tmp_path: Path) -> None:
    """The same switch for IPv6: an RS from a (2001:db8::10) gets an RA with M and the
    IPv6 DNS server SIGHUP gave (RDNSS), and its SOLICIT gets that address; nothing on the
    wire. ``slave.change dhcp=false``: a's RS is flooded to b and the wire. b (IPv4 only)
    gets no RA: its RS is flooded like a's."""
    from scapy.layers.dhcp6 import DUID_LL, DHCP6_Advertise, DHCP6_Solicit, DHCP6OptClientId, DHCP6OptIA_NA
    from scapy.layers.dhcp6 import DHCP6OptIAAddress as IAAddress
    from scapy.layers.inet6 import ICMPv6ND_RA, ICMPv6ND_RS, ICMPv6NDOptRDNSS, IPv6

    def rs(mac: str) -> bytes:
        return bytes(Ether(src=mac, dst="33:33:00:00:00:02") / IPv6(src="fe80::" + mac[-2:], dst="ff02::2", hlim=255)
                     / ICMPv6ND_RS())

    with DhcpLab(tmp_path, "l2", [SlaveSpec("b", [f"{B_IP}/24"], MAC_B)]) as lab:
        a, b = lab.frontend("a"), lab.frontend("b")
        lab.config_head = '[daemon]\ndns = ["198.51.100.53", "2001:db8::53"]\n'
        lab.config.write_text(lab.config_text())
        n = lab.log_text().count("reloaded ")
        assert lab.daemon is not None
        os.kill(lab.daemon.pid, signal.SIGHUP)
        lab.wait_log("reloaded ", n)
        lab.wire_counter("icmpv6 type nd-router-solicit")
        a.transmit(rs(MAC_A))
        adv = receive(a, lambda p: ICMPv6ND_RA in p, "RA at a")
        assert (adv[ICMPv6ND_RA].M, adv[ICMPv6ND_RA].O, adv[ICMPv6ND_RA].routerlifetime) == (1, 1, 0)
        assert adv[ICMPv6NDOptRDNSS].dns == ["2001:db8::53"] and adv.src == lab.master_mac
        a.transmit(bytes(Ether(src=MAC_A, dst="33:33:00:01:00:02") / IPv6(src="fe80::a", dst="ff02::1:2")
                         / UDP(sport=546, dport=547) / DHCP6_Solicit() / DHCP6OptClientId(duid=DUID_LL(lladdr=MAC_A))
                         / DHCP6OptIA_NA(iaid=1)))
        got = receive(a, lambda p: DHCP6_Advertise in p, "ADVERTISE at a")
        assert got[IAAddress].addr == A_IP6
        assert lab.wire_count() == 0 and nothing_received(b, lambda p: ICMPv6ND_RS in p)
        with Client(lab.control) as c:
            info = c.call("slave.change", {"name": "a", "dhcp": False})
            assert info["dhcp6_answered"] is False and info["connected"] is True
        a.transmit(rs(MAC_A))
        receive(b, lambda p: ICMPv6ND_RS in p, "a's RS flooded to b")
        wait_until(lambda: lab.wire_count() == 1, 10, what="a's RS on the wire")
        assert nothing_received(a, lambda p: ICMPv6ND_RA in p)
        b.transmit(rs(MAC_B))
        receive(a, lambda p: ICMPv6ND_RS in p, "b's RS flooded to a")
        wait_until(lambda: lab.wire_count() == 2, 10, what="b's RS on the wire")
        assert nothing_received(b, lambda p: ICMPv6ND_RA in p)
