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
        if len(ran) in (2, 3):  # the change, and the whole rewrite tried after it
            raise UplinkError("nft failed: boom")

    monkeypatch.setattr(nft, "_run", run)
    chain = nft.Chain("p1", "veth0")
    chain.sync([b"\xc0\x00\x02\x01"])
    with pytest.raises(UplinkError):
        chain.sync([b"\xc0\x00\x02\x02"])
    assert chain.applied == frozenset({b"\xc0\x00\x02\x01"})  # what the kernel still holds
    chain.sync([b"\xc0\x00\x02\x02"])
    assert ran[3] == ran[1]


def test_l3s_consumes_link_local_ip_only(scripts: list[str]) -> None:
    """l3s: the host forwards guest-bound IP, but it cannot forward to a link-local (issue 16 item 1)."""
    nft.consume("p1", "eth0", ["192.0.2.10"], ["2001:db8::10", "fe80::ff:fe00:a"], ip=False)
    [script] = scripts
    assert "ip daddr @p1_v4" not in script and "ip6 daddr fe80::/10 ip6 daddr @p1_v6 drop" in script
    assert "arp daddr ip @p1_v4 drop" in script and "nd-neighbor-solicit" in script


def test_a_failed_release_leaves_the_chain_known_and_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """``applied`` is what the kernel holds: a release that failed (one transaction:
    nothing deleted) leaves it, so the next release runs again instead of leaving the
    chain in the kernel for ever."""
    ran: list[str] = []

    def run(script: str) -> None:
        ran.append(script)
        if len(ran) == 2:
            raise UplinkError("nft failed: boom")

    monkeypatch.setattr(nft, "_run", run)
    chain = nft.Chain("p1", "veth0")
    chain.sync([b"\xc0\x00\x02\x01"])
    with pytest.raises(UplinkError):
        chain.release()
    assert chain.applied == frozenset({b"\xc0\x00\x02\x01"})
    chain.release()
    assert len(ran) == 3 and ran[2] == ran[1] and chain.applied is None


def test_a_port_whose_chain_cannot_be_released_is_not_half_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    """``port.remove`` refused by nft (host_error) changes nothing: the port keeps its
    chain and its master stays watched, so the next attempt (or a slave.add) works."""
    import asyncio
    from types import SimpleNamespace

    from vhost_ipvlan.config import Config, PortConfig
    from vhost_ipvlan.daemon.topology import Topology

    loop = asyncio.new_event_loop()
    try:
        topo = Topology(loop)
        stopped: list[str] = []
        dp = SimpleNamespace(port=SimpleNamespace(master="m0"), stop=lambda: stopped.append("stop"))
        topo.config = Config((PortConfig("m0", "l2", "bridge", ()),))
        topo.ports.append(dp)  # type: ignore[arg-type]
        chain = topo._chains["m0"] = nft.Chain("p1", "m0")
        chain.applied = frozenset()
        removed: list[str] = []
        topo.on_port_removed = removed.append

        def refuse(script: str) -> None:
            raise UplinkError("nft failed: boom")

        monkeypatch.setattr(nft, "_run", refuse)
        with pytest.raises(UplinkError), topo.transaction() as undo:
            topo.remove_port("m0", undo)
        assert topo._chains == {"m0": chain} and removed == [] and stopped == []
        assert topo.ports == [dp] and [p.master for p in topo.config.ports] == ["m0"]
    finally:
        loop.close()


class FlushableKernel:
    """nft's view of the table: the scripts run, and whether the table still exists
    (someone may ``nft flush ruleset``: nftables.service's reload does)."""

    def __init__(self) -> None:
        self.table = False
        self.ran: list[str] = []

    def run(self, script: str) -> None:
        self.ran.append(script)
        if script.startswith(f"table netdev {nft.TABLE} {{}}"):
            self.table = True  # consume (re)creates it whole
        elif not self.table:
            raise UplinkError("nft failed: Error: Could not process rule: No such file or directory")


def test_a_chain_flushed_by_someone_else_is_written_whole_at_the_next_change(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """By difference only while the kernel holds what ``applied`` says: after an outside
    ``flush ruleset`` every later change failed (the elements to add or delete had no
    set) until the daemon restarted; the whole chain is written again instead."""
    kernel = FlushableKernel()
    monkeypatch.setattr(nft, "_run", kernel.run)
    chain = nft.Chain("p1", "veth0")
    chain.sync([b"\xc0\x00\x02\x01"])
    kernel.table = False  # nft flush ruleset
    chain.sync([b"\xc0\x00\x02\x01", b"\xc0\x00\x02\x02"])
    assert kernel.table and "192.0.2.1" in kernel.ran[-1] and "192.0.2.2" in kernel.ran[-1]
    assert chain.applied == frozenset({b"\xc0\x00\x02\x01", b"\xc0\x00\x02\x02"})
