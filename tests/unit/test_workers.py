"""The worker threads' rule (``daemon/workers.py``): the main loop and a worker never run
at the same time, workers do, and what the main loop schedules on a worker's loop runs."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import tomllib
from collections.abc import Iterator

import pytest

from tests.support.wait import wait_until
from vhost_ipvlan import config as cfg
from vhost_ipvlan.daemon import fastpath, fdbudget
from vhost_ipvlan.daemon.workers import Workers
from vhost_ipvlan.errors import ConfigError, NoSuchInterface


@pytest.fixture(params=[True, False], ids=["core", "python"])
def workers(request: pytest.FixtureRequest) -> Iterator[Workers]:
    """Two workers, with the C accelerator's WorkerCore (its gate and wait) when it is
    built, and with the Python gate and selector."""
    if request.param and fastpath.ext is None:
        pytest.skip("the C accelerator is not built")
    w = Workers(2, core=request.param)
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture
def py_workers() -> Iterator[Workers]:
    """Two workers with the Python gate and selector (tests of their internals)."""
    w = Workers(2, core=False)
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


@pytest.mark.parametrize(("key", "value", "message"), [
    ("workers", "0", "0 is not a number of worker threads from 1 to 64"),
    ("workers", "65", "65 is not a number of worker threads from 1 to 64"),
    ("workers", '"2"', "'2' is not a number of worker threads"),
    ("workers", "true", "True is not a number of worker threads"),
    ("busy_poll_us", "-1", "-1 is not a number of microseconds from 0 to 1000000"),
    ("busy_poll_us", "1000001", "1000001 is not a number of microseconds from 0 to 1000000"),
    ("busy_poll_us", "0.5", "0.5 is not a number of microseconds"),
    ("busy_poll_us", "true", "True is not a number of microseconds"),
    ("adaptive_poll_us", "-1", "-1 is not a number of microseconds from 0 to 1000000"),
    ("adaptive_poll_us", '"32"', "'32' is not a number of microseconds from 0 to 1000000"),
])
def test_config_refuses_a_bad_workers_or_busy_poll(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"daemon.{key}: {message}"):
        cfg.parse(tomllib.loads(f"[daemon]\n{key} = {value}\n"))


def test_config_workers_round_trips() -> None:
    c = cfg.parse(tomllib.loads("[daemon]\nworkers = 2\n"))
    assert c.daemon.workers == 2
    assert cfg.parse(cfg.to_data(c)) == c
    assert cfg.parse({}).daemon.workers == 1 and "daemon" not in cfg.to_data(cfg.parse({}))


def test_config_busy_poll_round_trips() -> None:
    c = cfg.parse(tomllib.loads("[daemon]\nbusy_poll_us = 50\n"))
    assert c.daemon.busy_poll_us == 50
    assert cfg.parse(cfg.to_data(c)) == c
    assert cfg.parse({}).daemon.busy_poll_us == 0


def test_config_adaptive_poll_is_32_us_by_default_and_round_trips() -> None:
    assert cfg.parse({}).daemon.adaptive_poll_us == 32 == cfg.DEFAULT_ADAPTIVE_POLL_US
    assert "adaptive_poll_us" not in cfg.to_data(cfg.parse({})).get("daemon", {})
    for value in (0, 500):
        c = cfg.parse(tomllib.loads(f"[daemon]\nadaptive_poll_us = {value}\n"))
        assert c.daemon.adaptive_poll_us == value
        assert cfg.to_data(c)["daemon"] == {"adaptive_poll_us": value} and cfg.parse(cfg.to_data(c)) == c


@pytest.mark.parametrize("count", [1, 2])
def test_busy_polling_applies_to_every_loop_at_once_and_a_failed_reload_puts_it_back(count: int) -> None:
    """``daemon.busy_poll_us`` and ``adaptive_poll_us`` reach every loop's WorkerCore (the
    main loop's with one worker): the adaptive default from the start, both on apply;
    they go back to what they were when the rest of the reload fails."""
    from vhost_ipvlan.config import Config, DaemonConfig, PortConfig
    from vhost_ipvlan.daemon.topology import Topology

    if fastpath.ext is None:
        pytest.skip("the C accelerator is not built")
    w = Workers(count)
    loop = asyncio.SelectorEventLoop(w.main_selector())
    try:
        assert len(w.cores()) == count
        assert [(c.poll_us, c.poll_max_us) for c in w.cores()] == [(0, 32)] * count
        topo = Topology(loop, w)
        topo.apply(Config((), DaemonConfig(workers=count)))
        assert [(c.poll_us, c.poll_max_us) for c in w.cores()] == [(0, 32)] * count
        topo.apply(Config((), DaemonConfig(workers=count, adaptive_poll_us=0)))
        assert [(c.poll_us, c.poll_max_us) for c in w.cores()] == [(0, 0)] * count
        topo.apply(Config((), DaemonConfig(workers=count, busy_poll_us=40, adaptive_poll_us=7)))
        assert [(c.poll_us, c.poll_max_us) for c in w.cores()] == [(40, 7)] * count
        with pytest.raises(NoSuchInterface):  # nothing of it applies
            topo.apply(Config((PortConfig("vi-no-such-if", "l2", "bridge", ()),),
                              DaemonConfig(workers=count, busy_poll_us=90, adaptive_poll_us=0)))
        assert [(c.poll_us, c.poll_max_us) for c in w.cores()] == [(40, 7)] * count
        assert topo.config.daemon.busy_poll_us == 40 and topo.config.daemon.adaptive_poll_us == 7
    finally:
        w.let_go()
        w.stop()
        loop.close()


class _RecordingEpoll:
    """Stands in for a selector's epoll object: ``last`` is what its last poll returned."""

    def __init__(self, selector: object) -> None:
        self._epoll = selector._selector  # type: ignore[attr-defined]
        self.last: list[int] = []
        selector._selector = self  # type: ignore[attr-defined]

    def poll(self, *args: object) -> list[tuple[int, int]]:
        got: list[tuple[int, int]] = self._epoll.poll(*args)
        self.last = [fd for fd, _ in got]
        return got

    def __getattr__(self, name: str) -> object:
        return getattr(self._epoll, name)


class _Watched:
    """Wraps what a worker's selector does with its gate: ``state`` is polling (in its
    select), waiting (select returned, at the gate) or running."""

    def __init__(self, selector: object) -> None:
        self.cond = threading.Condition()
        self.state = "running"
        enter, leave = selector._retake, selector._release  # type: ignore[attr-defined]

        def _enter() -> None:
            with self.cond:
                self.state = "waiting"
                self.cond.notify_all()
            enter()
            self.state = "running"

        def _leave() -> None:
            self.state = "polling"
            leave()

        selector._retake = _enter  # type: ignore[attr-defined]
        selector._release = _leave  # type: ignore[attr-defined]


def test_a_stale_event_of_a_closed_fd_leaves_the_new_fd_with_that_number_alone(py_workers: Workers) -> None:
    """The worker's select builds its event list (fd -> key) before it takes its gate.
    The main loop then runs: it removes a reader from the worker's loop, closes that fd
    and registers a new socket that got the same number (a master deleted and made again:
    its new uplink socket takes the old one's number; a slave re-created). The worker must
    not process the stale event: the old reader is cancelled, so asyncio would call
    ``_remove_reader(fd)`` and remove the NEW reader, never read again (found by review).
    (WorkerCore's wait: test_worker_core.py's ``test_the_main_loop_taking_the_gate_writes_the_plans_back``.)"""
    workers = py_workers
    wloop = workers.loop(0)
    watched = _Watched(wloop._selector)  # type: ignore[attr-defined]
    main = asyncio.SelectorEventLoop(workers.main_selector())
    workers.main = main
    old, old_peer = socket.socketpair()
    old.setblocking(False)
    got_new = threading.Event()
    result: dict[str, object] = {}
    polled = _RecordingEpoll(wloop._selector)  # type: ignore[attr-defined]

    async def scenario() -> None:
        wloop.add_reader(old.fileno(), lambda: old.recv(100))  # main holds the gate
        for _ in range(100):
            while watched.state != "polling":  # until the worker sleeps in its select
                await asyncio.sleep(0.01)
            # (the gates are held from here to the next await)
            old_peer.send(b"kick")
            with watched.cond:
                assert watched.cond.wait_for(lambda: watched.state == "waiting", 5)
            if old.fileno() in polled.last:
                break  # its select returned the kick (not an earlier wake-up)
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the worker's select never returned the kick")
        number = old.fileno()
        result["number"] = number
        wloop.remove_reader(number)
        a, peer = socket.socketpair()
        old.close()
        os.dup2(a.fileno(), number)  # the kernel gives the lowest free number: here, forced
        a.close()
        sock = socket.socket(fileno=number)
        sock.setblocking(False)
        fd = number
        def new_reader() -> None:
            sock.recv(100)
            got_new.set()

        wloop.add_reader(fd, new_reader)
        await asyncio.sleep(0.05)  # the worker runs its iteration with the stale event
        peer.send(b"hello")
        for _ in range(100):
            if got_new.is_set():
                break
            await asyncio.sleep(0.01)
        try:
            wloop._selector.get_key(fd)  # type: ignore[attr-defined]
            result["registered"] = True
        except KeyError:
            result["registered"] = False
        for s in (sock, peer, old_peer):
            s.close()

    try:
        main.run_until_complete(scenario())
    finally:
        main.close()
    assert result["registered"] and got_new.is_set(), ("the new socket's reader was removed by a stale event", result)


def test_in_asyncio_debug_mode_the_main_loop_may_schedule_on_a_worker_loop() -> None:
    """With PYTHONASYNCIODEBUG=1 or ``python -X dev`` every loop is in debug mode, where
    ``call_soon``/``call_later`` on a running loop from another thread raise
    RuntimeError; the main loop, which holds the worker's gate, may (the topology's
    ``dp.start()``: ``call_later`` on the port's worker loop)."""
    os.environ["PYTHONASYNCIODEBUG"] = "1"
    try:
        w = Workers(2)
    finally:
        del os.environ["PYTHONASYNCIODEBUG"]
    main = asyncio.SelectorEventLoop(w.main_selector())
    main.set_debug(True)
    w.main = main
    errors: list[BaseException] = []

    async def scenario() -> None:
        await asyncio.sleep(0.05)  # the worker's loop runs by now
        try:
            w.loop(0).call_later(1.0, lambda: None)
        except RuntimeError as e:
            errors.append(e)

    try:
        main.run_until_complete(scenario())
    finally:
        main.close()
        w.stop()
    assert not errors, errors


def test_a_reload_that_changes_workers_says_it_applies_at_the_next_start(caplog: pytest.LogCaptureFixture) -> None:
    """``[daemon] workers`` is read at start only: a reload (SIGHUP) that changes it records
    it (the state file, for the next start) and says so."""
    from vhost_ipvlan.config import Config, DaemonConfig
    from vhost_ipvlan.daemon.topology import Topology

    loop = asyncio.new_event_loop()
    try:
        topo = Topology(loop)
        topo.apply(Config((), DaemonConfig(workers=2)))
        assert topo.config.daemon.workers == topo.workers.count or any(
            "workers" in r.getMessage() for r in caplog.records), \
            (f"config says workers = {topo.config.daemon.workers}, {topo.workers.count} running, "
             "and nothing logged")
    finally:
        loop.close()


def test_a_worker_whose_loop_dies_is_logged_reported_and_left_alone(workers: Workers,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """If a worker's loop ends by an exception (here its epoll fails), it is logged
    (CRITICAL, with the traceback), the main loop is told (``on_death``: the daemon
    stops, its ports would be served by nobody), and the main loop queues no more
    wake-ups on the dead loop (its ready queue would grow without bound)."""
    w = workers._workers[0]
    wloop = workers.loop(0)
    main = asyncio.SelectorEventLoop(workers.main_selector())
    workers.main = main
    told: list[int] = []
    workers.on_death = told.append

    class _Failing:
        def __init__(self, epoll: object) -> None:
            self._epoll = epoll

        def poll(self, *args: object) -> object:
            raise OSError(9, "simulated epoll failure")

        def __getattr__(self, name: str) -> object:
            return getattr(self._epoll, name)

    async def scenario() -> int:
        sel = wloop._selector  # type: ignore[attr-defined]
        if w.plans is None:  # the Python selector
            sel._selector = _Failing(sel._selector)
        else:  # WorkerCore waits on the descriptor itself: make it one that is no epoll
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, sel.fileno())
            os.close(null)
        for _ in range(200):
            await asyncio.sleep(0.005)
            if not w._thread.is_alive():
                break
        before = len(wloop._ready)  # type: ignore[attr-defined]
        for _ in range(100):
            await asyncio.sleep(0)
        return len(wloop._ready) - before  # type: ignore[attr-defined]

    try:
        grown = main.run_until_complete(scenario())
    finally:
        main.close()
    assert not w._thread.is_alive() and w.dead
    assert any(r.levelname == "CRITICAL" and "worker 0 stopped" in r.getMessage() for r in caplog.records)
    assert told == [0]
    assert grown < 10, f"the dead worker's ready queue grew by {grown} in 100 main-loop iterations"


def test_a_worker_holds_no_more_descriptors_than_the_budget_counts() -> None:
    before = len(os.listdir("/proc/self/fd"))
    w = Workers(4)
    try:
        assert len(os.listdir("/proc/self/fd")) - before <= 4 * fdbudget.WORKER_FDS
    finally:
        w.stop()


def test_a_failed_hold_still_holds_every_gate(workers: Workers) -> None:
    """A gate whose ``hold`` fails (WorkerCore: its plans' write-back raised, the gate taken
    all the same) must not leave the next workers running beside the main loop's Python:
    every gate is held, then the first exception is raised."""
    workers.let_go()
    first, second = workers._workers
    held: list[str] = []

    class _Recording:
        def __init__(self, gate: object, name: str, fail: bool) -> None:
            self._gate, self._name, self._fail = gate, name, fail

        def hold(self) -> None:
            self._gate.hold()  # type: ignore[attr-defined]
            held.append(self._name)
            if self._fail:
                raise RuntimeError("simulated write-back failure")

        def __getattr__(self, name: str) -> object:
            return getattr(self._gate, name)

    gates = first.gate, second.gate
    first.gate = _Recording(gates[0], "first", True)
    second.gate = _Recording(gates[1], "second", False)
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            workers.hold()
        assert held == ["first", "second"] and workers._held
    finally:
        first.gate, second.gate = gates


@pytest.mark.parametrize(("num", "burst", "want"), [(256, 256, 64), (1024, 256, 256), (32768, 256, 256),
                                                     (64, 256, 16), (2, 256, 1), (1, 256, 1)])
def test_a_plans_burst_is_a_quarter_of_its_ring_at_most(num: int, burst: int, want: int) -> None:
    """With DPDK's default 256-entry rings a burst of 256 (device.BURST) made the driver and
    the core take turns; a plan's burst is a quarter of the ring, never more than BURST."""
    assert fastpath.plan_budget(num, burst) == want
