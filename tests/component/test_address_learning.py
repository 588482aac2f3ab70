"""Learning mode and the master's own addresses, against the real daemon.

    fake front-end l (learn)  --\\
    fake front-end m (learn)  ---- vhost-ipvlan -- vim0 (ns host, 192.0.2.2, 2001:db8::2)
    fake front-end a (a's own) --/                   <== veth ==> vio0 (ns out, 192.0.2.1, 2001:db8::1)

The outside host is the real kernel: it resolves the learned addresses (ARP/NS,
answered by the test for the guest) and pings them.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet

from tests.support.frontend import FakeFrontend
from tests.support.lab import OUT_IP, OUT_IP6, DaemonError, FrontendLab, SlaveSpec, receive, sh
from tests.support.wait import wait_until
from vhost_ipvlan.control.client import Client
from vhost_ipvlan.errors import RemoteError

pytestmark = [pytest.mark.netns]

MAC_L, MAC_M, MAC_A = "02:00:00:00:00:21", "02:00:00:00:00:22", "02:00:00:00:00:0a"
A_IP, A_IP6 = "192.0.2.10", "2001:db8::10"
L_IP, L_IP6 = "192.0.2.50", "2001:db8::50"
MASTER_IP, MASTER_IP6 = "192.0.2.2", "2001:db8::2"
BCAST = "ff:ff:ff:ff:ff:ff"


class Lab(FrontendLab):
    def __init__(self, tmp: Path, slaves: list[SlaveSpec] | None = None) -> None:
        super().__init__(tmp, slaves if slaves is not None else [
            SlaveSpec("l", [], MAC_L, extra={"learn": True}),
            SlaveSpec("m", [], MAC_M, extra={"learn": True}),
            SlaveSpec("a", [f"{A_IP}/24", f"{A_IP6}/64"], MAC_A),
        ], master_ipv6=True, master_addresses=(f"{MASTER_IP}/24", f"{MASTER_IP6}/64"))

    def client(self) -> Client:
        return Client(self.control, timeout=20)

    def nft(self) -> str:
        return sh("ip", "netns", "exec", self.host, "nft", "list", "table", "netdev", "vhost_ipvlan")

    def drops(self, name: str) -> dict[str, int]:
        result: dict[str, int] = self.slave_stats(name)["drops"]
        return result


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path) as lab:
        yield lab


def garp(mac: str, addr: str) -> bytes:
    return bytes(Ether(src=mac, dst=BCAST) / ARP(op=1, hwsrc=mac, psrc=addr, pdst=addr))


def dad(mac: str, addr: str) -> bytes:
    return bytes(Ether(src=mac, dst="33:33:ff:00:00:50") / IPv6(src="::", dst="ff02::1:ff00:50")
                 / ICMPv6ND_NS(tgt=addr))


def una(mac: str, src: str, target: str) -> bytes:
    """An unsolicited Neighbour Advertisement with the override flag."""
    return bytes(Ether(src=mac, dst="33:33:00:00:00:01") / IPv6(src=src, dst="ff02::1")
                 / ICMPv6ND_NA(tgt=target, R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=mac))


def ping_from_outside(lab: Lab, fe: FakeFrontend, mac: str, addr: str) -> Packet:
    """The outside pings ``addr``; the guest behind ``fe`` answers its ARP/NS and the echo.
    Returns the echo request it received (the ping itself must succeed)."""
    v6 = ":" in addr
    proc = subprocess.Popen(["ip", "netns", "exec", lab.out, "ping", "-c", "1", "-W", "20", addr],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def asks(p: Packet) -> bool:
            if p[Ether].src != lab.out_mac:  # not another guest's announcement, flooded to this one
                return False
            if v6:
                return (ICMPv6ND_NS in p and p[ICMPv6ND_NS].tgt == addr) or echo(p)
            return (ARP in p and p[ARP].op == 1 and p[ARP].pdst == addr) or echo(p)

        def echo(p: Packet) -> bool:
            if v6:
                return ICMPv6EchoRequest in p and p[IPv6].dst == addr
            return ICMP in p and p[ICMP].type == 8 and p[IP].dst == addr

        got = receive(fe, asks, f"ARP/NS or echo for {addr}", timeout=20)
        if ICMPv6ND_NS in got:
            fe.transmit(bytes(Ether(src=mac, dst=lab.out_mac) / IPv6(src=addr, dst=got[IPv6].src)
                              / ICMPv6ND_NA(tgt=addr, R=0, S=1, O=1) / ICMPv6NDOptDstLLAddr(lladdr=mac)))
        elif ARP in got:
            fe.transmit(bytes(Ether(src=mac, dst=lab.out_mac)
                              / ARP(op=2, hwsrc=mac, psrc=addr, hwdst=lab.out_mac, pdst=got[ARP].psrc)))
        if not echo(got):
            got = receive(fe, echo, f"echo request for {addr}", timeout=20)
        if v6:
            req = got[ICMPv6EchoRequest]
            fe.transmit(bytes(Ether(src=mac, dst=lab.out_mac) / IPv6(src=addr, dst=OUT_IP6)
                              / ICMPv6EchoReply(id=req.id, seq=req.seq, data=req.data)))
        else:
            req4 = got[ICMP]
            fe.transmit(bytes(Ether(src=mac, dst=lab.out_mac) / IP(src=addr, dst=OUT_IP)
                              / ICMP(type=0, id=req4.id, seq=req4.seq) / bytes(req4.payload)))
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        return got
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_learned_addresses_are_reached_and_not_taken_by_another_guest(lab: Lab) -> None:
    lf, mf, af = lab.frontend("l"), lab.frontend("m"), lab.frontend("a")
    # l announces its address with a gratuitous ARP and runs DAD for its IPv6 one
    lf.transmit(garp(MAC_L, L_IP))
    lf.transmit(dad(MAC_L, L_IP6))
    lab.wait_log(f"slave l: learned address {L_IP}", 0)
    lab.wait_log(f"slave l: learned address {L_IP6}", 0)
    wait_until(lambda: L_IP in lab.nft() and L_IP6 in lab.nft(), 10, what="learned addresses consumed")
    with lab.client() as c:
        [info] = [s for s in c.call("slave.list") if s["name"] == "l"]
    assert info["learn"] is True and info["addresses"] == [] and info["learned"] == [L_IP, L_IP6]
    assert lab.slave_stats("l")["learned"] == [L_IP, L_IP6]
    # run-time state only: the state file has the learn key, not the addresses
    with lab.client() as c:  # any accepted change makes the daemon write its state file
        c.call("slave.change", {"name": "a", "addresses": [f"{A_IP}/24", f"{A_IP6}/64", "192.0.2.11/24"]})
    wait_until(lab.state.exists, 10, what="state file")
    text = lab.state.read_text()
    assert L_IP not in text and L_IP6 not in text
    [l_table] = [s for p in tomllib.loads(text)["port"] for s in p["slave"] if s["name"] == "l"]
    assert l_table["learn"] is True and l_table["addresses"] == []

    ping_from_outside(lab, lf, MAC_L, L_IP)
    ping_from_outside(lab, lf, MAC_L, L_IP6)

    # m (also learning) claims l's addresses: a gratuitous ARP and an overriding NA
    mf.transmit(garp(MAC_M, L_IP))
    mf.transmit(una(MAC_M, "fe80::22", L_IP6))
    wait_until(lambda: lab.drops("m").get("learn_refused", 0) == 2, 10, what="m: learn_refused == 2")
    # a (no learning) does the same: plain spoofing
    af.transmit(garp(MAC_A, L_IP))
    af.transmit(una(MAC_A, A_IP6, L_IP6))
    wait_until(lambda: lab.drops("a").get("src_ip_spoof", 0) == 2, 10, what="a: src_ip_spoof == 2")
    with lab.client() as c:
        learned = {s["name"]: s.get("learned") for s in c.call("slave.list")}
    assert learned == {"l": [L_IP, L_IP6], "m": [], "a": None}
    # the outside's neighbour entries still lead to l, and its pings reach l
    ping_from_outside(lab, lf, MAC_L, L_IP)
    ping_from_outside(lab, lf, MAC_L, L_IP6)


def test_master_address_is_refused_by_the_api_the_cli_and_sighup(lab: Lab) -> None:
    before_nft = lab.nft()
    with lab.client() as c:
        with pytest.raises(RemoteError) as info:
            c.call("slave.add", {"master": "vim0", "name": "x", "socket": str(lab.sock("x")),
                                 "addresses": ["192.0.2.20/24", f"{MASTER_IP}/24"]})
        assert str(info.value).endswith(f"params.addresses[1]: {MASTER_IP} is an address of the master vim0 itself")
        with pytest.raises(RemoteError, match=rf"params.addresses\[1\]: {MASTER_IP6} is an address of the master"):
            c.call("slave.change", {"name": "a", "addresses": [f"{A_IP}/24", f"{MASTER_IP6}/64"]})
        names = sorted(s["name"] for s in c.call("slave.list"))
    assert names == ["a", "l", "m"]
    assert lab.nft() == before_nft and not lab.sock("x").exists()
    proc = subprocess.run([sys.executable, "-m", "vhost_ipvlan.cli", "slave", "add", "y", "--master", "vim0",
                           "--socket", str(lab.sock("y")), "--address", f"{MASTER_IP}/24",
                           "--control", str(lab.control)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert proc.stderr == (f"vhost-ipvlan: error: params.addresses[0]: {MASTER_IP} is an address of the master "
                           "vim0 itself\n")
    # SIGHUP with the master's address in the file: one log line, nothing changed
    lab.config.write_text(lab.config_text().replace('addresses = []', f'addresses = ["{MASTER_IP}/24"]', 1))
    errors = lab.log_text().count("reload:")
    lab.daemon.send_signal(1)  # type: ignore[union-attr]
    lab.wait_log("nothing changed", 0)
    assert lab.log_text().count("reload:") > errors
    line = [ln for ln in lab.log_text().splitlines() if "nothing changed" in ln][-1]
    assert f"port[0].slave[0].addresses[0]: {MASTER_IP} is an address of the master vim0 itself" in line
    assert lab.nft() == before_nft


def test_master_address_in_the_config_stops_the_start(tmp_path: Path) -> None:
    lab = Lab(tmp_path, [SlaveSpec("x", [f"{MASTER_IP}/24"], MAC_A)])
    with pytest.raises(DaemonError) as info, lab:
        pass
    errors = [ln for ln in str(info.value).splitlines() if "error" in ln.lower()]
    assert errors == [f"vhost-ipvlan: error: port[0].slave[0].addresses[0]: {MASTER_IP} is an address of the "
                      "master vim0 itself"], errors


def test_host_adding_a_slaves_address_is_logged_and_counted(lab: Lab) -> None:
    lab.frontend("a")
    sh("ip", "-n", lab.host, "addr", "add", f"{A_IP}/32", "dev", "vim0")
    lab.wait_log(f"the host added {A_IP}, which is slave a's address", 0)
    stats: dict[str, Any] = lab.stats()["vim0"]
    assert stats["address_conflicts"] == 1
    # the slave keeps it: the outside still reaches the guest, not the host
    af = lab.frontends[0]
    ping_from_outside(lab, af, MAC_A, A_IP)
    # and a learning slave can never take one of the master's addresses
    mf = lab.frontend("m")
    mf.transmit(garp(MAC_M, MASTER_IP))
    wait_until(lambda: lab.drops("m").get("learn_refused", 0) == 1, 10, what="m: learn_refused == 1")


def cli(lab: Lab, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vhost_ipvlan.cli", *argv, "--control", str(lab.control)],
                          capture_output=True, text=True, timeout=30)


def test_cli_adds_a_learning_slave_and_lists_what_it_learned(lab: Lab) -> None:
    proc = cli(lab, "slave", "add", "z", "--master", "vim0", "--socket", str(lab.sock("z")), "--learn")
    assert proc.returncode == 0, proc.stderr
    listing = cli(lab, "slave", "list")
    [row] = [ln.split() for ln in listing.stdout.splitlines() if ln.startswith("z ")]
    assert row[4] == "learning"
    zf = lab.frontend("z")
    zf.transmit(garp("02:00:00:00:00:33", "192.0.2.77"))
    lab.wait_log("slave z: learned address 192.0.2.77", 0)
    listing = cli(lab, "slave", "list")
    [row] = [ln.split() for ln in listing.stdout.splitlines() if ln.startswith("z ")]
    assert row[4] == "192.0.2.77(learned)"
    proc = cli(lab, "slave", "add", "q", "--master", "vim0", "--socket", str(lab.sock("q")), "--learn",
               "--address", f"{A_IP}/24")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "slave 'a'" in proc.stderr


def test_learned_addresses_are_forgotten_by_a_restart_and_learned_again(lab: Lab) -> None:
    lab.frontend("l").transmit(garp(MAC_L, L_IP))
    lab.wait_log(f"slave l: learned address {L_IP}", 0)
    lab.stop_daemon()
    for fe in lab.frontends:
        fe.close()
    lab.frontends.clear()
    lab.start_daemon()
    with lab.client() as c:
        [info] = [s for s in c.call("slave.list") if s["name"] == "l"]
    assert info["learn"] is True and info["learned"] == []
    assert L_IP not in lab.nft()
    lf = lab.frontend("l")
    lf.transmit(garp(MAC_L, L_IP))
    lab.wait_log(f"slave l: learned address {L_IP}", 1)
    wait_until(lambda: L_IP in lab.nft(), 10, what="relearned address consumed")
    ping_from_outside(lab, lf, MAC_L, L_IP)


def test_configuring_a_learned_address_takes_it_away(lab: Lab) -> None:
    lf, af = lab.frontend("l"), lab.frontend("a")
    lf.transmit(garp(MAC_L, L_IP))
    lab.wait_log(f"slave l: learned address {L_IP}", 0)
    with lab.client() as c:
        c.call("slave.change", {"name": "a", "addresses": [f"{A_IP}/24", f"{A_IP6}/64", f"{L_IP}/24"]})
        learned = {s["name"]: s.get("learned") for s in c.call("slave.list")}
    assert learned["l"] == []
    lab.wait_log(f"slave l: learned address {L_IP} now belongs to slave a (configured addresses win)", 0)
    ping_from_outside(lab, af, MAC_A, L_IP)
    # l may not use it any more
    lf.transmit(garp(MAC_L, L_IP))
    wait_until(lambda: lab.drops("l").get("learn_refused", 0) == 1, 10, what="l: learn_refused == 1")


def test_learning_stays_on_the_masters_link(lab: Lab) -> None:
    """Audit §1: no off-link address, no IPv4 link-local, not the master's neighbours,
    no host route for anything outside the master's prefixes; §7: no link-local the
    wire uses."""
    lf = lab.frontend("l")
    # the host talks to the outside: 192.0.2.1 is a REACHABLE neighbour of the master
    sh("ip", "netns", "exec", lab.host, "ping", "-c", "1", "-W", "5", OUT_IP)
    for addr in ("8.8.8.8", "169.254.169.254"):
        lf.transmit(garp(MAC_L, addr))
    lf.transmit(bytes(Ether(src=MAC_L, dst=BCAST) / IP(src="8.8.4.4", dst="255.255.255.255") / ICMP()))
    wait_until(lambda: lab.drops("l").get("learn_not_on_link", 0) == 3, 10, what="l: learn_not_on_link == 3")
    lf.transmit(garp(MAC_L, OUT_IP))
    wait_until(lambda: lab.drops("l").get("learn_refused", 0) == 1, 10, what="l: learn_refused == 1")
    # the outside speaks from its link-local: once the daemon has flooded that to l, the
    # link-local is the wire's and l may not take it
    out_ll = sh("ip", "-n", lab.out, "-6", "-o", "addr", "show", "dev", "vio0", "scope", "link").split()[3]
    out_ll = out_ll.split("/")[0]
    lab.out_run("ping", "-6", "-c", "1", "-W", "2", "-I", "vio0", "ff02::1")
    receive(lf, lambda p: ICMPv6EchoRequest in p and p[IPv6].src == out_ll, "the outside's ping to ff02::1")
    lf.transmit(bytes(Ether(src=MAC_L, dst="33:33:00:00:00:01") / IPv6(src=out_ll, dst="ff02::1")
                      / ICMPv6EchoRequest()))
    wait_until(lambda: lab.drops("l").get("src_ip_spoof", 0) == 1, 10, what="l: src_ip_spoof == 1 (wire's LL)")
    with lab.client() as c:
        [info] = [s for s in c.call("slave.list") if s["name"] == "l"]
    assert info["learned"] == []
    routes = sh("ip", "-n", lab.host, "route", "show", "table", "all")
    assert "8.8.8.8" not in routes and "169.254.169.254" not in routes and f"{OUT_IP} dev vih" not in routes
    # what is on the link is learned as before
    lf.transmit(garp(MAC_L, L_IP))
    lab.wait_log(f"slave l: learned address {L_IP}", 0)
    wait_until(lambda: f"{L_IP} dev vih" in sh("ip", "-n", lab.host, "route", "show"), 10, what="route to L_IP")


def ra(mac: str, src: str) -> bytes:
    return bytes(Ether(src=mac, dst="33:33:00:00:00:01") / IPv6(src=src, dst="ff02::1") / ICMPv6ND_RA()
                 / ICMPv6NDOptSrcLLAddr(lladdr=mac))


def test_ra_guard_by_default_and_allow_router_through_the_api_and_cli(lab: Lab) -> None:
    """Audit §2: a guest's RAs are dropped (``ra_guard``) unless the slave allows it."""
    af, mf = lab.frontend("a"), lab.frontend("m")
    af.transmit(ra(MAC_A, "fe80::a"))
    wait_until(lambda: lab.drops("a").get("ra_guard", 0) == 1, 10, what="a: ra_guard == 1")
    with lab.client() as c:
        info = c.call("slave.change", {"name": "a", "allow_router": True})
    assert info["allow_router"] is True and "allow_router" not in cfg_table(lab, "l")
    af.transmit(ra(MAC_A, "fe80::a"))
    receive(mf, lambda p: ICMPv6ND_RA in p and p[IPv6].src == "fe80::a", "a's RA at m")
    assert lab.drops("a").get("ra_guard", 0) == 1
    wait_until(lambda: cfg_table(lab, "a").get("allow_router") is True, 10, what="state file: allow_router")
    proc = cli(lab, "slave", "change", "a", "--no-allow-router")
    assert proc.returncode == 0, proc.stderr
    af.transmit(ra(MAC_A, "fe80::a"))
    wait_until(lambda: lab.drops("a").get("ra_guard", 0) == 2, 10, what="a: ra_guard == 2")


def cfg_table(lab: Lab, name: str) -> dict[str, Any]:
    if not lab.state.exists():
        return {}
    tables = [s for p in tomllib.loads(lab.state.read_text())["port"] for s in p["slave"] if s["name"] == name]
    return tables[0] if tables else {}


def test_a_new_prefix_on_the_master_can_be_learned(lab: Lab) -> None:
    lf = lab.frontend("l")
    lf.transmit(garp(MAC_L, "198.51.100.50"))
    wait_until(lambda: lab.drops("l").get("learn_not_on_link", 0) == 1, 10, what="l: learn_not_on_link == 1")
    sh("ip", "-n", lab.host, "addr", "add", "198.51.100.2/24", "dev", "vim0")

    def learned() -> bool:  # the address event reaches the daemon some time after `ip addr add`
        lf.transmit(garp(MAC_L, "198.51.100.50"))
        return "slave l: learned address 198.51.100.50" in lab.log_text()

    wait_until(learned, 10, what="l learns 198.51.100.50 once the master has 198.51.100.2/24")


def test_a_route_through_an_address_less_master_is_its_link(tmp_path: Path) -> None:
    """A master without addresses: a connected route (no gateway) gives its slaves a link."""
    with FrontendLab(tmp_path, [SlaveSpec("l", [], MAC_L, extra={"learn": True})]) as lab:
        sh("ip", "-n", lab.host, "route", "add", "192.0.2.0/24", "dev", "vim0")
        sh("ip", "-n", lab.host, "route", "add", "default", "via", "192.0.2.1", "dev", "vim0")
        lab.stop_daemon()
        lab.start_daemon()  # the routes are read when the port is added
        lf = lab.frontend("l")
        lf.transmit(garp(MAC_L, "198.51.100.50"))  # only the default route leads there
        lf.transmit(garp(MAC_L, "192.0.2.1"))  # the gateway
        lf.transmit(garp(MAC_L, L_IP))
        lab.wait_log(f"slave l: learned address {L_IP}", 0)
        drops = lab.slave_stats("l")["drops"]
        assert drops == {"learn_not_on_link": 1, "learn_refused": 1}, drops
