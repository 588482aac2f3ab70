"""Modes l3 and l3s with the real daemon, a veth master with the host's addresses, fake guests.

    fake guests a (192.0.2.10, 2001:db8::10), b (192.0.2.11)
        -- vhost-ipvlan -- vim0 (ns host, 192.0.2.2, 2001:db8::2) <== veth ==> vio0 (ns out, 192.0.2.1, 2001:db8::1)

The guests use the master's MAC as their router (the daemon answers their ARP and
NS); the outside resolves the guests' addresses to the master's MAC (the daemon
answers for them: a departure, docs/kernel-behaviour.md §8.1 row e). l3 routes egress itself
(host tables, pinned to the master); l3s sends it through the host's stack, so the
host's netfilter and conntrack see both directions.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6ND_NA, ICMPv6ND_NS, IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet

from tests.component.test_hostlink import A_IP, A_IP6, HOST_IP, MAC_A, Lab, answer_echoes
from tests.support.frontend import FakeFrontend
from tests.support.lab import MASTER, OUT_IP, OUT_IP6, SlaveSpec, receive, sh
from tests.support.wait import wait_until
from vhost_ipvlan.daemon.routing import Limits

pytestmark = [pytest.mark.netns]

MAC_B = "02:00:00:00:00:0b"
B_IP = "192.0.2.11"


@pytest.fixture(params=["l3", "l3s"])
def lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Lab]:
    with Lab(tmp_path, request.param, [SlaveSpec("b", [f"{B_IP}/24"], MAC_B)]) as lab:
        yield lab


def ping_until_reply(a: FakeFrontend, lab: Lab, dst: str, v6: bool = False) -> Packet:
    """Send echo requests (to the router MAC) until one is answered: the first ones
    may be dropped while the host resolves the next hop."""
    seq = [0]
    got: list[Packet] = []

    def step() -> Packet | None:
        seq[0] += 1
        if v6:
            a.transmit(bytes(Ether(src=MAC_A, dst=lab.master_mac) / IPv6(src=A_IP6, dst=dst) /
                             ICMPv6EchoRequest(id=77, seq=seq[0], data=b"l3")))
        else:
            a.transmit(bytes(Ether(src=MAC_A, dst=lab.master_mac) / IP(src=A_IP, dst=dst) /
                             ICMP(id=77, seq=seq[0]) / b"l3"))
        for _, data in a.receive():
            p = Ether(data)
            got.append(p)
            if (ICMPv6EchoReply in p) if v6 else (ICMP in p and p[ICMP].type == 0 and p[IP].src == dst):
                return p
        return None

    try:
        found = wait_until(step, 20, what=f"echo reply from {dst}", interval=0.2)
    except TimeoutError as e:
        raise AssertionError(f"{e}; log:\n{lab.log_text()[-3000:]}; got {[p.summary() for p in got]}") from None
    assert found is not None
    return found


def test_guest_router_outside_and_guest_to_guest(lab: Lab) -> None:
    a, b = lab.frontend("a"), lab.frontend("b")
    # the guest's ARP and NS for its gateway: answered by the daemon with the master's MAC
    a.transmit(bytes(Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=MAC_A, psrc=A_IP, pdst=OUT_IP)))
    rep = receive(a, lambda p: ARP in p and p[ARP].op == 2, "ARP reply at a")
    assert rep[ARP].hwsrc == lab.master_mac and rep[ARP].psrc == OUT_IP
    a.transmit(bytes(Ether(src=MAC_A, dst="33:33:ff:00:00:01") / IPv6(src=A_IP6, dst="ff02::1:ff00:1", hlim=255) /
                     ICMPv6ND_NS(tgt=OUT_IP6)))
    na = receive(a, lambda p: ICMPv6ND_NA in p, "NA at a")
    assert na[Ether].src == lab.master_mac and na[ICMPv6ND_NA].R == 1
    # guest -> outside and back, IPv4 and IPv6; delivered with the router's MAC as source
    echo = ping_until_reply(a, lab, OUT_IP)
    assert echo[Ether].src == lab.master_mac and echo[Ether].dst == MAC_A
    ping_until_reply(a, lab, OUT_IP6, v6=True)
    # the outside resolved the guest's address to the master's MAC (answered by the daemon)
    assert lab.master_mac in sh("ip", "-n", lab.out, "neigh", "show", A_IP)
    # guest -> guest: local, no ARP, source MAC = the router's
    a.transmit(bytes(Ether(src=MAC_A, dst=lab.master_mac) / IP(src=A_IP, dst=B_IP) / UDP(dport=33) / b"ab"))
    got = receive(b, lambda p: UDP in p and p[UDP].dport == 33, "a -> b")
    assert got[Ether].src == lab.master_mac and got[Ether].dst == MAC_B
    # guest broadcast / multicast / non-IP: dropped and counted
    a.transmit(bytes(Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") / IP(src=A_IP, dst="255.255.255.255") / UDP(dport=34)))
    a.transmit(bytes(Ether(src=MAC_A, dst=lab.master_mac, type=0x88B5) / b"raw"))
    wait_until(lambda: {"multicast_dst", "not_ip"} <= set(lab.slave_stats("a")["drops"]), 5,
               what="drops counted on a")
    assert not any(UDP in Ether(d) and Ether(d)[UDP].dport == 34 for _, d in b.receive())


def test_outside_and_host_ping_guest(lab: Lab) -> None:
    a = lab.frontend("a")
    ping = subprocess.Popen(["ip", "netns", "exec", lab.out, "ping", "-c", "2", "-i", "0.3", "-W", "5", A_IP],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    answer_echoes(a, lab, ping, v6=False)
    answer_echoes(a, lab, lab.host_run("ping", "-c", "3", "-i", "0.3", "-W", "5", A_IP), v6=False)
    # guest -> host's own address
    ping_until_reply(a, lab, HOST_IP)


def test_l3s_crosses_host_netfilter(tmp_path: Path) -> None:
    with Lab(tmp_path, "l3s") as lab:
        subprocess.run(["ip", "netns", "exec", lab.host, "nft", "-f", "-"], check=True, text=True, input=(
            "table inet vitest {\n"
            " counter cout {}\n counter cback {}\n"
            " chain filt { type filter hook forward priority 0;\n"
            f"  ip saddr {A_IP} ct state new,established counter name cout\n"
            f"  ip daddr {A_IP} ct state established counter name cback\n"
            " }\n"
            "}\n"))
        a = lab.frontend("a")
        ping_until_reply(a, lab, OUT_IP)
        counters = sh("ip", "netns", "exec", lab.host, "nft", "list", "counters", "table", "inet", "vitest")
        assert "packets 0" not in counters, counters
        if shutil.which("conntrack"):
            ct = sh("ip", "netns", "exec", lab.host, "conntrack", "-L", "-s", A_IP)
            assert OUT_IP in ct and "UNREPLIED" not in ct, ct


def test_l3_makes_no_neighbour_off_prefix_and_few_on_it(tmp_path: Path) -> None:
    """A guest cannot fill the host's neighbour table (audit §9): nothing is solicited
    for a destination outside the master's prefixes, and a scan of its on-link /64
    creates at most the guest's share of the daemon's budget (``routing.Limits``)."""
    with Lab(tmp_path, "l3") as lab:
        a = lab.frontend("a")
        sh("ip", "-n", lab.host, "route", "add", "198.51.100.0/24", "dev", MASTER)  # on-link, not a prefix

        def send(dst: str) -> None:
            l3 = IPv6(src=A_IP6, dst=dst) if ":" in dst else IP(src=A_IP, dst=dst)
            a.transmit(bytes(Ether(src=MAC_A, dst=lab.master_mac) / l3 / UDP(sport=9, dport=9) / b"scan"))

        def drops() -> dict[str, int]:
            result: dict[str, int] = lab.slave_stats("a")["drops"]
            return result

        def off_prefix() -> bool:
            send("198.51.100.7")
            return drops().get("neigh_not_on_link", 0) > 0

        wait_until(off_prefix, 10, interval=0.1, what="neigh_not_on_link at a")
        assert "198.51.100.7" not in sh("ip", "-n", lab.host, "neigh", "show", "dev", MASTER)

        scan = [f"2001:db8::1:{i:x}" for i in range(200)]

        def scanned() -> bool:
            for dst in scan:
                send(dst)
            return drops().get("neigh_budget", 0) > 0

        wait_until(scanned, 30, interval=0.2, what="neigh_budget at a")
        table = sh("ip", "-n", lab.host, "-6", "neigh", "show", "dev", MASTER)
        made = [ln for ln in table.splitlines() if ln.startswith("2001:db8::1:")]
        assert 0 < len(made) <= Limits().budget_per_guest, table


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_no_packet_lost_to_a_new_next_hop(lab: Lab, v6: bool) -> None:
    """The guest's packets to a next hop nobody has resolved yet are held, not dropped
    (the kernel queues them on the neighbour, ``unres_qlen_bytes``): N pings, N replies."""
    a = lab.frontend("a")
    out_ip = OUT_IP6 if v6 else OUT_IP
    # the outside pings the guest: the guest's replies go to an address the host has not resolved
    sh("ip", "-n", lab.host, "neigh", "flush", "dev", MASTER)
    ping = subprocess.Popen(["ip", "netns", "exec", lab.out, "ping", *(["-6"] if v6 else []), "-c", "3",
                             "-i", "0.3", "-W", "5", A_IP6 if v6 else A_IP],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = answer_echoes(a, lab, ping, v6=v6)
    assert " 3 received" in out, out
    # the guest sends a burst of 3 echo requests to a new destination at once: 3 replies
    sh("ip", "-n", lab.host, "neigh", "flush", "dev", MASTER)
    for seq in (1, 2, 3):
        l3 = IPv6(src=A_IP6, dst=out_ip) / ICMPv6EchoRequest(id=99, seq=seq, data=b"q") if v6 else \
            IP(src=A_IP, dst=out_ip) / ICMP(id=99, seq=seq) / b"q"
        a.transmit(bytes(Ether(src=MAC_A, dst=lab.master_mac) / l3))
    replies: set[int] = set()

    def three() -> bool:
        for _, data in a.receive():
            p = Ether(data)
            if v6 and ICMPv6EchoReply in p and p[ICMPv6EchoReply].id == 99:
                replies.add(p[ICMPv6EchoReply].seq)
            if not v6 and ICMP in p and p[ICMP].type == 0 and p[ICMP].id == 99:
                replies.add(p[ICMP].seq)
        return len(replies) == 3

    wait_until(three, 10, what=f"3 echo replies (got {replies})")
    drops = lab.slave_stats("a")["drops"]
    assert not {"neigh_unresolved", "neigh_queue_full", "neigh_failed"} & set(drops), drops


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_l3s_survives_the_admin_toggling_forwarding(tmp_path: Path, v6: bool) -> None:
    """``net.ipv4.ip_forward=1`` then ``=0`` turns forwarding off on every interface (and
    ``net.ipv6.conf.all.forwarding=0`` for IPv6): the daemon, which needs it on the
    master and the host link, turns it on again (issue 16 item 2)."""
    with Lab(tmp_path, "l3s") as lab:
        a = lab.frontend("a")
        out_ip = OUT_IP6 if v6 else OUT_IP
        ping_until_reply(a, lab, out_ip, v6=v6)
        keys = ["net.ipv6.conf.all.forwarding"] if v6 else ["net.ipv4.ip_forward"]
        for value in ("1", "0"):
            sh("ip", "netns", "exec", lab.host, "sysctl", "-qw", *(f"{k}={value}" for k in keys))
        lab.wait_log("turned on again", 0)
        ping_until_reply(a, lab, out_ip, v6=v6)
        assert lab.log_text().count("turned on again") == 1, lab.log_text()[-2000:]
