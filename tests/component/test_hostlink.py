"""Host <-> guest through the daemon's host tap (a departure, docs/kernel-behaviour.md §3), in l2.

    fake guest a (192.0.2.10, 2001:db8::10) -- vhost-ipvlan -- vim0 (ns host, 192.0.2.2, 2001:db8::2)
                                                    \\-- vih<N> (tap, ns host)      <== veth ==> vio0 (ns out)

The host's own stack pings the guest and the guest pings the host, IPv4 and IPv6;
the outside still works; the tap and its routes go away with the daemon.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6ND_NA, ICMPv6ND_NS, IPv6
from scapy.layers.l2 import ARP, Ether

from tests.support.frontend import FakeFrontend
from tests.support.lab import MASTER, OUT_IP, FrontendLab, SlaveSpec, receive, sh
from tests.support.wait import wait_until
from vhost_ipvlan.control.client import Client

pytestmark = [pytest.mark.netns]

MAC_A = "02:00:00:00:00:0a"
A_IP, A_IP6 = "192.0.2.10", "2001:db8::10"
HOST_IP, HOST_IP6 = "192.0.2.2", "2001:db8::2"


class Lab(FrontendLab):
    """The shared lab with addresses on the master, fake front-ends, any mode."""

    def __init__(self, tmp: Path, mode: str = "l2", extra: list[SlaveSpec] | None = None,
                 flag: str = "bridge") -> None:
        super().__init__(tmp, [SlaveSpec("a", [f"{A_IP}/24", f"{A_IP6}/64"], MAC_A), *(extra or [])],
                         master_ipv6=True, mode=mode, flag=flag,
                         master_addresses=(f"{HOST_IP}/24", f"{HOST_IP6}/64"))

    def host_run(self, *argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", self.host, *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def tap(self) -> str:
        links = sh("ip", "-n", self.host, "-o", "link", "show")
        return next(ln.split(":")[1].strip().split("@")[0] for ln in links.splitlines() if ": vih" in ln)



@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path) as lab:
        yield lab


def answer_echoes(a: FakeFrontend, lab: Lab, ping: subprocess.Popen[str], v6: bool) -> str:
    """Play the guest: answer the host's echo requests until ``ping`` exits; its output."""
    def step() -> bool:
        for _, data in a.receive():
            p = Ether(data)
            if not v6 and ICMP in p and p[ICMP].type == 8:
                assert p[Ether].dst == MAC_A and p[Ether].src == lab.master_mac
                a.transmit(bytes(Ether(src=MAC_A, dst=p[Ether].src) / IP(src=A_IP, dst=p[IP].src) /
                                 ICMP(type=0, id=p[ICMP].id, seq=p[ICMP].seq) / p[ICMP].payload))
            if v6 and ICMPv6EchoRequest in p:
                req = p[ICMPv6EchoRequest]
                a.transmit(bytes(Ether(src=MAC_A, dst=p[Ether].src) / IPv6(src=A_IP6, dst=p[IPv6].src) /
                                 ICMPv6EchoReply(id=req.id, seq=req.seq, data=req.data)))
        return ping.poll() is not None

    wait_until(step, 20, what="host's ping finished")
    out = ping.communicate()[0]
    assert ping.returncode == 0, out
    return out


def test_host_pings_guest_and_guest_pings_host(lab: Lab) -> None:
    a = lab.frontend("a")
    tap = lab.tap()
    routes = sh("ip", "-n", lab.host, "route", "show", "dev", tap) + sh("ip", "-n", lab.host, "-6", "route",
                                                                          "show", "dev", tap)
    assert A_IP in routes and A_IP6 in routes
    # host -> guest, IPv4 and IPv6 (the host's replies and requests leave through the tap)
    answer_echoes(a, lab, lab.host_run("ping", "-c", "2", "-i", "0.3", "-W", "5", A_IP), v6=False)
    answer_echoes(a, lab, lab.host_run("ping", "-6", "-c", "2", "-i", "0.3", "-W", "5", A_IP6), v6=True)
    # guest -> host: the daemon answers the guest's ARP and NS for the host's addresses
    a.transmit(bytes(Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=MAC_A, psrc=A_IP, pdst=HOST_IP)))
    rep = receive(a, lambda p: ARP in p and p[ARP].op == 2 and p[ARP].psrc == HOST_IP, "ARP reply for the host")
    assert rep[ARP].hwsrc == lab.master_mac and rep[Ether].dst == MAC_A
    a.transmit(bytes(Ether(src=MAC_A, dst=lab.master_mac) / IP(src=A_IP, dst=HOST_IP) / ICMP(id=9, seq=1) / b"h4"))
    echo = receive(a, lambda p: ICMP in p and p[ICMP].type == 0, "host's echo reply at a")
    assert echo[IP].src == HOST_IP and bytes(echo[ICMP].payload) == b"h4" and echo[Ether].dst == MAC_A
    a.transmit(bytes(Ether(src=MAC_A, dst="33:33:ff:00:00:02") / IPv6(src=A_IP6, dst="ff02::1:ff00:2", hlim=255) /
                     ICMPv6ND_NS(tgt=HOST_IP6)))
    na = receive(a, lambda p: ICMPv6ND_NA in p and p[ICMPv6ND_NA].tgt == HOST_IP6, "NA for the host")
    assert na[Ether].src == lab.master_mac
    a.transmit(bytes(Ether(src=MAC_A, dst=lab.master_mac) / IPv6(src=A_IP6, dst=HOST_IP6) /
                     ICMPv6EchoRequest(id=4, seq=1, data=b"h6")))
    rep6 = receive(a, lambda p: ICMPv6EchoReply in p, "host's echo6 reply at a")
    assert rep6[IPv6].src == HOST_IP6 and rep6[ICMPv6EchoReply].data == b"h6"
    # the outside still works
    a.transmit(bytes(Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=MAC_A, psrc=A_IP, pdst=OUT_IP)))
    out = receive(a, lambda p: ARP in p and p[ARP].op == 2 and p[ARP].psrc == OUT_IP, "outside's ARP reply")
    a.transmit(bytes(Ether(src=MAC_A, dst=out[ARP].hwsrc) / IP(src=A_IP, dst=OUT_IP) / ICMP(id=5) / b"o"))
    receive(a, lambda p: ICMP in p and p[ICMP].type == 0 and p[IP].src == OUT_IP, "outside's echo reply")
    # the tap and its routes go away with the daemon
    lab.stop_daemon()
    assert tap not in sh("ip", "-n", lab.host, "link", "show")
    assert A_IP not in sh("ip", "-n", lab.host, "route", "show")


def test_routes_follow_slave_and_address_changes(lab: Lab) -> None:
    tap = lab.tap()

    def routes() -> str:
        return (sh("ip", "-n", lab.host, "route", "show", "dev", tap) +
                sh("ip", "-n", lab.host, "-6", "route", "show", "dev", tap))

    with Client(lab.control) as c:
        c.call("slave.add", {"master": MASTER, "name": "e", "socket": str(lab.sock("e")),
                             "addresses": ["192.0.2.20/24"]})
        assert "192.0.2.20" in routes()
        c.call("slave.change", {"name": "e", "addresses": ["192.0.2.21/24", "2001:db8::21/64"]})
        r = routes()
        assert "192.0.2.21" in r and "2001:db8::21" in r and "192.0.2.20" not in r
        c.call("slave.remove", {"name": "e"})
        r = routes()
        assert "192.0.2.21" not in r and "2001:db8::21" not in r and A_IP in r
