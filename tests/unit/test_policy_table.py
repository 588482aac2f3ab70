"""The policy table is the behaviour: one sample frame per row, through every
implemented (mode, flag), gets the table's verdict; the mode traits agree with the
table; the docs are generated from both."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Raw

from vhost_ipvlan.net.addr import parse_mac
from vhost_ipvlan.switch import DROP, TO_SLAVE, Action, DropReason, Port, Slave
from vhost_ipvlan.switch.decisions import DECISIONS, FLAGS, MODES, TRAITS
from vhost_ipvlan.switch.table import ROWS, TABLE, Dest, Source, complete

ROOT = Path(__file__).resolve().parents[2]
MASTER, OUTSIDE, G1, G2 = "02:00:00:00:00:01", "02:00:00:00:00:fe", "52:54:00:00:00:11", "52:54:00:00:00:12"
BCAST = "ff:ff:ff:ff:ff:ff"
S1, S2, HOST, OUT = "10.0.0.11", "10.0.0.12", "10.0.0.1", "192.0.2.1"

# (source, dest) -> the sample frame (s1 sends the guest ones) and who owns the target
SAMPLES: dict[tuple[Source, Dest], tuple[Packet, str | None]] = {
    (Source.GUEST, Dest.SLAVE): (Ether(src=G1, dst=G2) / IP(src=S1, dst=S2) / UDP(), "s2"),
    (Source.GUEST, Dest.GUEST_MAC): (Ether(src=G1, dst=G2, type=0x88B5) / Raw(b"x" * 46), "s2"),
    (Source.GUEST, Dest.HOST): (Ether(src=G1, dst=MASTER) / IP(src=S1, dst=HOST) / UDP(), None),
    (Source.GUEST, Dest.OUTSIDE): (Ether(src=G1, dst=OUTSIDE) / IP(src=S1, dst=OUT) / UDP(), None),
    (Source.GUEST, Dest.MULTICAST): (Ether(src=G1, dst=BCAST) / ARP(hwsrc=G1, psrc=S1, pdst=S2), None),
    (Source.WIRE, Dest.SLAVE): (Ether(src=OUTSIDE, dst=MASTER) / IP(src=OUT, dst=S1) / UDP(), "s1"),
    (Source.WIRE, Dest.HOST): (Ether(src=OUTSIDE, dst=MASTER) / IP(src=OUT, dst=HOST) / UDP(), None),
    (Source.WIRE, Dest.MULTICAST): (Ether(src=OUTSIDE, dst=BCAST) / ARP(hwsrc=OUTSIDE, psrc=OUT, pdst=HOST),
                                    None),
    (Source.WIRE, Dest.LOOPED_BACK): (Ether(src=MASTER, dst=BCAST) / ARP(hwsrc=MASTER, psrc=S1, pdst=OUT),
                                      None),
}


def make_port(mode: str, flag: str) -> tuple[Port, dict[str, Slave]]:
    port = Port("mst0", parse_mac(MASTER), mode, flag)
    slaves = {"s1": port.add_slave("s1", [S1], mac=G1), "s2": port.add_slave("s2", [S2], mac=G2)}
    for s in slaves.values():
        s.up = True
    return port, slaves


def test_every_implemented_pair_has_every_row() -> None:
    assert DECISIONS, "nothing implemented"
    for mode, flag in DECISIONS:
        assert complete(mode, flag), (mode, flag)
    for mode, flag, source, dest in TABLE:
        assert (source, dest) in ROWS, (mode, flag, source, dest)


def test_rules_name_real_actions_and_reasons() -> None:
    labels = {r.label for r in DropReason}
    for key, rule in TABLE.items():
        assert rule.action in {a.label for a in Action}, key
        assert (rule.reason in labels) if rule.action == "drop" else not rule.reason, key
        if key[2] is Source.GUEST:
            assert rule.action != "pass", key


def test_samples_cover_every_row() -> None:
    assert set(SAMPLES) == set(ROWS)


@pytest.mark.parametrize(("mode", "flag"), sorted(DECISIONS))
@pytest.mark.parametrize(("source", "dest"), list(ROWS))
def test_sample_frame_gets_the_tables_verdict(mode: str, flag: str, source: Source, dest: Dest) -> None:
    port, slaves = make_port(mode, flag)
    pkt, owner = SAMPLES[(source, dest)]
    frame = memoryview(bytearray(bytes(pkt)))
    decide: Callable[[], tuple[int, object]]
    if source is Source.GUEST:
        def decide() -> tuple[int, object]:
            return port.from_guest(slaves["s1"], frame)
    else:
        def decide() -> tuple[int, object]:
            return port.from_uplink(frame)
    action, arg = decide()
    rule = TABLE[(mode, flag, source, dest)]
    assert Action(action).label == rule.action
    if action == DROP:
        assert isinstance(arg, DropReason) and arg.label == rule.reason
    elif action == TO_SLAVE:
        assert arg is slaves[owner or ""]


def test_every_pair_has_decisions_and_traits() -> None:
    pairs = [(m, f) for m in MODES for f in FLAGS]
    assert list(DECISIONS) == pairs and list(TRAITS) == pairs
    for mode, flag in pairs:
        assert make_port(mode, flag)[0].traits is TRAITS[(mode, flag)]


@pytest.mark.parametrize(("mode", "flag"), sorted(TRAITS))
def test_traits_agree_with_the_table(mode: str, flag: str) -> None:
    """What the table implies about a mode, its traits say too."""
    traits = TRAITS[(mode, flag)]

    def action(source: Source, dest: Dest) -> str:
        return TABLE[(mode, flag, source, dest)].action

    # a decision may route more than the table's rows say (a finer destination kind), never less
    if any(action(s, d) == "route" for s, d in ROWS):
        assert traits.routes
    # off-host traffic goes through the host's stack, which must forward it
    assert traits.host_forwarding == (action(Source.GUEST, Dest.OUTSIDE) == "to_host")
    # the wire's IP to a slave is consumed unless the host is to forward it
    assert traits.consume_ip == (action(Source.WIRE, Dest.SLAVE) != "pass")
    # the C accelerator delivers guest -> guest unicast as is, the l2 bridge way
    if traits.fast_path:
        assert action(Source.GUEST, Dest.SLAVE) == "to_slave" == action(Source.GUEST, Dest.GUEST_MAC)
        assert not traits.master_src_mac
    # ... and sends a guest's frame to an off-host MAC out the master, only from the master's MAC
    if traits.fast_wire:
        assert action(Source.GUEST, Dest.OUTSIDE) == "to_uplink"
        assert not traits.master_src_mac and not traits.routes


def test_committed_matrix_is_the_generators_output() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_policy_matrix.py")], capture_output=True,
                         text=True, check=True).stdout
    assert (ROOT / "docs" / "policy-matrix.md").read_text() == out, (
        "docs/policy-matrix.md is stale: python3 scripts/gen_policy_matrix.py > docs/policy-matrix.md")

