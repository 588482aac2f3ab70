"""``[daemon] poll_us``: the daemon polls a guest's TX ring while frames flow, and asks
for kicks again once it has been idle (``daemon/poller.py``), on the real daemon with
fake front-ends that, like DPDK's, negotiate no EVENT_IDX and kick only when the
device's ``used.flags`` asks for it. Needs root (namespaces).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.support.frontend import FakeFrontend
from tests.support.lab import FrontendLab, SlaveSpec
from tests.support.wait import wait_until
from vhost_ipvlan.vhost_user.session import DEFAULT_FEATURES
from vhost_ipvlan.virtio import net
from vhost_ipvlan.virtio.virtqueue import VRING_USED_F_NO_NOTIFY

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
A_IP, B_IP = "192.0.2.10", "192.0.2.11"
NO_EVENT_IDX = DEFAULT_FEATURES & ~net.bit(net.F_RING_EVENT_IDX)
WINDOW_US = 10_000  # the longest window: polling stays on between a test's frames


class Lab(FrontendLab):
    def __init__(self, tmp: Path, poll_us: int) -> None:
        super().__init__(tmp, [SlaveSpec("a", [f"{A_IP}/24"], MAC_A), SlaveSpec("b", [f"{B_IP}/24"], MAC_B)],
                         config_head=f"[daemon]\npoll_us = {poll_us}\n")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path, WINDOW_US) as lab:
        yield lab


def frame(n: int) -> bytes:
    return bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=A_IP, dst=B_IP) / UDP(sport=1, dport=2) / n.to_bytes(4))


def received(b: FakeFrontend, got: list[int]) -> int:
    for _, f in b.receive():
        if f[:6] == bytes.fromhex(MAC_B.replace(":", "")) and f[12:14] == b"\x08\x00":
            got.append(int.from_bytes(f[-4:]))
    return len(got)


def polled(lab: Lab) -> bool:
    return bool(lab.slave_stats("a")["queues"]["tx_polled"])


def test_a_polled_ring_loses_no_frame_and_asks_for_kicks_again_when_idle(lab: Lab) -> None:
    """Frames keep flowing while a's ring is polled (a kicks only when asked), the ring
    is seen polled (NO_NOTIFY, ``tx_polled``), and once a stops, the daemon asks for kicks
    again: a frame sent after that, with a kick, arrives."""
    a, b = lab.frontend("a", features=NO_EVENT_IDX), lab.frontend("b", features=NO_EVENT_IDX)
    got: list[int] = []
    sent = [0]

    def send_and_look() -> bool:
        a.transmit(frame(sent[0]), polite=True)
        sent[0] += 1
        return bool(a.txq.used_flags() & VRING_USED_F_NO_NOTIFY) and polled(lab)

    wait_until(send_and_look, 20, 0.001, "a's TX ring polled while a transmits")
    for _ in range(200):  # a burst, most of it without kicks
        a.transmit(frame(sent[0]), polite=True)
        sent[0] += 1
    wait_until(lambda: received(b, got) == sent[0], 20, what=f"the {sent[0]} frames at b")
    assert got == list(range(sent[0]))  # in order, none lost
    wait_until(lambda: not polled(lab) and a.txq.used_flags() == 0, 20, what="a's ring asking for kicks again")
    assert a.transmit(frame(sent[0]), polite=True)  # it kicks
    wait_until(lambda: received(b, got) == sent[0] + 1, 20, what="the frame after the idle window")
    assert lab.slave_stats("a")["drops"] == {}


def test_rx_rings_never_ask_for_kicks(lab: Lab) -> None:
    """Frames are never queued for RX buffers, so an RX ring asks for no kicks: a DPDK
    front-end refilling it makes no system call for it."""
    b = lab.frontend("b", features=NO_EVENT_IDX)
    wait_until(lambda: b.rxq.used_flags() == VRING_USED_F_NO_NOTIFY, 10, what="b's RX ring: NO_NOTIFY")


def reconnect(lab: Lab, fe: FakeFrontend, name: str) -> None:
    """``fe`` connects again with the same guest memory and rings (QEMU's reconnect)."""
    ups = lab.log_text().count(f"slave {name}: up")
    assert fe.sock is not None
    fe.sock.close()
    fe.connect(str(lab.sock(name)))
    fe.setup()
    fe.sync()
    lab.wait_log(f"slave {name}: up", ups)


def test_a_stale_no_notify_from_a_killed_daemon_is_cleared(tmp_path: Path) -> None:
    """The daemon is killed (SIGKILL) while it polls a's ring, leaving NO_NOTIFY in a's
    memory; a daemon that does not poll clears it when a reconnects, so a's kicks (and
    frames) flow again."""
    with Lab(tmp_path, WINDOW_US) as lab:
        a, b = lab.frontend("a", features=NO_EVENT_IDX), lab.frontend("b", features=NO_EVENT_IDX)

        def send_and_look() -> bool:
            a.transmit(frame(0), polite=True)
            return bool(a.txq.used_flags() & VRING_USED_F_NO_NOTIFY)

        wait_until(send_and_look, 20, 0.001, "a's TX ring polled")
        assert lab.daemon is not None
        lab.daemon.send_signal(signal.SIGKILL)
        lab.daemon.wait(10)
        assert a.txq.used_flags() == VRING_USED_F_NO_NOTIFY
        lab.config_head = ""  # the next daemon does not poll
        lab.config.write_text(lab.config_text())
        lab.start_daemon()
        reconnect(lab, a, "a")
        reconnect(lab, b, "b")
        assert a.txq.used_flags() == 0
        b.receive()  # what came before
        assert a.transmit(frame(7), polite=True)
        got: list[int] = []
        wait_until(lambda: received(b, got) > 0 and 7 in got, 20, what="a's frame at b")


def test_poll_us_out_of_range_is_refused(tmp_path: Path) -> None:
    from vhost_ipvlan.config import parse
    from vhost_ipvlan.errors import ConfigError
    for bad in (-1, 10_001, True, "50"):
        with pytest.raises(ConfigError, match=r"^daemon\.poll_us: .* is not a number of microseconds from 0 to 10000"):
            parse({"daemon": {"poll_us": bad}, "port": []})
