"""net/ra: Router Solicitations recognised strictly, Router Advertisements built with the
M/O flags, router lifetime, source link-layer address, MTU, on-link prefixes (no SLAAC),
RDNSS and DNSSL (checked with scapy's ICMPv6 layers)."""

from __future__ import annotations

import ipaddress

from scapy.layers.inet6 import (
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptDNSSL,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptRDNSS,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import Ether

from vhost_ipvlan.net import ra
from vhost_ipvlan.net.addr import eui64_link_local

MASTER = bytes.fromhex("020000000001")
GUEST = "52:54:00:00:00:11"
GUEST_LL = "fe80::5054:ff:fe00:11"


def rs(hlim: int = 255, code: int = 0) -> bytes:
    return bytes(Ether(src=GUEST, dst="33:33:00:00:00:02") / IPv6(src=GUEST_LL, dst="ff02::2", hlim=hlim)
                 / ICMPv6ND_RS(code=code))


def test_router_solicit_is_recognised_strictly() -> None:
    assert ra.is_router_solicit(rs())
    assert not ra.is_router_solicit(rs(hlim=64))  # RFC 4861 §6.1.1: not from on the link
    assert not ra.is_router_solicit(rs(code=1))
    assert not ra.is_router_solicit(rs()[:60])
    assert not ra.is_router_advert(rs())


def test_advert_carries_flags_lifetime_mtu_prefix_and_dns() -> None:
    adv = ra.Advert(eui64_link_local(MASTER), managed=True, other=True, lifetime=1800, mtu=1400,
                    prefixes=((ipaddress.IPv6Address("fd00::11").packed, 64),
                              (ipaddress.IPv6Address("fd00::12").packed, 64)),  # one option per prefix
                    dns=(ipaddress.IPv6Address("fd00::53").packed,), search=("example.org", "lab.example"))
    frame = ra.advert(bytes.fromhex("525400000011"), ipaddress.IPv6Address(GUEST_LL).packed, MASTER, adv)
    assert ra.is_router_advert(frame)
    pkt = Ether(frame)
    again = Ether(frame)
    del again[ICMPv6ND_RA].cksum
    assert Ether(bytes(again))[ICMPv6ND_RA].cksum == pkt[ICMPv6ND_RA].cksum
    assert (pkt.src, pkt.dst, pkt[IPv6].src, pkt[IPv6].dst, pkt[IPv6].hlim) == \
        ("02:00:00:00:00:01", GUEST, "fe80::ff:fe00:1", GUEST_LL, 255)
    r = pkt[ICMPv6ND_RA]
    assert (r.M, r.O, r.routerlifetime, r.chlim) == (1, 1, 1800, 64)
    assert pkt[ICMPv6NDOptSrcLLAddr].lladdr == "02:00:00:00:00:01"
    assert pkt[ICMPv6NDOptMTU].mtu == 1400
    prefixes = [(p.prefix, p.prefixlen, p.L, p.A) for p in pkt.iterpayloads() if isinstance(p, ICMPv6NDOptPrefixInfo)]
    assert prefixes == [("fd00::", 64, 1, 0)]
    assert pkt[ICMPv6NDOptRDNSS].dns == ["fd00::53"] and pkt[ICMPv6NDOptRDNSS].lifetime == ra.DNS_LIFETIME
    assert pkt[ICMPv6NDOptDNSSL].searchlist == ["example.org.", "lab.example."]


def test_a_stateless_advert_has_no_dns_options_when_there_is_nothing_to_say() -> None:
    adv = ra.Advert(eui64_link_local(MASTER), managed=False, other=False, lifetime=0, mtu=1500)
    pkt = Ether(ra.advert(ra.ALL_NODES_MAC, ra.ALL_NODES, MASTER, adv))
    assert (pkt[ICMPv6ND_RA].M, pkt[ICMPv6ND_RA].O, pkt[ICMPv6ND_RA].routerlifetime) == (0, 0, 0)
    assert not pkt.haslayer(ICMPv6NDOptRDNSS) and not pkt.haslayer(ICMPv6NDOptDNSSL)
    assert not pkt.haslayer(ICMPv6NDOptPrefixInfo) and pkt[IPv6].dst == "ff02::1"
