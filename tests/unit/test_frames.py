"""Frame inspection (vhost_ipvlan.net.frames) and address helpers (net.addr)."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

from tests.support.flows import random_flow
from vhost_ipvlan.daemon import fastpath
from vhost_ipvlan.net import addr, frames
from vhost_ipvlan.net.frames import classify

MAC_A = "02:00:00:00:00:0a"
MAC_B = "02:00:00:00:00:0b"


def buf(pkt: Packet) -> memoryview:
    return memoryview(bytearray(bytes(pkt)))


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


# -- addr --------------------------------------------------------------------------


def test_mac_roundtrip() -> None:
    assert addr.parse_mac("02:00:00:AA:bb:0c") == b"\x02\x00\x00\xaa\xbb\x0c"
    assert addr.parse_mac("2-0-0-aa-bb-c") == b"\x02\x00\x00\xaa\xbb\x0c"
    assert addr.format_mac(b"\x02\x00\x00\xaa\xbb\x0c") == "02:00:00:aa:bb:0c"


@pytest.mark.parametrize("bad", ["", "02:00:00:00:00", "02:00:00:00:00:00:00", "zz:00:00:00:00:00",
                                 "002:00:00:00:00:00"])
def test_parse_mac_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid MAC"):
        addr.parse_mac(bad)


def test_ip_helpers() -> None:
    assert addr.parse_ip("10.0.0.1") == b"\x0a\x00\x00\x01"
    assert addr.parse_ip(ipaddress.ip_address("fd00::1")) == ip("fd00::1")
    assert addr.parse_ip(ip("fd00::1")) == ip("fd00::1")
    assert addr.format_ip(ip("fd00::1")) == "fd00::1"
    with pytest.raises(ValueError, match="invalid IP"):
        addr.parse_ip("10.0.0.256")
    with pytest.raises(ValueError):
        addr.parse_ip(b"\x01\x02")
    assert addr.is_link_local_v6(ip("fe80::1"))
    assert addr.is_link_local_v6(ip("febf::1"))
    assert not addr.is_link_local_v6(ip("fec0::1"))
    assert not addr.is_link_local_v6(ip("10.0.0.1"))
    assert addr.is_unicast_ip(ip("10.0.0.1"))
    for bad in ("0.0.0.0", "224.0.0.1", "255.255.255.255", "127.0.0.1", "::", "::1", "ff02::1"):
        assert not addr.is_unicast_ip(ip(bad)), bad
    assert addr.is_multicast_mac(addr.BROADCAST_MAC)
    assert not addr.is_multicast_mac(addr.parse_mac(MAC_A))
    assert not addr.is_multicast_mac(b"")


def test_eui64_link_local() -> None:
    assert addr.eui64_link_local(addr.parse_mac("52:54:00:12:34:56")) == ip(
        "fe80::5054:ff:fe12:3456"
    )


# -- classify ----------------------------------------------------------------------


def test_classify_ipv4() -> None:
    f = buf(Ether(src=MAC_A, dst=MAC_B) / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP())
    kind, dst, src, sha, l3src, key = classify(f)
    assert kind == frames.L3_IPV4
    assert (dst, src) == (addr.parse_mac(MAC_B), addr.parse_mac(MAC_A))
    assert (sha, l3src, key) == (b"", ip("10.0.0.1"), ip("10.0.0.2"))
    assert frames.ipv4_addrs(f) == (ip("10.0.0.1"), ip("10.0.0.2"))


def test_classify_ipv4_with_padding_and_options() -> None:
    # Ethernet pads to 60 bytes; IP options make ihl 6.
    pkt = Ether() / IP(src="10.0.0.1", dst="10.0.0.2", options=b"\x01\x01\x01\x01") / Raw(b"x")
    f = bytes(pkt) + b"\x00" * 20
    assert classify(f)[0] == frames.L3_IPV4


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:30],  # truncated header
        lambda b: b[:14] + bytes([0x65]) + b[15:],  # version 6 in an IPv4 ethertype
        lambda b: b[:14] + bytes([0x44]) + b[15:],  # ihl 4
        lambda b: b[:16] + b"\x05\xdc" + b[18:],  # total length 1500 > frame
        lambda b: b[:16] + b"\x00\x10" + b[18:],  # total length < ihl*4
    ],
)
def test_classify_ipv4_malformed(mutate: object) -> None:
    good = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP())
    assert callable(mutate)
    f = mutate(good)
    assert classify(f)[0] == frames.L3_MALFORMED
    assert frames.ipv4_addrs(f) is None


def test_classify_arp() -> None:
    f = buf(Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff")
            / ARP(op=1, hwsrc=MAC_A, psrc="10.0.0.1", pdst="10.0.0.2"))
    kind, _d, _s, sha, spa, tpa = classify(f)
    assert kind == frames.L3_ARP
    assert (sha, spa, tpa) == (addr.parse_mac(MAC_A), ip("10.0.0.1"), ip("10.0.0.2"))
    assert frames.arp_fields(f) == (1, addr.parse_mac(MAC_A), ip("10.0.0.1"), b"\x00" * 6,
                                    ip("10.0.0.2"))


def test_classify_arp_malformed() -> None:
    good = bytes(Ether() / ARP(hwsrc=MAC_A, psrc="10.0.0.1", pdst="10.0.0.2"))
    assert classify(good[:40])[0] == frames.L3_MALFORMED
    assert frames.arp_fields(good[:40]) is None
    odd = bytes(Ether() / ARP(hwtype=6, hwsrc=MAC_A, psrc="10.0.0.1", pdst="10.0.0.2"))
    assert classify(odd)[0] == frames.L3_MALFORMED
    assert frames.arp_fields(odd) is None


def test_classify_ipv6_and_ns() -> None:
    f = buf(Ether() / IPv6(src="fd00::1", dst="fd00::2") / ICMPv6EchoRequest())
    kind, _d, _s, _h, src, key = classify(f)
    assert (kind, src, key) == (frames.L3_IPV6, ip("fd00::1"), ip("fd00::2"))
    assert frames.icmpv6_type(f) == 128
    assert frames.nd_target(f) is None

    ns = buf(Ether() / IPv6(src="::", dst="ff02::1:ff00:2") / ICMPv6ND_NS(tgt="fd00::2"))
    kind, _d, _s, _h, src, key = classify(ns)
    assert (kind, src, key) == (frames.L3_ND_NS, ip("::"), ip("fd00::2"))
    assert frames.nd_target(ns) == ip("fd00::2")
    assert frames.ipv6_header(ns) == (ip("::"), ip("ff02::1:ff00:2"), 58, 24)


def test_classify_ipv6_malformed() -> None:
    good = bytes(Ether() / IPv6(src="fd00::1", dst="fd00::2") / UDP())
    assert classify(good[:50])[0] == frames.L3_MALFORMED
    assert classify(good[:60])[0] == frames.L3_MALFORMED  # payload length does not fit
    bad_version = good[:14] + b"\x40" + good[15:]
    assert classify(bad_version)[0] == frames.L3_MALFORMED
    assert frames.ipv6_header(bad_version) is None
    assert frames.icmpv6_type(good[:50]) == -1


def test_classify_short_ns_is_plain_ipv6() -> None:
    # An ICMPv6 type 135 too short to hold a target is not steered by target.
    pkt = Ether() / IPv6(src="fd00::1", dst="fd00::2", nh=58) / Raw(b"\x87\x00\x00\x00")
    assert classify(bytes(pkt))[0] == frames.L3_IPV6
    assert frames.nd_target(bytes(pkt)) is None


def test_classify_vlan_other_control_runt() -> None:
    assert classify(bytes(Ether() / Dot1Q(vlan=5) / IP()))[0] == frames.L3_VLAN
    assert classify(bytes(Ether() / Dot1AD(vlan=5) / Dot1Q(vlan=6) / IP()))[0] == frames.L3_VLAN
    assert frames.is_vlan(bytes(Ether() / Dot1Q(vlan=5) / IP()))
    assert not frames.is_vlan(bytes(Ether() / IP()))
    assert classify(bytes(Ether(type=0x88B5) / Raw(b"hi")))[0] == frames.L3_OTHER
    assert classify(bytes(Ether(type=0x8808) / Raw(b"\x00\x01")))[0] == frames.L3_CONTROL
    for n in range(14):
        assert classify(b"\xff" * n)[0] == frames.L3_RUNT
    assert frames.ethertype(b"\x00" * 13) == -1
    assert frames.ethertype(bytes(Ether() / IP())) == 0x0800


def test_nd_lladdr_options() -> None:
    na = buf(Ether() / IPv6(src="fd00::1", dst="fd00::2") / ICMPv6ND_NA(tgt="fd00::1")
             / ICMPv6NDOptDstLLAddr(lladdr=MAC_A))
    assert frames.nd_lladdr_options(na) == [(2, 14 + 40 + 24 + 2)]
    ra = buf(Ether() / IPv6(src="fe80::1", dst="ff02::1") / ICMPv6ND_RA()
             / ICMPv6NDOptPrefixInfo(prefix="fd00::") / ICMPv6NDOptSrcLLAddr(lladdr=MAC_A))
    assert frames.nd_lladdr_options(ra) == [(1, 14 + 40 + 16 + 32 + 2)]
    # A zero-length option ends the walk.
    zero = bytes(Ether() / IPv6(src="fd00::1", dst="fd00::2") / ICMPv6ND_NS(tgt="fd00::2")
                 / Raw(b"\x01\x00" + b"\x00" * 6))
    assert frames.nd_lladdr_options(zero) == []
    assert frames.nd_lladdr_options(bytes(Ether() / IP())) == []


@given(st.binary(max_size=200))
def test_parsers_never_raise(data: bytes) -> None:
    for f in (data, bytearray(data), memoryview(data)):
        classify(f)
        frames.arp_fields(f)
        frames.ipv4_addrs(f)
        frames.ipv6_header(f)
        frames.icmpv6_type(f)
        frames.nd_target(f)
        frames.nd_lladdr_options(f)


@given(st.sampled_from([0x0800, 0x0806, 0x86DD]), st.binary(max_size=120))
def test_parsers_never_raise_on_known_ethertypes(etype: int, body: bytes) -> None:
    f = b"\x02" * 12 + etype.to_bytes(2, "big") + body
    kind = classify(f)[0]
    assert kind in (frames.L3_MALFORMED, frames.L3_ARP, frames.L3_IPV4, frames.L3_IPV6,
                    frames.L3_ND_NS)
    frames.nd_lladdr_options(f)


def test_named_offsets_are_the_fields_scapy_writes() -> None:
    """The offsets the switch and the data path read in place (frames.OFF_*, slices)."""
    f = frames
    v4 = bytes(Ether(dst=MAC_B, src=MAC_A) / IP(src="192.0.2.1", dst="198.51.100.7", proto=17, frag=5, flags=0)
               / UDP() / b"x")
    assert v4[f.OFF_ETHERTYPE] << 8 | v4[f.OFF_ETHERTYPE + 1] == f.ETH_P_IP
    assert v4[f.OFF_IPV4_VER_IHL] == 0x45 and v4[f.OFF_IPV4_PROTO] == 17
    assert v4[f.OFF_IPV4_TOT_LEN] << 8 | v4[f.OFF_IPV4_TOT_LEN + 1] == len(v4) - f.ETH_HLEN
    assert (v4[f.OFF_IPV4_FRAG] << 8 | v4[f.OFF_IPV4_FRAG + 1]) & 0x1FFF == 5
    assert v4[f.IPV4_DST] == addr.parse_ip("198.51.100.7")
    arp = bytes(Ether(src=MAC_A) / ARP(op=2, psrc="192.0.2.1", pdst="192.0.2.2"))
    assert arp[f.OFF_ARP_OP] << 8 | arp[f.OFF_ARP_OP + 1] == f.ARPOP_REPLY
    na = bytes(Ether(src=MAC_A) / IPv6(src="fe80::1", dst="ff02::1") / ICMPv6ND_NA(tgt="2001:db8::5"))
    assert len(na) == f.ND_TARGET_END and na[f.OFF_IPV6_NEXT] == f.IPPROTO_ICMPV6
    assert na[f.OFF_ICMPV6] == f.ND_NEIGHBOR_ADVERT and na[f.ND_TARGET] == addr.parse_ip("2001:db8::5")
    assert na[f.IPV6_DST] == addr.parse_ip("ff02::1")
    assert na[f.OFF_IPV6_PLEN] << 8 | na[f.OFF_IPV6_PLEN + 1] == len(na) - f.OFF_ICMPV6
    behind = bytes(12) + na
    assert behind[frames.shifted(f.ND_TARGET, 12)] == na[f.ND_TARGET]


# -- flow_hash (multiqueue RX steering) ------------------------------------------------------------

def _udp4(sport: int, ttl: int = 64, flags: str = "") -> bytes:
    return bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2", ttl=ttl, flags=flags) / UDP(sport=sport, dport=53) / b"x")


def test_flow_hash_is_the_flows() -> None:
    assert frames.flow_hash(_udp4(1000)) == frames.flow_hash(_udp4(1000, ttl=3))  # not the payload or TTL
    assert len({frames.flow_hash(_udp4(port)) for port in range(1000, 1016)}) > 1  # the ports count
    v6 = [bytes(Ether() / IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=p)) for p in (1, 2)]
    assert frames.flow_hash(v6[0]) != frames.flow_hash(v6[1])


def test_flow_hash_ignores_ports_of_fragments_and_is_zero_for_non_ip() -> None:
    first = _udp4(1000, flags="MF")
    assert frames.flow_hash(first) == frames.flow_hash(_udp4(2000, flags="MF"))  # every fragment: one ring
    assert frames.flow_hash(bytes(Ether() / ARP())) == 0


@given(st.binary(max_size=80))
def test_flow_hash_never_raises(data: bytes) -> None:
    for etype in (b"\x08\x00", b"\x86\xdd"):
        frames.flow_hash(bytes(12) + etype + data)


# -- the C accelerator's flow_hash: the same ring as Python's ---------------------------------------

needs_c = pytest.mark.skipif(fastpath.ext is None, reason="the C accelerator is not built")


@needs_c
def test_the_c_flow_hash_is_python_s_for_random_flows_and_every_truncation() -> None:
    """IPv4/IPv6, TCP/UDP/other, fragments, options, an IPv6 Fragment header; and
    every prefix of some of them (the length checks at each boundary)."""
    assert fastpath.ext is not None
    rng = random.Random(11)
    srcs4, dsts4 = [f"10.0.{i}.1" for i in range(4)], [f"10.1.{i}.2" for i in range(4)]
    srcs6, dsts6 = [f"fd00::{i:x}" for i in range(1, 5)], [f"2001:db8::{i:x}" for i in range(1, 5)]
    hashes = set()
    for i in range(3000):
        f = random_flow(rng, "02:00:00:00:00:01", "02:00:00:00:00:02", srcs4, dsts4, srcs6, dsts6)
        assert fastpath.ext.flow_hash(f) == frames.flow_hash(f), f.hex()
        hashes.add(frames.flow_hash(f) % 4)
        if i % 100 == 0:
            for n in range(len(f) + 1):
                assert fastpath.ext.flow_hash(f[:n]) == frames.flow_hash(f[:n]), (n, f.hex())
    assert hashes == {0, 1, 2, 3}


@needs_c
@given(st.sampled_from([b"\x08\x00", b"\x86\xdd", b"\x08\x06", b"\x81\x00"]), st.binary(max_size=80))
def test_the_c_flow_hash_is_python_s_for_any_bytes(etype: bytes, data: bytes) -> None:
    assert fastpath.ext is not None
    frame = bytes(12) + etype + data
    assert fastpath.ext.flow_hash(frame) == frames.flow_hash(frame)
    assert fastpath.ext.flow_hash(bytearray(frame)) == frames.flow_hash(memoryview(frame))
