"""The control socket: serves the JSON protocol on the daemon's asyncio loop.

Rules:
- The socket is created before the daemon announces readiness, mode 0600 (root
  only) unless told otherwise, never chmod-ed by path (``unixsock.listen``); a stale
  socket file is replaced, a live one (another daemon answers on it) or a
  non-socket is an error. Its directory must be writable by root only (default
  ``/run/vhost-ipvlan/ctl``, 0700), else the daemon refuses to start: whoever can
  write there can put their own socket in its place and answer the hook and CLI.
- Requests are handled one at a time, in the loop, to completion: a change is
  validated, applied and written to the state file (``Topology.transaction``)
  before its response is sent. A refused request changes nothing.
- Every error response's code is the ``code`` of an ``errors`` class (an ``OSError``
  is a ``StateError``, anything unexpected an ``InternalError``, logged with its
  traceback); docs/control-api.md's table is generated from them.
- A bad request gets one error line and the connection stays usable; a line
  that cannot be framed (too long, or cut by the end of the stream) gets its error
  and the connection is closed. At most ``MAX_CLIENTS`` connections at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import config as cfg
from .. import unixsock
from ..errors import (
    ConfigError,
    InternalError,
    QmpConfigured,
    RequestError,
    RequestTooLarge,
    SocketInUse,
    StateError,
    UnknownMethod,
    UplinkError,
)
from ..switch.port import learned_addresses
from . import protocol
from .protocol import Request

log = logging.getLogger(__name__)

MAX_CLIENTS = 16
SLAVE_KEYS = {"name", "socket", "socket_mode", "addresses", "mac", "qmp", "qmp_device", "learn", "allow_router",
              "owner", "peer_uid", "peer_gid", "queues", "dhcp", "hostname"}

Params = dict[str, Any]

if TYPE_CHECKING:
    from ..daemon.topology import Topology


class ControlServer:
    def __init__(self, path: Path, topology: Topology, stats: Callable[[], dict[str, object]],
                 mode: int = 0o600) -> None:
        self.path = path
        self.topology = topology
        self.stats = stats
        self.mode = mode
        self.sock: socket.socket | None = None
        self.server: asyncio.AbstractServer | None = None
        self.clients: set[asyncio.StreamWriter] = set()
        self._task: asyncio.Task[None] | None = None
        #: the methods (``protocol.METHODS``): queries answer from what runs; changes are
        #: applied in one ``Topology.transaction``, then answered by their result function
        self._queries: dict[str, Callable[[Params], Any]] = {
            "port.list": self._port_list,
            "slave.list": self._slave_list,
            "stats": self._stats,
            "slave.rx_filter": self._rx_filter,
        }
        self._changes: dict[str, tuple[Callable[[Params, ExitStack], None], Callable[[Params], Any]]] = {
            "port.add": (self._port_add, self._port_result),
            "port.change": (self._port_change, self._port_result),
            "port.remove": (self._port_remove, _nothing),
            "slave.add": (self._slave_add, self._slave_result),
            "slave.change": (self._slave_change, self._slave_result),
            "slave.remove": (self._slave_remove, _nothing),
        }

    # -- socket ---------------------------------------------------------------------

    def bind(self) -> None:
        path = self.path
        if unixsock.check_target(path, "control socket"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(path))
                except OSError:
                    pass  # stale: listen() replaces it
                else:
                    raise UplinkError(f"control socket {path} is in use by another daemon")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        why = unixsock.writable_by_others(path.parent)
        if why is not None:
            raise UplinkError(f"control socket {path}: its directory {path.parent} is {why}: another user could "
                              "replace the socket; use a directory only root can write (e.g. mode 0700)")
        sock = unixsock.listen(path, self.mode, backlog=MAX_CLIENTS, what="control socket")
        self.sock = sock
        log.info("control: listening on %s", path)

    def start(self) -> None:
        """Bind, and start serving on the running loop."""
        self.bind()
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        assert self.sock is not None
        self.server = await asyncio.start_unix_server(self._client, sock=self.sock, limit=protocol.MAX_LINE)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.server is not None:
            self.server.close()
        for w in list(self.clients):
            w.close()
        if self.sock is not None:
            self.sock.close()
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.sock = None

    # -- connections ----------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.clients) >= MAX_CLIENTS:
            log.warning("control: refused a connection (%d clients already)", MAX_CLIENTS)
            writer.close()
            return
        self.clients.add(writer)
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as e:
                    if e.partial.strip():
                        writer.write(protocol.error(None, RequestError.code,
                                                    "truncated request: the stream ended before a newline"))
                    break
                except asyncio.LimitOverrunError:
                    writer.write(protocol.error(None, RequestTooLarge.code,
                                                f"request longer than {protocol.MAX_LINE} bytes; closing"))
                    break
                if line.strip():
                    writer.write(self.handle_line(line))
                    await writer.drain()
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.clients.discard(writer)
            writer.close()

    def handle_line(self, line: bytes) -> bytes:
        try:
            req = protocol.parse(line)
        except RequestError as e:
            return protocol.error(e.id, e.code, e.message)
        try:
            return protocol.result(req.id, self.dispatch(req))
        except Exception as e:  # every refusal is answered with its class's code
            err = _answerable(req.method, e)
            return protocol.error(req.id, err.code, str(err))

    # -- methods --------------------------------------------------------------------

    def dispatch(self, req: Request) -> Any:
        query = self._queries.get(req.method)
        if query is not None:
            return query(req.params)
        change = self._changes.get(req.method)
        if change is None:  # pragma: no cover - protocol.METHODS and these tables agree
            raise UnknownMethod(f"method: {req.method!r} is not implemented")
        apply, result = change
        with self.topology.transaction() as undo:
            apply(req.params, undo)
        return result(req.params)

    # queries: read only

    def _port_list(self, p: Params) -> Any:
        cfg.check_keys("params", p, set(), set())
        return [self._port_info(pc) for pc in self.topology.config.ports]

    def _slave_list(self, p: Params) -> Any:
        cfg.check_keys("params", p, {"master"}, set())
        topo = self.topology
        if "master" in p:
            topo.port_config(_s("params.master", p["master"]))
        return [self._slave_info(pc.master, sc) for pc, sc in topo.config.slaves()
                if p.get("master", pc.master) == pc.master]

    def _stats(self, p: Params) -> Any:
        cfg.check_keys("params", p, {"slave"}, set())
        stats = self.stats()
        if "slave" not in p:
            return stats
        pc, sc = self.topology.slave_config(_s("params.slave", p["slave"]), "params")
        master: Any = stats[pc.master]
        return {pc.master: {**master, "slaves": {sc.name: master["slaves"][sc.name]}}}

    # changes: applied inside one transaction, then answered by their result function

    def _port_add(self, p: Params, undo: ExitStack) -> None:
        cfg.check_keys("params", p, {"master", "mode", "flag", "slave"}, {"master"})
        self.topology.add_port(cfg.parse_port("params", p), undo)

    def _port_change(self, p: Params, undo: ExitStack) -> None:
        cfg.check_keys("params", p, {"master", "mode", "flag"}, {"master"})
        cur = self.topology.port_config(_s("params.master", p["master"]))
        merged = {**cfg.port_table(cur), **p}
        merged.pop("slave")
        self.topology.change_port(cfg.parse_port("params", merged), undo)

    def _port_remove(self, p: Params, undo: ExitStack) -> None:
        cfg.check_keys("params", p, {"master"}, {"master"})
        self.topology.remove_port(_s("params.master", p["master"]), undo)

    def _slave_add(self, p: Params, undo: ExitStack) -> None:
        cfg.check_keys("params", p, {"master", *SLAVE_KEYS}, {"master", "name", "socket"})
        master_name = _s("params.master", p["master"])
        self.topology.port_config(master_name)
        sc = self._not_control(cfg.parse_slave("params", {k: v for k, v in p.items() if k != "master"}))
        self.topology.add_slave(master_name, sc, undo)

    def _slave_change(self, p: Params, undo: ExitStack) -> None:
        cfg.check_keys("params", p, {"master", *SLAVE_KEYS}, {"name"})
        pc, cur_s = self.topology.slave_config(_s("params.name", p["name"]))
        master_name = _s("params.master", p.get("master", pc.master))
        table = {**cfg.slave_table(cur_s), **{k: v for k, v in p.items() if k != "master"}}
        for key in ("mac", "qmp", "qmp_device", "owner", "peer_uid", "peer_gid", "hostname"):  # null forgets
            if key in table and table[key] is None:
                del table[key]
        if "qmp" in p and p["qmp"] is None and "qmp_device" not in p:
            table.pop("qmp_device", None)
        sc = self._not_control(cfg.parse_slave("params", table))
        self.topology.change_slave(cur_s.name, master_name, sc, undo)

    def _slave_remove(self, p: Params, undo: ExitStack) -> None:
        cfg.check_keys("params", p, {"name"}, {"name"})
        self.topology.remove_slave(_s("params.name", p["name"]), undo)

    def _port_result(self, p: Params) -> Any:
        return self._port_info(self.topology.port_config(p["master"]))

    def _slave_result(self, p: Params) -> Any:
        pc, sc = self.topology.slave_config(p["name"])
        return self._slave_info(pc.master, sc)

    def _not_control(self, sc: cfg.SlaveConfig) -> cfg.SlaveConfig:
        """A slave socket must not take the control socket's place (it would be unlinked)."""
        if sc.socket == self.path:
            raise SocketInUse(f"params.socket: {sc.socket} is the daemon's control socket")
        return sc

    def _rx_filter(self, p: Params) -> Any:
        """The guest's RX filter (a ``query-rx-filter`` entry, or null: back to snooping),
        read by someone else (``vhost-ipvlan libvirt watch``). Run-time state: not written
        to the state file."""
        cfg.check_keys("params", p, {"name", "rx_filter"}, {"name", "rx_filter"})
        pc, sc = self.topology.slave_config(_s("params.name", p["name"]))
        if sc.qmp is not None:
            raise QmpConfigured(f"params.name: slave {sc.name!r} reads its guest's RX filter itself (qmp = {sc.qmp})")
        mcast = self.topology.datapath(pc.master).devices[sc.name].slave.mcast
        info = p["rx_filter"]
        was = mcast.explicit is not None
        if info is None:
            mcast.clear_rx_filter()
        elif not isinstance(info, dict):
            raise ConfigError("params.rx_filter: expected a query-rx-filter entry (an object) or null")
        else:
            try:
                mcast.set_qmp_rx_filter(info)
            except ValueError as e:
                raise ConfigError(f"params.rx_filter: {e}") from None
        if was != (info is not None):
            log.info("slave %s: multicast filter from %s", sc.name,
                     "the guest's RX filter (control API)" if info is not None else "IGMP/MLD snooping")
        return mcast.describe()

    @staticmethod
    def _port_info(pc: cfg.PortConfig) -> dict[str, Any]:
        return {**cfg.port_table(pc), "slave": [s.name for s in pc.slaves]}

    def _slave_info(self, master: str, sc: cfg.SlaveConfig) -> dict[str, Any]:
        info: dict[str, Any] = {"master": master, **cfg.slave_table(sc), "queues": sc.queues, "dhcp": sc.dhcp}
        try:
            ep = self.topology.endpoint(sc.name)
        except KeyError:
            return info
        info["connected"] = ep.conn is not None
        info["up"] = ep.device.slave.up
        if ep.conn is not None and ep.conn.session.queue_pairs != sc.queues:
            info["queues_connected"] = ep.conn.session.queue_pairs  # until the front-end reconnects
        if sc.learn:
            info["learned"] = learned_addresses(ep.device.slave)
        info["dhcp_answered"] = ep.device.slave.dhcp is not None
        info["dhcp6_answered"] = ep.device.slave.dhcp6 is not None
        return info


def _answerable(method: str, e: Exception) -> RequestError | ConfigError | UplinkError | StateError | InternalError:
    """``e`` as an error with the ``code`` the client sees (logged when the host or a bug
    is to blame); call it while handling ``e``."""
    if isinstance(e, RequestError | ConfigError):
        return e
    if isinstance(e, UplinkError):
        log.warning("control: %s failed: %s", method, e)
        return e
    if isinstance(e, OSError):
        log.error("control: %s failed: %s", method, e)
        return StateError(f"cannot apply or record the change: {e}")
    log.exception("control: %s failed", method)
    return InternalError(f"{type(e).__name__}: {e}")


def _nothing(p: Params) -> Any:
    return {}


def _s(where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {type(value).__name__}")
    return value
