"""``daemon.hostlink``: the forwarding sysctls l3s turns on, and what is restored."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from vhost_ipvlan.daemon import hostlink
from vhost_ipvlan.daemon.hostlink import HostLink


def link(master: str, tap: str) -> HostLink:
    """A host link without its tap (only what the sysctls need)."""
    h = HostLink.__new__(HostLink)
    h.port = SimpleNamespace(master=master)  # type: ignore[assignment]
    h.name = tap
    h.fd = -1
    h.routes = set()
    h.forwarding = ()
    h._restore = []
    h._shared = []
    h.ipr = SimpleNamespace(close=lambda: None)  # type: ignore[assignment]
    return h


def test_ipv6_forwarding_shared_by_two_l3s_ports_is_restored_once_both_are_gone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """IPv6 forwarding is the namespace's: closing one l3s port must not turn it off
    under another, and the value found before the first is the one left at the end."""
    for path in ("ipv4/conf/vih1/forwarding", "ipv4/conf/m0/forwarding", "ipv4/conf/vih2/forwarding",
                 "ipv4/conf/m1/forwarding", "ipv6/conf/all/forwarding"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("0\n")
    monkeypatch.setattr(hostlink, "_SYSCTL", tmp_path)
    v6 = tmp_path / "ipv6/conf/all/forwarding"
    a, b = link("m0", "vih1"), link("m1", "vih2")
    a.enable_forwarding()
    b.enable_forwarding()
    assert v6.read_text().strip() == "1"
    a.close()
    assert v6.read_text().strip() == "1"  # b's port still forwards
    assert (tmp_path / "ipv4/conf/m0/forwarding").read_text().strip() == "0"
    b.close()
    assert v6.read_text().strip() == "0"  # as found
    assert (tmp_path / "ipv4/conf/m1/forwarding").read_text().strip() == "0"
