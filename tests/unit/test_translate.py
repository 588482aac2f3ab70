"""MAC translation (vhost_ipvlan.net.translate): fields, checksums, robustness."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6ND_RS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Raw

from vhost_ipvlan.net.addr import parse_mac
from vhost_ipvlan.net.frames import OFF_ICMPV6, nd_lladdr_options
from vhost_ipvlan.net.translate import to_guest, to_wire

GUEST = "52:54:00:00:00:01"
MASTER = "02:00:00:00:00:aa"
OUTSIDE = "02:00:00:00:00:fe"
G = parse_mac(GUEST)
M = parse_mac(MASTER)
O = parse_mac(OUTSIDE)  # noqa: E741


def buf(pkt: Packet) -> memoryview:
    return memoryview(bytearray(bytes(pkt)))


def icmpv6_checksum_ok(frame: bytes) -> bool:
    """Verify the ICMPv6 checksum over the IPv6 pseudo-header, independently of scapy."""
    plen = int.from_bytes(frame[18:20], "big")
    data = frame[22:54] + plen.to_bytes(4, "big") + b"\x00\x00\x00\x3a"
    data += frame[OFF_ICMPV6 : OFF_ICMPV6 + plen]
    if len(data) % 2:
        data += b"\x00"
    s = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s == 0xFFFF


def scapy_recomputed_checksum(frame: bytes) -> tuple[int, int]:
    """(checksum in the frame, checksum scapy computes for the same message)."""
    pkt = Ether(frame)
    icmp = pkt[IPv6].payload
    have = int(icmp.cksum)
    del icmp.cksum
    return have, int(Ether(bytes(pkt))[IPv6].payload.cksum)


# -- Ethernet and ARP ----------------------------------------------------------------


def test_to_wire_ethernet_source() -> None:
    f = buf(Ether(src=GUEST, dst=OUTSIDE) / IP(src="10.0.0.11", dst="10.0.0.254") / ICMP())
    before = bytes(f)
    assert to_wire(f, len(f), G, M) == 1
    out = Ether(bytes(f))
    assert out.src == MASTER and out.dst == OUTSIDE
    assert bytes(f)[12:] == before[12:]


def test_to_wire_leaves_other_sources_alone() -> None:
    f = buf(Ether(src=OUTSIDE, dst=GUEST) / IP() / ICMP())
    before = bytes(f)
    assert to_wire(f, len(f), G, M) == 0
    assert bytes(f) == before


def test_to_wire_arp_request_and_gratuitous_reply() -> None:
    f = buf(Ether(src=GUEST, dst="ff:ff:ff:ff:ff:ff")
            / ARP(op=1, hwsrc=GUEST, psrc="10.0.0.11", pdst="10.0.0.254"))
    assert to_wire(f, len(f), G, M) == 2
    arp = Ether(bytes(f))[ARP]
    assert (arp.hwsrc, arp.hwdst, arp.psrc, arp.pdst) == (
        MASTER, "00:00:00:00:00:00", "10.0.0.11", "10.0.0.254")

    g = buf(Ether(src=GUEST, dst="ff:ff:ff:ff:ff:ff")
            / ARP(op=2, hwsrc=GUEST, hwdst=GUEST, psrc="10.0.0.11", pdst="10.0.0.11"))
    assert to_wire(g, len(g), G, M) == 3
    arp = Ether(bytes(g))[ARP]
    assert (arp.hwsrc, arp.hwdst) == (MASTER, MASTER)


def test_to_wire_arp_reply_keeps_outside_target() -> None:
    f = buf(Ether(src=GUEST, dst=OUTSIDE)
            / ARP(op=2, hwsrc=GUEST, hwdst=OUTSIDE, psrc="10.0.0.11", pdst="10.0.0.254"))
    assert to_wire(f, len(f), G, M) == 2
    arp = Ether(bytes(f))[ARP]
    assert (arp.hwsrc, arp.hwdst) == (MASTER, OUTSIDE)


def test_to_wire_non_ethernet_arp_untouched() -> None:
    raw = bytearray(bytes(Ether(src=GUEST, dst=OUTSIDE) / ARP(hwsrc=GUEST, psrc="10.0.0.11")))
    raw[15] = 6  # hardware type IEEE 802 instead of Ethernet
    f = memoryview(raw)
    assert to_wire(f, len(f), G, M) == 1  # Ethernet source only
    assert bytes(f)[22:28] == G


def test_to_guest_ethernet_and_arp() -> None:
    f = buf(Ether(src=OUTSIDE, dst=MASTER)
            / ARP(op=2, hwsrc=OUTSIDE, hwdst=MASTER, psrc="10.0.0.254", pdst="10.0.0.11"))
    assert to_guest(f, len(f), G, M) == 2
    out = Ether(bytes(f))
    assert (out.dst, out.src, out[ARP].hwdst, out[ARP].hwsrc) == (GUEST, OUTSIDE, GUEST, OUTSIDE)


def test_to_guest_broadcast_untouched() -> None:
    f = buf(Ether(src=OUTSIDE, dst="ff:ff:ff:ff:ff:ff")
            / ARP(op=1, hwsrc=OUTSIDE, psrc="10.0.0.254", pdst="10.0.0.11"))
    before = bytes(f)
    assert to_guest(f, len(f), G, M) == 0
    assert bytes(f) == before


def test_to_guest_leaves_ndp_options() -> None:
    f = buf(Ether(src=OUTSIDE, dst=MASTER) / IPv6(src="fd00::fe", dst="fd00::11")
            / ICMPv6ND_NA(tgt="fd00::fe") / ICMPv6NDOptDstLLAddr(lladdr=MASTER))
    before = bytes(f)
    assert to_guest(f, len(f), G, M) == 1
    assert bytes(f)[6:] == before[6:]


def test_unknown_guest_mac_rewrites_nothing() -> None:
    f = buf(Ether(src=OUTSIDE, dst=MASTER) / ARP(op=2, hwdst=MASTER, pdst="10.0.0.11"))
    before = bytes(f)
    assert to_guest(f, len(f), None, M) == 0
    assert to_wire(f, len(f), None, M) == 0
    assert bytes(f) == before


def test_length_limits_the_view() -> None:
    f = buf(Ether(src=GUEST, dst=OUTSIDE) / ARP(hwsrc=GUEST, psrc="10.0.0.11"))
    assert to_wire(f, 13, G, M) == 0
    assert to_wire(f, 20, G, M) == 1  # Ethernet only: the ARP body is beyond length
    assert bytes(f)[22:28] == G
    assert to_wire(bytearray(b"\x00" * 5), 100, G, M) == 0


# -- NDP options and checksums ----------------------------------------------------------

NDP_FROM_GUEST = [
    ICMPv6ND_NS(tgt="fd00::fe") / ICMPv6NDOptSrcLLAddr(lladdr=GUEST),
    ICMPv6ND_NA(tgt="fd00::11", R=0) / ICMPv6NDOptDstLLAddr(lladdr=GUEST),
    ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr=GUEST),
    ICMPv6ND_RA() / ICMPv6NDOptPrefixInfo(prefix="fd00::") / ICMPv6NDOptMTU()
    / ICMPv6NDOptSrcLLAddr(lladdr=GUEST),
    ICMPv6ND_Redirect(tgt="fe80::1", dst="fd00::99") / ICMPv6NDOptDstLLAddr(lladdr=GUEST),
]


def test_ndp_options_rewritten_with_valid_checksum() -> None:
    for msg in NDP_FROM_GUEST:
        f = buf(Ether(src=GUEST, dst="33:33:00:00:00:01")
                / IPv6(src="fe80::5054:ff:fe00:1", dst="ff02::1", hlim=255) / msg)
        assert icmpv6_checksum_ok(bytes(f))
        assert to_wire(f, len(f), G, M) == 2, msg.summary()
        out = bytes(f)
        for _otype, off in nd_lladdr_options(out):
            assert out[off : off + 6] == M
        have, want = scapy_recomputed_checksum(out)
        assert have == want, msg.summary()
        assert icmpv6_checksum_ok(out)


def test_ndp_two_options_and_foreign_option() -> None:
    f = buf(Ether(src=GUEST, dst=OUTSIDE) / IPv6(src="fd00::11", dst="fd00::fe")
            / ICMPv6ND_NA(tgt="fd00::11") / ICMPv6NDOptDstLLAddr(lladdr=GUEST)
            / ICMPv6NDOptSrcLLAddr(lladdr=OUTSIDE) / ICMPv6NDOptSrcLLAddr(lladdr=GUEST))
    assert to_wire(f, len(f), G, M) == 3
    opts = [bytes(f)[off : off + 6] for _t, off in nd_lladdr_options(f)]
    assert opts == [M, O, M]
    assert icmpv6_checksum_ok(bytes(f))
    have, want = scapy_recomputed_checksum(bytes(f))
    assert have == want


def test_ndp_checksum_left_when_offloaded() -> None:
    f = buf(Ether(src=GUEST, dst=OUTSIDE) / IPv6(src="fd00::11", dst="fd00::fe")
            / ICMPv6ND_NS(tgt="fd00::fe") / ICMPv6NDOptSrcLLAddr(lladdr=GUEST))
    csum = bytes(f)[56:58]
    assert to_wire(f, len(f), G, M, fix_checksum=False) == 2
    assert bytes(f)[56:58] == csum


def test_non_ndp_icmpv6_untouched() -> None:
    f = buf(Ether(src=GUEST, dst=OUTSIDE) / IPv6(src="fd00::11", dst="fd00::fe")
            / ICMPv6EchoRequest(data=G * 4))
    before = bytes(f)
    assert to_wire(f, len(f), G, M) == 1
    assert bytes(f)[12:] == before[12:]


def test_truncated_ndp_untouched() -> None:
    full = bytes(Ether(src=GUEST, dst=OUTSIDE) / IPv6(src="fd00::11", dst="fd00::fe")
                 / ICMPv6ND_NS(tgt="fd00::fe") / ICMPv6NDOptSrcLLAddr(lladdr=GUEST))
    f = memoryview(bytearray(full[:-4]))  # payload length no longer fits
    assert to_wire(f, len(f), G, M) == 1
    assert bytes(f)[12:] == full[12:-4]


@given(
    st.lists(st.tuples(st.sampled_from([1, 2]), st.sampled_from([G, O, M])), max_size=6),
    st.sampled_from([133, 134, 135, 136, 137]),
)
def test_ndp_checksum_property(options: list[tuple[int, bytes]], mtype: int) -> None:
    msg: Packet = {
        133: ICMPv6ND_RS(),
        134: ICMPv6ND_RA(),
        135: ICMPv6ND_NS(tgt="fd00::fe"),
        136: ICMPv6ND_NA(tgt="fd00::11"),
        137: ICMPv6ND_Redirect(tgt="fe80::1", dst="fd00::99"),
    }[mtype]
    for otype, mac in options:
        msg = msg / Raw(bytes([otype, 1]) + mac)
    f = buf(Ether(src=GUEST, dst=OUTSIDE) / IPv6(src="fd00::11", dst="fd00::fe") / msg)
    n = to_wire(f, len(f), G, M)
    assert n == 1 + sum(1 for _t, mac in options if mac == G)
    assert icmpv6_checksum_ok(bytes(f))


@given(st.binary(max_size=160), st.integers(min_value=-5, max_value=300))
def test_translation_never_raises(data: bytes, length: int) -> None:
    for etype in (b"", b"\x08\x06", b"\x86\xdd"):
        raw = data[:12] + etype + data[12:] if etype else data
        f = memoryview(bytearray(raw))
        to_wire(f, length, G, M)
        to_guest(f, length, G, M)
        ba = bytearray(raw)
        to_wire(ba, length, G, M)
        to_guest(ba, length, G, M)
        assert len(ba) == len(raw)


@given(st.binary(min_size=0, max_size=80))
def test_ndp_random_body_never_raises(body: bytes) -> None:
    hdr = Ether(src=GUEST, dst=OUTSIDE) / IPv6(src="fd00::11", dst="fd00::fe", nh=58)
    raw = bytes(hdr / Raw(body))
    f = memoryview(bytearray(raw))
    to_wire(f, len(f), G, M)
    assert len(f) == len(raw)
