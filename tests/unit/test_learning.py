"""Address learning (``switch.source``): the state machine, conflicts and limits; NA targets."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet

from vhost_ipvlan import config as cfg
from vhost_ipvlan.errors import ConfigError
from vhost_ipvlan.net.addr import parse_mac
from vhost_ipvlan.switch import DROP, FLOOD, TO_SLAVE, TO_UPLINK, DropReason, Port, Slave
from vhost_ipvlan.switch.port import learned_addresses
from vhost_ipvlan.switch.source import MAX_LEARNED_V4, MAX_LEARNED_V6

MASTER = "02:00:00:00:00:01"
OUTSIDE = "02:00:00:00:00:fe"
A = "52:54:00:00:00:11"  # configured slave: 10.0.0.11, fd00::11
L = "52:54:00:00:00:21"  # learning slave
M = "52:54:00:00:00:22"  # a second learning slave
BCAST = "ff:ff:ff:ff:ff:ff"
ALL_NODES = "33:33:00:00:00:01"


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


class Lab:
    def __init__(self, mode: str = "l2") -> None:
        self.port = Port("mst0", parse_mac(MASTER), mode)
        self.port.master_addresses = frozenset({ip("10.0.0.1"), ip("fd00::1")})
        self.port.set_master_prefixes([(ip("10.0.0.1"), 24), (ip("fd00::1"), 64), (ip("2001:db8::1"), 64)])
        self.learned: list[tuple[str, bytes]] = []
        self.port.on_learn = lambda s, a: self.learned.append((s.name, a))
        self.a = self.port.add_slave("a", ["10.0.0.11", "fd00::11"], mac=A)
        self.l = self.port.add_slave("l", mac=L, learn=True)
        self.m = self.port.add_slave("m", mac=M, learn=True)
        for s in (self.a, self.l, self.m):
            s.up = True

    def send(self, slave: Slave, pkt: Packet) -> tuple[int, object]:
        return self.port.from_guest(slave, memoryview(bytearray(bytes(pkt))))

    def wire(self, pkt: Packet) -> tuple[int, object]:
        return self.port.from_uplink(memoryview(bytearray(bytes(pkt))))


def garp(mac: str, addr: str) -> Packet:
    return Ether(src=mac, dst=BCAST) / ARP(op=1, hwsrc=mac, psrc=addr, pdst=addr, hwdst="00:00:00:00:00:00")


def arp_probe(mac: str, addr: str) -> Packet:
    return Ether(src=mac, dst=BCAST) / ARP(op=1, hwsrc=mac, psrc="0.0.0.0", pdst=addr)


def dad(mac: str, addr: str) -> Packet:
    return Ether(src=mac, dst="33:33:ff:00:00:01") / IPv6(src="::", dst="ff02::1:ff00:1") / ICMPv6ND_NS(tgt=addr)


def una(mac: str, src: str, target: str) -> Packet:
    """An unsolicited NA with the override flag (what ``ndisc_notify`` and spoofers send)."""
    return (Ether(src=mac, dst=ALL_NODES) / IPv6(src=src, dst="ff02::1")
            / ICMPv6ND_NA(tgt=target, R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=mac))


@pytest.fixture
def lab() -> Lab:
    return Lab()


def test_garp_teaches_the_address_then_the_wire_reaches_it(lab: Lab) -> None:
    assert lab.send(lab.l, garp(L, "10.0.0.50")) == (FLOOD, None)
    assert lab.port.owner("10.0.0.50") is lab.l
    assert lab.learned == [("l", ip("10.0.0.50"))]
    assert learned_addresses(lab.l) == ["10.0.0.50"]
    assert "10.0.0.50" in lab.port.consumed_addresses()[0]
    assert lab.l.owned() == {ip("10.0.0.50")}
    verdict = lab.wire(Ether(src=OUTSIDE, dst=MASTER) / IP(src="10.0.0.99", dst="10.0.0.50") / ICMP())
    assert verdict == (TO_SLAVE, lab.l)
    # the learned address is the slave's from now on: traffic from it passes
    assert lab.send(lab.l, Ether(src=L, dst=OUTSIDE) / IP(src="10.0.0.50", dst="10.0.0.99") / ICMP())[0] == TO_UPLINK


def test_arp_probe_and_dad_teach_the_target(lab: Lab) -> None:
    assert lab.send(lab.l, arp_probe(L, "10.0.0.51")) == (FLOOD, None)
    assert lab.port.owner("10.0.0.51") is lab.l
    assert lab.send(lab.l, dad(L, "2001:db8::51")) == (FLOOD, None)
    assert lab.port.owner("2001:db8::51") is lab.l
    # a DAD probe for a link-local teaches nothing (link-locals are learned from use)
    lab.send(lab.l, dad(L, "fe80::1234"))
    assert lab.port.owner("fe80::1234") is None


def test_ipv6_source_and_na_target_teach(lab: Lab) -> None:
    ping = Ether(src=L, dst=OUTSIDE) / IPv6(src="2001:db8::52", dst="2001:db8::99") / ICMPv6EchoRequest()
    assert lab.send(lab.l, ping)[0] == TO_UPLINK
    assert lab.port.owner("2001:db8::52") is lab.l
    assert lab.send(lab.l, una(L, "fe80::5054:ff:fe00:21", "2001:db8::53")) == (FLOOD, None)
    assert lab.port.owner("2001:db8::53") is lab.l


def test_limits_then_locked(lab: Lab) -> None:
    assert MAX_LEARNED_V4 == 1 and MAX_LEARNED_V6 == 4
    lab.send(lab.l, garp(L, "10.0.0.50"))
    assert lab.send(lab.l, garp(L, "10.0.0.60")) == (DROP, DropReason.SRC_IP_SPOOF)
    assert lab.port.owner("10.0.0.60") is None
    for i in range(MAX_LEARNED_V6):
        lab.send(lab.l, dad(L, f"2001:db8::{i + 1}"))
    assert len(lab.l.learned_addrs) == 1 + MAX_LEARNED_V6
    ping = Ether(src=L, dst=MASTER) / IPv6(src="2001:db8::77", dst="2001:db8::99") / ICMPv6EchoRequest()
    assert lab.send(lab.l, ping) == (DROP, DropReason.SRC_IP_SPOOF)
    # a probe beyond the limit is delivered but teaches nothing
    assert lab.send(lab.l, dad(L, "2001:db8::78")) == (FLOOD, None)
    assert lab.port.owner("2001:db8::78") is None
    assert lab.l.drops[DropReason.SRC_IP_SPOOF] == 2
    # link-locals do not count against the limit
    ll = Ether(src=L, dst=MASTER) / IPv6(src="fe80::99", dst="fe80::1") / ICMPv6EchoRequest()
    assert lab.send(lab.l, ll)[0] != DROP


def test_another_slaves_address_is_refused_and_counted(lab: Lab) -> None:
    lab.send(lab.l, garp(L, "10.0.0.50"))
    assert lab.send(lab.m, garp(M, "10.0.0.50")) == (DROP, DropReason.LEARN_REFUSED)
    assert lab.send(lab.m, garp(M, "10.0.0.11")) == (DROP, DropReason.LEARN_REFUSED)
    assert lab.send(lab.m, una(M, "fe80::5054:ff:fe00:22", "fd00::11")) == (DROP, DropReason.LEARN_REFUSED)
    assert lab.m.drops[DropReason.LEARN_REFUSED] == 3
    assert lab.port.owner("10.0.0.50") is lab.l
    assert lab.port.owner("10.0.0.11") is lab.a
    assert lab.port.owner("fd00::11") is lab.a
    assert lab.m.learned_addrs == set()
    # the refusal does not lock the slave: it can still learn a free address
    assert lab.send(lab.m, garp(M, "10.0.0.70")) == (FLOOD, None)
    assert lab.port.owner("10.0.0.70") is lab.m


def test_probe_for_a_taken_address_is_delivered_not_learned(lab: Lab) -> None:
    """So that the owner answers and the guest's DAD (or ACD) sees the conflict."""
    assert lab.send(lab.m, dad(M, "fd00::11")) == (FLOOD, None)
    assert lab.send(lab.m, arp_probe(M, "10.0.0.11")) == (FLOOD, None)
    assert lab.port.owner("fd00::11") is lab.a and lab.port.owner("10.0.0.11") is lab.a
    assert lab.m.learned_addrs == set()


def test_master_addresses_are_never_learned(lab: Lab) -> None:
    assert lab.send(lab.l, garp(L, "10.0.0.1")) == (DROP, DropReason.LEARN_REFUSED)
    assert lab.send(lab.l, dad(L, "fd00::1")) == (FLOOD, None)
    ping = Ether(src=L, dst=MASTER) / IPv6(src="fd00::1", dst="fd00::99") / ICMPv6EchoRequest()
    assert lab.send(lab.l, ping) == (DROP, DropReason.LEARN_REFUSED)
    assert lab.port.owner("10.0.0.1") is None and lab.port.owner("fd00::1") is None


def test_non_learning_slave_na_for_another_address_is_spoofing(lab: Lab) -> None:
    lab.send(lab.l, garp(L, "10.0.0.50"))
    lab.send(lab.l, dad(L, "2001:db8::50"))
    # slave a (no learning) announces l's IPv6 address, and an unowned one
    assert lab.send(lab.a, una(A, "fd00::11", "2001:db8::50")) == (DROP, DropReason.SRC_IP_SPOOF)
    assert lab.send(lab.a, una(A, "fd00::11", "2001:db8::99")) == (DROP, DropReason.SRC_IP_SPOOF)
    assert lab.send(lab.a, garp(A, "10.0.0.50")) == (DROP, DropReason.SRC_IP_SPOOF)
    assert lab.a.drops[DropReason.SRC_IP_SPOOF] == 3
    assert lab.port.owner("2001:db8::50") is lab.l
    # its own NA passes, as does one for an unowned link-local
    assert lab.send(lab.a, una(A, "fd00::11", "fd00::11")) == (FLOOD, None)
    assert lab.send(lab.a, una(A, "fd00::11", "fe80::abcd")) == (FLOOD, None)
    # another slave's link-local is refused as a target
    lab.send(lab.l, Ether(src=L, dst=MASTER) / IPv6(src="fe80::77", dst="fe80::1") / ICMPv6EchoRequest())
    assert lab.send(lab.a, una(A, "fd00::11", "fe80::77")) == (DROP, DropReason.SRC_IP_SPOOF)


def test_configuration_wins_over_learning(lab: Lab) -> None:
    lab.send(lab.l, garp(L, "10.0.0.50"))
    lab.port.add_address(lab.a, "10.0.0.50")
    assert lab.port.owner("10.0.0.50") is lab.a
    assert lab.l.learned_addrs == set()
    # l lost it: it may not use it any more (and has room to learn another)
    assert lab.send(lab.l, garp(L, "10.0.0.50")) == (DROP, DropReason.LEARN_REFUSED)
    assert lab.send(lab.l, garp(L, "10.0.0.51")) == (FLOOD, None)


def test_learned_addresses_go_with_the_slave(lab: Lab) -> None:
    lab.send(lab.l, garp(L, "10.0.0.50"))
    gen = lab.port.generation
    lab.port.remove_slave(lab.l)
    assert lab.port.owner("10.0.0.50") is None and lab.port.generation > gen
    assert lab.send(lab.m, garp(M, "10.0.0.50")) == (FLOOD, None)


def test_nothing_is_learned_from_a_frame_that_fails_validation(lab: Lab) -> None:
    bad_mac = Ether(src=L, dst=BCAST) / ARP(op=1, hwsrc=M, psrc="10.0.0.50", pdst="10.0.0.50")
    assert lab.send(lab.l, bad_mac) == (DROP, DropReason.SRC_MAC_SPOOF)
    assert lab.port.owner("10.0.0.50") is None and lab.learned == []


def test_solicited_node_multicast_follows_learned_addresses(lab: Lab) -> None:
    lab.send(lab.l, Ether(src=L, dst="33:33:00:00:00:16") / IPv6(src="::", dst="ff02::16"))  # MLD-ish: snooped
    lab.l.mcast.snooped_v6 = True
    assert not lab.l.mcast.accepts(parse_mac("33:33:ff:00:00:50"))
    lab.send(lab.l, dad(L, "2001:db8::50"))
    assert lab.l.mcast.accepts(parse_mac("33:33:ff:00:00:50"))


def test_learning_is_l2_only() -> None:
    port = Port("mst0", parse_mac(MASTER), "l3")
    with pytest.raises(ConfigError, match="only implemented for mode 'l2'"):
        port.add_slave("x", learn=True)
    data = {"port": [{"master": "m0", "mode": "l3", "slave": [{"name": "x", "socket": "/x", "learn": True}]}]}
    with pytest.raises(ConfigError, match=r"^port\[0\]\.slave\[0\]\.learn: address learning is only implemented"):
        cfg.parse(data)


def test_config_learn_key_round_trips() -> None:
    data = {"port": [{"master": "m0", "slave": [{"name": "x", "socket": "/x", "learn": True},
                                                 {"name": "y", "socket": "/y"}]}]}
    config = cfg.parse(data)
    assert [s.learn for _, s in config.slaves()] == [True, False]
    assert cfg.parse(cfg.to_data(config)) == config
    assert "learn" not in cfg.slave_table(config.ports[0].slaves[1])
    with pytest.raises(ConfigError, match=r"^port\[0\]\.slave\[0\]\.learn: expected true or false"):
        cfg.parse({"port": [{"master": "m0", "slave": [{"name": "x", "socket": "/x", "learn": "yes"}]}]})


def test_state_file_keeps_the_learn_key_as_a_boolean() -> None:
    import tomllib

    from vhost_ipvlan.control import state

    config = cfg.parse({"port": [{"master": "m0", "slave": [{"name": "x", "socket": "/x", "learn": True}]}]})
    text = state.dumps(config)
    assert "learn = true\n" in text
    assert cfg.parse(tomllib.loads(text)) == config


def test_the_masters_link_local_cannot_be_squatted(lab: Lab) -> None:
    lab.port.master_addresses = lab.port.master_addresses | {ip("fe80::1")}
    ping = Ether(src=A, dst=MASTER) / IPv6(src="fe80::1", dst="fe80::2") / ICMPv6EchoRequest()
    assert lab.send(lab.a, ping) == (DROP, DropReason.SRC_IP_SPOOF)
    assert lab.send(lab.a, una(A, "fd00::11", "fe80::1")) == (DROP, DropReason.SRC_IP_SPOOF)
    assert lab.port.owner("fe80::1") is None
