"""The l2 bridge switch: port configuration, source validation and steering."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet, Raw

from vhost_ipvlan.errors import AddressInUse, ConfigError, MacInUse, NameInUse
from vhost_ipvlan.net.addr import eui64_link_local, parse_mac
from vhost_ipvlan.net.translate import to_guest, to_wire
from vhost_ipvlan.switch import (
    DROP,
    FLOOD,
    PASS,
    TO_SLAVE,
    TO_UPLINK,
    DropReason,
    Port,
    Slave,
    Verdict,
)
from vhost_ipvlan.switch.port import MAX_LEARNED_LINK_LOCALS
from vhost_ipvlan.switch.verdict import TO_HOST

MASTER = "02:00:00:00:00:01"
OUTSIDE = "02:00:00:00:00:fe"
G1 = "52:54:00:00:00:11"
G2 = "52:54:00:00:00:12"
G3 = "52:54:00:00:00:13"
G4 = "52:54:00:00:00:14"
BCAST = "ff:ff:ff:ff:ff:ff"
HOST_IP = "10.0.0.1"


def buf(pkt: Packet | bytes) -> memoryview:
    return memoryview(bytearray(bytes(pkt)))


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


@dataclass
class Net:
    port: Port
    s1: Slave  # 10.0.0.11 fd00::11, MAC G1, up
    s2: Slave  # 10.0.0.12 fd00::12, MAC G2, up
    s3: Slave  # 10.0.0.13, MAC learned, up
    s4: Slave  # 10.0.0.14 fd00::14, MAC G4, down

    def guest(self, slave: Slave, pkt: Packet | bytes) -> Verdict:
        return self.port.from_guest(slave, buf(pkt))

    def wire(self, pkt: Packet | bytes) -> Verdict:
        return self.port.from_uplink(buf(pkt))


def make_net() -> Net:
    port = Port("mst0", parse_mac(MASTER))
    s1 = port.add_slave("s1", ["10.0.0.11", "fd00::11"], mac=G1)
    s2 = port.add_slave("s2", [ip("10.0.0.12"), ipaddress.ip_address("fd00::12")], mac=G2)
    s3 = port.add_slave("s3", ["10.0.0.13"])
    s4 = port.add_slave("s4", ["10.0.0.14", "fd00::14"], mac=parse_mac(G4))
    s1.up = s2.up = s3.up = True
    return Net(port, s1, s2, s3, s4)


@pytest.fixture
def net() -> Net:
    return make_net()


def dropped(reason: DropReason) -> Verdict:
    return (DROP, reason)


# -- configuration -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "flag", "message"),
    [
        ("l4", "bridge", "unknown mode 'l4'"),
        ("l2", "bridged", "unknown flag 'bridged'"),
    ],
)
def test_port_refuses_unimplemented(mode: str, flag: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        Port("mst0", parse_mac(MASTER), mode, flag)
    assert type(info.value) is ConfigError and info.value.code == "invalid_params"


def test_port_refuses_bad_master_mac() -> None:
    with pytest.raises(ConfigError, match="not a unicast"):
        Port("mst0", parse_mac(BCAST))
    with pytest.raises(ConfigError, match="invalid MAC"):
        Port("mst0", b"\x02\x00")


def test_address_in_use_names_the_owner(net: Net) -> None:
    with pytest.raises(AddressInUse, match=r"10\.0\.0\.11 is already in use by slave 's1'"):
        net.port.add_slave("s5", ["10.0.0.15", "10.0.0.11"])
    with pytest.raises(AddressInUse, match=r"fd00::14 .* slave 's4'"):  # owner is down
        net.port.add_slave("s5", ["fd00::14"])
    with pytest.raises(AddressInUse, match="slave 's2'"):
        net.port.add_address(net.s1, "10.0.0.12")
    assert not isinstance(AddressInUse("x"), ValueError)  # one tree: no built-in mixin
    # The failed add_slave changed nothing.
    assert "s5" not in net.port.slaves
    assert net.port.owner("10.0.0.15") is None


def test_slave_name_and_mac_conflicts(net: Net) -> None:
    with pytest.raises(NameInUse, match="slave 's1' already exists on mst0"):
        net.port.add_slave("s1", ["10.0.0.99"])
    with pytest.raises(MacInUse, match="slave 's2'"):
        net.port.add_slave("s5", ["10.0.0.15"], mac=G2)
    with pytest.raises(MacInUse, match="master"):
        net.port.add_slave("s5", ["10.0.0.15"], mac=MASTER)
    with pytest.raises(ConfigError, match="not unicast"):
        net.port.add_slave("s5", ["224.0.0.1"])
    with pytest.raises(ConfigError, match="invalid IP"):
        net.port.add_slave("s5", ["10.0.0.300"])
    with pytest.raises(ConfigError, match="invalid MAC"):
        net.port.add_slave("s5", [], mac="nonsense")
    with pytest.raises(MacInUse, match="slave 's1'"):
        net.port.set_master_mac(G1)


def test_indexes_are_unique_and_reused(net: Net) -> None:
    assert [s.index for s in (net.s1, net.s2, net.s3, net.s4)] == [1, 2, 3, 4]
    net.port.remove_slave(net.s2)
    s5 = net.port.add_slave("s5", ["10.0.0.12"])  # s2's address is free again
    assert s5.index == 2
    assert net.port.owner("10.0.0.12") is s5
    with pytest.raises(ConfigError, match="not on mst0"):
        net.port.remove_slave(net.s2)


def test_remove_slave_frees_everything(net: Net) -> None:
    gen = net.port.generation
    net.port.remove_slave(net.s1)
    assert net.port.generation > gen
    assert net.port.owner("10.0.0.11") is None and net.port.owner("fd00::11") is None
    assert parse_mac(G1) not in net.port.by_mac
    assert eui64_link_local(parse_mac(G1)) not in net.port.by_addr
    assert not net.s1.up
    net.port.add_slave("s1", ["10.0.0.11"], mac=G1)


def test_address_add_remove(net: Net) -> None:
    net.port.add_address(net.s1, "10.0.0.21")
    assert net.port.owner("10.0.0.21") is net.s1
    net.port.remove_address(net.s1, "10.0.0.21")
    assert net.port.owner("10.0.0.21") is None
    with pytest.raises(ConfigError, match="not an address of slave 's1'"):
        net.port.remove_address(net.s1, "10.0.0.12")


def test_consumed_addresses(net: Net) -> None:
    v4, v6 = net.port.consumed_addresses()
    assert v4 == ["10.0.0.11", "10.0.0.12", "10.0.0.13", "10.0.0.14"]
    assert "fd00::11" in v6 and "fd00::14" in v6
    # EUI-64 link-locals of configured MACs are reserved too.
    assert "fe80::5054:ff:fe00:11" in v6


def test_set_master_mac(net: Net) -> None:
    net.port.set_master_mac("02:00:00:00:00:02")
    pkt = Ether(src=G1, dst="02:00:00:00:00:02") / IP(src="10.0.0.11", dst="10.0.0.12")
    assert net.guest(net.s1, pkt) == (TO_SLAVE, net.s2)
    pkt = Ether(src=G1, dst=MASTER) / IP(src="10.0.0.11", dst="10.0.0.99")
    assert net.guest(net.s1, pkt) == (TO_UPLINK, None)  # the old master MAC is foreign now


# -- from a guest: validation ---------------------------------------------------------


def test_valid_frame_to_outside(net: Net) -> None:
    pkt = Ether(src=G1, dst=OUTSIDE) / IP(src="10.0.0.11", dst="192.0.2.1") / ICMP()
    assert net.guest(net.s1, pkt) == (TO_UPLINK, None)
    pkt6 = Ether(src=G1, dst=OUTSIDE) / IPv6(src="fd00::11", dst="2001:db8::1") / UDP()
    assert net.guest(net.s1, pkt6) == (TO_UPLINK, None)
    other = Ether(src=G1, dst=OUTSIDE, type=0x88B5) / Raw(b"hello")
    assert net.guest(net.s1, other) == (TO_UPLINK, None)
    assert net.s1.drop_counts() == {}


def test_spoofed_source_mac(net: Net) -> None:
    pkt = Ether(src="02:00:00:00:00:99", dst=OUTSIDE) / IP(src="10.0.0.11", dst="192.0.2.1")
    assert net.guest(net.s1, pkt) == dropped(DropReason.SRC_MAC_SPOOF)
    pkt = Ether(src=G2, dst=OUTSIDE) / IP(src="10.0.0.11", dst="192.0.2.1")
    assert net.guest(net.s1, pkt) == dropped(DropReason.SRC_MAC_SPOOF)
    pkt = Ether(src="01:00:5e:00:00:01", dst=OUTSIDE) / IP(src="10.0.0.11", dst="192.0.2.1")
    assert net.guest(net.s1, pkt) == dropped(DropReason.MULTICAST_SRC)
    assert net.s1.drop_counts() == {"src_mac_spoof": 2, "multicast_src": 1}


@pytest.mark.parametrize("src", ["10.0.0.12", "192.0.2.99", "10.0.0.1"])
def test_spoofed_source_ipv4(net: Net, src: str) -> None:
    pkt = Ether(src=G1, dst=OUTSIDE) / IP(src=src, dst="192.0.2.1") / ICMP()
    assert net.guest(net.s1, pkt) == dropped(DropReason.SRC_IP_SPOOF)
    assert net.s1.drops[DropReason.SRC_IP_SPOOF] == 1


def test_unspecified_sources_allowed(net: Net) -> None:
    dhcp = Ether(src=G1, dst=BCAST) / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(
        sport=68, dport=67)
    assert net.guest(net.s1, dhcp) == (FLOOD, None)
    probe = Ether(src=G1, dst=BCAST) / ARP(op=1, hwsrc=G1, psrc="0.0.0.0", pdst="10.0.0.11")
    assert net.guest(net.s1, probe) == (FLOOD, None)
    dad = (Ether(src=G1, dst="33:33:ff:00:00:11") / IPv6(src="::", dst="ff02::1:ff00:11")
           / ICMPv6ND_NS(tgt="fd00::11"))
    assert net.guest(net.s1, dad) == (FLOOD, None)


def test_spoofed_arp(net: Net) -> None:
    sha = Ether(src=G1, dst=BCAST) / ARP(hwsrc=G2, psrc="10.0.0.11", pdst="10.0.0.254")
    assert net.guest(net.s1, sha) == dropped(DropReason.SRC_MAC_SPOOF)
    spa = Ether(src=G1, dst=BCAST) / ARP(hwsrc=G1, psrc="10.0.0.12", pdst="10.0.0.254")
    assert net.guest(net.s1, spa) == dropped(DropReason.SRC_IP_SPOOF)
    ok = Ether(src=G1, dst=BCAST) / ARP(hwsrc=G1, psrc="10.0.0.11", pdst="10.0.0.254")
    assert net.guest(net.s1, ok) == (FLOOD, None)


def test_spoofed_ipv6(net: Net) -> None:
    for src in ("fd00::12", "2001:db8::1", "ff02::1"):
        pkt = Ether(src=G1, dst=OUTSIDE) / IPv6(src=src, dst="2001:db8::2") / UDP()
        assert net.guest(net.s1, pkt) == dropped(DropReason.SRC_IP_SPOOF), src
    ns = (Ether(src=G1, dst="33:33:ff:00:00:fe") / IPv6(src="fd00::12", dst="ff02::1:ff00:fe")
          / ICMPv6ND_NS(tgt="fd00::fe"))
    assert net.guest(net.s1, ns) == dropped(DropReason.SRC_IP_SPOOF)


def test_link_local_learning_and_conflict(net: Net) -> None:
    ll = "fe80::1234"
    pkt = Ether(src=G1, dst=OUTSIDE) / IPv6(src=ll, dst="fe80::fe") / ICMPv6EchoRequest()
    gen = net.port.generation
    assert net.guest(net.s1, pkt) == (TO_UPLINK, None)
    assert net.port.owner(ll) is net.s1 and net.port.generation > gen
    assert net.guest(net.s1, pkt) == (TO_UPLINK, None)
    assert ll in net.port.consumed_addresses()[1]
    # Another guest using it is a spoof.
    pkt2 = Ether(src=G2, dst=OUTSIDE) / IPv6(src=ll, dst="fe80::fe") / ICMPv6EchoRequest()
    assert net.guest(net.s2, pkt2) == dropped(DropReason.SRC_IP_SPOOF)
    # So is s1's reserved EUI-64 link-local, before s1 ever used it.
    eui = "fe80::5054:ff:fe00:11"
    pkt3 = Ether(src=G2, dst=OUTSIDE) / IPv6(src=eui, dst="fe80::fe") / ICMPv6EchoRequest()
    assert net.guest(net.s2, pkt3) == dropped(DropReason.SRC_IP_SPOOF)
    # The outside reaches the learned link-local.
    back = Ether(src=OUTSIDE, dst=MASTER) / IPv6(src="fe80::fe", dst=ll) / ICMPv6EchoRequest()
    assert net.wire(back) == (TO_SLAVE, net.s1)
    # A configured address takes a learned one over.
    net.port.add_address(net.s2, ll)
    assert net.port.owner(ll) is net.s2
    assert net.guest(net.s1, pkt) == dropped(DropReason.SRC_IP_SPOOF)


def test_link_local_limit(net: Net) -> None:
    already = len(net.s1.learned)
    for i in range(MAX_LEARNED_LINK_LOCALS - already):
        pkt = Ether(src=G1, dst=OUTSIDE) / IPv6(src=f"fe80::{i + 1:x}", dst="fe80::fe")
        assert net.guest(net.s1, pkt) == (TO_UPLINK, None)
    pkt = Ether(src=G1, dst=OUTSIDE) / IPv6(src="fe80::ffff", dst="fe80::fe")
    assert net.guest(net.s1, pkt) == dropped(DropReason.TOO_MANY_LINK_LOCALS)
    assert net.port.owner("fe80::ffff") is None


def test_mac_learning_then_lock(net: Net) -> None:
    s3 = net.s3
    assert s3.mac is None
    # Frames failing validation teach nothing.
    bad_ip = Ether(src=G3, dst=OUTSIDE) / IP(src="10.0.0.99", dst="192.0.2.1")
    assert net.guest(s3, bad_ip) == dropped(DropReason.SRC_IP_SPOOF)
    assert s3.mac is None
    for src, reason in ((MASTER, DropReason.SRC_MAC_SPOOF), (G1, DropReason.SRC_MAC_SPOOF),
                        ("01:00:5e:00:00:01", DropReason.MULTICAST_SRC),
                        ("00:00:00:00:00:00", DropReason.SRC_MAC_SPOOF)):
        pkt = Ether(src=src, dst=OUTSIDE) / IP(src="10.0.0.13", dst="192.0.2.1")
        assert net.guest(s3, pkt) == dropped(reason), src
        assert s3.mac is None
    arp_bad = Ether(src=G3, dst=BCAST) / ARP(hwsrc=G2, psrc="10.0.0.13", pdst="10.0.0.1")
    assert net.guest(s3, arp_bad) == dropped(DropReason.SRC_MAC_SPOOF)
    assert s3.mac is None
    # The first valid frame teaches the MAC, which is then locked.
    arp = Ether(src=G3, dst=BCAST) / ARP(hwsrc=G3, psrc="10.0.0.13", pdst="10.0.0.1")
    assert net.guest(s3, arp) == (FLOOD, None)
    assert s3.mac == parse_mac(G3)
    assert net.port.by_mac[parse_mac(G3)] is s3
    assert net.port.owner("fe80::5054:ff:fe00:13") is s3
    other = Ether(src="52:54:00:00:00:99", dst=OUTSIDE) / IP(src="10.0.0.13", dst="192.0.2.1")
    assert net.guest(s3, other) == dropped(DropReason.SRC_MAC_SPOOF)
    # Other guests now reach s3 by its MAC.
    pkt = Ether(src=G1, dst=G3, type=0x88B5) / Raw(b"x")
    assert net.guest(net.s1, pkt) == (TO_SLAVE, s3)


def test_unusable_frames(net: Net) -> None:
    assert net.guest(net.s1, b"\x02" * 13) == dropped(DropReason.RUNT)
    assert net.guest(net.s1, b"") == dropped(DropReason.RUNT)
    vlan = Ether(src=G1, dst=OUTSIDE) / Dot1Q(vlan=7) / IP(src="10.0.0.11", dst="192.0.2.1")
    assert net.guest(net.s1, vlan) == dropped(DropReason.VLAN)
    short = bytes(Ether(src=G1, dst=OUTSIDE) / IP(src="10.0.0.11", dst="192.0.2.1"))[:30]
    assert net.guest(net.s1, short) == dropped(DropReason.BAD_HEADER)
    pause = Ether(src=G1, dst="01:80:c2:00:00:01", type=0x8808) / Raw(b"\x00\x01\xff\xff")
    assert net.guest(net.s1, pause) == dropped(DropReason.MAC_CONTROL)
    assert net.s1.drop_counts() == {"runt": 2, "vlan": 1, "bad_header": 1, "mac_control": 1}


# -- from a guest: destinations ---------------------------------------------------------


def test_broadcast_and_multicast_flood(net: Net) -> None:
    arp = Ether(src=G1, dst=BCAST) / ARP(hwsrc=G1, psrc="10.0.0.11", pdst="10.0.0.12")
    assert net.guest(net.s1, arp) == (FLOOD, None)
    ns = (Ether(src=G1, dst="33:33:ff:00:00:12") / IPv6(src="fd00::11", dst="ff02::1:ff00:12")
          / ICMPv6ND_NS(tgt="fd00::12") / ICMPv6NDOptSrcLLAddr(lladdr=G1))
    assert net.guest(net.s1, ns) == (FLOOD, None)
    mc = Ether(src=G1, dst="01:00:5e:00:00:fb") / IP(src="10.0.0.11", dst="224.0.0.251") / UDP()
    assert net.guest(net.s1, mc) == (FLOOD, None)


@pytest.mark.parametrize("dst_mac", [MASTER, G2])
def test_guest_to_guest_by_ip(net: Net, dst_mac: str) -> None:
    v4 = Ether(src=G1, dst=dst_mac) / IP(src="10.0.0.11", dst="10.0.0.12") / ICMP()
    assert net.guest(net.s1, v4) == (TO_SLAVE, net.s2)
    v6 = Ether(src=G1, dst=dst_mac) / IPv6(src="fd00::11", dst="fd00::12") / ICMPv6EchoRequest()
    assert net.guest(net.s1, v6) == (TO_SLAVE, net.s2)
    ns = (Ether(src=G1, dst=dst_mac) / IPv6(src="fd00::11", dst="fd00::12")
          / ICMPv6ND_NS(tgt="fd00::12"))
    assert net.guest(net.s1, ns) == (TO_SLAVE, net.s2)
    verdict = net.guest(net.s1, v4)
    assert verdict is net.s2.to_me  # verdicts are reused, not rebuilt


def test_guest_to_guest_arp_reply(net: Net) -> None:
    reply = Ether(src=G2, dst=G1) / ARP(op=2, hwsrc=G2, psrc="10.0.0.12", hwdst=G1,
                                       pdst="10.0.0.11")
    assert net.guest(net.s2, reply) == (TO_SLAVE, net.s1)
    na = (Ether(src=G2, dst=G1) / IPv6(src="fd00::12", dst="fd00::11")
          / ICMPv6ND_NA(tgt="fd00::12"))
    assert net.guest(net.s2, na) == (TO_SLAVE, net.s1)


def test_ip_lookup_wins_over_guest_mac(net: Net) -> None:
    pkt = Ether(src=G1, dst=G2) / IP(src="10.0.0.11", dst="10.0.0.13")
    assert net.guest(net.s1, pkt) == (TO_SLAVE, net.s3)


def test_non_ip_to_guest_mac(net: Net) -> None:
    pkt = Ether(src=G1, dst=G2, type=0x88B5) / Raw(b"x")
    assert net.guest(net.s1, pkt) == (TO_SLAVE, net.s2)
    # IP for no slave's address goes where the kernel sends it (the host), never to the
    # guest that owns the MAC (audit finding 2)
    unknown_ip = Ether(src=G1, dst=G2) / IP(src="10.0.0.11", dst="192.0.2.7")
    assert net.guest(net.s1, unknown_ip) == (TO_HOST, None)


def test_to_host(net: Net) -> None:
    pkt = Ether(src=G1, dst=MASTER) / IP(src="10.0.0.11", dst=HOST_IP) / ICMP()
    assert net.guest(net.s1, pkt) == (TO_HOST, None)
    other = Ether(src=G1, dst=MASTER, type=0x88B5) / Raw(b"x")
    assert net.guest(net.s1, other) == (TO_HOST, None)
    assert net.s1.drop_counts() == {}


def test_target_down(net: Net) -> None:
    by_ip = Ether(src=G1, dst=MASTER) / IP(src="10.0.0.11", dst="10.0.0.14")
    assert net.guest(net.s1, by_ip) == dropped(DropReason.TARGET_DOWN)
    by_mac = Ether(src=G1, dst=G4, type=0x88B5) / Raw(b"x")
    assert net.guest(net.s1, by_mac) == dropped(DropReason.TARGET_DOWN)
    assert net.s1.drops[DropReason.TARGET_DOWN] == 2
    net.s4.up = True
    assert net.guest(net.s1, by_ip) == (TO_SLAVE, net.s4)


# -- from the wire ----------------------------------------------------------------------


def test_wire_arp_steered_to_owner_only(net: Net) -> None:
    req = Ether(src=OUTSIDE, dst=BCAST) / ARP(op=1, hwsrc=OUTSIDE, psrc="10.0.0.254",
                                              pdst="10.0.0.11")
    assert net.wire(req) == (TO_SLAVE, net.s1)
    rep = Ether(src=OUTSIDE, dst=MASTER) / ARP(op=2, hwsrc=OUTSIDE, psrc="10.0.0.254",
                                               hwdst=MASTER, pdst="10.0.0.12")
    assert net.wire(rep) == (TO_SLAVE, net.s2)
    other = Ether(src=OUTSIDE, dst=BCAST) / ARP(op=1, hwsrc=OUTSIDE, psrc="10.0.0.254",
                                                pdst="10.0.0.77")
    assert net.wire(other) == (FLOOD, None)
    host = Ether(src=OUTSIDE, dst=MASTER) / ARP(op=2, hwsrc=OUTSIDE, psrc="10.0.0.254",
                                                pdst=HOST_IP)
    assert net.wire(host) == (PASS, None)


def test_wire_ns_steered_by_target(net: Net) -> None:
    ns = (Ether(src=OUTSIDE, dst="33:33:ff:00:00:12") / IPv6(src="fd00::fe", dst="ff02::1:ff00:12")
          / ICMPv6ND_NS(tgt="fd00::12") / ICMPv6NDOptSrcLLAddr(lladdr=OUTSIDE))
    assert net.wire(ns) == (TO_SLAVE, net.s2)
    dad = (Ether(src=OUTSIDE, dst="33:33:ff:00:00:11") / IPv6(src="::", dst="ff02::1:ff00:11")
           / ICMPv6ND_NS(tgt="fd00::11"))
    assert net.wire(dad) == (TO_SLAVE, net.s1)
    foreign = (Ether(src=OUTSIDE, dst="33:33:ff:00:00:99")
               / IPv6(src="fd00::fe", dst="ff02::1:ff00:99") / ICMPv6ND_NS(tgt="fd00::99"))
    assert net.wire(foreign) == (FLOOD, None)


@pytest.mark.parametrize("dst_mac", [MASTER, "02:00:00:00:00:77"])
def test_wire_unicast_steered_by_ip(net: Net, dst_mac: str) -> None:
    v4 = Ether(src=OUTSIDE, dst=dst_mac) / IP(src="10.0.0.254", dst="10.0.0.11") / ICMP()
    assert net.wire(v4) == (TO_SLAVE, net.s1)
    v6 = Ether(src=OUTSIDE, dst=dst_mac) / IPv6(src="fd00::fe", dst="fd00::12") / UDP()
    assert net.wire(v6) == (TO_SLAVE, net.s2)
    na = (Ether(src=OUTSIDE, dst=dst_mac) / IPv6(src="fd00::fe", dst="fd00::11")
          / ICMPv6ND_NA(tgt="fd00::fe"))
    assert net.wire(na) == (TO_SLAVE, net.s1)


def test_wire_not_ours_passes(net: Net) -> None:
    host = Ether(src=OUTSIDE, dst=MASTER) / IP(src="10.0.0.254", dst=HOST_IP) / ICMP()
    assert net.wire(host) == (PASS, None)
    other = Ether(src=OUTSIDE, dst=MASTER, type=0x88B5) / Raw(b"x")
    assert net.wire(other) == (PASS, None)
    vlan = Ether(src=OUTSIDE, dst=BCAST) / Dot1Q(vlan=3) / IP(dst="10.0.0.11")
    assert net.wire(vlan) == (PASS, None)
    pause = Ether(src=OUTSIDE, dst="01:80:c2:00:00:01", type=0x8808) / Raw(b"\x00\x01")
    assert net.wire(pause) == (PASS, None)
    bad = bytes(Ether(src=OUTSIDE, dst=MASTER) / IP(src="10.0.0.254", dst="10.0.0.11"))[:30]
    assert net.wire(bad) == (PASS, None)


def test_wire_multicast_flood(net: Net) -> None:
    mc = Ether(src=OUTSIDE, dst="01:00:5e:00:00:01") / IP(src="10.0.0.254", dst="224.0.0.1")
    assert net.wire(mc) == (FLOOD, None)
    bc = Ether(src=OUTSIDE, dst=BCAST) / IP(src="10.0.0.254", dst="10.0.0.255") / ICMP()
    assert net.wire(bc) == (FLOOD, None)
    # Multicast MAC with a slave's unicast IP: multicast path, as the kernel does.
    odd = Ether(src=OUTSIDE, dst=BCAST) / IP(src="10.0.0.254", dst="10.0.0.11")
    assert net.wire(odd) == (FLOOD, None)
    ra = Ether(src=OUTSIDE, dst="33:33:00:00:00:01") / IPv6(src="fe80::fe", dst="ff02::1")
    assert net.wire(ra) == (FLOOD, None)
    raw = Ether(src=OUTSIDE, dst=BCAST, type=0x88B5) / Raw(b"x")
    assert net.wire(raw) == (FLOOD, None)
    bad = bytes(Ether(src=OUTSIDE, dst=BCAST) / IP(src="10.0.0.254", dst="10.0.0.11"))[:30]
    assert net.wire(bad) == (FLOOD, None)


def test_wire_looped_back_suppressed(net: Net) -> None:
    arp = Ether(src=MASTER, dst=BCAST) / ARP(hwsrc=MASTER, psrc="10.0.0.11", pdst="10.0.0.12")
    assert net.wire(arp) == dropped(DropReason.LOOPED_BACK)
    v4 = Ether(src=MASTER, dst=BCAST) / IP(src="10.0.0.11", dst="10.0.0.255") / ICMP()
    assert net.wire(v4) == dropped(DropReason.LOOPED_BACK)
    ns = (Ether(src=MASTER, dst="33:33:ff:00:00:12") / IPv6(src="fd00::11", dst="ff02::1:ff00:12")
          / ICMPv6ND_NS(tgt="fd00::12"))
    assert net.wire(ns) == dropped(DropReason.LOOPED_BACK)
    assert net.port.drop_counts() == {"looped_back": 3}
    # Both conditions are needed: the host's own reflected request is delivered ...
    host = Ether(src=MASTER, dst=BCAST) / ARP(hwsrc=MASTER, psrc=HOST_IP, pdst="10.0.0.12")
    assert net.wire(host) == (TO_SLAVE, net.s2)
    # ... and so is another host's broadcast claiming a slave's source address.
    foreign = Ether(src=OUTSIDE, dst=BCAST) / IP(src="10.0.0.11", dst="10.0.0.255") / ICMP()
    assert net.wire(foreign) == (FLOOD, None)


def test_wire_target_down(net: Net) -> None:
    v4 = Ether(src=OUTSIDE, dst=MASTER) / IP(src="10.0.0.254", dst="10.0.0.14") / ICMP()
    assert net.wire(v4) == dropped(DropReason.TARGET_DOWN)
    arp = Ether(src=OUTSIDE, dst=BCAST) / ARP(hwsrc=OUTSIDE, psrc="10.0.0.254", pdst="10.0.0.14")
    assert net.wire(arp) == dropped(DropReason.TARGET_DOWN)
    assert net.port.uplink_drops[DropReason.TARGET_DOWN] == 2
    assert net.s4.drop_counts() == {}


def test_wire_runt(net: Net) -> None:
    assert net.wire(b"\xff" * 10) == dropped(DropReason.RUNT)
    assert net.port.drop_counts() == {"runt": 1}


def test_drop_reason_labels() -> None:
    labels = [r.label for r in DropReason]
    assert len(set(labels)) == len(labels)
    assert DropReason.SRC_MAC_SPOOF.label == "src_mac_spoof"
    assert all(label == label.lower() for label in labels)


# -- fuzz -------------------------------------------------------------------------------

VALID_ACTIONS = {TO_SLAVE, TO_UPLINK, FLOOD, PASS, DROP, TO_HOST}


def check_verdict(verdict: Verdict, from_guest: bool) -> None:
    action, arg = verdict
    assert action in VALID_ACTIONS
    if action == TO_SLAVE:
        assert isinstance(arg, Slave)
    elif action == DROP:
        assert isinstance(arg, DropReason)
    else:
        assert arg is None
    if from_guest:
        assert action != PASS


HEADERS = [
    b"",
    bytes.fromhex("ffffffffffff") + parse_mac(G1),
    parse_mac(MASTER) + parse_mac(G1),
    parse_mac(G2) + parse_mac(G1),
    bytes.fromhex("333300000001") + parse_mac(OUTSIDE),
    parse_mac(MASTER) + parse_mac(OUTSIDE),
    bytes.fromhex("ffffffffffff") + parse_mac(MASTER),
]
ETHERTYPES = [b"", b"\x08\x00", b"\x08\x06", b"\x86\xdd", b"\x81\x00", b"\x88\x08"]


def translate_like_the_daemon(port: Port, slave: Slave | None, frame: memoryview) -> None:
    """Apply the translation the daemon applies for a verdict; it must not raise either."""
    verdict = port.from_guest(slave, frame) if slave else port.from_uplink(frame)
    check_verdict(verdict, slave is not None)
    action, arg = verdict
    if isinstance(arg, Slave):
        to_guest(frame, len(frame), arg.mac, port.master_mac)
    elif slave is not None and action in (TO_UPLINK, FLOOD):
        to_wire(frame, len(frame), slave.mac, port.master_mac)


@given(st.sampled_from(HEADERS), st.sampled_from(ETHERTYPES), st.binary(max_size=120))
def test_decisions_never_raise(header: bytes, etype: bytes, body: bytes) -> None:
    n = make_net()
    frame = header + etype + body if etype and len(header) == 12 else header + body
    for slave in (n.s1, n.s3, n.s4):
        translate_like_the_daemon(n.port, slave, buf(frame))
    translate_like_the_daemon(n.port, None, buf(frame))
    check_verdict(n.port.from_uplink(bytes(frame)), False)


@given(st.binary(max_size=100))
def test_decisions_never_raise_on_random_bytes(data: bytes) -> None:
    n = make_net()
    check_verdict(n.port.from_guest(n.s3, buf(data)), True)
    check_verdict(n.port.from_guest(n.s1, bytearray(data)), True)
    check_verdict(n.port.from_uplink(buf(data)), False)
