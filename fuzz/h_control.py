"""Harness (d): control API requests into the real ``ControlServer.handle_line``, in process.

The input is split into lines; each is one request to the same server, in order.
The server is the daemon's (``control.server.ControlServer``) over a ``Topology``
whose I/O is replaced (``FakeTopology``): masters ``eth0``/``eth1`` exist, any other
does not; ports get a real switch ``Port`` and ``PortDatapath`` with a fake uplink;
slaves get a ``NetDevice`` but no socket, nftables or QMP. Validation, the config
checks, transactions and their undo are the real ones.

Invariants: ``handle_line`` answers every line with exactly one line of JSON that
is either a result or an error with the request's id (or null), never an
``internal_error`` (an exception the server did not expect); a refused request
changes nothing (the config is unchanged); the config after every request still
passes the config file's own validation (``config.parse(config.to_data(...))``).
"""

from __future__ import annotations

import asyncio
import json
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

from vhost_ipvlan import config as cfg
from vhost_ipvlan.config import PortConfig, SlaveConfig
from vhost_ipvlan.control.server import ControlServer
from vhost_ipvlan.daemon import topology as topo_mod
from vhost_ipvlan.daemon.datapath import NetDevice, PortDatapath
from vhost_ipvlan.daemon.topology import PortBusy, Topology
from vhost_ipvlan.errors import ConfigError
from vhost_ipvlan.switch.port import AddressInUse as PortAddressInUse
from vhost_ipvlan.switch.port import MacInUse, Port

from .common import check

MASTERS = {"eth0": bytes.fromhex("020000000001"), "eth1": bytes.fromhex("020000000002")}


class _Uplink:
    def __init__(self, master: str) -> None:
        self.master = master
        self.mac = MASTERS[master]

    def fileno(self) -> int:
        return -1

    def send(self, buf: memoryview, length: int) -> bool:
        return True

    def close(self) -> None:
        pass


class _Loop:
    def add_reader(self, *args: object) -> None:
        pass

    def remove_reader(self, *args: object) -> None:
        pass

    def call_soon(self, *args: object) -> None:
        pass

    def call_later(self, *args: object) -> None:
        return None


class FakeTopology(Topology):
    """``Topology`` with its I/O (interfaces, sockets, nftables, QMP) left out."""

    def add_port(self, pc: PortConfig, undo: ExitStack, where: str = "params") -> None:
        cfg.check_port(where, self.config.ports, replace(pc, slaves=()))
        if pc.master not in MASTERS:
            raise topo_mod.NoSuchInterface(f"{where}.master: no interface named {pc.master!r}")
        undo.callback(self._set_config, self.config)
        try:
            port = Port(pc.master, MASTERS[pc.master], pc.mode, pc.flag)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from e
        dp = PortDatapath(port, _Uplink(pc.master), self.loop)  # type: ignore[arg-type]
        self.ports.append(dp)
        undo.callback(self.ports.remove, dp)
        self.config = replace(self.config, ports=(*self.config.ports, replace(pc, slaves=())))
        for j, sc in enumerate(pc.slaves):
            self.add_slave(pc.master, sc, undo, where=f"{where}.slave[{j}]")

    def remove_port(self, master: str, undo: ExitStack, where: str = "params") -> None:
        pc = self.port_config(master, where)
        if pc.slaves:
            raise PortBusy(f"{where}.master: port {master} still has slave(s); remove them first")
        dp = self.datapath(master)
        undo.callback(self._set_config, self.config)
        self.ports.remove(dp)
        undo.callback(self.ports.append, dp)
        self.config = replace(self.config, ports=tuple(p for p in self.config.ports if p.master != master))

    def add_slave(self, master: str, sc: SlaveConfig, undo: ExitStack, where: str = "params") -> None:
        self.port_config(master, where)
        cfg.check_slave(where, self.config.ports, master, sc)
        dp = self.datapath(master)
        undo.callback(self._set_config, self.config)
        try:
            slave = dp.port.add_slave(sc.name, [a.ip.packed for a in sc.addresses], mac=sc.mac, learn=sc.learn)
        except MacInUse as e:
            raise topo_mod.MacConflict(f"{where}.mac: {e}") from e
        except PortAddressInUse as e:
            raise cfg.AddressInUse(f"{where}.addresses: {e}") from e
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from e
        undo.callback(dp.port.remove_slave, slave)
        dev = NetDevice(slave, dp)
        dp.devices[sc.name] = dev
        undo.callback(self._forget_device, dp, dev)
        self._set_slave(master, sc.name, sc)

    def remove_slave(self, name: str, undo: ExitStack, where: str = "params") -> None:
        pc, sc = self.slave_config(name, where)
        dp = self.datapath(pc.master)
        dev = dp.devices[name]
        undo.callback(self._set_config, self.config)
        self._set_slave(pc.master, name, None)
        undo.callback(self._readd_slave, pc.master, sc)
        self._forget_device(dp, dev)
        dp.port.remove_slave(dev.slave)

    def endpoint(self, name: str) -> Any:
        raise StopIteration

    def _sync_nft(self, dp: PortDatapath) -> None:
        pass

    def _resync_nft(self, dp: PortDatapath) -> None:
        pass

    def _watch(self, sc: SlaveConfig, slave: Any) -> None:
        pass

    def _unwatch(self, name: str) -> None:
        pass


def make_server() -> ControlServer:
    loop: asyncio.AbstractEventLoop = _Loop()  # type: ignore[assignment]
    topo = FakeTopology(loop)

    def stats() -> dict[str, object]:
        return {dp.port.master: {"slaves": {n: d.counters() for n, d in dp.devices.items()}} for dp in topo.ports}

    return ControlServer(Path("/nonexistent/control.sock"), topo, stats)


def _request_id(line: bytes) -> Any:
    try:
        doc = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return doc.get("id") if isinstance(doc, dict) else None


def handle(server: ControlServer, line: bytes) -> dict[str, Any]:
    """One request through the server, with the invariants checked; the parsed answer."""
    before = server.topology.config
    out = server.handle_line(line)
    check(out.endswith(b"\n") and out.count(b"\n") == 1, f"answer is not one line: {out[:200]!r}")
    answer: dict[str, Any] = json.loads(out)
    check(isinstance(answer, dict) and ("result" in answer) != ("error" in answer), f"answer {out[:200]!r}")
    if "error" in answer:
        code = answer["error"]["code"]
        check(code != "internal_error", f"internal error for {line[:300]!r}: {answer['error']['message']}")
        check(server.topology.config == before, f"refused request {line[:200]!r} changed the config")
        rid = _request_id(line)
        check(answer["id"] in (None, rid) if isinstance(rid, int | str) else answer["id"] is None,
              f"error answer id {answer['id']!r} for {line[:100]!r}")
    after = server.topology.config
    if after is not before:
        check(cfg.parse(cfg.to_data(after)) == after, "the config after a request does not round-trip")
    return answer


def test_one_input(data: bytes) -> None:
    server = make_server()
    for line in data.split(b"\n")[:64]:
        if not line:
            continue
        handle(server, line)
