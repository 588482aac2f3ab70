"""The worker threads' rule (``daemon/workers.py``): the main loop and a worker never run
at the same time, workers do, and what the main loop schedules on a worker's loop runs."""

from __future__ import annotations

import asyncio
import threading
import time
import tomllib
from collections.abc import Iterator

import pytest

from tests.support.wait import wait_until
from vhost_ipvlan import config as cfg
from vhost_ipvlan.daemon.workers import Workers
from vhost_ipvlan.errors import ConfigError


@pytest.fixture
def workers() -> Iterator[Workers]:
    w = Workers(2)
    try:
        yield w
    finally:
        w.stop()


def test_ports_go_to_the_worker_with_the_fewest(workers: Workers) -> None:
    first, second, third = (workers.loop_for_port() for _ in range(3))
    assert (first[0], second[0], third[0]) == (0, 1, 0)
    assert first[1] is workers.loop(0) and second[1] is workers.loop(1) and first[1] is not second[1]
    workers.port_removed(1)
    assert workers.loop_for_port()[0] == 1


def test_one_worker_is_the_main_loop() -> None:
    w = Workers(1)
    loop = asyncio.new_event_loop()
    try:
        w.main = loop
        assert w.loop_for_port() == (0, loop) and w.loop(0) is loop
        w.stop()  # nothing to stop
    finally:
        loop.close()


@pytest.mark.parametrize("count", [0, -1, 65])
def test_a_count_out_of_range_is_refused(count: int) -> None:
    with pytest.raises(ValueError, match="between 1 and 64"):
        Workers(count)


def test_the_main_loop_never_runs_while_a_worker_does_and_workers_run_together(workers: Workers) -> None:
    """Each side marks when it is inside a callback and spins a little there: the main
    loop must never find a worker inside, and the two workers must be found inside at
    once (they do not exclude each other)."""
    inside = [False, False]
    overlaps: list[str] = []
    both = threading.Event()
    done = threading.Event()
    counts = [0, 0, 0]

    def worker_tick(i: int) -> None:
        inside[i] = True
        if all(inside):
            both.set()
        time.sleep(0.0005)  # without the GIL, as the C bursts' sendmmsg
        if all(inside):
            both.set()
        inside[i] = False
        counts[i] += 1
        if not done.is_set():
            workers.loop(i).call_soon(worker_tick, i)

    for i in (0, 1):
        workers.loop(i).call_soon_threadsafe(worker_tick, i)

    loop = asyncio.SelectorEventLoop(workers.main_selector())
    workers.main = loop

    def main_tick() -> None:
        end = time.monotonic() + 0.0002
        while time.monotonic() < end:
            if any(inside):
                overlaps.append(f"main ran while worker {inside.index(True)} did")
        counts[2] += 1
        if counts[2] < 300:
            loop.call_later(0.0005, main_tick)
        else:
            loop.stop()

    loop.call_soon(main_tick)
    try:
        loop.run_forever()
    finally:
        done.set()
        loop.close()
    assert not overlaps, overlaps[:3]
    assert counts[0] > 0 and counts[1] > 0 and counts[2] == 300
    wait_until(both.is_set, 10, what="both workers inside a callback at once")


def test_a_timer_the_main_loop_sets_on_a_sleeping_worker_fires(workers: Workers) -> None:
    """The worker sleeps in its wait with no timeout; the main loop adds a timer to its
    loop (as a port's retry or rescan timer): it must fire, not wait for another event."""
    fired = threading.Event()
    loop = asyncio.SelectorEventLoop(workers.main_selector())
    workers.main = loop

    async def main() -> None:
        await asyncio.sleep(0.05)  # the worker is asleep by now
        workers.loop(0).call_later(0.01, fired.set)
        for _ in range(1000):
            if fired.is_set():
                return
            await asyncio.sleep(0.01)

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert fired.is_set()


def test_stop_ends_the_threads_from_the_running_main_loop() -> None:
    w = Workers(2)
    busy = threading.Event()

    def spin() -> None:
        busy.set()
        w.loop(1).call_soon(spin)  # never idle

    w.loop(1).call_soon_threadsafe(spin)
    loop = asyncio.SelectorEventLoop(w.main_selector())
    w.main = loop

    async def main() -> None:
        while not busy.is_set():
            await asyncio.sleep(0.001)
        w.stop()  # as Daemon.close: inside the main loop, holding the gates

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("vhost-ipvlan worker")]


@pytest.mark.parametrize(("value", "message"), [
    ("0", "0 is not a number of worker threads from 1 to 64"),
    ("65", "65 is not a number of worker threads from 1 to 64"),
    ('"2"', "'2' is not a number of worker threads"),
    ("true", "True is not a number of worker threads"),
])
def test_config_refuses_a_bad_workers(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"daemon.workers: {message}"):
        cfg.parse(tomllib.loads(f"[daemon]\nworkers = {value}\n"))


def test_config_workers_round_trips() -> None:
    c = cfg.parse(tomllib.loads("[daemon]\nworkers = 2\n"))
    assert c.daemon.workers == 2
    assert cfg.parse(cfg.to_data(c)) == c
    assert cfg.parse({}).daemon.workers == 1 and "daemon" not in cfg.to_data(cfg.parse({}))
