"""The netns test helpers: namespaces, veth pairs, addresses, cleanup."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.netns import Netns, add_addr, add_route, veth_pair
from tests.support.wait import wait_until

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]


def _netns_list() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_veth_ping_and_cleanup() -> None:
    with Netns() as a, Netns() as b:
        assert a.name.startswith("vi-") and a.name != b.name
        assert a.exists and b.exists
        veth_pair(a, "va", b, "vb", a_mac="02:00:00:00:00:0a", b_mac="02:00:00:00:00:0b")
        add_addr(a, "va", "192.0.2.1/24")
        add_addr(b, "vb", "192.0.2.2/24")
        add_addr(a, "va", "2001:db8::1/64")
        add_addr(b, "vb", "2001:db8::2/64")
        assert "02:00:00:00:00:0b" in b.run("ip", "link", "show", "vb").stdout
        a.run("ping", "-c", "1", "-W", "2", "192.0.2.2")
        b.run("ping", "-c", "1", "-W", "2", "2001:db8::1")  # usable at once: no DAD
        rc = a.run("ping", "-c", "1", "-W", "1", "198.51.100.1", check=False).returncode
        assert rc != 0  # nothing else is reachable
        names = {a.name, b.name}
    listed = _netns_list()
    for name in names:
        assert name not in listed
        assert not os.path.exists(f"/run/netns/{name}")


def test_cleanup_on_failure_kills_processes() -> None:
    ns = Netns()
    name = ns.name
    with pytest.raises(RuntimeError), ns:
        proc = ns.popen("sleep", "300")
        wait_until(lambda: proc.pid in ns.pids(), 5, what="sleep in netns")
        raise RuntimeError("boom")
    assert proc.poll() is not None
    assert name not in _netns_list()
    ns.close()  # idempotent


def test_run_check_reports_output() -> None:
    with Netns() as ns:
        with pytest.raises(subprocess.CalledProcessError) as info:
            ns.run("sh", "-c", "echo out; echo err >&2; exit 3")
        assert info.value.returncode == 3
        assert "err" in str(info.value)
        assert ns.run("sh", "-c", "exit 4", check=False).returncode == 4


def test_routes_and_same_namespace_pair() -> None:
    with Netns() as a, Netns() as b, Netns() as r:
        veth_pair(a, "a0", r, "ra")
        veth_pair(b, "b0", r, "rb")
        add_addr(a, "a0", "192.0.2.1/24")
        add_addr(r, "ra", "192.0.2.254/24")
        add_addr(b, "b0", "198.51.100.1/24")
        add_addr(r, "rb", "198.51.100.254/24")
        add_route(a, "default", via="192.0.2.254")
        add_route(b, "default", via="198.51.100.254")
        r.sysctl("net.ipv4.ip_forward", 1)
        a.run("ping", "-c", "1", "-W", "2", "198.51.100.1")
