"""Modes l3 and l3s with the private and vepa flags, on the real daemon.

    fake guests a (192.0.2.10, 2001:db8::10), b (192.0.2.11, 2001:db8::11)
        -- vhost-ipvlan -- vim0 (ns host, 192.0.2.2) <== veth ==> vio0 (ns out, 192.0.2.1)

Kernel reference: docs/kernel-behaviour.md §4 ``ipvlan_xmit_mode_l3``, §8.1 row a: private drops guest ->
guest unicast (counted ``private``) and nothing else; vepa skips the local lookup,
so guest -> guest is routed in the host (pinned to the master) and leaves on the
wire, coming back only through the outside (IPv4 and IPv6). Two outsides bring it
back here: a router (the outside forwards, with ``proxy_arp_pvlan`` and proxy NDP so
it answers the host's ARP/NS for the guest's address, as a private-VLAN router
does) and a hairpinning bridge (802.1Qbg reflective relay). In l3s the returning
packet is forwarded by the host into the host link, so its conntrack sees the flow.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from tests.component.test_hostlink import A_IP, A_IP6, HOST_IP, MAC_A, Lab
from tests.component.test_l3_modes import ping_until_reply
from tests.support.frontend import FakeFrontend
from tests.support.lab import OUT_IP, SlaveSpec, nothing_received, sh
from tests.support.wait import wait_until

pytestmark = [pytest.mark.netns]

MAC_B = "02:00:00:00:00:0b"
B_IP, B_IP6 = "192.0.2.11", "2001:db8::11"


@pytest.fixture
def lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Lab]:
    mode, flag = request.param
    with Lab(tmp_path, mode, [SlaveSpec("b", [f"{B_IP}/24", f"{B_IP6}/64"], MAC_B)], flag=flag) as lab:
        yield lab


def a_to_b(lab: Lab, dport: int, v6: bool = False) -> bytes:
    l3 = IPv6(src=A_IP6, dst=B_IP6, hlim=64) if v6 else IP(src=A_IP, dst=B_IP, ttl=64)
    return bytes(Ether(src=MAC_A, dst=lab.master_mac) / l3 / UDP(sport=9, dport=dport) / b"a-to-b")


def udp_port(port: int) -> Callable[[Packet], bool]:
    return lambda p: UDP in p and p[UDP].dport == port


def conntrack_rule(lab: Lab) -> None:
    """A forward rule that uses conntrack, so the host's namespace tracks connections."""
    subprocess.run(["ip", "netns", "exec", lab.host, "nft", "-f", "-"], check=True, text=True, input=(
        "table inet vitest {\n chain fw { type filter hook forward priority 0;\n  ct state new counter\n }\n}\n"))


def conntrack(lab: Lab, *argv: str) -> str:
    return sh("ip", "netns", "exec", lab.host, "conntrack", "-L", *argv)


@pytest.mark.parametrize("lab", [("l3", "private"), ("l3s", "private")], indirect=True,
                         ids=["l3", "l3s"])
def test_private_drops_guest_to_guest_only(lab: Lab) -> None:
    a, b = lab.frontend("a"), lab.frontend("b")
    lab.wire_counter(f"ip daddr {B_IP}", "tob")
    if lab.mode == "l3s":
        conntrack_rule(lab)
    # a -> b, IPv4 and IPv6, to the router's MAC or b's own: dropped at a, counted
    a.transmit(a_to_b(lab, 8001))
    a.transmit(a_to_b(lab, 8002, v6=True))
    a.transmit(bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=A_IP, dst=B_IP) / UDP(dport=8003)))
    wait_until(lambda: lab.slave_stats("a")["drops"].get("private") == 3, 10, what="3 private drops at a")
    # the guest -> outside and guest -> host paths are not guest -> guest: they work
    ping_until_reply(a, lab, OUT_IP)
    ping_until_reply(a, lab, HOST_IP)
    assert nothing_received(b, lambda p: UDP in p and p[UDP].dport in (8001, 8002, 8003))
    assert lab.wire_count("tob") == 0  # and nothing took a detour round the wire
    assert lab.slave_stats("a")["drops"].get("private") == 3
    if lab.mode == "l3s" and shutil.which("conntrack"):
        ct = conntrack(lab, "-s", A_IP, "-d", OUT_IP)
        assert "UNREPLIED" not in ct and OUT_IP in ct, ct


def send_until_received(a: FakeFrontend, b: FakeFrontend, lab: Lab, dport: int, v6: bool) -> Packet:
    """a sends to b until b gets one (the outside must first be set up to send it back)."""
    seen: list[Packet] = []

    def step() -> Packet | None:
        a.transmit(a_to_b(lab, dport, v6))
        seen.extend(Ether(d) for _, d in b.receive())
        return next((p for p in seen if udp_port(dport)(p)), None)

    try:
        got = wait_until(step, 30, what="a's packet at b, back from the outside", interval=0.3)
    except TimeoutError as e:
        raise AssertionError(f"{e}; b got {[p.summary() for p in seen]}; a's stats "
                             f"{lab.slave_stats('a')}; log:\n{lab.log_text()[-3000:]}") from None
    assert got is not None
    return got


def outside_router(lab: Lab) -> None:
    """The outside forwards, and answers ARP and NS for the guests' addresses also back out
    the interface they came in on (a private-VLAN router: ``proxy_arp_pvlan``, proxy NDP)."""
    sh("ip", "netns", "exec", lab.out, "sysctl", "-qw", "net.ipv4.ip_forward=1",
       "net.ipv4.conf.vio0.proxy_arp=1", "net.ipv4.conf.vio0.proxy_arp_pvlan=1",
       "net.ipv4.neigh.vio0.proxy_delay=0", "net.ipv6.conf.all.forwarding=1", "net.ipv6.conf.vio0.proxy_ndp=1",
       "net.ipv6.neigh.vio0.proxy_delay=0")
    sh("ip", "-n", lab.out, "-6", "neigh", "add", "proxy", B_IP6, "dev", "vio0")


@pytest.mark.parametrize("lab", [("l3", "vepa"), ("l3s", "vepa")], indirect=True, ids=["l3", "l3s"])
@pytest.mark.parametrize("outside", ["router", "hairpin"])
@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_vepa_routes_guest_to_guest_round_the_outside(lab: Lab, outside: str, v6: bool) -> None:
    a, b = lab.frontend("a"), lab.frontend("b")
    if lab.mode == "l3s":
        conntrack_rule(lab)
    if outside == "router":
        outside_router(lab)
        next_hop = lab.out_mac  # the host's route for b: on-link, resolved to the outside by proxy ARP/NDP
    else:
        lab.hairpin()
        next_hop = lab.master_mac  # the reflected ARP/NS is answered by the daemon (a departure)
    src, dst = (A_IP6, B_IP6) if v6 else (A_IP, B_IP)
    ip = "ip6" if v6 else "ip"
    lab.wire_counter(f"ether saddr {lab.master_mac} ether daddr {next_hop} {ip} saddr {src} {ip} daddr {dst} "
                     "udp dport 8101", "out_leg")
    got = send_until_received(a, b, lab, 8101, v6)
    # it came back from the wire: steered to b with the router's MAC as source
    assert (got[Ether].src, got[Ether].dst) == (lab.master_mac, MAC_B)
    l3 = got[IPv6] if v6 else got[IP]
    assert l3.src == src and bytes(got[UDP].payload) == b"a-to-b"
    # the host's routed output does not decrement the TTL (local output); an outside router does,
    # and so does the l3s host when it forwards the returning packet into the host link
    hops = (outside == "router") + (lab.mode == "l3s")
    assert (l3.hlim if v6 else l3.ttl) == 64 - hops
    # seen on the wire: it left the master addressed to the next hop (routed, not switched)
    assert lab.wire_count("out_leg") >= 1
    drops = lab.slave_stats("a")["drops"]
    assert "private" not in drops and set(drops) <= {"neigh_unresolved"}, drops
    # the host is no detour: a -> host still goes to the host (the flag changes nothing there)
    ping_until_reply(a, lab, HOST_IP)
    if lab.mode == "l3s" and shutil.which("conntrack"):
        ct = conntrack(lab, "-f", "ipv6" if v6 else "ipv4", "-s", src, "-d", dst)
        assert dst in ct and "dport=8101" in ct, ct  # the returning leg crossed the host's FORWARD


@pytest.mark.parametrize("lab", [("l3", "vepa")], indirect=True, ids=["l3"])
def test_vepa_on_a_plain_wire_does_not_come_back(lab: Lab) -> None:
    """As the kernel (§8.1 row a, l3 v): routed through the host, which asks the wire for
    b's address; nobody there answers, so nothing is delivered and the drops are counted."""
    a, b = lab.frontend("a"), lab.frontend("b")
    lab.wire_counter(f"arp operation request arp daddr ip {B_IP} ether saddr {lab.master_mac}", "arpq")

    def step() -> bool:
        a.transmit(a_to_b(lab, 8201))
        return lab.wire_count("arpq") >= 1

    wait_until(step, 20, what="the host's ARP request for b on the wire", interval=0.3)
    # held while the host asks (``routing.Limits.recheck``: about 3 s), then dropped
    wait_until(lambda: lab.slave_stats("a")["drops"].get("neigh_failed", 0) >= 1, 15,
               what="neigh_failed at a")
    assert nothing_received(b, udp_port(8201))
