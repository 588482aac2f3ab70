"""The TX ring poller's decisions (``daemon/poller.py``) with a fake device, loop and clock;
the real thing runs in tests/component/test_polling.py and the testpmd interop tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from vhost_ipvlan.daemon import poller
from vhost_ipvlan.daemon.poller import Poller


class Loop:
    def __init__(self) -> None:
        self.soon: list[Callable[[], object]] = []

    def call_soon(self, callback: Callable[..., object], *args: Any) -> None:
        self.soon.append(lambda: callback(*args))

    def run_once(self) -> None:
        soon, self.soon = self.soon, []
        for cb in soon:
            cb()


class Device:
    def __init__(self, frames: int = 0, fail: bool = False) -> None:
        self.frames, self.fail = frames, fail
        self.drains = self.kicks_asked = 0
        self.poller: Poller | None = None

    def tx_pending(self) -> bool:
        return self.frames > 0

    def drain_tx(self) -> None:
        if self.fail:
            raise RuntimeError("a bug")
        self.drains += 1
        self.frames = 0
        assert self.poller is not None
        self.poller.watch(self)  # type: ignore[arg-type]  # what NetDevice._drain does

    def want_tx_kicks(self) -> None:
        self.kicks_asked += 1


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 0.00001  # every look at the clock takes 10 us
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(poller, "_clock", c)
    return c


def make(poll_us: int, *devices: Device) -> tuple[Poller, Loop, list[int]]:
    loop = Loop()
    looks: list[int] = []
    p = Poller(loop, lambda: looks.append(1), poll_us)  # type: ignore[arg-type]
    for d in devices:
        d.poller = p
    return p, loop, looks


def test_a_device_is_drained_while_frames_come_then_asks_for_kicks(clock: Clock) -> None:
    d = Device()
    p, loop, looks = make(1000, d)
    assert p.active
    p.watch(d)  # type: ignore[arg-type]
    d.frames = 3
    loop.run_once()  # one slice: drains, then polls on
    assert d.drains == 1 and p.polls(d) and d.kicks_asked == 0  # type: ignore[arg-type]
    assert looks  # the wire was looked at between passes
    assert loop.soon  # the next slice is scheduled: the loop runs in between
    clock.now += 0.002  # 2 ms without a frame: more than the window
    loop.run_once()
    assert not p.polls(d) and d.kicks_asked == 1 and not loop.soon  # type: ignore[arg-type]


def test_a_slice_ends_and_gives_the_loop_back_while_frames_keep_coming(clock: Clock) -> None:
    class Busy(Device):
        def tx_pending(self) -> bool:
            return True  # a guest that never stops

    d = Busy()
    p, loop, _ = make(1000, d)
    p.watch(d)  # type: ignore[arg-type]
    start = clock.now
    loop.run_once()
    assert clock.now - start < poller.SLICE + 0.001 and loop.soon and p.polls(d)  # type: ignore[arg-type]


def test_poll_us_zero_forgets_every_device(clock: Clock) -> None:
    d = Device()
    p, _, _ = make(1000, d)
    p.watch(d)  # type: ignore[arg-type]
    p.set_poll_us(0)
    assert not p.active and not p.polls(d) and d.kicks_asked == 1  # type: ignore[arg-type]


def test_a_bug_while_polling_hands_every_ring_back_to_kicks(clock: Clock) -> None:
    good, bad = Device(), Device(frames=1, fail=True)
    p, loop, _ = make(1000, good, bad)
    p.watch(good)  # type: ignore[arg-type]
    p.watch(bad)  # type: ignore[arg-type]
    loop.run_once()
    assert not p.polls(good) and not p.polls(bad)  # type: ignore[arg-type]
    assert good.kicks_asked == bad.kicks_asked == 1 and not loop.soon
