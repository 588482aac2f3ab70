"""Which rings ask the driver for kicks (``used.flags`` NO_NOTIFY, for drivers without
EVENT_IDX such as DPDK's), on the real daemon with fake front-ends that, like DPDK's,
kick only when the device asks for it. Needs root (namespaces).
"""

from __future__ import annotations

import os
import signal
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.support.frontend import FakeFrontend
from tests.support.lab import MASTER, FrontendLab, SlaveSpec
from tests.support.wait import wait_until
from vhost_ipvlan.control.client import Client
from vhost_ipvlan.daemon import fastpath
from vhost_ipvlan.vhost_user.session import DEFAULT_FEATURES
from vhost_ipvlan.virtio import net
from vhost_ipvlan.virtio.virtqueue import VRING_USED_F_NO_NOTIFY

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
A_IP, B_IP = "192.0.2.10", "192.0.2.11"
NO_EVENT_IDX = DEFAULT_FEATURES & ~net.bit(net.F_RING_EVENT_IDX)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[FrontendLab]:
    with FrontendLab(tmp_path, [SlaveSpec("a", [f"{A_IP}/24"], MAC_A), SlaveSpec("b", [f"{B_IP}/24"], MAC_B)]) as lab:
        yield lab


def frame(n: int) -> bytes:
    return bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=A_IP, dst=B_IP) / UDP(sport=1, dport=2) / n.to_bytes(4))


def numbers(b: FakeFrontend, got: list[int]) -> list[int]:
    """``got`` with the numbers of a's frames b received since the last call added."""
    to_b = bytes.fromhex(MAC_B.replace(":", ""))
    got += [int.from_bytes(f[-4:]) for _, f in b.receive() if f[:6] == to_b and f[12:14] == b"\x08\x00"]
    return got


def test_rx_rings_ask_for_no_kicks_and_tx_rings_do(lab: FrontendLab) -> None:
    """Frames are never queued for RX buffers, so an RX ring asks for no kicks (a DPDK
    front-end refilling it makes no system call); a TX ring asks for them, and frames
    sent with a kick each arrive."""
    a, b = lab.frontend("a", features=NO_EVENT_IDX), lab.frontend("b", features=NO_EVENT_IDX)
    wait_until(lambda: b.rxq.used_flags() == VRING_USED_F_NO_NOTIFY, 10, what="b's RX ring: NO_NOTIFY")
    assert a.rxq.used_flags() == VRING_USED_F_NO_NOTIFY
    got: list[int] = []
    for n in range(20):
        assert a.transmit(frame(n), polite=True)  # a's TX ring asks for kicks
        wait_until(lambda: len(numbers(b, got)) > n, 10, what=f"frame {n} at b")  # noqa: B023
    assert got == list(range(20))


def test_a_stale_no_notify_on_a_tx_ring_is_cleared(lab: FrontendLab) -> None:
    """A TX ring whose used.flags still says NO_NOTIFY (left by an earlier back-end that
    polled it) would never be kicked: the daemon clears it when the ring starts, so the
    guest's frames flow."""
    b = lab.frontend("b", features=NO_EVENT_IDX)
    a = FakeFrontend(NO_EVENT_IDX)
    lab.frontends.append(a)
    struct.pack_into("<H", a.mem, a.txq.used, VRING_USED_F_NO_NOTIFY)
    ups = lab.log_text().count("slave a: up")
    a.connect(str(lab.sock("a")))
    a.setup()
    a.sync()
    lab.wait_log("slave a: up", ups)
    assert a.txq.used_flags() == 0
    assert a.transmit(frame(7), polite=True)
    got: list[int] = []
    wait_until(lambda: 7 in numbers(b, got), 10, what="a's frame at b")


def test_a_stopped_rx_ring_asks_for_kicks_again(lab: FrontendLab) -> None:
    """GET_VRING_BASE hands the RX ring back to the front-end (a migration, a switch of
    back-ends): the NO_NOTIFY the daemon set is cleared, for a next back-end that waits
    for RX kicks when it runs out of buffers."""
    b = lab.frontend("b", features=NO_EVENT_IDX)
    wait_until(lambda: b.rxq.used_flags() == VRING_USED_F_NO_NOTIFY, 10, what="b's RX ring: NO_NOTIFY")
    b.vring_base(0)
    assert b.rxq.used_flags() == 0


@pytest.mark.skipif(not fastpath.accelerated(), reason="the C accelerator is not built")
@pytest.mark.parametrize("core", ["1", "0"], ids=["core", "VHOST_IPVLAN_CORE=0"])
def test_the_main_loop_serves_a_guests_kicks_in_c(tmp_path: Path, core: str) -> None:
    """With one worker (the default) the main loop waits with a WorkerCore too: once
    Python drained a's ring, a's next kicks are served in C, nothing else running between
    them; every frame arrives once, in order, and is counted as before.
    ``VHOST_IPVLAN_CORE=0`` (for measuring the difference) puts every kick through Python.
    Adaptive polling is on by default (32 us), but a's frames come milliseconds apart:
    a's ring is not polled for, and each frame is kicked."""
    slaves = [SlaveSpec("a", [f"{A_IP}/24"], MAC_A), SlaveSpec("b", [f"{B_IP}/24"], MAC_B)]
    with FrontendLab(tmp_path, slaves, ipv6=False, daemon_env={"VHOST_IPVLAN_CORE": core}) as lab:
        assert ("adaptive polling: up to 32 us" in lab.log_text()) == (core == "1")
        a, b = lab.frontend("a"), lab.frontend("b")
        got: list[int] = []
        for n in range(30):  # a kick each, each waited for, no stats call between (it drops plans)
            assert a.transmit(frame(n))
            wait_until(lambda: len(numbers(b, got)) > n, 10, what=f"frame {n} at b")  # noqa: B023
        assert got == list(range(30))
        stats = Client(lab.control, timeout=20).call("stats")[MASTER]["slaves"]
        assert stats["a"]["tx_packets"] == 30 and stats["b"]["rx_packets"] == 30
        served = stats["a"]["queues"]["kicks_served_in_c"]
        assert served >= 10 if core == "1" else served == 0, stats["a"]["queues"]


@pytest.mark.skipif(not fastpath.accelerated(), reason="the C accelerator is not built")
@pytest.mark.parametrize("features", [None, NO_EVENT_IDX], ids=["event_idx", "no_event_idx"])
def test_busy_polling_takes_frames_the_driver_did_not_kick_for(tmp_path: Path, features: int | None) -> None:
    """``[daemon] busy_poll_us``: after serving a's kick the daemon keeps polling a's ring,
    which asks for no kicks meanwhile, so a driver that kicks only when asked (DPDK's,
    a kernel's) makes no system call for the next frames; they all arrive, in order, and
    are counted. Once a's frames stop, the ring asks for kicks again, and a reload
    that turns polling off applies at once."""
    slaves = [SlaveSpec("a", [f"{A_IP}/24"], MAC_A), SlaveSpec("b", [f"{B_IP}/24"], MAC_B)]
    with FrontendLab(tmp_path, slaves, ipv6=False, config_head="[daemon]\nbusy_poll_us = 1000000\n") as lab:
        a, b = lab.frontend("a", features=features), lab.frontend("b", features=features)
        event_idx = features is None
        assert "busy polling: 1000000 us" in lab.log_text()
        got: list[int] = []
        kicked = []
        for n in range(20):
            kicked.append(a.transmit(frame(n), polite=True))
            wait_until(lambda: len(numbers(b, got)) > n, 10, what=f"frame {n} at b")  # noqa: B023
        assert got == list(range(20))
        # a kick Python serves (a plan is made after it), one the plan serves, then the daemon
        # polls; each time the main loop wakes for something else (a timer) its plan is
        # dropped, the ring asks for kicks and the next two frames are kicked again
        assert kicked[:2] == [True, True] and sum(kicked) <= 10, kicked
        wait_until(lambda: a.txq.asks_for_kick(event_idx), 10, what="a's ring to ask for kicks again")
        stats = Client(lab.control, timeout=20).call("stats")[MASTER]["slaves"]
        assert stats["a"]["tx_packets"] == 20 and stats["b"]["rx_packets"] == 20

        lab.config.write_text(lab.config.read_text().replace("busy_poll_us = 1000000", "busy_poll_us = 0"))
        assert lab.daemon is not None
        reloads = lab.log_text().count("reloaded")
        lab.daemon.send_signal(signal.SIGHUP)
        lab.wait_log("reloaded", reloads)
        for n in range(20, 25):  # the ring asks for kicks again before b sees a frame: each one kicked
            assert a.transmit(frame(n), polite=True)
            wait_until(lambda: len(numbers(b, got)) > n, 10, what=f"frame {n} at b")  # noqa: B023
        assert got == list(range(25))
