"""The daemon: configuration in, ports and endpoints up, one event loop, clean exit.

Rules:
- Start-up is all or nothing: every master is checked and opened, every socket
  bound, the nftables rules applied; if any step fails, what was made is undone
  and the error (one line, naming what is wrong) is raised.
- Readiness is announced once every socket listens (``READY=1`` to
  ``$NOTIFY_SOCKET`` when set, and a log line).
- Ports and slaves are made by ``Topology`` (``topology.py``), the same code for
  start-up, control requests (``control/``) and SIGHUP.
- With a control socket, the control API is served on the loop; with a state
  file, every accepted change is written to it before it is acknowledged.
- SIGHUP reloads the configuration file and applies the difference; a bad file
  is logged as one line and changes nothing.
- SIGUSR1 logs every counter as one JSON line (``stats {...}``).
- SIGTERM and SIGINT stop the loop; sockets are unlinked and the nftables rules
  removed on the way out.
- The masters are followed through netlink (``master.MasterMonitor``: link, MTU,
  MAC, disappearance); SIGHUP re-reads their state (``ExecReload``).
- ``metrics``: an optional Prometheus endpoint over ``stats()`` (``metrics.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from pathlib import Path

from .. import config as cfg
from ..config import Config
from ..control import state
from ..control.server import ControlServer
from ..drops import counts
from ..errors import ConfigError, InternalError, UplinkError
from ..switch.port import learned_addresses
from . import fdbudget
from .channel import watch_memory
from .datapath import PortDatapath
from .endpoint import NO_DIRTY_LOG, Endpoint
from .fastpath import accelerated
from .master import MasterMonitor
from .metrics import MetricsServer
from .topology import Topology
from .workers import Workers

log = logging.getLogger(__name__)


def sd_notify(state: str) -> None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s, contextlib.suppress(OSError):
        s.sendto(state.encode(), path)


class Daemon:
    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop, *, config_path: Path | None = None,
                 state_path: Path | None = None, control_path: Path | None = None,
                 metrics: str | None = None, workers: Workers | None = None) -> None:
        self.initial = config
        self.loop = loop
        self.config_path = config_path
        self.state_path = state_path
        self.masters = MasterMonitor(loop)
        self.metrics_address = metrics
        self.metrics: MetricsServer | None = None
        self.topology = Topology(loop, workers)
        self.topology.on_port_added = self.masters.add
        self.topology.on_port_removed = self.masters.remove
        self.masters.read_addresses = self.topology.owners.master_addresses
        self.ports: list[PortDatapath] = self.topology.ports
        self.endpoints: list[Endpoint] = self.topology.endpoints
        self.control: ControlServer | None = None
        if control_path is not None:
            self.control = ControlServer(control_path, self.topology, self.stats)
        self._stop = asyncio.Event()
        #: why the daemon stops on its own (a worker thread died): serve() raises it
        self.failure: str | None = None
        #: close() ran: a SIGHUP still queued (a start-up that failed, a stop) changes nothing
        self.closed = False
        self.topology.workers.on_death = self._worker_died

    @property
    def config(self) -> Config:
        """The configuration being served (changes with control requests and SIGHUP)."""
        return self.topology.config

    def start(self) -> None:
        # before anything can say "ready": a signal's default action would end the daemon
        # (SIGUSR1, SIGHUP), and a supervisor may send one as soon as it reads READY=1; a
        # signal that comes during start-up is handled once the loop runs
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.request_stop)
        self.loop.add_signal_handler(signal.SIGUSR1, self.log_stats)
        self.loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        fdbudget.raise_limit()
        watch_memory(self.loop)  # before any connection: the main loop may close any of them
        self.masters.start()
        self.topology.apply(self.initial)
        if self.state_path is not None:
            self.topology.on_commit = self._write_state
        if self.control is not None:
            self.control.start()
        if self.metrics_address is not None:
            self.metrics = MetricsServer(self.metrics_address, self.stats, self.loop)
        log.info("ready: %d master(s), %d slave(s), data path: %s, %s", len(self.ports), len(self.endpoints),
                 "C accelerator + Python" if accelerated() else "pure Python",
                 "on the main thread" if self.topology.workers.count == 1
                 else f"{self.topology.workers.count} worker threads")
        workers = self.topology.workers
        if not workers.cores():
            pass  # neither applies (busy_poll_us warned when set)
        elif workers.busy_poll_us:
            log.info("busy polling: %d us after a guest's last frame", workers.busy_poll_us)
        elif workers.adaptive_poll_us:
            log.info("adaptive polling: up to %d us after a guest's last burst", workers.adaptive_poll_us)
        if NO_DIRTY_LOG:
            log.warning("VHOST_IPVLAN_TEST_NO_DIRTY_LOG=1: dirty pages are not logged, a live-migrated guest "
                        "loses what the daemon wrote during the migration (a test's negative control only)")
        sd_notify("READY=1")

    def _write_state(self, config: Config) -> None:
        assert self.state_path is not None
        state.write(self.state_path, config)

    def reload(self) -> None:
        """SIGHUP: re-read the masters' state, then apply the configuration file's difference
        (or change nothing)."""
        if self.closed:  # the loop runs once more after close(): nothing to apply to
            return
        log.info("reload (SIGHUP): re-reading the masters' state and %s", self.config_path or "no configuration file")
        self.masters.resync()
        if self.config_path is None:
            log.warning("reload: no configuration file to reload")
            return
        try:
            new = cfg.load(self.config_path)
            self.topology.apply(new)
        except (ConfigError, UplinkError, OSError) as e:
            log.error("reload: %s: %s; nothing changed", self.config_path, " ".join(str(e).split()))
            return
        log.info("reloaded %s: %d master(s), %d slave(s)", self.config_path, len(self.ports), len(self.endpoints))

    def stats(self) -> dict[str, object]:
        """Counters of every master and slave (JSON-ready)."""
        out: dict[str, object] = {}
        for dp in self.ports:
            slaves = {}
            for name, dev in dp.devices.items():
                slaves[name] = {
                    "up": dev.slave.up,
                    "link": self.masters.slave_link(dp.port.master),
                    **dev.counters(),
                    "drops": counts(dev.drops, dev.slave.drops),
                    "multicast": dev.slave.mcast.describe(),
                    "queues": dev.queue_stats(),
                    **({"learned": learned_addresses(dev.slave)} if dev.slave.learn else {}),
                    **({"dhcp": dev.dhcp_stats()} if any(dev.dhcp) else {}),
                    "announcements": dev.announcements,
                    **({"dhcp6": dev.dhcp6_stats()} if any(dev.dhcp6) or dev.ra_sent else {}),
                }
            out[dp.port.master] = {
                "worker": dp.worker,
                "uplink_rx_packets": dp.uplink_rx,
                "uplink_tx_packets": dp.uplink_tx,
                "drops": counts(dp.drops, dp.port.uplink_drops),
                "advertises": dp.port.advertises,
                **({"host_link": {"name": dp.hostlink.name, "rx_packets": dp.hostlink.rx_packets,
                                  "tx_packets": dp.hostlink.tx_packets}} if dp.hostlink is not None else {}),
                "slaves": slaves,
                **self.masters.stats(dp.port.master),
            }
        return out

    def log_stats(self) -> None:
        log.info("stats %s", json.dumps(self.stats(), sort_keys=True))

    def request_stop(self) -> None:
        self._stop.set()

    def _worker_died(self, index: int) -> None:
        """A worker's loop ended by an exception (logged): its ports are served by nobody,
        so the daemon stops, with a failure (the service manager restarts it)."""
        self.failure = f"worker {index} stopped by an internal error (logged above); the daemon stops"
        log.critical("%s", self.failure)
        self.request_stop()

    async def run(self) -> None:
        try:
            await self._stop.wait()
        finally:
            sd_notify("STOPPING=1")
            self.close()

    def close(self) -> None:
        self.closed = True
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.control is not None:
            self.control.close()
        self.masters.close()
        self.topology.close()
        self.topology.workers.stop()


def serve(config: Config, *, config_path: Path | None = None, state_path: Path | None = None,
          control_path: Path | None = None, metrics: str | None = None) -> None:
    workers = Workers(config.daemon.workers)

    async def main() -> None:
        daemon = Daemon(config, asyncio.get_running_loop(), config_path=config_path, state_path=state_path,
                        control_path=control_path, metrics=metrics, workers=workers)
        daemon.start()
        await daemon.run()
        if daemon.failure is not None:
            raise InternalError(daemon.failure)

    try:
        # the main loop holds the workers' gates while it runs, or serves the ports with a
        # WorkerCore (workers.py)
        with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(workers.main_selector())) as runner:
            runner.run(main())
    finally:
        workers.stop()
