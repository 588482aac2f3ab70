"""The real daemon, a veth master in a test namespace, fake front-ends as guests.

Topology (all made here, removed afterwards):

    fake front-end a (192.0.2.10) --\\
                                      vhost-ipvlan -- vim0 (ns host) <== veth ==> vio0 (ns out, 192.0.2.1)
    fake front-end b (192.0.2.11) --/

The outside host is the real kernel stack: it answers ARP, NDP and pings.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from tests.support.frontend import FakeFrontend
from tests.support.lab import OUT_IP, OUT_IP6, FrontendLab, SlaveSpec, nothing_received, receive, sh
from tests.support.wait import wait_until
from vhost_ipvlan.virtio.virtqueue import VRING_DESC_F_NEXT

pytestmark = [pytest.mark.netns]

MAC_A = "02:00:00:00:00:0a"
MAC_B = "02:00:00:00:00:0b"
A_IP, B_IP, C_IP, D_IP = "192.0.2.10", "192.0.2.11", "192.0.2.12", "192.0.2.13"
MAC_D = "02:00:00:00:00:0d"
A_IP6 = "2001:db8::10"


class Lab(FrontendLab):
    """The shared lab plus fake front-ends standing in for guests."""

    def __init__(self, tmp: Path, pure_python: bool = False) -> None:
        super().__init__(tmp, [
            SlaveSpec("a", [f"{A_IP}/24", f"{A_IP6}/64"], MAC_A),
            SlaveSpec("b", [f"{B_IP}/24"], MAC_B),
            SlaveSpec("c", [f"{C_IP}/24"]),
            SlaveSpec("d", [f"{D_IP}/24"], MAC_D, socket_mode="client"),
        ], pure_python=pure_python)



@pytest.fixture(params=["accelerated", "pure-python"])
def lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Lab]:
    """Every scenario runs against the daemon with and without its C accelerator."""
    with Lab(tmp_path, pure_python=request.param == "pure-python") as lab:
        yield lab


def test_guest_to_guest_unicast_is_switched_locally(lab: Lab) -> None:
    a, b = lab.frontend("a"), lab.frontend("b")
    payload = b"hello-from-a" * 20
    a.transmit(bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=A_IP, dst=B_IP) / UDP(sport=1, dport=2) / payload))
    pkt = receive(b, lambda p: UDP in p and p[UDP].dport == 2, "UDP at b")
    assert pkt[Ether].src == MAC_A and pkt[Ether].dst == MAC_B
    assert bytes(pkt[UDP].payload) == payload
    # a transmitted exactly one frame; b also receives the outside's own IPv6 multicast
    assert lab.slave_stats("a")["tx_packets"] == 1


def test_guest_arp_and_ping_to_outside_host(lab: Lab) -> None:
    a, b = lab.frontend("a"), lab.frontend("b")
    a.transmit(bytes(Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=MAC_A, psrc=A_IP, pdst=OUT_IP)))
    reply = receive(a, lambda p: ARP in p and p[ARP].op == 2, "ARP reply at a")
    # the outside answered the master's MAC; the daemon translated it back to a's
    assert reply[Ether].dst == MAC_A and reply[ARP].hwdst == MAC_A and reply[ARP].hwsrc == lab.out_mac
    # the broadcast request also reached the other guest, untranslated
    req = receive(b, lambda p: ARP in p and p[ARP].op == 1, "ARP request flooded to b")
    assert req[ARP].hwsrc == MAC_A
    a.transmit(bytes(Ether(src=MAC_A, dst=lab.out_mac) / IP(src=A_IP, dst=OUT_IP) / ICMP(id=7, seq=1) / b"ping"))
    echo = receive(a, lambda p: ICMP in p and p[ICMP].type == 0, "echo reply at a")
    assert echo[IP].src == OUT_IP and bytes(echo[ICMP].payload) == b"ping"
    # the wire only ever saw the master's MAC for a's address
    neigh = sh("ip", "-n", lab.out, "neigh", "show", A_IP)
    assert lab.master_mac in neigh and MAC_A not in neigh


def test_outside_ping_reaches_guest_and_host_does_not_see_it(lab: Lab) -> None:
    a = lab.frontend("a")
    ping = subprocess.Popen(["ip", "netns", "exec", lab.out, "ping", "-c", "1", "-W", "5", A_IP],
                            stdout=subprocess.PIPE, text=True)
    req = receive(a, lambda p: ARP in p and p[ARP].op == 1 and p[ARP].pdst == A_IP, "ARP request at a")
    assert req[Ether].dst == "ff:ff:ff:ff:ff:ff"
    a.transmit(bytes(Ether(src=MAC_A, dst=req[Ether].src) /
                     ARP(op=2, hwsrc=MAC_A, psrc=A_IP, hwdst=req[ARP].hwsrc, pdst=req[ARP].psrc)))
    echo = receive(a, lambda p: ICMP in p and p[ICMP].type == 8, "echo request at a")
    assert echo[Ether].dst == MAC_A
    a.transmit(bytes(Ether(src=MAC_A, dst=echo[Ether].src) / IP(src=A_IP, dst=echo[IP].src) /
                     ICMP(type=0, id=echo[ICMP].id, seq=echo[ICMP].seq) / echo[ICMP].payload))
    out, _ = ping.communicate(timeout=10)
    assert ping.returncode == 0, out
    # consumed: the host namespace's IP stack never received the guest-bound frames
    ipstats = sh("ip", "netns", "exec", lab.host, "cat", "/proc/net/snmp")
    in_receives = int(ipstats.splitlines()[1].split()[3])
    assert in_receives == 0, ipstats


def test_ipv6_neighbour_discovery_and_ping(lab: Lab) -> None:
    a = lab.frontend("a")
    snm = "ff02::1:ff00:1"
    ns = (Ether(src=MAC_A, dst="33:33:ff:00:00:01") / IPv6(src=A_IP6, dst=snm, hlim=255) /
          ICMPv6ND_NS(tgt=OUT_IP6) / ICMPv6NDOptSrcLLAddr(lladdr=MAC_A))
    a.transmit(bytes(ns))
    na = receive(a, lambda p: ICMPv6ND_NA in p, "NA at a")
    assert na[Ether].dst == MAC_A and na[ICMPv6ND_NA].tgt == OUT_IP6
    neigh = sh("ip", "-n", lab.out, "-6", "neigh", "show", A_IP6)
    assert lab.master_mac in neigh  # the SLLAO was rewritten to the master's MAC
    a.transmit(bytes(Ether(src=MAC_A, dst=lab.out_mac) / IPv6(src=A_IP6, dst=OUT_IP6) /
                     ICMPv6EchoRequest(id=3, seq=1, data=b"v6")))
    rep = receive(a, lambda p: ICMPv6EchoReply in p, "echo6 reply at a")
    assert rep[ICMPv6EchoReply].data == b"v6"


def test_spoofed_source_is_dropped_and_counted(lab: Lab) -> None:
    a, b = lab.frontend("a"), lab.frontend("b")
    a.transmit(bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=C_IP, dst=B_IP) / UDP(dport=9) / b"spoof"))
    a.transmit(bytes(Ether(src="02:00:00:00:00:99", dst=MAC_B) / IP(src=A_IP, dst=B_IP) / UDP(dport=9)))
    wait_until(lambda: sum(lab.slave_stats("a")["drops"].values()) >= 2,
               5, what="two drops counted on a")
    drops = lab.slave_stats("a")["drops"]
    assert drops == {"src_ip_spoof": 1, "src_mac_spoof": 1}
    assert nothing_received(b, lambda p: UDP in p and p[UDP].dport == 9)


def test_protocol_error_closes_only_that_connection(lab: Lab) -> None:
    a, b = lab.frontend("a"), lab.frontend("b")
    bad = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bad.connect(str(lab.sock("c")))
    bad.sendall(b"\x01\x00\x00\x00\x07\x00\x00\x00\x00\x00\x00\x00")  # version 3
    bad.settimeout(5)
    assert bad.recv(1) == b""  # the daemon closed it
    bad.close()
    assert "slave c: connection closed: protocol error" in lab.log_text()
    # c accepts a new, well-behaved front-end; a and b were never disturbed
    c = lab.frontend("c")
    a.transmit(bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=A_IP, dst=B_IP) / UDP(dport=5) / b"still"))
    receive(b, lambda p: UDP in p and p[UDP].dport == 5, "a->b after c's error")
    assert c is not None and not lab.daemon_exited()


def test_frontend_disconnect_and_reconnect(lab: Lab) -> None:
    a, b = lab.frontend("a"), lab.frontend("b")
    b.close()
    lab.frontends.remove(b)
    wait_until(lambda: "slave b: down" in lab.log_text(), 5, what="b down")
    a.transmit(bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=A_IP, dst=B_IP) / UDP(dport=6)))
    wait_until(lambda: lab.slave_stats("a")["drops"], 5, what="drop for b down")
    b2 = lab.frontend("b")
    a.transmit(bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=A_IP, dst=B_IP) / UDP(dport=6) / Raw(b"x")))
    receive(b2, lambda p: UDP in p and p[UDP].dport == 6, "a->b after b reconnected")


def test_client_role_daemon_connects_and_reconnects(lab: Lab) -> None:
    """Slave d: the front-end owns the socket (libvirt mode='server'); the daemon connects."""
    a = lab.frontend("a")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(lab.sock("d")))
    listener.listen(1)
    try:
        for round_ in range(2):  # the daemon retries after the front-end goes away
            ups = lab.log_text().count("slave d: up")
            d = FakeFrontend()
            lab.frontends.append(d)
            d.accept(listener)
            d.setup()
            wait_until(lambda: lab.log_text().count("slave d: up") > ups, 10, what="d up")  # noqa: B023
            d.transmit(bytes(Ether(src=MAC_D, dst=MAC_A) / IP(src=D_IP, dst=A_IP) / UDP(dport=40 + round_)))
            receive(a, lambda p: UDP in p and p[UDP].dport == 40 + round_, f"d->a round {round_}")  # noqa: B023
            d.close()
            lab.frontends.remove(d)
    finally:
        listener.close()


def test_missing_master_is_a_one_line_error_and_nothing_is_created(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    sock = tmp_path / "x.sock"
    cfg.write_text(f'[[port]]\nmaster = "vi-nonexistent"\n[[port.slave]]\nname = "x"\nsocket = "{sock}"\n')
    proc = subprocess.run([sys.executable, "-m", "vhost_ipvlan.cli", "serve", "--config", str(cfg),
                           "--state", str(tmp_path / "state.toml"), "--control", str(tmp_path / "c.sock")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "vhost-ipvlan: error: port[0].master: interface 'vi-nonexistent' does not exist"
    ]
    assert not sock.exists()


def test_hostile_descriptor_chain_breaks_only_that_queue(lab: Lab) -> None:
    a, b = lab.frontend("a"), lab.frontend("b")
    c = lab.frontend("c")
    # c publishes a chain that loops 0 -> 1 -> 0 on its TX ring, and kicks
    c.txq.set_desc(0, c.buffers, 64, VRING_DESC_F_NEXT, 1)
    c.txq.set_desc(1, c.buffers, 64, VRING_DESC_F_NEXT, 0)
    c.txq.make_available(0)
    os.eventfd_write(c.kick[1], 1)
    lab.wait_log("slave c: tx queue broken by the guest", 0)
    assert lab.slave_stats("c")["drops"].get("queue_broken") == 1
    # the daemon and the other guests are unaffected
    a.transmit(bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=A_IP, dst=B_IP) / UDP(dport=11)))
    receive(b, lambda p: UDP in p and p[UDP].dport == 11, "a->b after c broke its ring")
    assert not lab.daemon_exited()
    # a new connection gives c a working device again
    c.close()
    lab.frontends.remove(c)
    c2 = lab.frontend("c")
    c2.transmit(bytes(Ether(src="02:00:00:00:00:0c", dst=MAC_A) / IP(src=C_IP, dst=A_IP) / UDP(dport=12)))
    receive(a, lambda p: UDP in p and p[UDP].dport == 12, "c->a after reconnecting")
