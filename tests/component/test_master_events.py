"""The daemon follows its master: link down/up and carrier, MTU, MAC, deletion and return.

    fake front-ends a, b --- vhost-ipvlan --- vim0 (ns host) <== veth ==> vio0 (ns out, 192.0.2.1)

Every change is made with ``ip`` on the real veth; the daemon learns it through netlink.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from tests.support.frontend import FakeFrontend
from tests.support.lab import MASTER, OUT_IP, FrontendLab, SlaveSpec, receive, sh
from tests.support.wait import wait_until

pytestmark = [pytest.mark.netns]

MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
A_IP, B_IP = "192.0.2.10", "192.0.2.11"


class Lab(FrontendLab):
    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp, [SlaveSpec("a", [f"{A_IP}/24"], MAC_A), SlaveSpec("b", [f"{B_IP}/24"], MAC_B)],
                         ipv6=False)

    def host_ip(self, *argv: str) -> None:
        sh("ip", "-n", self.host, *argv)

    def master(self) -> dict[str, object]:
        result: dict[str, object] = self.stats()[MASTER]
        return result



@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path) as lab:
        yield lab


def arp_outside(lab: Lab, a: FakeFrontend) -> None:
    """a resolves the outside host: it answers, and learns a's address on the way."""
    a.transmit(bytes(Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=MAC_A, psrc=A_IP, pdst=OUT_IP)))
    receive(a, lambda p: ARP in p and p[ARP].op == 2 and p[ARP].psrc == OUT_IP, "ARP reply at a")


def ping_outside(lab: Lab, a: FakeFrontend, seq: int, size: int = 64) -> None:
    """Send an echo request of ``size`` bytes (Ethernet frame) to the outside host."""
    pkt = Ether(src=MAC_A, dst=lab.out_mac) / IP(src=A_IP, dst=OUT_IP) / ICMP(id=9, seq=seq)
    a.transmit(bytes(pkt / Raw(b"x" * (size - len(pkt)))))


def a_to_b_works(a: FakeFrontend, b: FakeFrontend, port: int) -> None:
    a.transmit(bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=A_IP, dst=B_IP) / UDP(dport=port)))
    receive(b, lambda p: UDP in p and p[UDP].dport == port, f"a->b (udp {port})")


def drops(lab: Lab, slave: str) -> dict[str, int]:
    result: dict[str, int] = lab.slave_stats(slave)["drops"]
    return result


def test_master_down_and_up_and_carrier(lab: Lab) -> None:
    a, b = lab.frontend("a"), lab.frontend("b")
    assert lab.master()["link"] == "up" and lab.slave_stats("a")["link"] == "up"
    for down, up in ((("link", "set", MASTER, "down"), ("link", "set", MASTER, "up")),
                     (("-n", lab.out, "link", "set", "vio0", "down"), ("-n", lab.out, "link", "set", "vio0", "up"))):
        n_down = lab.log_text().count(f"master {MASTER}: link down")
        n_up = lab.log_text().count(f"master {MASTER}: link up")
        if down[0] == "-n":  # the peer: the master stays up but loses carrier
            sh("ip", *down)
        else:
            lab.host_ip(*down)
        lab.wait_log(f"master {MASTER}: link down", n_down)
        assert lab.master()["link"] == "down"
        assert lab.slave_stats("a")["link"] == "down" and lab.slave_stats("b")["link"] == "down"
        before = drops(lab, "a").get("master_down", 0)
        ping_outside(lab, a, 1)
        wait_until(lambda: drops(lab, "a").get("master_down", 0) == before + 1, 5,  # noqa: B023
                   what="master_down counted")
        a_to_b_works(a, b, 100 + n_down)  # guest <-> guest goes on
        if up[0] == "-n":
            sh("ip", *up)
        else:
            lab.host_ip(*up)
        lab.wait_log(f"master {MASTER}: link up", n_up)
        assert lab.master()["link"] == "up" and lab.slave_stats("a")["link"] == "up"
        arp_outside(lab, a)
    # exactly one log line per change
    assert lab.log_text().count(f"master {MASTER}: link down") == 2
    assert lab.log_text().count(f"master {MASTER}: link up") == 2


def test_mtu_change_is_applied(lab: Lab) -> None:
    a = lab.frontend("a")
    assert lab.master()["mtu"] == 1500
    arp_outside(lab, a)
    lab.host_ip("link", "set", MASTER, "mtu", "1280")
    lab.wait_log(f"master {MASTER}: mtu 1500 -> 1280", 0)
    assert lab.master()["mtu"] == 1280
    ping_outside(lab, a, 1, size=1400)
    wait_until(lambda: drops(lab, "a").get("mtu_exceeded") == 1, 5, what="mtu_exceeded counted")
    assert nothing_icmp_reply(a)
    ping_outside(lab, a, 2, size=1280 + 14)  # exactly the MTU passes
    receive(a, lambda p: ICMP in p and p[ICMP].type == 0 and p[ICMP].seq == 2, "echo reply (MTU-sized)")
    lab.host_ip("link", "set", MASTER, "mtu", "1500")
    lab.wait_log(f"master {MASTER}: mtu 1280 -> 1500", 0)
    ping_outside(lab, a, 3, size=1400)
    echo = receive(a, lambda p: ICMP in p and p[ICMP].type == 0 and p[ICMP].seq == 3, "echo reply (1400 B)")
    assert len(echo) == 1400  # nothing was truncated
    assert drops(lab, "a").get("mtu_exceeded") == 1


def nothing_icmp_reply(fe: FakeFrontend) -> bool:
    return not any(ICMP in Ether(d) and Ether(d)[ICMP].type == 0 for _, d in fe.receive())


def test_mac_change_is_followed(lab: Lab) -> None:
    a = lab.frontend("a")
    arp_outside(lab, a)
    assert lab.master_mac in sh("ip", "-n", lab.out, "neigh", "show", A_IP)
    new = "02:00:00:00:aa:01"
    lab.host_ip("link", "set", MASTER, "address", new)
    lab.wait_log(f"master {MASTER}: mac {lab.master_mac} -> {new}", 0)
    assert lab.master()["mac"] == new
    arp_outside(lab, a)  # the guest sends again: the wire sees the new MAC at once
    neigh = sh("ip", "-n", lab.out, "neigh", "show", A_IP)
    assert new in neigh and lab.master_mac not in neigh
    ping_outside(lab, a, 5)
    echo = receive(a, lambda p: ICMP in p and p[ICMP].type == 0 and p[ICMP].seq == 5, "echo reply after MAC change")
    assert echo[Ether].dst == MAC_A  # translated back to the guest's own MAC


def test_master_deleted_and_recreated(lab: Lab) -> None:
    a, b = lab.frontend("a"), lab.frontend("b")
    arp_outside(lab, a)
    lab.host_ip("link", "del", MASTER)
    lab.wait_log(f"master {MASTER}: deleted", 0)
    assert lab.master()["link"] == "absent"
    assert f'device "{MASTER}"' not in sh("ip", "netns", "exec", lab.host, "nft", "list", "ruleset")  # chain gone
    ping_outside(lab, a, 1)
    wait_until(lambda: drops(lab, "a").get("master_down") == 1, 5, what="master_down counted while gone")
    a_to_b_works(a, b, 200)  # the slaves stay
    # an interface of the same name appears again
    sh("ip", "link", "add", MASTER, "netns", lab.host, "type", "veth", "peer", "name", "vio0", "netns", lab.out)
    sh("ip", "-n", lab.host, "link", "set", MASTER, "up")
    sh("ip", "-n", lab.out, "link", "set", "vio0", "up")
    sh("ip", "-n", lab.out, "addr", "add", f"{OUT_IP}/24", "dev", "vio0")
    lab.wait_log(f"master {MASTER}: present again", 0)
    wait_until(lambda: lab.master()["link"] == "up", 10, what="master link up again")
    lab.out_mac = lab.read_sys(lab.out, "vio0", "address")
    new_master_mac = lab.read_sys(lab.host, MASTER, "address")
    assert lab.master()["mac"] == new_master_mac
    arp_outside(lab, a)
    ping_outside(lab, a, 2)
    receive(a, lambda p: ICMP in p and p[ICMP].type == 0 and p[ICMP].seq == 2, "echo reply after recreation")
    assert new_master_mac in sh("ip", "-n", lab.out, "neigh", "show", A_IP)
    ruleset = sh("ip", "netns", "exec", lab.host, "nft", "list", "ruleset")
    assert f'device "{MASTER}"' in ruleset and A_IP in ruleset  # consumption re-applied on the new interface
    assert not lab.daemon_exited()
