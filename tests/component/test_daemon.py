"""The real daemon, a veth master in a test namespace, fake front-ends as guests.

Topology (all made here, removed afterwards):

    fake front-end a (192.0.2.10) --\\
                                      vhost-ipvlan -- vim0 (ns host) <== veth ==> vio0 (ns out, 192.0.2.1)
    fake front-end b (192.0.2.11) --/

The outside host is the real kernel stack: it answers ARP, NDP and pings.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
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
from scapy.packet import Packet, Raw

from tests.support.frontend import FakeFrontend
from tests.support.wait import wait_until

pytestmark = [pytest.mark.netns]

MAC_A = "02:00:00:00:00:0a"
MAC_B = "02:00:00:00:00:0b"
OUT_IP, OUT_IP6 = "192.0.2.1", "2001:db8::1"
A_IP, B_IP, C_IP, D_IP = "192.0.2.10", "192.0.2.11", "192.0.2.12", "192.0.2.13"
MAC_D = "02:00:00:00:00:0d"
A_IP6 = "2001:db8::10"


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


class Lab:
    def __init__(self, tmp: Path) -> None:
        tag = secrets.token_hex(3)
        self.host, self.out = f"vi-h-{tag}", f"vi-o-{tag}"
        self.tmp = tmp
        self.daemon: subprocess.Popen[bytes] | None = None
        self.log = tmp / "daemon.log"
        self.frontends: list[FakeFrontend] = []

    def build(self) -> None:
        sh("ip", "netns", "add", self.host)
        sh("ip", "netns", "add", self.out)
        sh("ip", "link", "add", "vim0", "netns", self.host, "type", "veth", "peer", "name", "vio0",
           "netns", self.out)
        for ns, dev in ((self.host, "vim0"), (self.out, "vio0")):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.accept_dad=0")
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "netns", "exec", self.host, "sysctl", "-qw", "net.ipv6.conf.vim0.disable_ipv6=1")
        sh("ip", "-n", self.out, "addr", "add", f"{OUT_IP}/24", "dev", "vio0")
        sh("ip", "-n", self.out, "addr", "add", f"{OUT_IP6}/64", "dev", "vio0", "nodad")
        self.master_mac = sh("ip", "netns", "exec", self.host, "cat", "/sys/class/net/vim0/address").strip()
        self.out_mac = sh("ip", "netns", "exec", self.out, "cat", "/sys/class/net/vio0/address").strip()
        cfg = self.tmp / "vhost-ipvlan.toml"
        cfg.write_text(f"""
[[port]]
master = "vim0"
mode = "l2"
flag = "bridge"
[[port.slave]]
name = "a"
socket = "{self.sock('a')}"
addresses = ["{A_IP}/24", "{A_IP6}/64"]
mac = "{MAC_A}"
[[port.slave]]
name = "b"
socket = "{self.sock('b')}"
addresses = ["{B_IP}/24"]
mac = "{MAC_B}"
[[port.slave]]
name = "c"
socket = "{self.sock('c')}"
addresses = ["{C_IP}/24"]
[[port.slave]]
name = "d"
socket = "{self.sock('d')}"
socket_mode = "client"
addresses = ["{D_IP}/24"]
mac = "{MAC_D}"
""")
        self.daemon = subprocess.Popen(
            ["ip", "netns", "exec", self.host, sys.executable, "-m", "vhost_ipvlan.cli", "serve",
             "--config", str(cfg), "--log-level", "debug"],
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"),
        )
        wait_until(lambda: "ready:" in self.log.read_text() or self.daemon_exited(), 30, what="daemon ready")
        assert not self.daemon_exited(), self.log.read_text()

    def daemon_exited(self) -> bool:
        return self.daemon is not None and self.daemon.poll() is not None

    def sock(self, name: str) -> Path:
        return self.tmp / f"{name}.sock"

    def frontend(self, name: str) -> FakeFrontend:
        ups = self.log.read_text().count(f"slave {name}: up")
        fe = FakeFrontend()
        self.frontends.append(fe)
        fe.connect(str(self.sock(name)))
        fe.setup()
        wait_until(lambda: self.log.read_text().count(f"slave {name}: up") > ups, 10, what=f"slave {name} up")
        return fe

    def stats(self) -> dict[str, object]:
        assert self.daemon is not None
        before = self.log.read_text().count(" stats ")
        os.kill(self.daemon.pid, signal.SIGUSR1)
        wait_until(lambda: self.log.read_text().count(" stats ") > before, 10, what="stats line")
        line = [ln for ln in self.log.read_text().splitlines() if " stats " in ln][-1]
        data: dict[str, object] = json.loads(line.split(" stats ", 1)[1])
        return data

    def slave_stats(self, name: str) -> dict[str, object]:
        master = self.stats()["vim0"]
        assert isinstance(master, dict)
        result: dict[str, object] = master["slaves"][name]
        return result

    def teardown(self) -> None:
        for fe in self.frontends:
            fe.close()
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                self.daemon.wait(10)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
        for ns in (self.host, self.out):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    try:
        lab.build()
        yield lab
    finally:
        lab.teardown()
        if os.environ.get("VI_SHOW_LOG"):
            print(lab.log.read_text())


def receive(fe: FakeFrontend, match: Callable[[Packet], bool], what: str, timeout: float = 5) -> Packet:
    got: list[Packet] = []

    def check() -> Packet | None:
        for _, data in fe.receive():
            pkt = Ether(data)
            got.append(pkt)
            if match(pkt):
                return pkt
        return None

    try:
        found = wait_until(check, timeout, what=what)
    except TimeoutError as e:
        raise AssertionError(f"{e}; received instead: {[p.summary() for p in got]}") from None
    assert found is not None
    return found


def nothing_received(fe: FakeFrontend, match: Callable[[Packet], bool]) -> bool:
    return not any(match(Ether(d)) for _, d in fe.receive())


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
    wait_until(lambda: sum(lab.slave_stats("a")["drops"].values()) >= 2,  # type: ignore[attr-defined]
               5, what="two drops counted on a")
    drops = lab.slave_stats("a")["drops"]
    assert drops == {"src_ip_spoof": 1, "src_mac_spoof": 1}
    assert nothing_received(b, lambda p: UDP in p and p[UDP].dport == 9)


def test_protocol_error_closes_only_that_connection(lab: Lab) -> None:
    a, b = lab.frontend("a"), lab.frontend("b")
    import socket

    bad = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bad.connect(str(lab.sock("c")))
    bad.sendall(b"\x01\x00\x00\x00\x07\x00\x00\x00\x00\x00\x00\x00")  # version 3
    bad.settimeout(5)
    assert bad.recv(1) == b""  # the daemon closed it
    bad.close()
    assert "slave c: connection closed: protocol error" in lab.log.read_text()
    # c accepts a new, well-behaved front-end; a and b were never disturbed
    c = lab.frontend("c")
    a.transmit(bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=A_IP, dst=B_IP) / UDP(dport=5) / b"still"))
    receive(b, lambda p: UDP in p and p[UDP].dport == 5, "a->b after c's error")
    assert c is not None and not lab.daemon_exited()


def test_frontend_disconnect_and_reconnect(lab: Lab) -> None:
    a, b = lab.frontend("a"), lab.frontend("b")
    b.close()
    lab.frontends.remove(b)
    wait_until(lambda: "slave b: down" in lab.log.read_text(), 5, what="b down")
    a.transmit(bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=A_IP, dst=B_IP) / UDP(dport=6)))
    wait_until(lambda: lab.slave_stats("a")["drops"], 5, what="drop for b down")
    b2 = lab.frontend("b")
    a.transmit(bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=A_IP, dst=B_IP) / UDP(dport=6) / Raw(b"x")))
    receive(b2, lambda p: UDP in p and p[UDP].dport == 6, "a->b after b reconnected")


def test_client_role_daemon_connects_and_reconnects(lab: Lab) -> None:
    """Slave d: the front-end owns the socket (libvirt mode='server'); the daemon connects."""
    import socket

    a = lab.frontend("a")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(lab.sock("d")))
    listener.listen(1)
    try:
        for round_ in range(2):  # the daemon retries after the front-end goes away
            ups = lab.log.read_text().count("slave d: up")
            d = FakeFrontend()
            lab.frontends.append(d)
            d.accept(listener)
            d.setup()
            wait_until(lambda: lab.log.read_text().count("slave d: up") > ups, 10, what="d up")  # noqa: B023
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
    proc = subprocess.run([sys.executable, "-m", "vhost_ipvlan.cli", "serve", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "vhost-ipvlan: error: port[0].master: interface 'vi-nonexistent' does not exist"
    ]
    assert not sock.exists()
