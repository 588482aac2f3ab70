"""The private and vepa flags and the per-guest multicast filters, on the real daemon.

    fake front-ends a, b, c --- vhost-ipvlan --- vim0 (ns host) <== veth ==> vio0 (ns out)

For vepa the outside gets an nft counter on vio0's ingress, and for the hairpin case
vio0 is made the only port of a bridge with ``hairpin on`` (802.1Qbg reflective relay,
built in the test's outside namespace), which sends the frame back to the master.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6MLDMultAddrRec, ICMPv6MLReport2, IPv6, IPv6ExtHdrHopByHop, RouterAlert
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from tests.support.frontend import FakeFrontend
from tests.support.lab import MASTER, OUT_IP, FrontendLab, SlaveSpec
from tests.support.wait import wait_until

pytestmark = [pytest.mark.netns]

MAC_A, MAC_B, MAC_C = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
A_IP, B_IP, C_IP = "192.0.2.10", "192.0.2.11", "192.0.2.12"
A_IP6, B_IP6 = "2001:db8::10", "2001:db8::11"
BCAST = "ff:ff:ff:ff:ff:ff"


class Lab(FrontendLab):
    def __init__(self, tmp: Path, flag: str) -> None:
        super().__init__(tmp, [
            SlaveSpec("a", [f"{A_IP}/24", f"{A_IP6}/64"], MAC_A),
            SlaveSpec("b", [f"{B_IP}/24", f"{B_IP6}/64"], MAC_B),
            SlaveSpec("c", [f"{C_IP}/24"], MAC_C),
        ], flag=flag)


@pytest.fixture
def lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Lab]:
    with Lab(tmp_path, request.param) as lab:
        yield lab


def receive(fe: FakeFrontend, match: Callable[[Packet], bool], what: str, seen: list[Packet],
            timeout: float = 10) -> Packet:
    """Wait for a frame matching ``match``; every frame received (also earlier ones, and
    the rest of the batch) is in ``seen``."""

    def check() -> Packet | None:
        seen.extend(Ether(data) for _, data in fe.receive())
        return next((p for p in seen if match(p)), None)

    try:
        found = wait_until(check, timeout, what=what)
    except TimeoutError as e:
        raise AssertionError(f"{e}; received instead: {[p.summary() for p in seen]}") from None
    assert found is not None
    return found


def udp_port(port: int) -> Callable[[Packet], bool]:
    return lambda p: UDP in p and p[UDP].dport == port


def a_to_b(dport: int) -> bytes:
    return bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=A_IP, dst=B_IP) / UDP(sport=9, dport=dport) / b"a-to-b")


def a_broadcast(dport: int) -> bytes:
    return bytes(Ether(src=MAC_A, dst=BCAST) / IP(src=A_IP, dst="192.0.2.255") / UDP(sport=9, dport=dport))


@pytest.mark.parametrize("lab", ["private"], indirect=True)
def test_private_drops_guest_to_guest_unicast_but_not_broadcast(lab: Lab) -> None:
    a, b = lab.frontend("a"), lab.frontend("b")
    a.transmit(a_to_b(7001))
    a.transmit(a_broadcast(7002))  # after the unicast, on the same ring: it arrives after it would have
    seen: list[Packet] = []
    receive(b, udp_port(7002), "broadcast at b", seen)
    assert not any(udp_port(7001)(p) for p in seen)
    wait_until(lambda: lab.slave_stats("a")["drops"].get("private") == 1, 10, what="a: private drop counted")
    # the outside is still reachable
    a.transmit(bytes(Ether(src=MAC_A, dst=lab.out_mac) / IP(src=A_IP, dst=OUT_IP) / UDP(sport=9, dport=7003)))
    wait_until(lambda: lab.stats()[MASTER]["uplink_tx_packets"] >= 2, 10, what="to the wire")


@pytest.mark.parametrize("lab", ["vepa"], indirect=True)
def test_vepa_sends_guest_to_guest_to_the_wire(lab: Lab) -> None:
    a, b = lab.frontend("a"), lab.frontend("b")
    lab.wire_counter(f"ether saddr {lab.master_mac} ether daddr {lab.master_mac} udp dport 7001")
    a.transmit(a_to_b(7001))
    a.transmit(a_broadcast(7002))
    seen: list[Packet] = []
    receive(b, udp_port(7002), "broadcast at b", seen)
    assert not any(udp_port(7001)(p) for p in seen)  # not switched locally
    wait_until(lambda: lab.wire_count() == 1, 10, what="a's frame for b on the wire, dst MAC = src MAC = master's")
    assert lab.slave_stats("a")["drops"] == {}


@pytest.mark.parametrize("lab", ["vepa"], indirect=True)
def test_vepa_behind_a_hairpin_switch_delivers(lab: Lab) -> None:
    a, b = lab.frontend("a"), lab.frontend("b")
    lab.hairpin()
    lab.wire_counter(f"ether saddr {lab.master_mac} ether daddr {lab.master_mac} udp dport 7001")
    a.transmit(a_to_b(7001))
    pkt = receive(b, udp_port(7001), "a's frame at b, back from the hairpin", [])
    assert (pkt[Ether].src, pkt[Ether].dst) == (lab.master_mac, MAC_B)
    assert pkt[IP].src == A_IP and bytes(pkt[UDP].payload) == b"a-to-b"
    assert lab.wire_count() == 1  # it did go round the outside, once


def igmp_report(group: str) -> bytes:
    return bytes(Ether(src=MAC_B, dst="01:00:5e:00:00:16") /
                 IP(src=B_IP, dst=group, ttl=1, proto=2, options=b"\x94\x04\x00\x00") /
                 (b"\x16\x00\x00\x00" + bytes(int(x) for x in group.split("."))))


def mld_report(group: str) -> bytes:
    return bytes(Ether(src=MAC_B, dst="33:33:00:00:00:16") /
                 IPv6(src=B_IP6, dst="ff02::16", hlim=1) / IPv6ExtHdrHopByHop(options=[RouterAlert()]) /
                 ICMPv6MLReport2(records=[ICMPv6MLDMultAddrRec(rtype=4, dst=group)]))


def mcast4(src_mac: str, src_ip: str, group: str, dport: int) -> Packet:
    last = [int(x) for x in group.split(".")]
    dst = f"01:00:5e:{last[1] & 0x7F:02x}:{last[2]:02x}:{last[3]:02x}"
    return Ether(src=src_mac, dst=dst) / IP(src=src_ip, dst=group, ttl=1) / UDP(sport=9, dport=dport)


@pytest.mark.parametrize("lab", ["bridge"], indirect=True)
def test_guests_receive_only_joined_multicast(lab: Lab) -> None:
    a, b, c = lab.frontend("a"), lab.frontend("b"), lab.frontend("c")
    b.transmit(igmp_report("239.1.1.1"))
    b.transmit(mld_report("ff05::1:3"))
    wait_until(lambda: lab.slave_stats("b")["multicast"]["groups"] == ["239.1.1.1", "ff05::1:3"], 10,
               what="b's groups snooped")
    seen_b: list[Packet] = []
    seen_c: list[Packet] = []
    # from the wire: a group b did not join, then one it did
    lab.send_from_outside(mcast4(lab.out_mac, OUT_IP, "239.2.2.2", 7102),
                          mcast4(lab.out_mac, OUT_IP, "239.1.1.1", 7101))
    receive(b, udp_port(7101), "joined group from the wire at b", seen_b)
    assert not any(udp_port(7102)(p) for p in seen_b)
    # c never reported: it is unfiltered (grace) and gets both
    receive(c, udp_port(7102), "unjoined group at c (no report yet)", seen_c)
    receive(c, udp_port(7101), "joined group at c", seen_c)
    # from another guest, IPv4 and IPv6; broadcast always passes
    a.transmit(bytes(mcast4(MAC_A, A_IP, "239.2.2.2", 7202)))
    a.transmit(bytes(Ether(src=MAC_A, dst="33:33:00:01:00:04") / IPv6(src=A_IP6, dst="ff05::1:4") / UDP(dport=7204)))
    a.transmit(bytes(Ether(src=MAC_A, dst="33:33:00:01:00:03") / IPv6(src=A_IP6, dst="ff05::1:3") / UDP(dport=7203)))
    a.transmit(a_broadcast(7200))
    receive(b, udp_port(7200), "broadcast at b", seen_b)
    got = {p[UDP].dport for p in seen_b if UDP in p}
    assert 7203 in got and not got & {7202, 7204}
