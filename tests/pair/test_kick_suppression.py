"""While the back-end is taking a TX ring's chains it asks the driver for no kicks, as
vhost-net does (``vhost_disable_notify`` in ``handle_tx``): without EVENT_IDX (DPDK's
split rings) ``used.flags`` NO_NOTIFY, else a driver that checks the flags after every
burst makes an ``eventfd`` write per burst, a system call and often a wake-up for
nothing. With EVENT_IDX the driver already kicks once per ``avail_event`` the back-end
writes. The ring asks for kicks again once it is empty (``want_kick``).

Python's drain (``device.py``'s ``_drain``) and a worker's ``WorkerCore`` (``serve_tx``)
both do it; test_worker_core.py checks that they end in the same state.
"""

from __future__ import annotations

import struct
import threading

import pytest

from tests.pair.test_fastpath import make_port
from tests.pair.test_worker_core import Served, udp
from vhost_ipvlan.daemon import device, fastpath
from vhost_ipvlan.drops import counts


@pytest.mark.parametrize("event_idx", [False, True], ids=["no_event_idx", "event_idx"])
def test_a_drain_cut_by_its_budget_asks_for_no_kicks_until_the_ring_is_empty(
        event_idx: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """100 chains, a burst budget of 64: after the first drain the rest waits for the
    drain scheduled next (never a kick), and a driver that kicks only when asked sends
    none; the drain that empties the ring asks for kicks again."""
    monkeypatch.setattr(device, "BURST", 64)
    port = make_port(event_idx=event_idx)
    try:
        fe, dev = port.frontends["a"], port.device("a")
        for _ in range(100):
            fe.transmit(udp())
        dev.drain_tx()
        assert fe.txq.used_idx() == 64
        assert not fe.asks_for_kick()
        assert not fe.transmit(udp(), polite=True)
        dev.drain_tx()  # the scheduled drain
        assert fe.txq.used_idx() == 101
        assert fe.asks_for_kick()
        assert fe.transmit(udp(), polite=True)
        dev.drain_tx()
        assert len(port.frontends["b"].receive()) == 102
    finally:
        port.close()


def test_a_stopped_tx_ring_asks_for_kicks_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """GET_VRING_BASE while the rest of a burst waits for its scheduled drain: the ring
    goes back to the front-end asking for kicks, for a next back-end that waits for them."""
    monkeypatch.setattr(device, "BURST", 64)
    port = make_port(event_idx=False)
    try:
        fe = port.frontends["a"]
        for _ in range(100):
            fe.transmit(udp())
        port.device("a").drain_tx()
        assert not fe.asks_for_kick()
        assert fe.vring_base(1) == 64
        assert fe.asks_for_kick()
    finally:
        port.close()


def test_a_ring_broken_mid_burst_is_handed_back_asking_for_kicks() -> None:
    """The third of five chains points outside guest memory: the ring is broken (the
    guest's fault) in the middle of a burst that asked for no kicks, and is left asking
    for kicks, as a stopped ring, for whatever drives it next."""
    port = make_port(event_idx=False)
    try:
        fe, dev = port.frontends["a"], port.device("a")
        for _ in range(5):
            fe.transmit(udp())
        head = struct.unpack_from("<H", fe.mem, fe.txq.avail + 4 + 2 * 2)[0]
        fe.txq.set_desc(head, 1 << 40, 64, 0)
        dev.drain_tx()
        assert counts(dev.drops)["queue_broken"] == 1
        assert fe.asks_for_kick()
    finally:
        port.close()


def test_a_drain_that_fails_asks_for_kicks_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug (an unexpected exception) ends a drain that asked for no kicks: the ring
    asks for kicks again before the exception goes on, so the driver's next burst is
    kicked (the port's rescan finds the chains already waiting), not left to the rescan."""
    port = make_port(event_idx=False)
    try:
        fe, dev = port.frontends["a"], port.device("a")
        for _ in range(5):
            fe.transmit(udp())

        def fail(*args: object) -> None:
            raise RuntimeError("a bug")

        monkeypatch.setattr(dev, "_publish", fail)
        with pytest.raises(RuntimeError, match="a bug"):
            dev.drain_tx()
        monkeypatch.undo()
        assert fe.asks_for_kick()
    finally:
        port.close()


def test_a_worker_core_asks_for_no_kicks_while_it_serves_a_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    """A driver without EVENT_IDX makes 255 chains available; the core serves them one per
    round (a budget of 1: each round publishes, then looks at epoll). A second thread
    reads the ring the driver's way meanwhile: every time it looks after the first chain
    was taken and before the last one was (used.idx read before and after the flags),
    the ring asks for no kicks. When all are taken it asks again. (The burst lasts about a
    millisecond: on a busy machine the reader may not run within it, and the burst is
    made again, up to 50 times.)"""
    if not fastpath.accelerated():
        pytest.skip("the C accelerator is not built")
    real = fastpath.plan_args
    monkeypatch.setattr(fastpath, "plan_args", lambda d: (*real(d)[:-1], 1))  # type: ignore[index]
    seen: list[bool] = []  # asked for a kick, at each look in the middle of a burst
    for _ in range(50):
        burst(seen)
        if seen:
            break
    assert seen, "the reader never looked in the middle of a burst"
    assert not any(seen)


def burst(seen: list[bool], chains: int = 255) -> None:
    """One burst of ``chains`` served by a WorkerCore while a thread looks at the ring."""
    port = make_port(event_idx=False)
    core = Served(port)
    fe = port.frontends["a"]
    done = threading.Event()

    def look() -> None:
        while not done.is_set():
            before = fe.txq.used_idx()
            asks = fe.asks_for_kick()
            after = fe.txq.used_idx()
            if before >= 1 and after < chains:
                seen.append(asks)

    try:
        for _ in range(chains):
            fe.transmit(udp())
        reader = threading.Thread(target=look)
        reader.start()
        try:
            assert core.wait(0.2) == 0
        finally:
            done.set()
            reader.join(10)
        assert fe.txq.used_idx() == chains
        assert fe.asks_for_kick()
    finally:
        core.close()
        port.close()
