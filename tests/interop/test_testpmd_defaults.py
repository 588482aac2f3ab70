"""Interop: DPDK testpmd front-ends at DPDK's defaults (issue 10, section 1).

One dpdk-testpmd holds two ``net_virtio_user`` ports, A (slave a: 198.18.0.1,
02:..:0a) and B (slave b: 198.18.0.2, 02:..:0b), both on core 0; the daemon runs
alone on core 1. The vdevs give no ``queue_size`` (DPDK's default: 256-entry
rings) unless a case says 1024.

Ping-pong: ``--forward-mode=5tswap --port-topology=loop`` sends every frame a port
receives back out of the same port with MACs, addresses and ports swapped, so
A's frames to B come back to A, and so on. ``start tx_first 32`` injects 32 bursts
of 32 on each port: on a 256-entry ring most of them find the TX ring full and
testpmd drops them, and so does it with any frame it cannot transmit at once (no
retry). The population in flight can only shrink: it survives only if the
daemon never hands a guest frames while that guest's TX ring is still full of
chains the daemon was kicked for. B's injected frames carry A's source address
(testpmd's ``--tx-ip`` is per process) and are dropped ``src_ip_spoof``; they still
fill B's TX ring, which is the case that used to stall.

"Keeps flowing" is checked with counters, never timing: both ports' RX counters
must pass a mark well above the injected population (the frames went round
several times), and then pass it again.

Reconnect: the same ping-pong with testpmd listening (``server=1``) and the
slaves in ``socket_mode = "client"``; the daemon is killed (SIGTERM or SIGKILL)
and started again while testpmd keeps its rings. DPDK's virtio-user sets every
ring's base to 0 on reconnect; the daemon resumes at the used ring's index (as
DPDK's own vhost library does) and frames flow again.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.lab import DaemonError, Lab, SlaveSpec
from tests.support.testpmd import Testpmd, TestpmdError, virtio_user_vdev
from tests.support.testpmd import testpmd_path as find_testpmd
from tests.support.wait import wait_until

pytestmark = [
    pytest.mark.dpdk,
    pytest.mark.netns,
    pytest.mark.skipif(find_testpmd() is None, reason="dpdk-testpmd not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2"),
]

A_MAC, B_MAC = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
A_IP, B_IP = "198.18.0.1", "198.18.0.2"
PREFIX = 15
MEM_MB = 256
LCORES = "0@0,1@0"  # testpmd on core 0; the daemon gets core 1
DAEMON_CPUS = "1"
INJECT = 32  # start tx_first INJECT: INJECT x 32 frames offered per port
# frames each port must receive between two marks: more than both ports injected
MARK = 4 * INJECT * 32
FLOW_TIMEOUT = 30.0
DIED = (TestpmdError, DaemonError)


def slaves(socket_mode: str = "server") -> list[SlaveSpec]:
    return [
        SlaveSpec("a", [f"{A_IP}/{PREFIX}"], A_MAC, socket_mode=socket_mode),
        SlaveSpec("b", [f"{B_IP}/{PREFIX}"], B_MAC, socket_mode=socket_mode),
    ]


@contextmanager
def ping_pong(lab: Lab, work: Path, queue_size: int | None, *, server: bool = False) -> Iterator[Testpmd]:
    """testpmd with A and B in 5tswap loop mode on the lab's sockets, injected; stopped on exit."""
    fe = Testpmd(
        "ab",
        work,
        vdevs=[
            virtio_user_vdev(0, lab.sock("a"), A_MAC, queue_size, server=server),
            virtio_user_vdev(1, lab.sock("b"), B_MAC, queue_size, server=server),
        ],
        lcores=LCORES,
        mem_mb=MEM_MB,
        forward_mode="5tswap",
        eth_peers={0: B_MAC, 1: A_MAC},
        tx_ip=(A_IP, B_IP),
        extra_args=["--port-topology=loop"],
    )
    with fe:
        fe.wait_link_up(0)
        fe.wait_link_up(1)
        fe.cmd(f"start tx_first {INJECT}")
        yield fe


def rx_counts(fe: Testpmd) -> tuple[int, int]:
    stats = fe.port_stats()
    return stats[0].rx_packets, stats[1].rx_packets


def wait_flowing(fe: Testpmd, lab: Lab, since: tuple[int, int], what: str) -> tuple[int, int]:
    """Wait until both ports received MARK more frames than ``since``; the counts then."""

    def past_mark() -> tuple[int, int] | None:
        lab.check_daemon()
        got = rx_counts(fe)
        return got if all(g >= s + MARK for g, s in zip(got, since, strict=True)) else None

    try:
        return wait_until(past_mark, FLOW_TIMEOUT, interval=0.2, what=what, fatal=DIED)
    except TimeoutError as e:
        raise AssertionError(f"{e}: rx counts {rx_counts(fe)} since {since}; daemon drops "
                             f"{ {n: lab.slave_stats(n)['drops'] for n in ('a', 'b')} }") from None


def assert_only_expected_drops(lab: Lab) -> None:
    """Nothing broken: B's injected frames are spoofed; a full RX ring may drop (counted)."""
    drops = {n: {k: v for k, v in lab.slave_stats(n)["drops"].items() if v} for n in ("a", "b")}
    assert set(drops["a"]) <= {"rx_ring_full"}, drops
    assert set(drops["b"]) <= {"src_ip_spoof", "rx_ring_full"}, drops
    assert drops["b"].get("src_ip_spoof", 0) <= INJECT * 32, drops


@pytest.mark.parametrize(
    "queue_size,pure",
    [(None, False), (None, True), (1024, False)],
    ids=["default-ring-accelerated", "default-ring-pure", "1024-ring-accelerated"],
)
def test_5tswap_ping_pong_keeps_flowing(tmp_path: Path, queue_size: int | None, pure: bool) -> None:
    with (Lab(tmp_path, slaves(), ipv6=False, cpus=DAEMON_CPUS, pure_python=pure) as lab,
          ping_pong(lab, tmp_path, queue_size) as fe):
        first = wait_flowing(fe, lab, (0, 0), "A and B to receive the loop's frames")
        wait_flowing(fe, lab, first, "A and B to go on receiving")
        assert_only_expected_drops(lab)
        lab.check_daemon()
def kill_daemon(lab: Lab, sig: signal.Signals) -> None:
    daemon = lab.daemon
    assert daemon is not None
    lab.check_daemon()
    os.kill(daemon.pid, sig)
    daemon.wait(30)


def rings_enabled_since(lab: Lab, start: int) -> bool:
    """Both slaves' rings enabled again (two SET_VRING_ENABLE each) since log offset ``start``."""
    lab.check_daemon()
    text = lab.log_text()[start:]
    return all(text.count(f"slave {n}: <- SET_VRING_ENABLE") >= 2 for n in ("a", "b"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
@pytest.mark.parametrize("queue_size", [None, 1024], ids=["default-ring", "1024-ring"])
def test_frames_flow_again_after_a_daemon_restart(tmp_path: Path, queue_size: int | None,
                                                  sig: signal.Signals) -> None:
    """The rings survive the restart; the frames in flight may not (testpmd kicks its TX
    ring before it enables it, and a started but disabled TX ring is drained and its
    frames discarded, as the spec says), so the loop is injected again."""
    with (Lab(tmp_path, slaves("client"), ipv6=False, cpus=DAEMON_CPUS) as lab,
          ping_pong(lab, tmp_path, queue_size, server=True) as fe):
        wait_flowing(fe, lab, (0, 0), "A and B to receive the loop's frames")
        start = len(lab.log_text())
        kill_daemon(lab, sig)
        lab.start_daemon()
        wait_until(lambda: rings_enabled_since(lab, start), FLOW_TIMEOUT, interval=0.1,
                   what="testpmd to set both slaves' rings up again", fatal=DIED)
        fe.cmd("stop")
        fe.cmd(f"start tx_first {INJECT}")
        again = wait_flowing(fe, lab, rx_counts(fe), "A and B to receive again after the restart")
        wait_flowing(fe, lab, again, "A and B to go on receiving after the restart")
        since_restart = lab.log_text()[start:]
        assert "queue broken" not in since_restart
        # testpmd's base 0 disagreed with rings that had moved: resynchronised, and said so
        assert "resuming at the used ring's index" in since_restart
        lab.check_daemon()
