"""The daemon: configuration in, ports and endpoints up, one event loop, clean exit.

Rules:
- Start-up is all or nothing: every master is checked and opened, every socket
  bound, the nftables rules applied; if any step fails, what was made is undone
  and the error (one line, naming what is wrong) is raised.
- Readiness is announced once every socket listens (``READY=1`` to
  ``$NOTIFY_SOCKET`` when set, and a log line).
- SIGUSR1 logs every counter as one JSON line (``stats {...}``) until the
  control socket exists.
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

from ..config import Config
from ..errors import ConfigError, UplinkError
from ..switch.port import Port
from . import nft
from .datapath import NetDevice, PortDatapath, accelerated
from .endpoint import Endpoint
from .master import MasterMonitor
from .metrics import MetricsServer
from .uplink import Uplink

log = logging.getLogger("vhost_ipvlan.daemon")


def sd_notify(state: str) -> None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s, contextlib.suppress(OSError):
        s.sendto(state.encode(), path)


class Daemon:
    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop, metrics: str | None = None) -> None:
        self.config = config
        self.loop = loop
        self.masters = MasterMonitor(loop)
        self.metrics_address = metrics
        self.metrics: MetricsServer | None = None
        self.ports: list[PortDatapath] = []
        self.endpoints: list[Endpoint] = []
        self._nft_used = False
        self._stop = asyncio.Event()

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        for i, pc in enumerate(self.config.ports):
            try:
                socket.if_nametoindex(pc.master)
            except OSError:
                raise ConfigError(f"port[{i}].master: interface {pc.master!r} does not exist") from None
        nft.reset()
        self._nft_used = True
        self.masters.start()
        for i, pc in enumerate(self.config.ports):
            uplink = Uplink(pc.master)
            try:
                port = Port(pc.master, uplink.mac, pc.mode, pc.flag)
            except ValueError as e:
                uplink.close()
                raise ConfigError(f"port[{i}]: {e}") from e
            dp = PortDatapath(port, uplink, self.loop)
            self.ports.append(dp)
            for j, sc in enumerate(pc.slaves):
                try:
                    slave = port.add_slave(sc.name, [a.ip.packed for a in sc.addresses], mac=sc.mac)
                except ValueError as e:
                    raise ConfigError(f"port[{i}].slave[{j}]: {e}") from e
                dev = NetDevice(slave, dp)
                dp.devices[sc.name] = dev
                d = self.config.daemon
                self.endpoints.append(Endpoint(sc.socket, sc.socket_mode, dev, self.loop,
                                               d.socket_permissions, d.socket_owner, d.socket_group))
            nft.consume(f"p{i}", pc.master, *port.consumed_addresses())
            self.masters.add(dp, f"p{i}")
            dp.start()
        for ep in self.endpoints:
            ep.start()
        if self.metrics_address is not None:
            self.metrics = MetricsServer(self.metrics_address, self.stats, self.loop)
        log.info("ready: %d master(s), %d slave(s), data path: %s", len(self.ports), len(self.endpoints),
                 "C accelerator + Python" if accelerated() else "pure Python")
        sd_notify("READY=1")

    def stats(self) -> dict[str, object]:
        """Counters of every master and slave (JSON-ready)."""
        out: dict[str, object] = {}
        for dp in self.ports:
            slaves = {}
            for name, dev in dp.devices.items():
                drops = dict(dev.drops)
                for label, n in dev.slave.drop_counts().items():
                    drops[label] = drops.get(label, 0) + n
                slaves[name] = {
                    "up": dev.slave.up,
                    "link": self.masters.slave_link(dp.port.master),
                    **dev.counters(),
                    "drops": drops,
                }
            out[dp.port.master] = {
                "uplink_rx_packets": dp.uplink_rx,
                "uplink_tx_packets": dp.uplink_tx,
                "drops": {**dict(dp.drops), **dp.port.drop_counts()},
                "slaves": slaves,
                **self.masters.stats(dp.port.master),
            }
        return out

    def log_stats(self) -> None:
        log.info("stats %s", json.dumps(self.stats(), sort_keys=True))

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.request_stop)
        self.loop.add_signal_handler(signal.SIGUSR1, self.log_stats)
        self.loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            await self._stop.wait()
        finally:
            sd_notify("STOPPING=1")
            self.close()

    def reload(self) -> None:
        log.info("reload (SIGHUP): re-reading the masters' state; the configuration is read only at start")
        self.masters.resync()

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        self.masters.close()
        for ep in self.endpoints:
            ep.close()
        for dp in self.ports:
            with contextlib.suppress(Exception):
                dp.stop()
            dp.uplink.close()
        if self._nft_used:
            with contextlib.suppress(UplinkError):
                nft.remove()
        self.endpoints.clear()
        self.ports.clear()


def serve(config: Config, metrics: str | None = None) -> None:
    async def main() -> None:
        daemon = Daemon(config, asyncio.get_running_loop(), metrics)
        daemon.start()
        await daemon.run()

    asyncio.run(main())
