"""Interop: DPDK testpmd virtio-user front-ends switched by vhost-ipvlan.

The daemon serves three slaves on a veth master in a :class:`~tests.support.lab.Lab`
(IPv6 off on the veth, so no ND/MLD frames reach the slaves):
a (198.18.0.1, 02:..:0a), b (198.18.0.2, 02:..:0b) and c (198.18.0.3, 02:..:0c).
Each slave's guest is a dpdk-testpmd ``net_virtio_user`` port connecting to the
daemon's socket.  A sends bounded bursts (``start tx_first N`` = N x 32 frames built
by testpmd's txonly template, then ``stop``); B runs rxonly with ``set verbose 1``,
which prints every received frame's MACs, EtherType, length, segments and parsed
packet type, so the frames are checked one by one, not only counted.

``VHOST_IPVLAN_INTEROP_BACKEND=reference`` runs the same checks (less the spoofing
ones) against testpmd's own C vhost backend instead: a check of the test itself.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.lab import DaemonError, Lab, SlaveSpec
from tests.support.testpmd import Testpmd, TestpmdError, reference_backend, virtio_user_vdev
from tests.support.testpmd import testpmd_path as find_testpmd
from tests.support.wait import wait_until

pytestmark = [
    pytest.mark.dpdk,
    pytest.mark.netns,
    pytest.mark.skipif(find_testpmd() is None, reason="dpdk-testpmd not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2"),
]

BACKEND = os.environ.get("VHOST_IPVLAN_INTEROP_BACKEND", "ipvlan")

A_MAC, B_MAC, C_MAC = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
A_IP, B_IP, C_IP = "198.18.0.1", "198.18.0.2", "198.18.0.3"
PREFIX = 15
BURST = 32  # testpmd's default packets per burst: tx_first N sends N * 32 frames
MEM_MB = 256
LCORES = "0@0,1@0"  # front-ends on core 0; the daemon gets core 1
DAEMON_CPUS = "1"
# a front-end or the daemon died: waiting on is pointless
DIED = (TestpmdError, DaemonError)


@dataclass
class Switch:
    """Where the front-ends connect: one socket per slave name."""

    work: Path
    sockets: dict[str, Path]
    lab: Lab | None

    def check_alive(self) -> None:
        if self.lab is not None:
            self.lab.check_daemon()

    def drops(self, slave: str) -> dict[str, int]:
        """vhost-ipvlan's drop counters for frames from ``slave`` (empty for reference)."""
        if self.lab is None:
            return {}
        d: dict[str, int] = self.lab.slave_stats(slave)["drops"]
        return {k: v for k, v in d.items() if v}


@pytest.fixture
def switch(tmp_path: Path) -> Iterator[Switch]:
    names = ("a", "b", "c")
    if BACKEND == "reference":
        # testpmd's C backend: io forwarding port 0 (a) -> port 1 (b); c unused
        sockets = {n: tmp_path / f"{n}.sock" for n in names}
        with reference_backend("ref", tmp_path, [sockets["a"], sockets["b"]], lcores="0@1,1@1", mem_mb=MEM_MB):
            yield Switch(tmp_path, sockets, None)
        return
    slaves = [
        SlaveSpec("a", [f"{A_IP}/{PREFIX}"], A_MAC),
        SlaveSpec("b", [f"{B_IP}/{PREFIX}"], B_MAC),
        SlaveSpec("c", [f"{C_IP}/{PREFIX}"], C_MAC),
    ]
    with Lab(tmp_path, slaves, ipv6=False, cpus=DAEMON_CPUS) as lab:
        yield Switch(tmp_path, {n: lab.sock(n) for n in names}, lab)
        lab.check_daemon()


def frontend(
    sw: Switch,
    name: str,
    slave: str,
    mac: str,
    *,
    tx_ip: tuple[str, str] = (A_IP, B_IP),
    peer: str = B_MAC,
    txpkts: int = 64,
) -> Testpmd:
    """A testpmd guest on ``slave``'s socket, forwarding mode rxonly (send with tx_first)."""
    return Testpmd(
        name,
        sw.work,
        vdevs=[virtio_user_vdev(0, sw.sockets[slave], mac)],
        lcores=LCORES,
        mem_mb=MEM_MB,
        forward_mode="rxonly",
        eth_peers={0: peer},
        txpkts=txpkts,
        tx_ip=tx_ip,
    )


def send_bursts(tp: Testpmd, bursts: int) -> int:
    """Send ``bursts`` x 32 txonly frames, stop; return how many testpmd transmitted."""
    before = tp.port_stats()[0].tx_packets
    tp.cmd(f"start tx_first {bursts}")
    tp.cmd("stop")
    return tp.port_stats()[0].tx_packets - before


_RX_LINE = re.compile(
    r"src=(?P<src>[0-9A-Fa-f:]{17}) - dst=(?P<dst>[0-9A-Fa-f:]{17}) - pool=\S+ - "
    r"type=(?P<type>0x[0-9a-fA-F]+) - length=(?P<length>\d+) - nb_segs=(?P<segs>\d+) - "
    r".*?sw ptype: (?P<ptype>[A-Z0-9_ ]+?)\s+- l2_len=(?P<l2>\d+) - l3_len=(?P<l3>\d+) - "
    r"l4_len=(?P<l4>\d+)"
)


def received_frames(tp: Testpmd) -> list[dict[str, str]]:
    """Frames printed by an rxonly testpmd with ``set verbose 1``."""
    return [m.groupdict() for m in _RX_LINE.finditer(tp.log_text())]


def verbose_frames_at_least(tp: Testpmd, n: int) -> list[dict[str, str]] | None:
    frames = received_frames(tp)
    return frames if len(frames) >= n else None


def rx_count(tp: Testpmd) -> int:
    return tp.port_stats()[0].rx_packets


def wait_rx(tp: Testpmd, sw: Switch, n: int, timeout: float = 30) -> None:
    def enough() -> bool:
        sw.check_alive()
        return rx_count(tp) >= n

    wait_until(enough, timeout, interval=0.1, what=f"{tp.name} to receive {n} frames", fatal=DIED)


def assert_no_more_rx(tp: Testpmd, sw: Switch, expected: int, window: float) -> None:
    """Poll for ``window`` seconds: the rx counter must stay at ``expected``."""
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:
        sw.check_alive()
        got = rx_count(tp)
        assert got == expected, f"{tp.name} received {got} frames, expected {expected}"
        time.sleep(0.1)


@pytest.mark.parametrize(
    "txpkts,length",
    [("64", 64), ("1500", 1500), ("600,900", 1500)],
    ids=["64B", "1500B", "1500B-2seg"],
)
def test_a_to_b_counts_and_frames(switch: Switch, txpkts: str, length: int) -> None:
    bursts = 4
    b = frontend(switch, "B", "b", B_MAC)
    a = frontend(switch, "A", "a", A_MAC)
    with b, a:
        a.wait_link_up(0)
        b.wait_link_up(0)
        assert b.mac(0) == B_MAC and a.mac(0) == A_MAC
        b.cmd("set verbose 1")
        b.cmd("start")
        a.cmd(f"set txpkts {txpkts}")
        sent = send_bursts(a, bursts)
        assert sent == bursts * BURST, f"A transmitted {sent}, expected {bursts * BURST}"
        wait_rx(b, switch, sent)
        # settle: nothing more (duplicates) arrives
        assert_no_more_rx(b, switch, rx_count(b), window=0.5)
        b.cmd("stop")
        sa, sb = a.port_stats()[0], b.port_stats()[0]
        frames = wait_until(lambda: verbose_frames_at_least(b, sb.rx_packets), 10, what="B's verbose output")
        from_a = [f for f in frames if f["src"].lower() == A_MAC]
        others = [f for f in frames if f["src"].lower() != A_MAC]
        # B rx == A tx (nothing dropped, nothing duplicated); anything else B got
        # (e.g. multicast from the master) is not from A and is accounted for apart
        assert len(from_a) == sa.tx_packets == sent, f"not from A: {others[:5]}"
        assert sb.rx_packets - len(others) == sa.tx_packets
        assert sb.rx_bytes - sum(int(f["length"]) for f in others) == sa.tx_bytes
        assert sa.tx_bytes == sent * length
        assert sb.rx_errors == 0 and sb.rx_missed == 0 and sb.rx_nombuf == 0
        assert switch.drops("a") == {}
        for f in from_a:
            assert f["dst"].lower() == B_MAC
            assert f["type"] == "0x0800"
            assert int(f["length"]) == length
            assert f["ptype"].split() == ["L2_ETHER", "L3_IPV4", "L4_UDP"]
            assert (f["l2"], f["l3"], f["l4"]) == ("14", "20", "8")
        switch.check_alive()


def _ipvlan_only() -> None:
    if BACKEND != "ipvlan":
        pytest.skip("source validation is vhost-ipvlan's, not testpmd's")


@pytest.mark.parametrize(
    "spoof_mac,spoof_ip,reason",
    [
        (C_MAC, "198.18.0.99", "src_ip_spoof"),
        ("02:00:00:00:00:0d", C_IP, "src_mac_spoof"),
        (C_MAC, A_IP, "src_ip_spoof"),
    ],
    ids=["unowned-src-ip", "wrong-src-mac", "other-slaves-ip"],
)
def test_spoofed_source_is_dropped(switch: Switch, spoof_mac: str, spoof_ip: str, reason: str) -> None:
    """C (slave c: 198.18.0.3, 02:..:0c) sends to B with a source it does not own."""
    _ipvlan_only()
    b = frontend(switch, "B", "b", B_MAC)
    a = frontend(switch, "A", "a", A_MAC)
    c = frontend(switch, "C", "c", spoof_mac, tx_ip=(spoof_ip, B_IP))
    with b, a, c:
        for tp in (a, b, c):
            tp.wait_link_up(0)
        b.cmd("start")
        # positive control: the path A -> B works
        good = send_bursts(a, 2)
        wait_rx(b, switch, good)
        spoofed = send_bursts(c, 2)
        assert spoofed == 2 * BURST
        # the daemon has handled every spoofed frame once it has counted it as a drop
        wait_until(
            lambda: switch.drops("c").get(reason, 0) >= spoofed,
            30,
            interval=0.2,
            what=f"{spoofed} {reason} drops on slave c",
            fatal=DIED,
        )
        assert switch.drops("c") == {reason: spoofed}
        # ... and none reached B (polled briefly: B's own polling may lag)
        assert_no_more_rx(b, switch, good, window=1.0)
        # the daemon still forwards afterwards
        more = send_bursts(a, 2)
        wait_rx(b, switch, good + more)
        assert rx_count(b) == good + more
        assert switch.drops("a") == {}
        switch.check_alive()
