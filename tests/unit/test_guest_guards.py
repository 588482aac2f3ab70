"""Hostile guests (hostile-input audit findings 1, 2, 3, 7, 8; README "Security"): learning only on the
master's link, no frames to a guest by its MAC alone, RA/DHCP-server guard, NDP
behind extension headers, 802.1 control frames, anonymous sources, bounded snooping."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dhcp6 import DHCP6_Advertise
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6MLDMultAddrRec,
    ICMPv6MLReport2,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    RouterAlert,
)
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Raw

from vhost_ipvlan.net.addr import parse_mac
from vhost_ipvlan.net.frames import MAX_EXT_HEADERS
from vhost_ipvlan.switch import DROP, FLOOD, TO_SLAVE, TO_UPLINK, DropReason, Port, Slave
from vhost_ipvlan.switch.mcast import MAX_RECORDS
from vhost_ipvlan.switch.verdict import TO_HOST

MASTER = "02:00:00:00:00:01"
ROUTER = "02:00:00:00:00:fe"  # the LAN router, on the wire: 10.0.0.254, fe80::1
A = "52:54:00:00:00:11"  # configured: 10.0.0.11, fd00::11
B = "52:54:00:00:00:12"  # configured: 10.0.0.12, fd00::12
BCAST = "ff:ff:ff:ff:ff:ff"
ALL_NODES = "33:33:00:00:00:01"


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


class Lab:
    def __init__(self, flag: str = "bridge") -> None:
        self.port = Port("mst0", parse_mac(MASTER), "l2", flag)
        self.port.master_addresses = frozenset({ip("10.0.0.1"), ip("fd00::1")})
        self.port.set_master_prefixes([(ip("10.0.0.1"), 24), (ip("fd00::1"), 64), (ip("fe80::1:1"), 64)])
        self.in_use = {ip("10.0.0.254"), ip("fd00::fe")}  # the daemon's neighbours/gateways
        self.port.in_use = self.in_use.__contains__
        self.a = self.port.add_slave("a", ["10.0.0.11", "fd00::11"], mac=A)
        self.b = self.port.add_slave("b", ["10.0.0.12", "fd00::12"], mac=B)
        self.learner = self.port.add_slave("l", mac="52:54:00:00:00:21", learn=True)
        self.nomac = self.port.add_slave("n", ["10.0.0.13"])
        for s in (self.a, self.b, self.learner, self.nomac):
            s.up = True

    def send(self, slave: Slave, pkt: Packet | bytes) -> tuple[int, object]:
        return self.port.from_guest(slave, memoryview(bytearray(bytes(pkt))))

    def wire(self, pkt: Packet) -> tuple[int, object]:
        return self.port.from_uplink(memoryview(bytearray(bytes(pkt))))


@pytest.fixture
def lab() -> Lab:
    return Lab()


def drop(reason: DropReason) -> tuple[int, object]:
    return (DROP, reason)


L = "52:54:00:00:00:21"


def garp(mac: str, addr: str) -> Packet:
    return Ether(src=mac, dst=BCAST) / ARP(op=1, hwsrc=mac, psrc=addr, pdst=addr)


# -- 1. learning only on the master's link ---------------------------------------------


@pytest.mark.parametrize("addr", ["8.8.8.8", "192.0.2.7", "169.254.169.254"])
def test_learning_refuses_off_link_and_ipv4_link_local(lab: Lab, addr: str) -> None:
    lab.port.set_master_prefixes([(ip("10.0.0.1"), 24), (ip("169.254.1.1"), 16), (ip("fd00::1"), 64)])
    assert lab.send(lab.learner, garp(L, addr)) == drop(DropReason.LEARN_NOT_ON_LINK)
    pkt = Ether(src=L, dst=MASTER) / IP(src=addr, dst="10.0.0.11") / ICMP()
    assert lab.send(lab.learner, pkt) == drop(DropReason.LEARN_NOT_ON_LINK)
    assert lab.port.owner(addr) is None and not lab.learner.learned_addrs
    assert lab.learner.drop_counts() == {"learn_not_on_link": 2}


def test_learning_refuses_off_link_ipv6(lab: Lab) -> None:
    pkt = Ether(src=L, dst=MASTER) / IPv6(src="2001:4860::8888", dst="fd00::11") / ICMPv6EchoRequest()
    assert lab.send(lab.learner, pkt) == drop(DropReason.LEARN_NOT_ON_LINK)
    ok = Ether(src=L, dst=MASTER) / IPv6(src="fd00::50", dst="fd00::11") / ICMPv6EchoRequest()
    assert lab.send(lab.learner, ok) == (TO_SLAVE, lab.a)
    assert lab.port.owner("fd00::50") is lab.learner


def test_without_known_prefixes_nothing_is_learned(lab: Lab) -> None:
    lab.port.set_master_prefixes([])
    assert lab.send(lab.learner, garp(L, "10.0.0.50")) == drop(DropReason.LEARN_NOT_ON_LINK)
    lab.port.set_master_prefixes([(ip("10.0.0.0"), 24)])
    assert lab.send(lab.learner, garp(L, "10.0.0.50")) == (FLOOD, None)


def test_learning_refuses_the_masters_gateways_and_neighbours(lab: Lab) -> None:
    assert lab.send(lab.learner, garp(L, "10.0.0.254")) == drop(DropReason.LEARN_REFUSED)
    dad = (Ether(src=L, dst="33:33:ff:00:00:fe") / IPv6(src="::", dst="ff02::1:ff00:fe")
           / ICMPv6ND_NS(tgt="fd00::fe"))
    assert lab.send(lab.learner, dad) == (FLOOD, None)  # a probe: delivered, not learned
    assert lab.port.owner("10.0.0.254") is None and lab.port.owner("fd00::fe") is None


def test_link_locals_used_on_the_wire_are_not_learned(lab: Lab) -> None:
    ra = (Ether(src=ROUTER, dst=ALL_NODES) / IPv6(src="fe80::1", dst="ff02::1")
          / ICMPv6ND_RA() / ICMPv6NDOptSrcLLAddr(lladdr=ROUTER))
    assert lab.wire(ra) == (FLOOD, None)
    squat = Ether(src=A, dst=ALL_NODES) / IPv6(src="fe80::1", dst="ff02::1") / ICMPv6EchoRequest()
    assert lab.send(lab.a, squat) == drop(DropReason.SRC_IP_SPOOF)
    na = (Ether(src=A, dst=ALL_NODES) / IPv6(src="fd00::11", dst="ff02::1")
          / ICMPv6ND_NA(tgt="fe80::1", R=1, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=A))
    assert lab.send(lab.a, na) == drop(DropReason.SRC_IP_SPOOF)
    assert lab.port.owner("fe80::1") is None
    # one the daemon knows as the master's neighbour is not learned either
    lab.in_use.add(ip("fe80::2"))
    other = Ether(src=A, dst=ALL_NODES) / IPv6(src="fe80::2", dst="ff02::1") / ICMPv6EchoRequest()
    assert lab.send(lab.a, other) == drop(DropReason.SRC_IP_SPOOF)
    # nobody uses fe80::3: first come
    free = Ether(src=A, dst=ALL_NODES) / IPv6(src="fe80::3", dst="ff02::1") / ICMPv6EchoRequest()
    assert lab.send(lab.a, free) == (FLOOD, None)
    assert lab.port.owner("fe80::3") is lab.a


def test_a_link_local_claimed_by_an_na_target_is_learned(lab: Lab) -> None:
    """An NA for a free link-local passed without being learned: no limit on how many
    a guest could advertise, and its owner-to-be (say a guest not yet started) was
    not protected from the squatter."""
    from vhost_ipvlan.switch.port import MAX_LEARNED_LINK_LOCALS

    def na(target: str) -> Packet:
        return (Ether(src=A, dst=ALL_NODES) / IPv6(src="fd00::11", dst="ff02::1")
                / ICMPv6ND_NA(tgt=target, O=1) / ICMPv6NDOptDstLLAddr(lladdr=A))

    assert lab.send(lab.a, na("fe80::99")) == (FLOOD, None)
    assert lab.port.owner("fe80::99") is lab.a
    b_uses_it = Ether(src=B, dst=ALL_NODES) / IPv6(src="fe80::99", dst="ff02::1") / ICMPv6EchoRequest()
    assert lab.send(lab.b, b_uses_it) == drop(DropReason.SRC_IP_SPOOF)
    results = [lab.send(lab.a, na(f"fe80::1:{i:x}")) for i in range(MAX_LEARNED_LINK_LOCALS)]
    assert results[-1] == drop(DropReason.TOO_MANY_LINK_LOCALS)
    both = (Ether(src=A, dst=ALL_NODES) / IPv6(src="fe80::2:1", dst="ff02::1")
            / ICMPv6ND_NA(tgt="fe80::2:2", O=1) / ICMPv6NDOptDstLLAddr(lladdr=A))
    lab2 = Lab()
    assert lab2.send(lab2.a, both) == drop(DropReason.SRC_IP_SPOOF)  # one new link-local per frame


def test_on_link_and_prefixes() -> None:
    port = Port("mst0", parse_mac(MASTER))
    port.set_master_prefixes([(ip("10.1.2.3"), 23), (ip("2001:db8::1"), 64), (ip("1.2.3.4"), 99)])
    assert port.on_link(ip("10.1.3.255")) and not port.on_link(ip("10.1.4.0"))
    assert port.on_link(ip("2001:db8::ffff")) and not port.on_link(ip("2001:db9::1"))
    assert not port.on_link(ip("1.2.3.4"))  # a nonsense prefix length is ignored


# -- 2. nothing reaches a guest by its MAC alone; learned MACs are never the wire's ----


@pytest.mark.parametrize(("flag", "verdict"), [("bridge", TO_HOST), ("private", TO_HOST), ("vepa", TO_UPLINK)])
def test_ip_to_a_guests_mac_for_a_foreign_address_is_not_delivered_to_it(flag: str, verdict: int) -> None:
    lab = Lab(flag)
    v4 = Ether(src=B, dst=A) / IP(src="10.0.0.12", dst="8.8.8.8") / UDP(dport=53)
    v6 = Ether(src=B, dst=A) / IPv6(src="fd00::12", dst="2001:4860::8888") / UDP(dport=53)
    arp = Ether(src=B, dst=A) / ARP(op=1, hwsrc=B, psrc="10.0.0.12", pdst="10.0.0.99")
    for pkt in (v4, v6, arp):
        action, arg = lab.send(lab.b, pkt)
        assert action == verdict
        assert arg is (lab.a if flag == "vepa" else None)  # vepa: a's MAC is rewritten on the way out
    assert lab.send(lab.b, Ether(src=B, dst=A, type=0x88B5) / Raw(b"x"))[0] != TO_HOST  # non-IP: GUEST_MAC


def test_a_learned_mac_is_never_one_seen_on_the_wire(lab: Lab) -> None:
    lab.wire(Ether(src=ROUTER, dst=BCAST) / ARP(op=1, hwsrc=ROUTER, psrc="10.0.0.254", pdst="10.0.0.1"))
    trick = Ether(src=ROUTER, dst=BCAST) / ARP(op=1, hwsrc=ROUTER, psrc="10.0.0.13", pdst="10.0.0.254")
    assert lab.send(lab.nomac, trick) == drop(DropReason.SRC_MAC_SPOOF)
    assert lab.nomac.mac is None and parse_mac(ROUTER) not in lab.port.by_mac
    # nor one the daemon knows as a neighbour's of the master (before the wire spoke)
    lab.in_use.add(parse_mac("02:00:00:00:00:fd"))
    trick2 = Ether(src="02:00:00:00:00:fd", dst=BCAST) / ARP(op=1, hwsrc="02:00:00:00:00:fd", psrc="10.0.0.13",
                                                            pdst="10.0.0.254")
    assert lab.send(lab.nomac, trick2) == drop(DropReason.SRC_MAC_SPOOF)
    assert lab.nomac.mac is None
    # so another guest's frames to the router's MAC still leave for the router
    out = Ether(src=A, dst=ROUTER) / IP(src="10.0.0.11", dst="8.8.8.8") / UDP(dport=53)
    assert lab.send(lab.a, out) == (TO_UPLINK, None)


# -- 3. RA guard and DHCP-server guard ---------------------------------------------------


def ra(mac: str) -> Packet:
    return (Ether(src=mac, dst=ALL_NODES) / IPv6(src="fe80::5054:ff:fe00:11", dst="ff02::1")
            / ICMPv6ND_RA() / ICMPv6NDOptSrcLLAddr(lladdr=mac))


def redirect(mac: str) -> Packet:
    return (Ether(src=mac, dst=B) / IPv6(src="fe80::5054:ff:fe00:11", dst="fd00::12")
            / ICMPv6ND_Redirect(tgt="fe80::5054:ff:fe00:11", dst="2001:4860::8888"))


def dhcp_offer(mac: str) -> Packet:
    return (Ether(src=mac, dst=BCAST) / IP(src="10.0.0.11", dst="255.255.255.255") / UDP(sport=67, dport=68)
            / BOOTP(op=2, yiaddr="10.0.0.77") / DHCP(options=[("message-type", "offer"), "end"]))


def dhcp6_advertise(mac: str) -> Packet:
    return (Ether(src=mac, dst="33:33:00:01:00:02") / IPv6(src="fe80::5054:ff:fe00:11", dst="ff02::1:2")
            / UDP(sport=547, dport=546) / DHCP6_Advertise())


def test_router_and_dhcp_server_messages_from_guests_are_dropped(lab: Lab) -> None:
    assert lab.send(lab.a, ra(A)) == drop(DropReason.RA_GUARD)
    assert lab.send(lab.a, redirect(A)) == drop(DropReason.RA_GUARD)
    assert lab.send(lab.a, dhcp_offer(A)) == drop(DropReason.DHCP_GUARD)
    assert lab.send(lab.a, dhcp6_advertise(A)) == drop(DropReason.DHCP_GUARD)
    assert lab.a.drop_counts() == {"ra_guard": 2, "dhcp_guard": 2}
    client = (Ether(src=A, dst=BCAST) / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67)
              / BOOTP(op=1) / DHCP(options=[("message-type", "discover"), "end"]))
    assert lab.send(lab.a, client) == (FLOOD, None)


def test_dhcp_server_messages_from_any_source_port_are_dropped(lab: Lab) -> None:
    """DHCP clients check only the destination port: a reply from port 1234 was
    flooded to the other guests (a rogue offer or NAK)."""
    offer = (Ether(src=A, dst=BCAST) / IP(src="10.0.0.11", dst="255.255.255.255") / UDP(sport=1234, dport=68)
             / BOOTP(op=2, yiaddr="10.0.0.77") / DHCP(options=[("message-type", "offer"), "end"]))
    advertise = (Ether(src=A, dst="33:33:00:01:00:02") / IPv6(src="fe80::5054:ff:fe00:11", dst="ff02::1:2")
                 / UDP(sport=1234, dport=546) / DHCP6_Advertise())
    assert lab.send(lab.a, offer) == drop(DropReason.DHCP_GUARD)
    assert lab.send(lab.a, advertise) == drop(DropReason.DHCP_GUARD)


def test_a_first_fragment_without_its_upper_layer_header_is_dropped(lab: Lab) -> None:
    """The RA or DHCPv6 reply would come whole in the next (non-first) fragment,
    which no guard reads; the empty first fragment was flooded."""
    for nh, dst in ((58, "ff02::1"), (17, "ff02::1:2")):
        first = (Ether(src=A, dst=ALL_NODES) / IPv6(src="fe80::5054:ff:fe00:11", dst=dst)
                 / IPv6ExtHdrFragment(nh=nh, m=1, offset=0, id=7))
        assert lab.send(lab.a, first) == drop(DropReason.BAD_HEADER)
    short_udp = bytes(Ether(src=A, dst=BCAST) / IP(src="10.0.0.11", dst="255.255.255.255", proto=17, flags="MF"))
    assert lab.send(lab.a, short_udp + bytes(8)) == drop(DropReason.BAD_HEADER)  # padding is not the header


def test_allow_router_lets_them_through(lab: Lab) -> None:
    lab.a.allow_router = True
    for pkt in (ra(A), dhcp_offer(A), dhcp6_advertise(A)):
        assert lab.send(lab.a, pkt) == (FLOOD, None)
    assert lab.send(lab.a, redirect(A)) == (TO_SLAVE, lab.b)
    assert lab.port.add_slave("r", allow_router=True).allow_router


# -- 4. NDP behind IPv6 extension headers ------------------------------------------------


def test_ndp_behind_an_extension_header_is_dropped(lab: Lab) -> None:
    na = ICMPv6ND_NA(tgt="fd00::12", R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=A)
    for ext in (IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(), IPv6ExtHdrFragment(m=0, offset=0)):
        pkt = Ether(src=A, dst=ALL_NODES) / IPv6(src="fd00::11", dst="ff02::1") / ext / na
        assert lab.send(lab.a, pkt) == drop(DropReason.NDP_EXT_HEADER)
    lab.a.allow_router = True  # not even for a router
    hbh_ra = (Ether(src=A, dst=ALL_NODES) / IPv6(src="fe80::5054:ff:fe00:11", dst="ff02::1")
              / IPv6ExtHdrHopByHop() / ICMPv6ND_RA())
    assert lab.send(lab.a, hbh_ra) == drop(DropReason.NDP_EXT_HEADER)
    assert lab.a.drop_counts() == {"ndp_ext_header": 4}


def test_extension_header_chains_are_bounded(lab: Lab) -> None:
    chain: Packet = IPv6ExtHdrDestOpt()
    for _ in range(MAX_EXT_HEADERS):
        chain = chain / IPv6ExtHdrDestOpt()
    long = Ether(src=A, dst=B) / IPv6(src="fd00::11", dst="fd00::12") / chain / UDP()
    assert lab.send(lab.a, long) == drop(DropReason.BAD_HEADER)
    truncated = bytes(Ether(src=A, dst=B) / IPv6(src="fd00::11", dst="fd00::12", nh=0, plen=8) / Raw(b"\x3c\x05"))
    assert lab.send(lab.a, truncated + bytes(6)) == drop(DropReason.BAD_HEADER)
    fine = Ether(src=A, dst=B) / IPv6(src="fd00::11", dst="fd00::12") / IPv6ExtHdrDestOpt() / UDP()
    assert lab.send(lab.a, fine) == (TO_SLAVE, lab.b)
    later_fragment = (Ether(src=A, dst=B) / IPv6(src="fd00::11", dst="fd00::12")
                      / IPv6ExtHdrFragment(nh=58, offset=10) / Raw(b"\x88" + bytes(30)))
    assert lab.send(lab.a, later_fragment) == (TO_SLAVE, lab.b)


# -- 5. 802.1 control frames and anonymous sources ---------------------------------------


@pytest.mark.parametrize("dst", ["01:80:c2:00:00:00", "01:80:c2:00:00:02", "01:80:c2:00:00:03",
                                 "01:80:c2:00:00:0e", "01:80:c2:00:00:0f",
                                 "01:00:0c:cc:cc:cc", "01:00:0c:cc:cc:cd"])  # CDP/DTP/UDLD, PVST+
def test_8021_control_frames_from_guests_are_dropped(lab: Lab, dst: str) -> None:
    bpdu = Ether(src="52:54:00:00:00:99", dst=dst, type=0x888E) / Raw(bytes(40))
    assert lab.send(lab.nomac, bpdu) == drop(DropReason.L2_CONTROL)
    assert lab.nomac.mac is None  # nothing learned from it
    assert lab.nomac.drop_counts() == {"l2_control": 1}


def test_other_01_80_c2_groups_pass(lab: Lab) -> None:
    assert lab.send(lab.a, Ether(src=A, dst="01:80:c2:00:00:10") / Raw(bytes(46))) == (FLOOD, None)
    assert lab.send(lab.a, Ether(src=A, dst="01:00:0c:cc:cc:ce") / Raw(bytes(46))) == (FLOOD, None)


def test_ip_hidden_in_llc_snap_is_dropped(lab: Lab) -> None:
    """An 802.3 frame carrying IPv4 in LLC/SNAP (RFC 1042) with another guest's source
    address was "other" traffic: sent to the wire as the host's, or to a guest by its
    MAC, past every address check."""
    from scapy.layers.l2 import LLC, SNAP, Dot3

    spoofed = IP(src="10.0.0.12", dst="10.0.0.254") / UDP(sport=53, dport=53)  # b's address
    for oui, dst in ((0, ROUTER), (0xF8, B)):
        f = Dot3(src=A, dst=dst) / LLC(dsap=0xAA, ssap=0xAA, ctrl=3) / SNAP(OUI=oui, code=0x0800) / spoofed
        assert lab.send(lab.a, f) == drop(DropReason.BAD_HEADER)
    other_snap = Dot3(src=A, dst=ROUTER) / LLC(dsap=0xAA, ssap=0xAA, ctrl=3) / SNAP(OUI=0x00000C, code=0x2000)
    assert lab.send(lab.a, other_snap / Raw(bytes(40))) == (TO_UPLINK, None)  # not an Ethernet type: passes


def test_anonymous_sources_only_for_dhcp_arp_probes_dad_and_mld(lab: Lab) -> None:
    bad = [
        Ether(src=A, dst=MASTER) / IP(src="0.0.0.0", dst="8.8.8.8") / UDP(sport=1234, dport=53),
        Ether(src=A, dst=MASTER) / IP(src="0.0.0.0", dst="10.0.0.12") / ICMP(),
        Ether(src=A, dst=B) / IP(src="0.0.0.0", dst="10.0.0.12", proto=2) / Raw(bytes(8)),  # IGMP, but unicast
        Ether(src=A, dst=B) / ARP(op=2, hwsrc=A, psrc="0.0.0.0", pdst="10.0.0.12"),
        Ether(src=A, dst=MASTER) / IPv6(src="::", dst="fd00::12") / ICMPv6EchoRequest(),
        Ether(src=A, dst=ALL_NODES) / IPv6(src="::", dst="ff02::1") / ICMPv6ND_NS(tgt="fd00::11"),
        Ether(src=A, dst=ALL_NODES) / IPv6(src="::", dst="ff02::1") / UDP(),
    ]
    for pkt in bad:
        assert lab.send(lab.a, pkt) == drop(DropReason.ANONYMOUS_SRC), pkt.summary()
    assert lab.a.drop_counts() == {"anonymous_src": len(bad)}
    good: list[Packet] = [
        Ether(src=A, dst=BCAST) / ARP(op=1, hwsrc=A, psrc="0.0.0.0", pdst="10.0.0.11"),
        igmp3([(4, "239.9.9.9")], src="0.0.0.0"),
        Ether(src=A, dst="33:33:ff:00:00:11") / IPv6(src="::", dst="ff02::1:ff00:11") / ICMPv6ND_NS(tgt="fd00::11"),
        Ether(src=A, dst="33:33:00:00:00:16") / IPv6(src="::", dst="ff02::16") / IPv6ExtHdrHopByHop(
            options=[RouterAlert()]) / ICMPv6MLReport2(records=[ICMPv6MLDMultAddrRec(dst="ff02::1:ff00:11")]),
    ]
    for ok in good:
        assert lab.send(lab.a, ok) == (FLOOD, None), ok.summary()


# -- 6. snooping is bounded and sees only frames that pass --------------------------------


def igmp3(records: list[tuple[int, str]], src: str = "10.0.0.11") -> Packet:
    body = b"".join(bytes([t, 0, 0, 0]) + ip(g) for t, g in records)
    report = b"\x22\x00\x00\x00\x00\x00" + len(records).to_bytes(2, "big") + body
    return (Ether(src=A, dst="01:00:5e:00:00:16") /
            IP(src=src, dst="224.0.0.22", ttl=1, proto=2, options=b"\x94\x04\x00\x00") / Raw(report))


def test_snooping_reads_at_most_max_records_per_report(lab: Lab) -> None:
    toggles = [(4, "239.1.1.1"), (3, "239.1.1.1")] * (MAX_RECORDS // 2)
    assert lab.send(lab.a, igmp3([*toggles, (4, "239.2.2.2")])) == (FLOOD, None)
    assert ip("239.2.2.2") not in lab.a.mcast.groups  # record MAX_RECORDS + 1: not read
    assert lab.send(lab.a, igmp3([(4, "239.2.2.2")])) == (FLOOD, None)
    assert ip("239.2.2.2") in lab.a.mcast.groups


def test_group_macs_are_updated_in_place(lab: Lab) -> None:
    f = lab.a.mcast
    macs = f._macs
    f.join(ip("224.1.1.1"))
    f.join(ip("225.1.1.1"))  # the same MAC, 01:00:5e:01:01:01
    f.leave(ip("224.1.1.1"))
    assert f._macs is macs  # no set rebuilt per join/leave
    f.snooped_v4 = True
    assert f.accepts(parse_mac("01:00:5e:01:01:01"))
    f.leave(ip("225.1.1.1"))
    assert not f.accepts(parse_mac("01:00:5e:01:01:01"))


def test_frames_dropped_for_source_or_mtu_are_not_snooped(lab: Lab) -> None:
    big = igmp3([(4, "239.3.3.3")]) / Raw(bytes(1600))
    assert lab.send(lab.a, big) == (FLOOD, None)  # the daemon drops it for the wire (mtu_exceeded)
    assert not lab.a.mcast.groups
    spoofed = Ether(src=A, dst="01:00:5e:00:00:16") / IP(bytes(igmp3([(4, "239.3.3.3")])[IP]))
    spoofed[IP].src = "10.0.0.12"
    assert lab.send(lab.a, spoofed) == drop(DropReason.SRC_IP_SPOOF)
    assert not lab.a.mcast.groups
    lab.port.max_frame = 14 + 9000
    lab.send(lab.a, big)
    assert ip("239.3.3.3") in lab.a.mcast.groups


# -- allow_router: config, state file, control API keys, CLI, libvirt --------------------


def test_allow_router_config_key_round_trips() -> None:
    import tomllib

    from vhost_ipvlan import config as cfg
    from vhost_ipvlan.control import server, state
    from vhost_ipvlan.errors import ConfigError

    data = {"port": [{"master": "m0", "slave": [{"name": "x", "socket": "/x", "allow_router": True},
                                                 {"name": "y", "socket": "/y"}]}]}
    config = cfg.parse(data)
    assert [s.allow_router for _, s in config.slaves()] == [True, False]
    assert cfg.parse(cfg.to_data(config)) == config
    assert "allow_router" not in cfg.slave_table(config.ports[0].slaves[1])
    text = state.dumps(config)
    assert "allow_router = true\n" in text and cfg.parse(tomllib.loads(text)) == config
    with pytest.raises(ConfigError, match=r"^port\[0\]\.slave\[0\]\.allow_router: expected true or false"):
        cfg.parse({"port": [{"master": "m0", "slave": [{"name": "x", "socket": "/x", "allow_router": "yes"}]}]})
    assert "allow_router" in server.SLAVE_KEYS


def test_allow_router_cli_flags() -> None:
    from vhost_ipvlan.cli import build_parser
    from vhost_ipvlan.ctl import request

    def req(*argv: str) -> tuple[str, dict[str, object]]:
        return request(build_parser().parse_args(["slave", *argv]))

    assert req("add", "a", "--master", "eth0", "--socket", "/a.sock", "--allow-router") == (
        "slave.add", {"name": "a", "master": "eth0", "socket": "/a.sock", "allow_router": True})
    assert req("change", "a", "--no-allow-router") == ("slave.change", {"name": "a", "allow_router": False})


def test_allow_router_libvirt_attribute() -> None:
    from tests.unit.test_libvirt_domain import SOCKDIR, domain, meta, nic, vi
    from vhost_ipvlan.errors import DomainError
    from vhost_ipvlan.libvirt.domain import slave_requests

    [r] = slave_requests(domain(nic(), meta(vi(extra=" allow-router='yes'"))), SOCKDIR)
    assert r.allow_router is True and r.params()["allow_router"] is True
    [r] = slave_requests(domain(nic(), meta(vi())), SOCKDIR)
    assert "allow_router" not in r.params()
    with pytest.raises(DomainError, match="allow-router 'maybe' is not yes or no"):
        slave_requests(domain(nic(), meta(vi(extra=" allow-router='maybe'"))), SOCKDIR)
