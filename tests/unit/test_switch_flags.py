"""The private and vepa flags in l2 (docs/kernel-behaviour.md §3 ipvlan_xmit_mode_l2, §8.1 a/c/d, §8.3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet

from vhost_ipvlan.net.addr import parse_mac
from vhost_ipvlan.net.translate import hairpin_to_wire, to_guest, to_wire
from vhost_ipvlan.switch import DROP, FLOOD, TO_SLAVE, TO_UPLINK, DropReason, Port, Slave, Verdict

MASTER, OUTSIDE = "02:00:00:00:00:01", "02:00:00:00:00:fe"
G1, G2, G3 = "52:54:00:00:00:11", "52:54:00:00:00:12", "52:54:00:00:00:13"
BCAST = "ff:ff:ff:ff:ff:ff"


def buf(pkt: Packet | bytes) -> memoryview:
    return memoryview(bytearray(bytes(pkt)))


def make(flag: str) -> tuple[Port, Slave, Slave, Slave]:
    port = Port("mst0", parse_mac(MASTER), "l2", flag)
    s1 = port.add_slave("s1", ["10.0.0.11", "fd00::11"], mac=G1)
    s2 = port.add_slave("s2", ["10.0.0.12", "fd00::12"], mac=G2)
    s3 = port.add_slave("s3", ["10.0.0.13"], mac=G3)
    for s in (s1, s2, s3):
        s.up = True
    return port, s1, s2, s3


UNICAST_TO_S2 = [
    Ether(src=G1, dst=G2) / IP(src="10.0.0.11", dst="10.0.0.12") / UDP(),
    Ether(src=G1, dst=MASTER) / IP(src="10.0.0.11", dst="10.0.0.12") / UDP(),  # by the shared MAC
    Ether(src=G1, dst=G2) / ARP(op=2, hwsrc=G1, psrc="10.0.0.11", hwdst=G2, pdst="10.0.0.12"),
    Ether(src=G1, dst=G2) / IPv6(src="fd00::11", dst="fd00::12") / UDP(),
    Ether(src=G1, dst=G2) / IPv6(src="fd00::11", dst="fd00::12") / ICMPv6ND_NS(tgt="fd00::12"),
]
BROADCASTS = [
    Ether(src=G1, dst=BCAST) / ARP(hwsrc=G1, psrc="10.0.0.11", pdst="10.0.0.12"),
    Ether(src=G1, dst="33:33:ff:00:00:12") / IPv6(src="fd00::11", dst="ff02::1:ff00:12") / ICMPv6ND_NS(tgt="fd00::12"),
    Ether(src=G1, dst="01:00:5e:01:01:01") / IP(src="10.0.0.11", dst="239.1.1.1") / UDP(),
]


@pytest.mark.parametrize("pkt", UNICAST_TO_S2, ids=lambda p: p.summary())
def test_private_drops_unicast_between_slaves(pkt: Packet) -> None:
    port, s1, s2, _ = make("private")
    assert port.from_guest(s1, buf(pkt)) == (DROP, DropReason.PRIVATE)
    assert s1.drop_counts() == {"private": 1}
    assert s2.drop_counts() == {}


def test_private_drops_frames_to_itself_and_to_a_guest_mac() -> None:
    port, s1, _, _ = make("private")
    to_self = Ether(src=G1, dst=G1) / IP(src="10.0.0.11", dst="10.0.0.11") / UDP()
    non_ip = Ether(src=G1, dst=G2, type=0x88B5) / (b"x" * 46)
    assert port.from_guest(s1, buf(to_self)) == (DROP, DropReason.PRIVATE)
    assert port.from_guest(s1, buf(non_ip)) == (DROP, DropReason.PRIVATE)
    assert s1.drop_counts() == {"private": 2}


@pytest.mark.parametrize("flag", ["private", "vepa"])
@pytest.mark.parametrize("pkt", BROADCASTS, ids=lambda p: p.summary())
def test_flags_leave_broadcast_and_multicast_alone(flag: str, pkt: Packet) -> None:
    port, s1, _, _ = make(flag)
    assert port.from_guest(s1, buf(pkt)) == (FLOOD, None)


@pytest.mark.parametrize("flag", ["private", "vepa"])
def test_flags_leave_the_wire_side_alone(flag: str) -> None:
    port, s1, _, _ = make(flag)
    pkt = Ether(src=OUTSIDE, dst=MASTER) / IP(src="192.0.2.1", dst="10.0.0.11") / UDP()
    assert port.from_uplink(buf(pkt)) == (TO_SLAVE, s1)


@pytest.mark.parametrize("flag", ["private", "vepa"])
def test_flags_keep_source_validation(flag: str) -> None:
    port, s1, _, _ = make(flag)
    spoofed = Ether(src=G1, dst=G2) / IP(src="10.0.0.12", dst="10.0.0.13") / UDP()
    assert port.from_guest(s1, buf(spoofed)) == (DROP, DropReason.SRC_IP_SPOOF)


def test_private_still_talks_to_the_outside() -> None:
    port, s1, _, _ = make("private")
    pkt = Ether(src=G1, dst=OUTSIDE) / IP(src="10.0.0.11", dst="192.0.2.1") / UDP()
    assert port.from_guest(s1, buf(pkt)) == (TO_UPLINK, None)


def test_vepa_sends_guest_to_guest_to_the_wire_addressed_to_the_master() -> None:
    port, s1, s2, _ = make("vepa")
    frame = buf(UNICAST_TO_S2[0])
    verdict = port.from_guest(s1, frame)
    assert verdict == (TO_UPLINK, s2)  # s2 is the guest whose MAC is the destination
    assert s1.drop_counts() == {}
    # what the daemon does with it: the wire sees dst MAC = src MAC = the master's
    hairpin_to_wire(frame, len(frame), parse_mac(G2), port.master_mac)
    to_wire(frame, len(frame), s1.mac, port.master_mac)
    wire = Ether(bytes(frame))
    assert wire.src == wire.dst == MASTER
    # a hairpin switch sends it back: steered by address to s2, with s2's MAC
    back = buf(wire)
    assert port.from_uplink(back) == (TO_SLAVE, s2)
    to_guest(back, len(back), s2.mac, port.master_mac)
    assert Ether(bytes(back)).dst == G2 and Ether(bytes(back))[UDP] is not None


def test_vepa_arp_reply_leaves_with_only_the_masters_mac() -> None:
    port, s1, s2, _ = make("vepa")
    frame = buf(UNICAST_TO_S2[2])
    action, arg = port.from_guest(s1, frame)
    assert (action, arg) == (TO_UPLINK, s2)
    assert isinstance(arg, Slave) and arg.mac is not None
    hairpin_to_wire(frame, len(frame), arg.mac, port.master_mac)
    to_wire(frame, len(frame), s1.mac, port.master_mac)
    wire = Ether(bytes(frame))
    assert (wire.src, wire.dst, wire[ARP].hwsrc, wire[ARP].hwdst) == (MASTER, MASTER, MASTER, MASTER)
    # back from the hairpin: s2 gets it with its own MAC as target, the master's as sender
    back = buf(wire)
    assert port.from_uplink(back) == (TO_SLAVE, s2)
    to_guest(back, len(back), s2.mac, port.master_mac)
    got = Ether(bytes(back))
    assert (got.dst, got[ARP].hwdst, got[ARP].hwsrc) == (G2, G2, MASTER)


def test_vepa_na_target_option_is_the_masters_mac() -> None:
    port, s1, s2, _ = make("vepa")
    na = (Ether(src=G1, dst=G2) / IPv6(src="fd00::11", dst="fd00::12") /
          ICMPv6ND_NA(tgt="fd00::11", S=1) / ICMPv6NDOptDstLLAddr(lladdr=G1))
    frame = buf(na)
    assert port.from_guest(s1, frame) == (TO_UPLINK, s2)
    hairpin_to_wire(frame, len(frame), parse_mac(G2), port.master_mac)
    to_wire(frame, len(frame), s1.mac, port.master_mac)
    wire = Ether(bytes(frame))
    assert (wire.src, wire.dst, wire[ICMPv6NDOptDstLLAddr].lladdr) == (MASTER, MASTER, MASTER)


def test_vepa_to_the_host_and_to_itself_go_to_the_wire() -> None:
    port, s1, _, _ = make("vepa")
    to_host = Ether(src=G1, dst=MASTER) / IP(src="10.0.0.11", dst="10.0.0.1") / UDP()
    to_self = Ether(src=G1, dst=G1) / IP(src="10.0.0.11", dst="10.0.0.11") / UDP()
    assert port.from_guest(s1, buf(to_host)) == (TO_UPLINK, None)  # §8.3
    assert port.from_guest(s1, buf(to_self)) == (TO_UPLINK, s1)


def test_vepa_target_down_does_not_matter() -> None:
    port, s1, s2, _ = make("vepa")
    s2.up = False
    assert port.from_guest(s1, buf(UNICAST_TO_S2[0])) == (TO_UPLINK, s2)


def test_vepa_looped_back_broadcast_is_not_redelivered() -> None:
    port, _, _, _ = make("vepa")
    reflected = Ether(src=MASTER, dst=BCAST) / ARP(hwsrc=MASTER, psrc="10.0.0.11", pdst="10.0.0.12")
    assert port.from_uplink(buf(reflected)) == (DROP, DropReason.LOOPED_BACK)


def check(verdict: Verdict) -> None:
    action, arg = verdict
    if action in (TO_SLAVE,):
        assert isinstance(arg, Slave)
    elif action == TO_UPLINK:
        assert arg is None or isinstance(arg, Slave)
    elif action == DROP:
        assert isinstance(arg, DropReason)
    else:
        assert arg is None


@given(st.sampled_from(["private", "vepa"]), st.binary(max_size=120))
def test_decisions_never_raise(flag: str, data: bytes) -> None:
    port, s1, _, _ = make(flag)
    for head in (b"", bytes.fromhex("525400000012525400000011"), bytes.fromhex("ffffffffffff525400000011")):
        check(port.from_guest(s1, buf(head + data)))
        check(port.from_uplink(buf(head + data)))
