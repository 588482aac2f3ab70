"""Interop: a DPDK testpmd virtio-user guest with two queue pairs (``queues=2,cq=1``).

Slave b offers two pairs; testpmd B configures two RX and two TX queues, so its
driver enables both pairs (VQ_PAIRS_SET through the control queue, which
virtio-user turns into SET_VRING_ENABLE per ring, as QEMU does). The outside host
sends 16 UDP flows to B, which the daemon spreads over B's two receive rings by
flow; B's txonly bursts leave on both its transmit rings. Counted by testpmd and by
the daemon's per-pair counters.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.lab import OUT_IP, Lab, SlaveSpec
from tests.support.testpmd import Testpmd, virtio_user_vdev
from tests.support.testpmd import testpmd_path as find_testpmd
from tests.support.wait import wait_until

pytestmark = [
    pytest.mark.dpdk,
    pytest.mark.netns,
    pytest.mark.skipif(find_testpmd() is None, reason="dpdk-testpmd not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

B_MAC, B_IP = "02:00:00:00:00:0b", "192.0.2.12"
FLOWS, PER_FLOW = 16, 4


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path, [SlaveSpec("b", [f"{B_IP}/24"], B_MAC, extra={"queues": 2})], ipv6=False, cpus="1") as lab:
        yield lab
        lab.check_daemon()


def queues(lab: Lab) -> dict[str, Any]:
    result: dict[str, Any] = lab.slave_stats("b")["queues"]
    return result


def test_two_queue_pairs_with_testpmd(lab: Lab, tmp_path: Path) -> None:
    b = Testpmd("B", tmp_path, vdevs=[virtio_user_vdev(0, lab.sock("b"), B_MAC, queues=2)], mem_mb=256,
                forward_mode="rxonly", extra_args=["--rxq=2", "--txq=2"], eth_peers={0: lab.out_mac},
                txpkts=64, tx_ip=(B_IP, OUT_IP))
    with b:
        b.wait_link_up(0)
        wait_until(lambda: queues(lab)["queue_pairs_enabled"] == 2, 30, what="B's two pairs enabled")
        assert queues(lab)["queue_pairs"] == 2
        b.cmd("start")
        # whole frames with their checksums (the kernel's UDP would ask for checksum offload,
        # which testpmd does not take), to the master's MAC as the wire knows the slaves
        code = ("from scapy.all import Ether, IP, UDP, sendp\n"
                f"frames = [Ether(dst='{lab.master_mac}') / IP(src='{OUT_IP}', dst='{B_IP}') /"
                f" UDP(sport=40000 + port, dport=9) / b'x' for port in range({FLOWS})] * {PER_FLOW}\n"
                "sendp(frames, iface='vio0', verbose=False)\n")
        proc = lab.out_run(sys.executable, "-c", code, timeout=60)
        assert proc.returncode == 0, proc.stderr
        sent = FLOWS * PER_FLOW
        try:
            wait_until(lambda: sum(q["rx_packets"] for q in queues(lab)["per_queue"]) >= sent, 30,
                       what="the flows at B")
        except TimeoutError as e:
            raise AssertionError(f"{e}: {lab.stats()}") from None
        per_queue = queues(lab)["per_queue"]
        assert all(q["rx_packets"] > 0 for q in per_queue), per_queue  # the flows spread over both rings
        wait_until(lambda: b.port_stats()[0].rx_packets >= sent, 30, what="testpmd B to count them")
        b.cmd("stop")
        b.cmd("start tx_first 2")  # 2 bursts per TX queue from the txonly template, then rxonly
        b.cmd("stop")
        wait_until(lambda: all(q["tx_packets"] > 0 for q in queues(lab)["per_queue"]), 30,
                   what="B's frames from both TX rings")
        assert sum(q["tx_packets"] for q in queues(lab)["per_queue"]) == b.port_stats()[0].tx_packets
        drops = lab.slave_stats("b")["drops"]
        assert "queue_broken" not in drops and "rx_not_ready" not in drops, drops
