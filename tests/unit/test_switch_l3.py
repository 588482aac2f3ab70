"""l3/l3s decisions (switch.l3) and the backend's own ARP/NDP answers (net.neigh)."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Raw

from vhost_ipvlan.net import neigh
from vhost_ipvlan.net.addr import parse_mac
from vhost_ipvlan.switch import DropReason
from vhost_ipvlan.switch.port import Port, Slave
from vhost_ipvlan.switch.verdict import ANSWER, DROP, PASS, ROUTE, TO_HOST, TO_SLAVE

MASTER = "02:00:00:00:00:01"
OUTSIDE = "02:00:00:00:00:fe"
G1, G2 = "52:54:00:00:00:11", "52:54:00:00:00:12"


def buf(pkt: Packet) -> memoryview:
    return memoryview(bytearray(bytes(pkt)))


def make(mode: str, flag: str = "bridge") -> tuple[Port, Slave, Slave]:
    port = Port("mst0", parse_mac(MASTER), mode, flag)
    s1 = port.add_slave("s1", ["10.0.0.11", "fd00::11"], mac=G1)
    s2 = port.add_slave("s2", ["10.0.0.12", "fd00::12"], mac=G2)
    s1.up = s2.up = True
    return port, s1, s2


@pytest.mark.parametrize("mode", ["l3", "l3s"])
def test_guest_side(mode: str) -> None:
    port, s1, s2 = make(mode)
    def g(p: Packet) -> tuple[int, object]:
        return port.from_guest(s1, buf(p))

    beyond = ROUTE if mode == "l3" else TO_HOST
    # ARP/NS for anything but its own address: the backend answers
    assert g(Ether(src=G1, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=G1, psrc="10.0.0.11", pdst="10.0.0.1"))[0] == ANSWER
    assert g(Ether(src=G1, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=G1, psrc="10.0.0.11", pdst="10.0.0.12"))[0] == ANSWER
    assert g(Ether(src=G1, dst="33:33:ff:00:00:01") / IPv6(src="fd00::11", dst="ff02::1:ff00:1") /
             ICMPv6ND_NS(tgt="fd00::1"))[0] == ANSWER
    # ... but not probes for its own address, nor DAD
    assert g(Ether(src=G1, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=G1, psrc="0.0.0.0", pdst="10.0.0.11")) == (
        DROP, DropReason.NOT_IP)
    assert g(Ether(src=G1, dst="33:33:ff:00:00:11") / IPv6(src="::", dst="ff02::1:ff00:11") /
             ICMPv6ND_NS(tgt="fd00::11")) == (DROP, DropReason.MULTICAST_DST)
    # guest -> guest: local, whatever the destination MAC
    assert g(Ether(src=G1, dst=MASTER) / IP(src="10.0.0.11", dst="10.0.0.12") / ICMP()) == (TO_SLAVE, s2)
    assert g(Ether(src=G1, dst=MASTER) / IPv6(src="fd00::11", dst="fd00::12") / ICMPv6EchoRequest()) == (
        TO_SLAVE, s2)
    # off-port unicast
    assert g(Ether(src=G1, dst=MASTER) / IP(src="10.0.0.11", dst="192.0.2.7") / UDP()) == (beyond, None)
    # multicast / broadcast / non-IP: dropped and counted
    assert g(Ether(src=G1, dst="01:00:5e:00:00:01") / IP(src="10.0.0.11", dst="224.0.0.1") / ICMP()) == (
        DROP, DropReason.MULTICAST_DST)
    assert g(Ether(src=G1, dst=MASTER) / IP(src="10.0.0.11", dst="10.0.0.255") / ICMP())[0] == beyond
    assert g(Ether(src=G1, dst=MASTER) / IP(src="10.0.0.11", dst="255.255.255.255") / ICMP()) == (
        DROP, DropReason.MULTICAST_DST)
    assert g(Ether(src=G1, dst=MASTER, type=0x88B5) / Raw(b"x")) == (DROP, DropReason.NOT_IP)
    # source validation as in l2
    assert g(Ether(src=G1, dst=MASTER) / IP(src="10.0.0.12", dst="192.0.2.7")) == (DROP, DropReason.SRC_IP_SPOOF)
    assert s1.drop_counts() == {"not_ip": 2, "multicast_dst": 3, "src_ip_spoof": 1}


@pytest.mark.parametrize("mode", ["l3", "l3s"])
def test_wire_side(mode: str) -> None:
    port, s1, _s2 = make(mode)
    def w(p: Packet) -> tuple[int, object]:
        return port.from_uplink(buf(p))

    assert w(Ether(src=OUTSIDE, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=OUTSIDE, psrc="10.0.0.1",
                                                             pdst="10.0.0.11")) == (ANSWER, None)
    assert w(Ether(src=OUTSIDE, dst="33:33:ff:00:00:11") / IPv6(src="fd00::fe", dst="ff02::1:ff00:11") /
             ICMPv6ND_NS(tgt="fd00::11")) == (ANSWER, None)
    assert w(Ether(src=OUTSIDE, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=OUTSIDE, psrc="10.0.0.1",
                                                             pdst="10.0.0.99")) == (PASS, None)
    to_guest = w(Ether(src=OUTSIDE, dst=MASTER) / IP(src="192.0.2.7", dst="10.0.0.11") / ICMP())
    assert to_guest == ((TO_SLAVE, s1) if mode == "l3" else (PASS, None))
    assert w(Ether(src=OUTSIDE, dst="ff:ff:ff:ff:ff:ff") / IP(src="10.0.0.1", dst="10.0.0.255")) == (PASS, None)


@pytest.mark.parametrize("mode", ["l3", "l3s"])
@pytest.mark.parametrize("flag", ["private", "vepa"])
def test_flags_change_only_guest_to_guest_unicast(mode: str, flag: str) -> None:
    """docs/kernel-behaviour.md §4 ``ipvlan_xmit_mode_l3``: private drops a lookup hit, vepa skips the
    lookup so the packet is routed out the master (l3s too: the kernel's l3s transmits
    as l3). The host's address, the outside, ARP/NS answers, drops and the wire side
    are as with bridge (§8.3: the flags do not touch slave -> host in l3)."""
    port, s1, s2 = make(mode, flag)
    def g(p: Packet) -> tuple[int, object]:
        return port.from_guest(s1, buf(p))

    def w(p: Packet) -> tuple[int, object]:
        return port.from_uplink(buf(p))

    hit = (DROP, DropReason.PRIVATE) if flag == "private" else (ROUTE, None)
    beyond = ROUTE if mode == "l3" else TO_HOST
    to_b4 = IP(src="10.0.0.11", dst="10.0.0.12") / ICMP()
    to_b6 = IPv6(src="fd00::11", dst="fd00::12") / ICMPv6EchoRequest()
    # guest -> guest, whatever the destination MAC (the router's, the peer's), v4 and v6
    assert g(Ether(src=G1, dst=MASTER) / to_b4) == hit
    assert g(Ether(src=G1, dst=G2) / to_b4) == hit
    assert g(Ether(src=G1, dst=MASTER) / to_b6) == hit
    # also to a peer that is down (its address stays the port's), and to itself (the kernel's lookup hits it)
    s2.up = False
    assert g(Ether(src=G1, dst=MASTER) / to_b4) == hit
    s2.up = True
    assert g(Ether(src=G1, dst=MASTER) / IP(src="10.0.0.11", dst="10.0.0.11") / UDP()) == hit
    # the host and the outside: not guest -> guest, the flag changes nothing
    assert g(Ether(src=G1, dst=MASTER) / IP(src="10.0.0.11", dst="10.0.0.1") / ICMP()) == (beyond, None)
    assert g(Ether(src=G1, dst=MASTER) / IP(src="10.0.0.11", dst="192.0.2.7") / UDP()) == (beyond, None)
    # the guest still resolves its peers (and everything else) to the router's MAC
    assert g(Ether(src=G1, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=G1, psrc="10.0.0.11", pdst="10.0.0.12")) == (
        ANSWER, None)
    assert g(Ether(src=G1, dst="33:33:ff:00:00:12") / IPv6(src="fd00::11", dst="ff02::1:ff00:12") /
             ICMPv6ND_NS(tgt="fd00::12")) == (ANSWER, None)
    # broadcast, multicast, non-IP, spoofing: as with bridge
    assert g(Ether(src=G1, dst="ff:ff:ff:ff:ff:ff") / IP(src="10.0.0.11", dst="255.255.255.255") / UDP()) == (
        DROP, DropReason.MULTICAST_DST)
    assert g(Ether(src=G1, dst=G2, type=0x88B5) / Raw(b"x")) == (DROP, DropReason.NOT_IP)
    assert g(Ether(src=G1, dst=MASTER) / IP(src="10.0.0.12", dst="10.0.0.12")) == (DROP, DropReason.SRC_IP_SPOOF)
    private = 5 if flag == "private" else 0
    assert s1.drop_counts() == {k: v for k, v in {"private": private, "multicast_dst": 1, "not_ip": 1,
                                                  "src_ip_spoof": 1}.items() if v}
    assert s2.drop_counts() == {}
    # from the wire: as with bridge (a frame vepa sent round the outside is steered back by address)
    back = w(Ether(src=MASTER, dst=MASTER) / IP(src="10.0.0.11", dst="10.0.0.12") / ICMP())
    assert back == ((TO_SLAVE, s2) if mode == "l3" else (PASS, None))
    assert w(Ether(src=OUTSIDE, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=OUTSIDE, psrc="10.0.0.1",
                                                             pdst="10.0.0.12")) == (ANSWER, None)
    assert w(Ether(src=OUTSIDE, dst="ff:ff:ff:ff:ff:ff") / IP(src="10.0.0.1", dst="10.0.0.255")) == (PASS, None)


def test_arp_reply_is_addressed_to_the_requester() -> None:
    req = Ether(src=G1, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=G1, psrc="10.0.0.11", pdst="10.0.0.1")
    assert neigh.request_target(bytes(req)) == (4, ipaddress.ip_address("10.0.0.1").packed)
    raw = neigh.reply(bytes(req), parse_mac(MASTER))
    assert raw is not None
    rep = Ether(raw)
    assert rep[Ether].dst == G1 and rep[Ether].src == MASTER
    assert rep[ARP].op == 2 and rep[ARP].hwsrc == MASTER and rep[ARP].psrc == "10.0.0.1"
    assert rep[ARP].hwdst == G1 and rep[ARP].pdst == "10.0.0.11"


def test_na_reply_has_a_valid_checksum_and_tllao() -> None:
    req = (Ether(src=G1, dst="33:33:ff:00:00:01") / IPv6(src="fd00::11", dst="ff02::1:ff00:1") /
           ICMPv6ND_NS(tgt="fd00::1"))
    raw = neigh.reply(bytes(req), parse_mac(MASTER), router=True)
    assert raw is not None
    rep = Ether(raw)
    na = rep[ICMPv6ND_NA]
    assert rep[IPv6].src == "fd00::1" and rep[IPv6].dst == "fd00::11" and rep[IPv6].hlim == 255
    assert na.tgt == "fd00::1" and na.R == 1 and na.S == 1 and na.O == 1
    assert rep[ICMPv6NDOptDstLLAddr].lladdr == MASTER
    sent = na.cksum
    del na.cksum
    assert Ether(bytes(rep))[ICMPv6ND_NA].cksum == sent
    assert neigh.reply(bytes(Ether() / IPv6(src="::") / ICMPv6ND_NS(tgt="fd00::1")), parse_mac(MASTER)) is None


@pytest.mark.parametrize("mode", ["l3", "l3s"])
def test_link_local_is_steered_and_routed_in_l3s_too(mode: str) -> None:
    """The host cannot forward a link-local packet (issue 16 item 1): in l3s as in l3,
    the outside's packet for a guest's link-local goes to the guest, and the guest's
    packet to a link-local on the wire is routed out of the master by the daemon."""
    port, s1, _ = make(mode)
    ll1 = ipaddress.IPv6Address(sorted(s1.learned)[0]).compressed  # its MAC's EUI-64
    wire = Ether(src=OUTSIDE, dst=MASTER) / IPv6(src="fe80::fe", dst=ll1) / ICMPv6EchoRequest()
    assert port.from_uplink(buf(wire)) == (TO_SLAVE, s1)
    out = Ether(src=G1, dst=MASTER) / IPv6(src=ll1, dst="fe80::fe") / ICMPv6EchoRequest()
    assert port.from_guest(s1, buf(out)) == (ROUTE, None)
    # global addresses keep the mode's way
    wire6 = Ether(src=OUTSIDE, dst=MASTER) / IPv6(src="fd00::fe", dst="fd00::11") / ICMPv6EchoRequest()
    assert port.from_uplink(buf(wire6)) == ((TO_SLAVE, s1) if mode == "l3" else (PASS, None))
