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
    assert "ip daddr @p1_v4 drop" in script and "ip6 daddr @p1_v6 drop" in script
    assert "add element netdev vhost_ipvlan p1_v4 { 192.0.2.10 }" in script
    assert "add element netdev vhost_ipvlan p1_v6 { 2001:db8::10 }" in script
    assert "add element netdev vhost_ipvlan p1_t { 0x20010db8000000000000000000000010 }" in script


def test_a_chain_changes_by_difference(scripts: list[str]) -> None:
    """Only the addresses that came or went are in the script: a change costs the same
    with 1 or 1000 slaves (issue 12)."""
    chain = nft.Chain("p1", "veth0")
    chain.sync([bytes([192, 0, 2, i]) for i in range(1, 101)])
    assert len(scripts) == 1 and "192.0.2.100" in scripts[0]
    chain.sync([bytes([192, 0, 2, i]) for i in range(2, 102)])
    assert scripts[1] == ("delete element netdev vhost_ipvlan p1_v4 { 192.0.2.1 }\n"
                          "add element netdev vhost_ipvlan p1_v4 { 192.0.2.101 }\n")
    chain.sync([bytes([192, 0, 2, i]) for i in range(2, 102)])
    assert len(scripts) == 2  # nothing changed: nothing run


def test_a_failed_change_leaves_the_chain_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []

    def run(script: str) -> None:
        ran.append(script)
        if len(ran) == 2:
            raise UplinkError("nft failed: boom")

    monkeypatch.setattr(nft, "_run", run)
    chain = nft.Chain("p1", "veth0")
    chain.sync([b"\xc0\x00\x02\x01"])
    with pytest.raises(UplinkError):
        chain.sync([b"\xc0\x00\x02\x02"])
    assert chain.applied == frozenset({b"\xc0\x00\x02\x01"})  # what the kernel still holds
    chain.sync([b"\xc0\x00\x02\x02"])
    assert ran[2] == ran[1]


def test_l3s_consumes_link_local_ip_only(scripts: list[str]) -> None:
    """l3s: the host forwards guest-bound IP, but it cannot forward to a link-local (issue 16 item 1)."""
    nft.consume("p1", "eth0", ["192.0.2.10"], ["2001:db8::10", "fe80::ff:fe00:a"], ip=False)
    [script] = scripts
    assert "ip daddr @p1_v4" not in script and "ip6 daddr fe80::/10 ip6 daddr @p1_v6 drop" in script
    assert "arp daddr ip @p1_v4 drop" in script and "nd-neighbor-solicit" in script
