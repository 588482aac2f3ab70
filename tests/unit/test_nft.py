"""The nft script: nothing hostile is spliced into it (audit 10-12: the master name went in verbatim)."""

from __future__ import annotations

import pytest

from vhost_ipvlan.daemon import nft
from vhost_ipvlan.errors import UplinkError


@pytest.fixture
def scripts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    ran: list[str] = []
    monkeypatch.setattr(nft, "_run", ran.append)
    return ran


@pytest.mark.parametrize("master", ['e";flush#', "eth0 x", "a\nb", "veth0'", "x" * 16, ""])
def test_hostile_master_names_never_reach_nft(scripts: list[str], master: str) -> None:
    with pytest.raises(UplinkError, match=r"^nft: .* is not a valid interface name for an nft script$"):
        nft.consume("p1", master, ["192.0.2.10"], [])
    assert scripts == []


def test_hostile_chain_names_never_reach_nft(scripts: list[str]) -> None:
    with pytest.raises(UplinkError, match="chain name"):
        nft.release("p1; flush ruleset")
    assert scripts == []


def test_a_good_script(scripts: list[str]) -> None:
    nft.consume("p1", "br-lan.10", ["192.0.2.10"], ["2001:db8::10"])
    [script] = scripts
    assert 'hook ingress device "br-lan.10" priority -500;' in script
    assert "ip daddr { 192.0.2.10 } drop" in script and "ip6 daddr { 2001:db8::10 } drop" in script


def test_l3s_consumes_link_local_ip_only(scripts: list[str]) -> None:
    """l3s: the host forwards guest-bound IP, but it cannot forward to a link-local (issue 16 item 1)."""
    nft.consume("p1", "eth0", ["192.0.2.10"], ["2001:db8::10", "fe80::ff:fe00:a"], ip=False)
    [script] = scripts
    assert "ip daddr" not in script and "ip6 daddr { fe80::ff:fe00:a } drop" in script
    assert "arp daddr ip { 192.0.2.10 } drop" in script and "nd-neighbor-solicit" in script
