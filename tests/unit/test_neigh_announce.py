"""The announcements a resuming guest's addresses get (``net.neigh.announce``), read by scapy."""

from __future__ import annotations

import ipaddress

from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether

from vhost_ipvlan.net import neigh

MAC = bytes.fromhex("02aabbccdd01")
V4 = [ipaddress.ip_address(a).packed for a in ("192.0.2.20", "198.51.100.7")]
V6 = [ipaddress.ip_address(a).packed for a in ("2001:db8::20", "2001:db8:1::5")]


def test_gratuitous_arp_is_a_broadcast_request_for_the_address_from_the_mac() -> None:
    pkt = Ether(neigh.gratuitous_arp(MAC, V4[0]))
    assert pkt.dst == "ff:ff:ff:ff:ff:ff" and pkt.src == "02:aa:bb:cc:dd:01"
    arp = pkt[ARP]
    assert (arp.op, arp.hwsrc, arp.psrc, arp.pdst, arp.hwdst) == (
        1, "02:aa:bb:cc:dd:01", "192.0.2.20", "192.0.2.20", "00:00:00:00:00:00")
    assert (arp.hwtype, arp.ptype, arp.hwlen, arp.plen) == (1, 0x0800, 6, 4)


def test_unsolicited_na_goes_to_all_nodes_with_override_and_the_target_lladdr() -> None:
    raw = neigh.unsolicited_na(MAC, V6[0])
    pkt = Ether(raw)
    assert pkt.dst == "33:33:00:00:00:01" and pkt.src == "02:aa:bb:cc:dd:01"
    ip = pkt[IPv6]
    assert (ip.src, ip.dst, ip.hlim, ip.nh) == ("2001:db8::20", "ff02::1", 255, 58)
    na = pkt[ICMPv6ND_NA]
    assert (na.R, na.S, na.O, na.tgt) == (0, 0, 1, "2001:db8::20")
    assert pkt[ICMPv6NDOptDstLLAddr].lladdr == "02:aa:bb:cc:dd:01"
    # scapy recomputes the checksum when it is deleted: the daemon's must be the same
    want = Ether(raw)
    del want[ICMPv6ND_NA].cksum
    assert bytes(Ether(bytes(want))) == raw


def test_announce_covers_every_address_ipv4_first() -> None:
    frames = [Ether(f) for f in neigh.announce(MAC, set(V6 + V4))]
    assert [f[ARP].psrc for f in frames[:2]] == ["192.0.2.20", "198.51.100.7"]
    assert [f[ICMPv6ND_NA].tgt for f in frames[2:]] == ["2001:db8::20", "2001:db8:1::5"]
    assert neigh.announce(MAC, ()) == []


def test_na_reply_is_unchanged_by_the_shared_builder() -> None:
    """na_reply and unsolicited_na share ``_na``: a solicited reply still answers the asker."""
    ns = bytes.fromhex(
        "3333ff000020" "020000000099" "86dd"
        "6000000000203aff" "20010db8000000000000000000000001" "ff0200000000000000000001ff000020"
        "870000000000000020010db8000000000000000000000020" "0101020000000099")
    pkt = Ether(neigh.na_reply(ns, MAC) or b"")
    assert pkt.dst == "02:00:00:00:00:99" and pkt[IPv6].dst == "2001:db8::1"
    assert (pkt[ICMPv6ND_NA].S, pkt[ICMPv6ND_NA].O, pkt[ICMPv6ND_NA].tgt) == (1, 1, "2001:db8::20")
    want = Ether(bytes(pkt))
    del want[ICMPv6ND_NA].cksum
    assert bytes(Ether(bytes(want))) == bytes(pkt)
