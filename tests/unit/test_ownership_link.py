"""The daemon's view of a master's link for learning (``daemon.ownership``, ``daemon.hostlink``):
prefixes from addresses and connected routes, gateways and neighbours in use, and no host
route for a learned address off the master's link. netlink is faked."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest

from vhost_ipvlan.daemon import ownership
from vhost_ipvlan.daemon.hostlink import HostLink
from vhost_ipvlan.daemon.ownership import Ownership
from vhost_ipvlan.net.addr import parse_mac
from vhost_ipvlan.switch import Port


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


class Msg:
    def __init__(self, attrs: dict[str, object], **fields: object) -> None:
        self.attrs, self.fields = attrs, fields

    def __getitem__(self, key: str) -> object:
        return self.fields[key]

    def get_attr(self, name: str) -> object:
        return self.attrs.get(name)


class FakeRtnl:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.addrs = [Msg({"IFA_ADDRESS": "192.0.2.2"}, prefixlen=24)]
        self.routes = {
            2: [Msg({"RTA_DST": "198.51.100.0"}, type=1, dst_len=24),  # connected, no address
                Msg({"RTA_GATEWAY": "192.0.2.1"}, type=1, dst_len=0),  # the default route
                Msg({"RTA_DST": "203.0.113.0", "RTA_GATEWAY": "192.0.2.9"}, type=1, dst_len=24),
                Msg({"RTA_DST": "192.0.2.255"}, type=3, dst_len=32)],  # broadcast (local table)
            10: [Msg({"RTA_DST": "2001:db8::"}, type=1, dst_len=64),
                 Msg({"RTA_GATEWAY": "fe80::1"}, type=1, dst_len=0)],
        }
        self.neighbours = [Msg({"NDA_DST": "192.0.2.7", "NDA_LLADDR": "02:00:00:00:00:07"}, state=0x02),
                           Msg({"NDA_DST": "192.0.2.8"}, state=0x04),
                           Msg({"NDA_DST": "192.0.2.19"}, state=0x20),  # FAILED
                           Msg({"NDA_DST": "ff02::16"}, state=0x40)]  # NOARP

    def call(self, method: str, **kwargs: Any) -> list[Msg]:
        self.calls.append(method)
        if method == "get_addr":
            return self.addrs
        if method == "get_routes":
            return self.routes[int(kwargs["family"])]
        assert method == "get_neighbours"
        return self.neighbours


@pytest.fixture
def owners() -> Iterator[tuple[Ownership, FakeRtnl, Port]]:
    loop = asyncio.new_event_loop()
    o = Ownership(loop, lambda master: None)
    fake = FakeRtnl()
    o._rtnl = fake  # type: ignore[assignment]
    port = Port("lo", parse_mac("02:00:00:00:00:01"))
    o.watch(port)
    yield o, fake, port
    o._rtnl = None
    o.close()
    loop.close()


def test_prefixes_are_the_addresses_and_the_connected_routes(owners: tuple[Ownership, FakeRtnl, Port]) -> None:
    o, _fake, port = owners
    assert o.master_addresses("lo") == frozenset({ip("192.0.2.2")})
    for addr in ("192.0.2.50", "198.51.100.7", "2001:db8::50"):
        assert port.on_link(ip(addr)), addr
    for addr in ("8.8.8.8", "203.0.113.5", "2001:db9::1"):  # default, via a gateway, elsewhere
        assert not port.on_link(ip(addr)), addr


def test_gateways_and_neighbours_in_use_read_at_most_once_a_second(owners: tuple[Ownership, FakeRtnl, Port]) -> None:
    o, fake, port = owners
    now = [100.0]
    o.clock = lambda: now[0]
    assert port.in_use(ip("192.0.2.1")) and port.in_use(ip("fe80::1")) and port.in_use(ip("192.0.2.9"))  # gateways
    assert port.in_use(ip("192.0.2.7")) and port.in_use(ip("192.0.2.8"))  # REACHABLE, STALE
    assert not port.in_use(ip("192.0.2.19")) and not port.in_use(ip("192.0.2.50"))
    assert port.in_use(parse_mac("02:00:00:00:00:07"))  # a neighbour's MAC
    assert fake.calls.count("get_neighbours") == 1
    fake.neighbours.append(Msg({"NDA_DST": "192.0.2.50"}, state=0x02))
    assert not port.in_use(ip("192.0.2.50"))  # cached
    now[0] += ownership.IN_USE_REFRESH
    assert port.in_use(ip("192.0.2.50"))
    assert fake.calls.count("get_neighbours") == 2
    o.unwatch(port)
    assert "lo" not in o.ports


def test_no_host_route_for_a_learned_address_off_the_masters_link() -> None:
    port = Port("mst0", parse_mac("02:00:00:00:00:01"))
    port.set_master_prefixes([(ip("192.0.2.2"), 24)])
    slave = port.add_slave("l", ["192.0.2.10"], learn=True)
    port.learn_address(slave, ip("192.0.2.50"))
    port.learn_address(slave, ip("2001:db8::50"))  # on the link when learned; the prefix went since
    routed: list[tuple[str, bytes]] = []

    link = HostLink.__new__(HostLink)
    link.port = port
    link.routes = set()

    def route_batch(changes: list[tuple[bool, bytes]]) -> list[int]:
        routed.extend(("del" if d else "replace", a) for d, a in changes)
        return [0] * len(changes)

    link._route_batch = route_batch  # type: ignore[method-assign]
    link.sync()
    assert sorted(a for _, a in routed) == sorted([ip("192.0.2.10"), ip("192.0.2.50")])


def test_default_gateway_is_read_with_the_prefixes(owners: tuple[Ownership, FakeRtnl, Port]) -> None:
    """The DHCP server's router in l2: the master's IPv4 default gateway, lowest metric first."""
    o, fake, port = owners
    o.master_addresses("lo")
    assert port.gateway_v4 == ip("192.0.2.1")
    fake.routes[2] = [Msg({"RTA_GATEWAY": "192.0.2.3", "RTA_PRIORITY": 200}, type=1, dst_len=0),
                      Msg({"RTA_GATEWAY": "192.0.2.4", "RTA_PRIORITY": 100}, type=1, dst_len=0)]
    o.master_addresses("lo")
    assert port.gateway_v4 == ip("192.0.2.4")
    fake.routes[2] = []
    o.master_addresses("lo")
    assert port.gateway_v4 is None


def test_ipv6_default_gateway_stops_l2_advertising(owners: tuple[Ownership, FakeRtnl, Port]) -> None:
    """An IPv6 default route through the master: a router is on the link, the daemon
    sends no RA in l2 (``Port.advertises``); without one it does."""
    o, fake, port = owners
    assert port.advertises
    o.master_addresses("lo")
    assert port.gateway_v6 == ip("fe80::1") and not port.advertises
    fake.routes[10] = []
    o.master_addresses("lo")
    assert port.gateway_v6 is None and port.advertises
