"""Per-slave multicast filters: IGMP/MLD snooping, the always-in groups, the grace
period, the QMP hook, and the policy feeding the filter."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.igmp import IGMP
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import (
    ICMPv6MLDMultAddrRec,
    ICMPv6MLDone,
    ICMPv6MLReport,
    ICMPv6MLReport2,
    IPv6,
    IPv6ExtHdrHopByHop,
    RouterAlert,
)
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from vhost_ipvlan.net.addr import parse_mac
from vhost_ipvlan.switch import FLOOD, Port
from vhost_ipvlan.switch.mcast import GroupFilter, group_mac

G1 = "52:54:00:00:00:11"


def mac(text: str) -> bytes:
    return parse_mac(text)


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def frame(pkt: Packet) -> memoryview:
    return memoryview(bytearray(bytes(pkt)))


def igmp2(kind: int, group: str) -> Packet:
    dst = "224.0.0.2" if kind == 0x17 else group
    return (Ether(src=G1, dst="01:00:5e:00:00:16") /
            IP(src="10.0.0.11", dst=dst, ttl=1, options=b"\x94\x04\x00\x00") / IGMP(type=kind, gaddr=group))


def igmp3(*records: tuple[int, str, list[str]]) -> Packet:
    """An IGMPv3 report (RFC 3376 §4.2), built by hand: type 0x22, checksum, record count, records."""
    body = b"".join(bytes([t, 0]) + len(srcs).to_bytes(2, "big") + ip(g) + b"".join(ip(a) for a in srcs)
                    for t, g, srcs in records)
    report = b"\x22\x00\x00\x00\x00\x00" + len(records).to_bytes(2, "big") + body
    return (Ether(src=G1, dst="01:00:5e:00:00:16") /
            IP(src="10.0.0.11", dst="224.0.0.22", ttl=1, proto=2, options=b"\x94\x04\x00\x00") / Raw(report))


def mld(pkt: Packet) -> Packet:
    return (Ether(src=G1, dst="33:33:00:00:00:16") /
            IPv6(src="fe80::1", dst="ff02::16", hlim=1) / IPv6ExtHdrHopByHop(options=[RouterAlert()]) / pkt)


def mld2(*records: tuple[int, str, list[str]]) -> Packet:
    recs = [ICMPv6MLDMultAddrRec(rtype=t, dst=g, sources=s) for t, g, s in records]
    return mld(ICMPv6MLReport2(records=recs))


def test_group_macs() -> None:
    assert group_mac(ip("239.129.1.2")) == mac("01:00:5e:01:01:02")  # the top bit of byte 1 is lost
    assert group_mac(ip("ff05::1:3")) == mac("33:33:00:01:00:03")


def test_unfiltered_until_the_first_report_per_family() -> None:
    f = GroupFilter(set(), set())
    assert f.accepts(mac("01:00:5e:01:01:01")) and f.accepts(mac("33:33:00:00:00:fb"))
    assert f.snoop(frame(igmp2(0x16, "239.1.1.1")))
    assert f.accepts(mac("01:00:5e:01:01:01"))
    assert not f.accepts(mac("01:00:5e:02:02:02"))
    assert f.accepts(mac("33:33:00:00:00:fb"))  # no MLD yet: IPv6 still unfiltered
    assert f.accepts(mac("01:80:c2:00:00:0e"))  # non-IP multicast: nothing to snoop, passes


def test_always_in_groups() -> None:
    configured, learned = {ip("fd00::11"), ip("10.0.0.11")}, {ip("fe80::5054:ff:fe00:22")}
    f = GroupFilter(configured, learned)
    f.snoop(frame(igmp2(0x16, "239.1.1.1")))
    f.snoop(frame(mld(ICMPv6MLReport(mladdr="ff05::1:3"))))
    assert f.accepts(mac("ff:ff:ff:ff:ff:ff"))
    assert f.accepts(mac("01:00:5e:00:00:01"))  # 224.0.0.1
    assert f.accepts(mac("33:33:00:00:00:01"))  # ff02::1
    assert f.accepts(mac("33:33:ff:00:00:11"))  # solicited-node of fd00::11 (configured)
    assert f.accepts(mac("33:33:ff:00:00:22"))  # ... of the learned link-local
    assert not f.accepts(mac("33:33:ff:00:00:99"))
    configured.add(ip("fd00::99"))  # read live: a new address needs no re-sync
    assert f.accepts(mac("33:33:ff:00:00:99"))
    assert not f.accepts(mac("33:33:00:00:00:fb"))  # not joined


def test_igmpv2_join_and_leave() -> None:
    f = GroupFilter(set())
    f.snoop(frame(igmp2(0x16, "239.1.1.1")))
    f.snoop(frame(igmp2(0x16, "239.2.2.2")))
    assert f.groups == {ip("239.1.1.1"), ip("239.2.2.2")}
    assert f.snoop(frame(igmp2(0x17, "239.1.1.1")))
    assert f.groups == {ip("239.2.2.2")}
    assert not f.accepts(mac("01:00:5e:01:01:01")) and f.accepts(mac("01:00:5e:02:02:02"))


def test_igmpv1_report() -> None:
    f = GroupFilter(set())
    assert f.snoop(frame(igmp2(0x12, "239.3.3.3")))
    assert f.groups == {ip("239.3.3.3")}


def test_igmp_query_is_not_a_report() -> None:
    f = GroupFilter(set())
    assert not f.snoop(frame(igmp2(0x11, "0.0.0.0")))
    assert not f.snoop(frame(Ether(src=G1, dst="01:00:5e:01:01:01") / IP(src="10.0.0.11", dst="239.1.1.1") / UDP()))
    assert not f.snooped_v4


def test_igmpv3_records() -> None:
    f = GroupFilter(set())
    f.snoop(frame(igmp3((4, "239.1.1.1", []), (2, "239.2.2.2", []), (5, "239.3.3.3", ["10.9.9.9"]),
                        (1, "239.4.4.4", ["10.9.9.9"]))))
    assert f.groups == {ip(g) for g in ("239.1.1.1", "239.2.2.2", "239.3.3.3", "239.4.4.4")}
    f.snoop(frame(igmp3((3, "239.1.1.1", []), (6, "239.2.2.2", ["10.9.9.9"]))))  # leave; block changes nothing
    assert f.groups == {ip(g) for g in ("239.2.2.2", "239.3.3.3", "239.4.4.4")}


def test_mldv1_report_and_done() -> None:
    f = GroupFilter(set())
    assert f.snoop(frame(mld(ICMPv6MLReport(mladdr="ff05::1:3"))))
    assert f.accepts(mac("33:33:00:01:00:03")) and not f.accepts(mac("33:33:00:00:00:fb"))
    assert f.snoop(frame(mld(ICMPv6MLDone(mladdr="ff05::1:3"))))
    assert not f.accepts(mac("33:33:00:01:00:03"))


def test_mldv2_records() -> None:
    f = GroupFilter(set())
    assert f.snoop(frame(mld2((4, "ff02::fb", []), (4, "ff02::1:ff00:11", []), (3, "ff05::9", []))))
    assert f.groups == {ip("ff02::fb"), ip("ff02::1:ff00:11")}
    f.snoop(frame(mld2((3, "ff02::fb", []))))
    assert f.groups == {ip("ff02::1:ff00:11")}


def test_explicit_filter_from_qmp() -> None:
    f = GroupFilter(set())
    f.snoop(frame(igmp2(0x16, "239.1.1.1")))
    f.set_rx_filter([mac("01:00:5e:02:02:02")])
    assert f.accepts(mac("01:00:5e:02:02:02")) and not f.accepts(mac("01:00:5e:01:01:01"))
    assert not f.accepts(mac("01:80:c2:00:00:0e")) and f.accepts(mac("ff:ff:ff:ff:ff:ff"))
    f.set_rx_filter([], allmulti=True)
    assert f.accepts(mac("01:00:5e:07:07:07")) and f.accepts(mac("33:33:00:00:00:99"))
    f.clear_rx_filter()
    assert f.accepts(mac("01:00:5e:01:01:01")) and not f.accepts(mac("01:00:5e:02:02:02"))
    assert f.describe()["groups"] == ["239.1.1.1"]


def test_policy_feeds_the_senders_filter() -> None:
    port = Port("mst0", mac("02:00:00:00:00:01"))
    s1 = port.add_slave("s1", ["10.0.0.11", "fe80::1"], mac=G1)
    assert port.from_guest(s1, frame(igmp2(0x16, "239.1.1.1"))) == (FLOOD, None)
    assert port.from_guest(s1, frame(mld(ICMPv6MLReport(mladdr="ff05::1:3")))) == (FLOOD, None)
    assert s1.mcast.groups == {ip("239.1.1.1"), ip("ff05::1:3")}


def test_spoofed_report_teaches_nothing() -> None:
    port = Port("mst0", mac("02:00:00:00:00:01"))
    s1 = port.add_slave("s1", ["10.0.0.11"], mac=G1)
    spoofed = igmp2(0x16, "239.1.1.1")
    spoofed[IP].src = "10.0.0.99"
    port.from_guest(s1, frame(spoofed))
    assert s1.mcast.groups == set() and not s1.mcast.snooped_v4


@given(st.binary(max_size=200))
def test_snoop_never_raises(data: bytes) -> None:
    f = GroupFilter(set())
    for head in (bytes(Ether(src=G1, dst="01:00:5e:00:00:16", type=0x0800)),
                 bytes(Ether(src=G1, dst="33:33:00:00:00:16", type=0x86DD))):
        f.snoop(memoryview(bytearray(head + data)))
    b = bytearray(bytes(igmp3((4, "239.1.1.1", []))))
    b[-8:-6] = b"\xff\xff"  # a lying source count
    f.snoop(memoryview(b))
    m = bytearray(bytes(mld2((4, "ff02::fb", ["fe80::9"]))))
    for cut in range(len(m)):
        f.snoop(memoryview(m[:cut]))
