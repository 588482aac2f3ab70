"""Worker threads for the data path (``[daemon] workers = N``).

With one worker (the default) everything runs on the main loop, as it always has.
With N >= 2, N threads each run an event loop, and every port (a master, its
slaves' sockets, connections, kick descriptors, uplink, host link and timers) is
given to one of them when it is made: the worker with the fewest ports. The main
loop keeps the control and metrics servers, netlink, SIGHUP and the RX-filter
watches, and makes and removes ports and slaves as before.

Rule (what keeps the rest of the daemon free of locks): **a worker runs Python only
while it holds its gate, and the main loop holds every gate whenever it runs.** So
the main loop and a worker never run at the same time, and whatever the main loop
does to a port (a control request, a master event, ``stats``) sees it between two of
its worker's loop iterations; two workers do run at once, each on its own ports, one
at a time in Python (the GIL) but together in the kernel and in the C accelerator's
bursts (which let the GIL go while a frame needs no Python object: the copies and
``sendmmsg``). What a port's code calls outside its port goes
to the main loop with ``call_soon_threadsafe`` (``Ownership.learned``).

A worker lets go of its gate only while it waits for events (its selector's
``select``); the main loop takes every gate when its own wait ends and lets go of them
when it waits again, after waking each worker (whose wait may have been computed
before the main loop added a timer or a ready callback to its loop). A turnstile
lets the main loop in ahead of a busy worker: once the main loop wants a gate, the
worker waits at the turnstile after its current iteration, so a control request
waits at most one iteration of each worker (bursts are bounded).

The main loop must never wait for a worker while it holds the gates (no ``join``, no
``run_coroutine_threadsafe(...).result()``): ``stop`` lets a worker's gate go first.

With the C accelerator a worker's gate and its selector's wait are ``_fastpath.c``'s
``WorkerCore`` (``_CoreSelector``; ``Gate`` and ``_GatedSelector`` without it): the
same gate in C, and a wait that serves the kicks of *planned* TX rings without the GIL
(every hand-over of the GIL between two workers costs more than a burst). A plan
(``fastpath.plan_args``) is made just before the wait for each device ``drain_tx``
marked (``wanted``; ``more``: its budget ended, chains wait) and is written back and
dropped before any Python code runs again: when the wait returns, and when the main
loop takes the gate. Everything a plan does not cover is handed back as an ordinary
event (see the theory in ``_fastpath.c`` and docs/design.md §5).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import select
import selectors
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..config import DEFAULT_ADAPTIVE_POLL_US, MAX_WORKERS
from ..drops import DropReason
from . import fastpath

if TYPE_CHECKING:
    from .device import NetDevice

log = logging.getLogger(__name__)

#: how long ``stop`` waits for a worker's loop to end
STOP_TIMEOUT = 5.0


def core_wanted() -> bool:
    """A loop that serves ports waits with a ``WorkerCore`` when C has one and
    ``VHOST_IPVLAN_CORE`` is not ``0`` (that setting is for measuring the difference)."""
    return fastpath.ext is not None and os.environ.get("VHOST_IPVLAN_CORE") != "0"


class Gate:
    """Mutual exclusion between one worker and the main loop (see the module's rule)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._turnstile = threading.Lock()

    def enter(self) -> None:
        """Worker: take the gate, after the main loop if it is waiting for it."""
        with self._turnstile:
            pass
        self._lock.acquire()

    def leave(self) -> None:
        """Worker: let the gate go (it waits for events)."""
        self._lock.release()

    def hold(self) -> None:
        """Main loop: take the gate once the worker's current iteration ends."""
        with self._turnstile:
            self._lock.acquire()

    def let_go(self) -> None:
        """Main loop: let the gate go (it waits for events)."""
        self._lock.release()


class _GatedSelector(selectors.EpollSelector):
    """A selector that lets a thread's gate(s) go while it waits (``release``) and takes
    them back after (``retake``): a worker's own gate, or the main loop's every gate."""

    def __init__(self, release: Callable[[], None], retake: Callable[[], None]) -> None:
        super().__init__()
        self._release, self._retake = release, retake

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self._release()
        try:
            ready = super().select(timeout)
        finally:
            self._retake()
        # The other side may have run between the wait and the gate: an event of a
        # registration it removed or replaced is stale (its descriptor may even be another
        # socket's now, and asyncio would remove that one's reader for a cancelled handle).
        # Epoll is level-triggered: a current registration still ready is reported again.
        current = self.get_map()
        return [(key, events) for key, events in ready if current.get(key.fd) is key]


class _CoreSelector(selectors.EpollSelector):
    """A worker's selector with the C accelerator: its wait is ``WorkerCore.wait``, which
    serves the kicks of planned TX rings without the GIL (``_fastpath.c``'s theory of
    WorkerCore) and returns the rest. Before each wait it plans the devices whose rings
    Python drained since the last one (``wanted``, filled by ``NetDevice.drain_tx``): a
    plan lives only until the wait returns (or the main loop takes the gate), so a device
    is planned again after its next kick went through Python."""

    def __init__(self) -> None:
        super().__init__()
        assert fastpath.ext is not None
        #: devices to plan before the next wait, and those of them with chains waiting
        #: (a drain's budget ended: ``NetDevice.schedule_drain``; the core puts back those
        #: of a plan dropped before it served them, by the main loop's ``hold`` mid-wait)
        self.wanted: set[NetDevice] = set()
        self.more: set[NetDevice] = set()
        #: both, as its ports' ``PortDatapath.plans``
        self.plans = self.wanted, self.more
        self.core = fastpath.ext.WorkerCore(self.fileno(), DropReason.CALL_FAILED, DropReason.UPLINK_SEND_FAILED,
                                            DropReason.RX_RING_FULL, self.more)

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = super().register(fileobj, events, data)
        self._watch(key)
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = super().modify(fileobj, events, data)
        self._watch(key)
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        key = super().unregister(fileobj)
        self.core.watch_quiet(key.fd, False)
        return key

    def _watch(self, key: selectors.SelectorKey) -> None:
        """Tell the core whether ``key``'s only handler is one that just reads its
        descriptor (``quiet_reader``: an RX ring's kick)."""
        reader, writer = key.data if isinstance(key.data, tuple) and len(key.data) == 2 else (None, None)
        callback = getattr(reader, "_callback", None)
        self.core.watch_quiet(key.fd, writer is None and getattr(callback, "quiet_reader", False))

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        more = set(self.more)
        wanted = self.wanted | more
        self.wanted.clear()
        self.more.clear()
        for dev in wanted:
            try:
                args = fastpath.plan_args(dev)
                if args is not None:
                    self.core.register(*args, dev in more)
                    more.discard(dev)
            except (ValueError, OverflowError, TypeError) as e:  # beyond a plan's size: Python serves it
                log.debug("slave %s: no plan: %s", dev.slave.name, e)
            except Exception as e:  # a bug must cost the plan, not the worker: Python serves it
                from .device import internal_error_log  # device imports what imports this module

                internal_error_log(f"slave {dev.slave.name}: no plan for the worker's core", e)
        for dev in more:  # chains waiting and no plan: Python drains them, at once
            dev.dp.loop.call_soon(dev.drain_tx)
            timeout = 0
        ready: list[tuple[int, int]] = self.core.wait(timeout)
        current = self.get_map()
        out = []
        for fd, event in ready:
            key = current.get(fd)
            if key is None:
                continue
            events = (selectors.EVENT_WRITE if event & ~select.EPOLLIN else 0) | (
                selectors.EVENT_READ if event & ~select.EPOLLOUT else 0)
            out.append((key, events & key.events))
        return out


class _WorkerLoop(asyncio.SelectorEventLoop):
    """A worker's loop: in asyncio's debug mode it accepts calls from the main loop's
    thread too, which holds the worker's gate whenever it runs (the module's rule)."""

    def __init__(self, selector: selectors.BaseSelector, main_thread: int) -> None:
        super().__init__(selector)
        self._main_thread = main_thread

    def _check_thread(self) -> None:
        if threading.get_ident() != self._main_thread:
            super()._check_thread()  # type: ignore[misc]


_PR_SET_NAME = 15


def _name_thread(name: str) -> None:
    """Give the calling thread ``name`` (at most 15 bytes) as the kernel shows it
    (``top -H``, ``/proc/PID/task/TID/comm``); nothing if libc cannot be had."""
    try:
        ctypes.CDLL(None).prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)  # the process's libc: no search
    except (OSError, AttributeError):
        pass


def _nothing() -> None:
    """A callback that only wakes a loop."""


class Worker:
    """One thread running an event loop for the ports given to it."""

    def __init__(self, index: int, on_death: Callable[[Worker], None] | None = None, core: bool = True) -> None:
        self.index = index
        selector: selectors.BaseSelector
        #: its selector's sets of devices to plan and of those with chains waiting
        #: (``_CoreSelector``; None: no C accelerator): the ports' ``PortDatapath.plans``
        self.plans: tuple[set[NetDevice], set[NetDevice]] | None = None
        #: its selector's WorkerCore (None: no C accelerator)
        self.core: Any = None
        if core and core_wanted():
            selector = _CoreSelector()
            self.gate: Gate | Any = selector.core  # the same four methods, in C
            self.plans = selector.plans
            self.core = selector.core
        else:
            self.gate = Gate()
            selector = _GatedSelector(self.gate.leave, self.gate.enter)
        self.gate.hold()  # the main loop runs: the worker waits until it waits
        self.loop = _WorkerLoop(selector, threading.get_ident())
        self.ports = 0
        #: the loop ended by an exception (its ports are served by nobody)
        self.dead = False
        self._on_death = on_death
        self._thread = threading.Thread(target=self._run, name=f"vhost-ipvlan worker {index}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        _name_thread(f"vi-worker-{self.index}")
        self.gate.enter()
        try:
            self.loop.run_forever()
        except BaseException:
            self.dead = True
            log.critical("worker %d stopped by an internal error; its ports are served by nobody",
                         self.index, exc_info=True)
            if self._on_death is not None:
                self._on_death(self)
        finally:
            self.gate.leave()

    def stop(self) -> bool:
        """Main loop (holding the gate): end the thread; False if it did not end in time."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.gate.let_go()
        self._thread.join(STOP_TIMEOUT)
        if self._thread.is_alive():
            log.error("worker %d did not stop within %.0f s", self.index, STOP_TIMEOUT)
            return False
        self.loop.close()
        return True


class Workers:
    """The data path's threads: ``loop_for_port`` gives a new port its loop.

    ``count == 1``: no thread; every port runs on ``main`` (set once the main loop
    exists). ``count >= 2``: that many workers; the main loop must be made with
    ``main_selector()`` (it holds their gates while it runs) and be running, or
    about to run, on the thread that made this object."""

    def __init__(self, count: int = 1, core: bool = True) -> None:
        if not 1 <= count <= MAX_WORKERS:
            raise ValueError(f"workers: {count} is not between 1 and {MAX_WORKERS}")
        self.count = count
        self.main: asyncio.AbstractEventLoop | None = None
        #: called on the main loop when a worker's loop died (the daemon stops: its
        #: ports would be served by nobody)
        self.on_death: Callable[[int], None] | None = None
        self._workers = [Worker(i, self._died, core) for i in range(count)] if count > 1 else []
        self._held = bool(self._workers)
        self._core = core
        #: with one worker: the main loop's selector, once ``main_selector`` gave it a
        #: ``_CoreSelector`` (its plan sets: ``wanted``; its WorkerCore: ``cores``)
        self._main: _CoreSelector | None = None
        #: ``[daemon]``'s defaults until the topology applies a configuration
        self._busy_poll_us = 0
        self._adaptive_poll_us = 0
        self.adaptive_poll_us = DEFAULT_ADAPTIVE_POLL_US

    @property
    def threads(self) -> int:
        """Worker threads (0 with one worker: the main loop serves the ports)."""
        return self.count if self.count > 1 else 0

    def _died(self, worker: Worker) -> None:
        """On the dead worker's thread."""
        if self.main is not None and self.on_death is not None and not self.main.is_closed():
            self.main.call_soon_threadsafe(self.on_death, worker.index)

    def main_selector(self) -> selectors.BaseSelector:
        """The main loop's selector: with workers, it holds every worker's gate except
        while it waits; with one worker, the main loop serves the ports and waits as a
        worker does, with a ``WorkerCore`` (C serves the planned kicks; nobody else takes
        its gate, which the main thread holds but while it waits) when C has one."""
        if self._workers:
            return _GatedSelector(self.let_go, self.hold)
        if not (self._core and core_wanted()):
            return selectors.DefaultSelector()
        selector = _CoreSelector()
        selector.core.enter()
        selector.core.poll_us = self._busy_poll_us
        selector.core.poll_max_us = self._adaptive_poll_us
        self._main = selector
        return selector

    @property
    def busy_poll_us(self) -> int:
        """``[daemon] busy_poll_us``: how long each loop's WorkerCore polls the rings it
        serves after their last chain (``_fastpath.c``: busy polling). Set from the main
        loop (which holds every worker's gate): it applies at each loop's next wait."""
        return self._busy_poll_us

    @busy_poll_us.setter
    def busy_poll_us(self, us: int) -> None:
        self._busy_poll_us = us
        for core in self.cores():
            core.poll_us = us

    @property
    def adaptive_poll_us(self) -> int:
        """``[daemon] adaptive_poll_us``: the longest window each loop's WorkerCore polls
        for while ``busy_poll_us`` is 0 (``_fastpath.c``: adaptive polling). Set from the
        main loop, as ``busy_poll_us``."""
        return self._adaptive_poll_us

    @adaptive_poll_us.setter
    def adaptive_poll_us(self, us: int) -> None:
        self._adaptive_poll_us = us
        for core in self.cores():
            core.poll_max_us = us

    def cores(self) -> list[Any]:
        """The loops' WorkerCores: none without the C accelerator (busy polling is C's)."""
        cores = [w.core for w in self._workers if w.core is not None]
        return cores + ([self._main.core] if self._main is not None else [])

    # -- the main loop's side of the gates ---------------------------------------

    def let_go(self) -> None:
        if not self._held:
            return
        self._held = False
        for w in self._workers:
            if not w.dead:
                w.loop.call_soon_threadsafe(_nothing)  # its wait's timeout may predate our changes
            w.gate.let_go()

    def hold(self) -> None:
        if self._held or not self._workers:
            return
        failed: BaseException | None = None
        for w in self._workers:
            try:
                w.gate.hold()  # WorkerCore: its plans written back, the gate taken even if that failed
            except Exception as e:  # every gate must be held before the main loop's Python runs
                failed = failed or e
        self._held = True
        if failed is not None:
            raise failed

    # -- ports ----------------------------------------------------------------------

    def loop_for_port(self) -> tuple[int, asyncio.AbstractEventLoop]:
        """(worker index, its loop) for a new port: the worker with the fewest ports."""
        if not self._workers:
            return 0, self.loop(0)
        w = min(self._workers, key=lambda w: w.ports)
        w.ports += 1
        return w.index, w.loop

    def loop(self, index: int) -> asyncio.AbstractEventLoop:
        """Worker ``index``'s loop (the main loop with one worker)."""
        if not self._workers:
            assert self.main is not None, "Workers.main is not set"
            return self.main
        return self._workers[index].loop

    def wanted(self, index: int) -> tuple[set[NetDevice], set[NetDevice]] | None:
        """Worker ``index``'s sets of devices to plan and of those with chains waiting
        (``_CoreSelector``; with one worker, the main loop's), or None: its kicks all go
        through Python (no C accelerator, or a main loop not made by ``main_selector``)."""
        if self._workers:
            return self._workers[index].plans
        return self._main.plans if self._main is not None else None

    def port_removed(self, index: int) -> None:
        if self._workers:
            self._workers[index].ports -= 1

    def stop(self) -> None:
        """End every worker thread (from the main loop, after every port is closed)."""
        workers, self._workers = self._workers, []
        self._held = False
        for w in workers:
            w.stop()
