"""A thousand slaves on one host (issue 12): they start under systemd's default soft fd
limit, answer the control API and take a front-end; a slave beyond the fd budget is
refused on one line and nothing changes. Behaviour only: the timings are bench/scale.py's."""

from __future__ import annotations

import errno
import ipaddress
import resource
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import netns as pyroute2_netns

from tests.support.frontend import FakeFrontend
from tests.support.netns import Netns
from tests.support.scale import MASTER, Daemon, config_text, make_namespace, slave_table
from tests.support.wait import wait_until
from vhost_ipvlan.control.client import Client
from vhost_ipvlan.daemon import fdbudget
from vhost_ipvlan.daemon.rtnl import route_batch
from vhost_ipvlan.errors import RemoteError


@pytest.fixture
def ns() -> Iterator[Netns]:
    with make_namespace() as ns:
        yield ns


def start(ns: Netns, tmp_path: Path, n: int, nofile: str) -> tuple[Daemon, Path]:
    sockdir = tmp_path / "socks"
    sockdir.mkdir(mode=0o750)
    conf = tmp_path / "config.toml"
    conf.write_text(config_text(n, sockdir))
    return Daemon(ns, tmp_path, config=conf, nofile=nofile), sockdir


def test_a_thousand_slaves_start_under_the_default_soft_fd_limit(ns: Netns, tmp_path: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]  # ours, which may not be raised
    if hard < fdbudget.need(1, 1000):
        pytest.skip(f"the hard fd limit here ({hard}) is below what 1000 slaves need")
    d, sockdir = start(ns, tmp_path, 1000, f"1024:{hard}")  # systemd's soft limit (its hard one is higher)
    try:
        d.ready(timeout=120)
        assert d.nofile() == (hard, hard)
        assert f"soft limit raised from 1024 to the hard limit {hard}" in d.log.read_text()
        with Client(d.control) as c:
            listed = c.call("slave.list")
            assert [s["name"] for s in listed] == [f"s{i}" for i in range(1000)]
            fe = FakeFrontend()
            try:
                fe.connect(str(sockdir / "s999.sock"))
                fe.setup()
                wait_until(lambda: c.call("slave.list", {"master": "vsm0"})[-1]["up"], 30, what="s999 up")
                assert c.call("slave.list")[-1]["connected"] is True
            finally:
                fe.close()
    finally:
        d.stop()


def test_a_slave_beyond_the_fd_budget_is_refused_and_nothing_changes(ns: Netns, tmp_path: Path) -> None:
    limit = fdbudget.need(1, 7)
    d, sockdir = start(ns, tmp_path, 6, f"{limit}:{limit}")
    try:
        d.ready()
        with Client(d.control) as c:
            c.call("slave.add", {"master": "vsm0", **slave_table(6, sockdir)})  # the 7th fits
            state = d.state.read_text()
            with pytest.raises(RemoteError) as e:
                c.call("slave.add", {"master": "vsm0", **slave_table(7, sockdir)})
            assert e.value.code == "fd_budget"
            assert e.value.message.startswith("params.name: slave 's7' refused: 8 slaves with their guests")
            assert len(c.call("slave.list")) == 7
        assert not (sockdir / "s7.sock").exists()
        assert d.state.read_text() == state
    finally:
        d.stop()


def test_queue_pairs_count_in_the_fd_budget(ns: Netns, tmp_path: Path) -> None:
    """A slave's further queue pairs need their eventfds too: refused when adding, and when
    a change would grow them beyond the limit (nothing changes)."""
    limit = fdbudget.need(1, 7)
    d, sockdir = start(ns, tmp_path, 6, f"{limit}:{limit}")
    try:
        d.ready()
        with Client(d.control) as c:
            with pytest.raises(RemoteError) as e:
                c.call("slave.add", {"master": "vsm0", **slave_table(6, sockdir), "queues": 2})
            assert e.value.code == "fd_budget" and "6 per further queue pair" in e.value.message
            c.call("slave.add", {"master": "vsm0", **slave_table(6, sockdir)})  # one pair fits
            state = d.state.read_text()
            with pytest.raises(RemoteError) as e:
                c.call("slave.change", {"name": "s6", "queues": 2})
            assert e.value.code == "fd_budget"
            assert [s["queues"] for s in c.call("slave.list")] == [1] * 7
        assert d.state.read_text() == state
    finally:
        d.stop()


def test_a_configuration_beyond_the_fd_budget_does_not_start(ns: Netns, tmp_path: Path) -> None:
    limit = fdbudget.need(1, 7)
    d, sockdir = start(ns, tmp_path, 8, f"{limit}:{limit}")
    try:
        assert d.exit_status() == 2
        last = d.log.read_text().strip().splitlines()[-1]
        assert last.startswith("vhost-ipvlan: error: port[0].slave[7].name: slave 's7' refused: 8 slaves")
        assert list(sockdir.iterdir()) == []  # not half-way: every socket made was removed
    finally:
        d.stop()


def test_host_routes_in_a_batch(ns: Netns) -> None:
    """``rtnl.route_batch``: hundreds of host routes in a few sendmsg calls, each acknowledged."""
    oif = ns.ifindex(MASTER)
    addrs = [bytes([10, 77, i >> 8, i & 255]) for i in range(300)] + \
        [bytes.fromhex(f"fd0077{i:026x}") for i in range(300)]

    def routes() -> set[str]:
        with ns.ipr() as ipr:
            return {r.get_attr("RTA_DST") for family in (socket.AF_INET, socket.AF_INET6)
                    for r in ipr.get_routes(family=family, oif=oif) if r["proto"] == 4}  # static

    def in_ns(changes: list[tuple[bool, bytes]], index: int = oif) -> list[int]:
        pyroute2_netns.pushns(ns.name)
        try:
            return route_batch(index, changes)
        finally:
            pyroute2_netns.popns()

    assert in_ns([(False, a) for a in addrs]) == [0] * 600
    assert routes() == {str(ipaddress.ip_address(a)) for a in addrs}
    assert in_ns([(False, addrs[0])]) == [0]  # replace: no error for a route that exists
    assert in_ns([(True, a) for a in addrs[:300]]) == [0] * 300
    assert routes() == {str(ipaddress.ip_address(a)) for a in addrs[300:]}
    assert in_ns([(True, addrs[0]), (False, addrs[0])], index=999999) == [errno.ESRCH, errno.ENODEV]
