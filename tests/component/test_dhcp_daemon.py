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

from tests.component.test_hostlink import A_IP, HOST_IP, MAC_A, Lab
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
