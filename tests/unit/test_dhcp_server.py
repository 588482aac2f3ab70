"""net/dhcp: the per-guest DHCPv4 server core, with scapy-built client messages
(a client-id client like systemd-networkd, a chaddr client like dhclient/udhcpc)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from vhost_ipvlan.net import dhcp
from vhost_ipvlan.net.dhcp import Lease, Network, Outcome

GUEST = "52:54:00:00:00:11"
MASTER = bytes.fromhex("020000000001")
ADDR = ipaddress.IPv4Address("192.0.2.11").packed
OTHER = "192.0.2.12"  # another guest's
LEASE = Lease(((ADDR, 24),), "vm1")
NET = Network(server_id=bytes([192, 0, 2, 1]), router=bytes([192, 0, 2, 254]), mtu=1500,
              dns=(bytes([192, 0, 2, 53]),), search=("example.org", "lab.example.org"))
CLIENT_ID = b"\xff\x00\x00\x00\x01\x00\x04" + bytes(range(16))  # RFC 4361: IAID + DUID


def client(kind: str, *, src: str = "0.0.0.0", dst: str = "255.255.255.255", ciaddr: str = "0.0.0.0",
           flags: int = 0, options: tuple[tuple[str, object], ...] = ()) -> bytes:
    opts: list[object] = [("message-type", kind), *options, "end"]
    pkt: Packet = (Ether(src=GUEST, dst="ff:ff:ff:ff:ff:ff") / IP(src=src, dst=dst) / UDP(sport=68, dport=67)
                   / BOOTP(chaddr=bytes.fromhex(GUEST.replace(":", "")), xid=0x1234, flags=flags, ciaddr=ciaddr)
                   / DHCP(options=opts))
    return bytes(pkt)


def opts_of(reply: bytes) -> dict[str, object]:
    pkt = Ether(reply)
    out: dict[str, object] = {}
    for o in pkt[DHCP].options:
        if isinstance(o, tuple):
            out[o[0]] = o[1] if len(o) == 2 else o[1:]
    return out


def check_wire(reply: bytes) -> Packet:
    """The reply's IP and UDP checksums are right (scapy recomputes them)."""
    pkt = Ether(reply)
    again = Ether(reply)
    del again[IP].chksum
    del again[UDP].chksum
    again = Ether(bytes(again))
    assert pkt[IP].chksum == again[IP].chksum
    assert pkt[UDP].chksum == again[UDP].chksum
    assert (pkt[UDP].sport, pkt[UDP].dport) == (67, 68)
    assert pkt.src == "02:00:00:00:00:01"
    return pkt


def test_is_client_message() -> None:
    assert dhcp.is_client_message(client("discover"))
    reply = dhcp.answer(client("discover"), LEASE, NET, MASTER)[1]
    assert reply is not None and not dhcp.is_client_message(reply)
    frag = Ether(src=GUEST) / IP(src="0.0.0.0", dst="255.255.255.255", flags="MF") / UDP(sport=68, dport=67)
    assert not dhcp.is_client_message(bytes(frag))
    assert not dhcp.is_client_message(client("discover")[:30])


@pytest.mark.parametrize("client_id", [None, CLIENT_ID], ids=["chaddr", "client-id"])
def test_discover_request_ack(client_id: bytes | None) -> None:
    extra: tuple[tuple[str, object], ...] = (("client_id", client_id),) if client_id else ()
    outcome, offer = dhcp.answer(client("discover", options=extra), LEASE, NET, MASTER)
    assert outcome == Outcome.OFFERED and offer is not None
    pkt = check_wire(offer)
    assert pkt[BOOTP].op == 2 and pkt[BOOTP].xid == 0x1234 and pkt[BOOTP].yiaddr == "192.0.2.11"
    assert pkt[BOOTP].chaddr[:6] == bytes.fromhex(GUEST.replace(":", ""))
    assert (pkt[IP].src, pkt[IP].dst, pkt.dst) == ("192.0.2.1", "192.0.2.11", GUEST)  # unicast
    o = opts_of(offer)
    assert o["message-type"] == 2 and o["server_id"] == "192.0.2.1"
    assert o["subnet_mask"] == "255.255.255.0" and o["router"] == "192.0.2.254"
    assert o["lease_time"] == dhcp.LEASE_TIME and o["interface-mtu"] == 1500
    assert o["name_server"] == "192.0.2.53" and o["hostname"] == b"vm1"
    assert o["domain"] == b"example.org"
    assert "classless_static_routes" not in o  # the router is on the subnet
    assert o.get("client_id") == client_id
    request = client("request", options=(*extra, ("server_id", "192.0.2.1"), ("requested_addr", "192.0.2.11")))
    outcome, ack = dhcp.answer(request, LEASE, NET, MASTER)
    assert outcome == Outcome.ACKED and ack is not None
    assert opts_of(ack)["message-type"] == 5 and Ether(ack)[BOOTP].yiaddr == "192.0.2.11"


def test_broadcast_flag_gets_a_broadcast_reply() -> None:
    reply = dhcp.answer(client("discover", flags=0x8000), LEASE, NET, MASTER)[1]
    assert reply is not None
    pkt = check_wire(reply)
    assert (pkt[IP].dst, pkt.dst) == ("255.255.255.255", "ff:ff:ff:ff:ff:ff")


def test_request_for_another_guests_address_is_naked() -> None:
    for request in (client("request", options=(("server_id", "192.0.2.1"), ("requested_addr", OTHER))),
                    client("request", options=(("requested_addr", OTHER),)),  # init-reboot
                    client("request", src=OTHER, dst="192.0.2.1", ciaddr=OTHER)):  # renewing
        outcome, nak = dhcp.answer(request, LEASE, NET, MASTER)
        assert outcome == Outcome.NAKED and nak is not None
        pkt = check_wire(nak)
        assert opts_of(nak)["message-type"] == 6 and pkt[BOOTP].yiaddr == "0.0.0.0"
        assert pkt[IP].dst == "255.255.255.255"


def test_renewing_request_is_unicast_to_ciaddr() -> None:
    outcome, ack = dhcp.answer(client("request", src="192.0.2.11", dst="192.0.2.1", ciaddr="192.0.2.11"),
                               LEASE, NET, MASTER)
    assert outcome == Outcome.ACKED and ack is not None
    pkt = check_wire(ack)
    assert (pkt[IP].dst, pkt.dst, pkt[BOOTP].ciaddr) == ("192.0.2.11", GUEST, "192.0.2.11")


def test_request_to_another_server_is_ignored() -> None:
    request = client("request", options=(("server_id", "198.51.100.1"), ("requested_addr", "192.0.2.11")))
    assert dhcp.answer(request, LEASE, NET, MASTER) == (Outcome.IGNORED, None)


def test_inform_release_decline() -> None:
    outcome, ack = dhcp.answer(client("inform", src="192.0.2.11", ciaddr="192.0.2.11"), LEASE, NET, MASTER)
    assert outcome == Outcome.INFORMED and ack is not None
    o = opts_of(ack)
    assert o["message-type"] == 5 and "lease_time" not in o and Ether(ack)[BOOTP].yiaddr == "0.0.0.0"
    assert dhcp.answer(client("release", src="192.0.2.11", ciaddr="192.0.2.11"), LEASE, NET, MASTER) == \
        (Outcome.RELEASED, None)
    assert dhcp.answer(client("decline", options=(("requested_addr", "192.0.2.11"),)), LEASE, NET, MASTER) == \
        (Outcome.DECLINED, None)


def test_off_subnet_router_gets_classless_routes() -> None:
    lease = Lease(((ADDR, 32),), "vm1")  # l3: a /32, the daemon as its router
    reply = dhcp.answer(client("discover"), lease, NET, MASTER)[1]
    assert reply is not None
    raw = bytes(Ether(reply)[DHCP])
    route = bytes([121, 14, 32, 192, 0, 2, 254, 0, 0, 0, 0, 0, 192, 0, 2, 254])
    assert route in raw
    assert opts_of(reply)["subnet_mask"] == "255.255.255.255"


def test_no_router_no_option() -> None:
    net = Network(server_id=NET.server_id, router=None, mtu=9000)
    o = opts_of(dhcp.answer(client("discover"), LEASE, net, MASTER)[1] or b"")
    assert "router" not in o and "name_server" not in o and o["interface-mtu"] == 9000


def test_search_list_is_bounded() -> None:
    long = (*(f"{'a' * 60}.example{i}.org" for i in range(10)), "bad..name", "x" * 64 + ".org")
    encoded = dhcp.encode_search(long)
    assert len(encoded) <= 255 and encoded.count(b"\x00") == 3  # three whole domains fit
    net = Network(server_id=NET.server_id, router=None, mtu=1500, search=long, dns=(bytes(4),) * 50)
    reply = dhcp.answer(client("discover"), LEASE, net, MASTER)[1]
    assert reply is not None
    assert len(Ether(reply)[DHCP].options[0]) > 0 and check_wire(reply)


@pytest.mark.parametrize("frame", [
    client("discover")[:-10] + b"\x35\x05\x01",  # option runs past the end
    bytes(Ether(src=GUEST) / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) / Raw(b"\x01" * 50)),
    bytes(Ether(src=GUEST) / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67)
          / BOOTP(op=2) / DHCP(options=[("message-type", "discover"), "end"])),  # a BOOTREPLY
    bytes(Ether(src=GUEST) / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67)
          / BOOTP() / DHCP(options=[("message-type", "offer"), "end"])),  # a server's type
    bytes(Ether(src=GUEST) / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67)
          / BOOTP() / DHCP(options=["end"])),  # no message type
    bytes(Ether(src=GUEST) / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67)
          / BOOTP() / Raw(dhcp.MAGIC + b"\x35\x01\x03\x32\x02\x01\x02\xff")),  # a 2-byte requested address
    bytes(Ether(src=GUEST) / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67, len=4)
          / BOOTP() / DHCP(options=[("message-type", "discover"), "end"])),  # UDP length < header
], ids=["option-past-end", "no-bootp", "bootreply", "server-type", "no-type", "bad-requested", "udp-len"])
def test_malformed_is_counted_never_raised(frame: bytes) -> None:
    assert dhcp.answer(frame, LEASE, NET, MASTER) == (Outcome.MALFORMED, None)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 320))
def test_hostile_bytes_never_raise(noise: bytes, cut: int) -> None:
    base = client("request", options=(("requested_addr", "192.0.2.11"),))
    frame = base[:cut] + noise
    outcome, reply = dhcp.answer(frame, LEASE, NET, MASTER)
    assert (reply is None) == (outcome not in (Outcome.OFFERED, Outcome.ACKED, Outcome.NAKED, Outcome.INFORMED))
    body = base[:42 + 240] + noise  # hostile options after a valid header
    dhcp.answer(body, LEASE, NET, MASTER)


# -- the settings: slave dhcp, [daemon] dns / dns_search, CLI, resolv.conf ----------------


def test_dhcp_config_keys_round_trip() -> None:
    import tomllib

    from vhost_ipvlan import config as cfg
    from vhost_ipvlan.control import server, state
    from vhost_ipvlan.errors import ConfigError

    data = {"daemon": {"dns": ["192.0.2.53"], "dns_search": ["example.org", "lab.example.org."]},
            "port": [{"master": "m0", "slave": [{"name": "x", "socket": "/x", "dhcp": False},
                                                {"name": "y", "socket": "/y"}]}]}
    config = cfg.parse(data)
    assert [s.dhcp for _, s in config.slaves()] == [False, True]
    assert config.daemon.dns == ("192.0.2.53",) and config.daemon.dns_search == ("example.org", "lab.example.org.")
    assert cfg.parse(cfg.to_data(config)) == config
    assert "dhcp" not in cfg.slave_table(config.ports[0].slaves[1])
    text = state.dumps(config)
    assert "dhcp = false\n" in text and cfg.parse(tomllib.loads(text)) == config
    assert "dhcp" in server.SLAVE_KEYS
    for bad, match in (({"dhcp": "yes"}, r"^port\[0\]\.slave\[0\]\.dhcp: expected true or false"),):
        with pytest.raises(ConfigError, match=match):
            cfg.parse({"port": [{"master": "m0", "slave": [{"name": "x", "socket": "/x", **bad}]}]})
    for daemon, match in (({"dns": ["dns.example"]}, r"^daemon\.dns\[0\]: 'dns.example' is not an IPv4 or IPv6"),
                          ({"dns": "192.0.2.53"}, r"^daemon\.dns: expected a list"),
                          ({"dns": ["192.0.2.1"] * 9}, r"^daemon\.dns: at most 8 servers of IPv4"),
                          ({"dns_search": ["bad..name"]}, r"^daemon\.dns_search\[0\]: 'bad..name' is not a domain")):
        with pytest.raises(ConfigError, match=match):
            cfg.parse({"daemon": daemon})


def test_dhcp_cli_flags() -> None:
    from vhost_ipvlan.cli import build_parser
    from vhost_ipvlan.ctl import request

    def req(*argv: str) -> tuple[str, dict[str, object]]:
        return request(build_parser().parse_args(["slave", *argv]))

    assert req("change", "a", "--no-dhcp") == ("slave.change", {"name": "a", "dhcp": False})
    assert req("change", "a", "--dhcp") == ("slave.change", {"name": "a", "dhcp": True})


def test_resolv_conf(tmp_path: object) -> None:
    from pathlib import Path

    from vhost_ipvlan.config import DaemonConfig
    from vhost_ipvlan.daemon import resolv

    assert isinstance(tmp_path, Path)
    conf, upstream = tmp_path / "resolv.conf", tmp_path / "upstream.conf"
    conf.write_text("# generated\nnameserver 127.0.0.53\nnameserver fd00::53\nnameserver 192.0.2.53 # lab\n"
                    "nameserver fe80::1\ndomain old.example\nsearch example.org lab.example.org\noptions edns0\n")
    ip = ipaddress.IPv4Address
    # IPv4 (DHCPv4) then IPv6 (DHCPv6, RAs); a link-local server has no zone to give: left out
    assert resolv.dns(DaemonConfig(), conf, upstream) == \
        ((ip("192.0.2.53").packed, ipaddress.IPv6Address("fd00::53").packed), ("example.org", "lab.example.org"))
    conf.write_text("nameserver 127.0.0.53\n")  # systemd-resolved: its upstream servers instead
    upstream.write_text("nameserver 198.51.100.53\n")
    assert resolv.dns(DaemonConfig(), conf, upstream) == ((ip("198.51.100.53").packed,), ())
    assert resolv.dns(DaemonConfig(dns=("203.0.113.1",), dns_search=()), conf, upstream) == \
        ((ip("203.0.113.1").packed,), ())
    assert resolv.dns(DaemonConfig(), tmp_path / "missing", tmp_path / "missing2") == ((), ())


def test_dhcp_libvirt_attribute() -> None:
    from tests.unit.test_libvirt_domain import SOCKDIR, domain, meta, nic, vi
    from vhost_ipvlan.errors import DomainError
    from vhost_ipvlan.libvirt.domain import slave_requests

    [r] = slave_requests(domain(nic(), meta(vi(extra=" dhcp='no'"))), SOCKDIR)
    assert r.dhcp is False and r.params()["dhcp"] is False
    [r] = slave_requests(domain(nic(), meta(vi())), SOCKDIR)
    assert r.params()["dhcp"] is True
    assert r.params()["hostname"] == r.domain  # the domain's name: a DNS label
    with pytest.raises(DomainError, match="dhcp 'maybe' is not yes or no"):
        slave_requests(domain(nic(), meta(vi(extra=" dhcp='maybe'"))), SOCKDIR)


def test_hostname_setting() -> None:
    from pathlib import Path

    from vhost_ipvlan import config as cfg
    from vhost_ipvlan.cli import build_parser
    from vhost_ipvlan.ctl import request
    from vhost_ipvlan.errors import ConfigError

    sc = cfg.parse_slave("params", {"name": "x", "socket": "/x", "addresses": ["10.0.0.5/24"], "hostname": "web-1"})
    assert sc.hostname == "web-1" and cfg.slave_table(sc)["hostname"] == "web-1"
    lease = cfg.dhcp_lease(sc)
    assert lease is not None and lease.hostname == "web-1"
    lease = cfg.dhcp_lease(cfg.parse_slave("params", {"name": "x", "socket": "/x", "addresses": ["10.0.0.5/24"]}))
    assert lease is not None and lease.hostname == "x"
    for bad in ("-web", "a.b", "x" * 64, ""):
        with pytest.raises(ConfigError, match=r"^params\.hostname: "):
            cfg.parse_slave("params", {"name": "x", "socket": "/x", "hostname": bad})
    args = build_parser().parse_args(["slave", "change", "a", "--hostname", "web"])
    assert request(args) == ("slave.change", {"name": "a", "hostname": "web"})
    args = build_parser().parse_args(["slave", "change", "a", "--no-hostname"])
    assert request(args) == ("slave.change", {"name": "a", "hostname": None})
    assert Path("/x") == sc.socket
