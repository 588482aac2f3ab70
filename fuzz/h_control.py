"""Harness (d): control API requests into the real ``ControlServer.handle_line``, in process.

The input is split into lines; each is one request to the same server, in order.
The server is the daemon's (``control.server.ControlServer``) over the daemon's
``Topology``, whose I/O names are replaced while the harness runs (``fake_io``):
masters ``eth0``/``eth1`` exist (with the addresses ``MASTER_ADDRESSES``), any other
does not; uplinks, endpoints (sockets), nftables, host links, routers and QMP
watches are fakes. Validation, config checks, ports, slaves, devices,
transactions and their undo are the real code.

Invariants: ``handle_line`` answers every line with exactly one line of JSON that
is either a result or an error with the request's id (or null), never an
``internal_error`` (an exception the server did not expect); a refused request
changes nothing (the config is unchanged); the config after every request still
passes the config file's own validation (``config.parse(config.to_data(...))``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vhost_ipvlan import config as cfg
from vhost_ipvlan import errors
from vhost_ipvlan.control.server import ControlServer
from vhost_ipvlan.daemon import topology as topo_mod
from vhost_ipvlan.daemon.device import NetDevice
from vhost_ipvlan.daemon.topology import Topology
from vhost_ipvlan.errors import UplinkError
from vhost_ipvlan.switch.port import Port

from .common import IdleLoop, check

MASTERS = {"eth0": bytes.fromhex("020000000001"), "eth1": bytes.fromhex("020000000002")}
MASTER_ADDRESSES = frozenset({bytes([192, 0, 2, 1]), bytes.fromhex("20010db8" + "00" * 11 + "01")})


class _Uplink:
    def __init__(self, master: str) -> None:
        self.master = master
        self.mac = MASTERS[master]
        self.ifindex = 2 + sorted(MASTERS).index(master)

    def fileno(self) -> int:
        return -1

    def batch_fd(self) -> int:
        return -1  # Python sends every frame

    def batch_rx(self) -> int:
        return self.batch_fd()

    def send(self, buf: memoryview, length: int) -> bool:
        return True

    def close(self) -> None:
        pass


class _NoHostLink:
    def __init__(self, *args: object) -> None:
        raise UplinkError("no host link in the fuzz harness")


class _Closable:
    def __init__(self, *args: object, **kw: object) -> None:
        pass

    def close(self) -> None:
        pass


class _Router(_Closable):
    def next_hop_mac(self, dst: bytes) -> bytes:
        return b""


class _Endpoint(_Closable):
    def __init__(self, path: Path, role: str, device: NetDevice, *args: object, **kw: object) -> None:
        self.path = path
        self.device = device
        self.conn = None

    @property
    def name(self) -> str:
        return self.device.slave.name

    def start(self) -> None:
        pass


class _Ownership(_Closable):
    """The master's addresses without netlink: ``MASTER_ADDRESSES`` on every master."""

    def watch(self, port: Port) -> None:
        pass

    def unwatch(self, port: Port) -> None:
        pass

    def master_addresses(self, master: str) -> frozenset[bytes]:
        return MASTER_ADDRESSES

    def check_master(self, where: str, port: Port, addresses: tuple[cfg.IPInterface, ...],
                     new: set[Any]) -> None:
        for a in addresses:
            if a.ip.packed in MASTER_ADDRESSES:
                raise errors.MasterAddress(f"{where}.addresses: {a.ip} is the master's own address")

    def learned(self, master: str, slave: Any, addr: bytes) -> None:
        pass


class _Chain:
    def __init__(self, name: str, master: str, *, ip: bool = True) -> None:
        self.name, self.master, self.ip = name, master, ip

    def sync(self, addresses: object) -> None:
        pass

    def reapply(self, addresses: object) -> None:
        pass

    def release(self) -> None:
        pass


class _Nft:
    Chain = _Chain

    def reset(self) -> None:
        pass

    def consume(self, *args: object, **kw: object) -> None:
        pass

    def release(self, chain: str) -> None:
        pass

    def remove(self) -> None:
        pass


def _check_interface(where: str, master: str) -> None:
    if master not in MASTERS:
        raise errors.NoSuchInterface(f"{where}.master: interface {master!r} does not exist")


#: the I/O the real ``daemon.topology`` uses, replaced while a harness runs
FAKES: dict[str, Any] = {
    "Uplink": _Uplink, "HostLink": _NoHostLink, "Router": _Router, "Endpoint": _Endpoint,
    "RxFilterWatch": _Closable, "Ownership": _Ownership, "nft": _Nft(), "_check_interface": _check_interface,
}


@contextmanager
def fake_io() -> Iterator[None]:
    """The topology module's I/O replaced by fakes, for the duration (tests share the module)."""
    saved = {name: getattr(topo_mod, name) for name in FAKES}
    for name, fake in FAKES.items():
        setattr(topo_mod, name, fake)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(topo_mod, name, value)


def make_server() -> ControlServer:
    """The daemon's control server on a real ``Topology`` (call inside ``fake_io()``)."""
    loop: asyncio.AbstractEventLoop = IdleLoop()  # type: ignore[assignment]
    topo = Topology(loop)

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
    with fake_io():
        server = make_server()
        for line in data.split(b"\n")[:64]:
            if line:
                handle(server, line)
