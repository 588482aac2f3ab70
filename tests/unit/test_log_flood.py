"""A hostile front-end cannot flood the daemon's log (README, "A hostile front-end").

The daemon's own pieces (``Endpoint``, ``Connection``, ``Session``, ``NetDevice``,
``PortDatapath``) serve one slave on a real unix socket, their event loop in a
thread; a ``FakeFrontend`` is the attacker. Every limiter's clock is frozen
(``lograte._clock``), so what the budgets let through does not depend on how fast
the machine is; moving it on shows the count of suppressed lines.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.frontend import FakeFrontend
from tests.support.inproc import MASTER_MAC, _Uplink
from tests.support.wait import wait_until
from tests.unit.test_routing import Clock
from vhost_ipvlan.daemon import lograte
from vhost_ipvlan.daemon.datapath import PortDatapath
from vhost_ipvlan.daemon.device import NetDevice
from vhost_ipvlan.daemon.endpoint import Endpoint
from vhost_ipvlan.drops import DropReason
from vhost_ipvlan.switch.port import Port
from vhost_ipvlan.virtio.virtqueue import VRING_DESC_F_NEXT

ROUNDS = 200
#: the most lines of one kind a slave may log at once (the largest budget: the session's)
BOUND = 34
_names = itertools.count()


class Daemon:
    """One slave ``name`` served on ``path``; the loop runs in a thread."""

    def __init__(self, path: Path, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.uplink = _Uplink()
        port = Port("m0", MASTER_MAC, "l2", "bridge")
        self.dp = PortDatapath(port, self.uplink, self.loop)
        self.device = NetDevice(port.add_slave(name, [bytes([192, 0, 2, 10])], mac=None), self.dp)
        self.dp.devices[name] = self.device
        self.endpoint = Endpoint(path, "server", self.device, self.loop)
        self.endpoint.start()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def connect(self) -> FakeFrontend:
        fe = FakeFrontend()
        fe.connect(str(self.endpoint.path))
        fe.setup()
        fe.sync()
        return fe

    def disconnect(self, fe: FakeFrontend) -> None:
        fe.close()
        wait_until(lambda: self.endpoint.conn is None, 10, 0.002, what="the daemon closed the connection")

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.endpoint.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        self.uplink.close()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(lograte, "_clock", c, raising=False)
    return c


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "s.sock", f"flood{next(_names)}")  # a slave name of its own: a fresh budget
    try:
        yield d
    finally:
        d.close()


def lines(caplog: pytest.LogCaptureFixture, name: str, needle: str) -> list[str]:
    return [m for r in caplog.records if (m := r.getMessage()).startswith(f"slave {name}: ") and needle in m]


def test_reconnect_loop_logs_a_bounded_number_of_lines(daemon: Daemon, clock: Clock,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A front-end that sets up its rings and disconnects, 200 times: the per-connection
    lines (connected, rings started and stopped, up, down, closed) logged 200 times each."""
    name = daemon.device.slave.name
    caplog.set_level(logging.INFO, logger="vhost_ipvlan")
    for _ in range(ROUNDS):
        daemon.disconnect(daemon.connect())
    kinds = ["front-end connected", "rx queue started", "tx queue started", "rx queue stopped",
             "tx queue stopped", f"slave {name}: up", f"slave {name}: down", "connection closed"]
    for needle in kinds:
        assert 1 <= len(lines(caplog, name, needle)) <= BOUND, needle
    clock.now += 3600  # the budgets refill: the next lines say how many were not logged
    caplog.clear()
    daemon.disconnect(daemon.connect())
    for needle in kinds:
        logged = lines(caplog, name, needle)
        assert len(logged) == 1 and "earlier lines suppressed)" in logged[0], (needle, logged)


def test_messages_in_a_loop_log_a_bounded_number_of_lines(daemon: Daemon, clock: Clock,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """One connection, 200 rounds of: the TX ring restarted at a base that disagrees with
    its used index (a resync), a chain that loops (the queue broken), a new dirty log."""
    name = daemon.device.slave.name
    caplog.set_level(logging.INFO, logger="vhost_ipvlan")
    fe = daemon.connect()
    fe.txq.set_desc(0, fe.buffers, 64, VRING_DESC_F_NEXT, 1)
    fe.txq.set_desc(1, fe.buffers, 64, VRING_DESC_F_NEXT, 0)
    fe.txq.make_available(0)  # the ring's next drain breaks it
    fe.set_log_base()
    assert fe.log is not None
    for i in range(ROUNDS):
        fe.vring_base(1)
        fe.send_ring(1, base=7)
        fe.set_log_base(len(fe.log), [fe.log_fd])
        wait_until(lambda: daemon.device.drops[DropReason.QUEUE_BROKEN] > i, 10,  # noqa: B023
                   what="the TX queue broken")
    kinds = ["tx queue broken by the guest", "tx queue started", "tx queue stopped", "disagrees with the used index",
             "dirty log of"]
    for needle in kinds:
        assert 1 <= len(lines(caplog, name, needle)) <= BOUND, needle
    clock.now += 3600
    caplog.clear()
    fe.vring_base(1)
    fe.send_ring(1, base=7)
    fe.set_log_base(len(fe.log), [fe.log_fd])
    wait_until(lambda: daemon.device.drops[DropReason.QUEUE_BROKEN] > ROUNDS, 10, what="the TX queue broken")
    for needle in kinds:
        logged = lines(caplog, name, needle)
        assert len(logged) == 1 and "earlier lines suppressed)" in logged[0], (needle, logged)
    daemon.disconnect(fe)
