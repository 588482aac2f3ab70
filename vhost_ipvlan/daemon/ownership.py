"""Who may own an address at run time: never the master's own; learned ones yield.

Rules:
- A slave may not have one of its master's own addresses. ``Ownership.check_master``
  reads them from the kernel (rtnetlink, ``get_addr``) whenever a slave is added or
  given new addresses, so start-up, control requests and SIGHUP all get the same
  check: a one-line ``MasterAddress`` error naming the address and the master,
  raised before anything changes. Within a ``batch`` (start-up, SIGHUP) they are
  read once per master. The set read is also stored in
  ``Port.master_addresses`` (later kept current by ``master.MasterMonitor``) so a
  learning slave never learns one. The check reads the addresses only: the
  master's prefixes (below) are read when the port is added and on every address
  event, not per slave (a route dump grows with the host routes of the slaves).
- What a slave may learn is bounded by the master's link (``switch.source``), with
  data read here: ``master_addresses`` also gives the port of that master
  (``watch``) its connected prefixes (``Port.set_master_prefixes``: its addresses'
  prefixes and its unicast routes without a gateway, so an address-less master
  with ``ip route add 192.0.2.0/24 dev eth0`` has a link too) and its IPv4 and IPv6
  default gateways (``Port.gateway_v4``: the DHCP server's router in l2;
  ``Port.gateway_v6``: in l2 a router is on the link, the daemon sends no RA), and
  ``in_use`` (``Port.in_use``) names the master's gateways (routes through it)
  and neighbours in use (``NUD_REACHABLE|STALE|DELAY|PROBE|PERMANENT``), their
  addresses and MACs, read at
  most once per ``IN_USE_REFRESH`` seconds and master, only when a learn would
  otherwise succeed; a failed read keeps the last set.
- Learning-mode slaves: ``learned`` (``Port.on_learn``) logs each learned address
  and asks, once per loop turn and master, for the nftables chain and host-link
  routes to be brought up to date (the caller's ``sync``); never from inside the
  frame being switched.
- Configured addresses win: ``learned_by_others`` names the learned addresses a
  change takes away from other slaves, ``log_taken`` logs them once it is applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from functools import partial

from pyroute2.netlink.exceptions import NetlinkError

from .. import config as cfg
from ..errors import MasterAddress, UplinkError
from ..net.addr import format_ip, parse_mac
from ..switch.port import Port, Slave
from ..switch.source import learnable_more
from .rtnl import Rtnl, message_address

log = logging.getLogger(__name__)


NUD_IN_USE = 0x02 | 0x04 | 0x08 | 0x10 | 0x80  # REACHABLE STALE DELAY PROBE PERMANENT
IN_USE_REFRESH = 1.0
RTN_UNICAST = 1


class Ownership:
    def __init__(self, loop: asyncio.AbstractEventLoop, sync: Callable[[str], None]) -> None:
        self.loop = loop
        self.sync = sync
        self._rtnl: Rtnl | None = None
        self._pending: set[str] = set()
        #: master -> its port, whose prefixes follow ``master_addresses``
        self.ports: dict[str, Port] = {}
        self._in_use: dict[str, tuple[float, frozenset[bytes]]] = {}
        #: within ``batch``: each master's own addresses, read once
        self._batch: dict[str, frozenset[bytes]] | None = None
        self.clock: Callable[[], float] = time.monotonic

    def _call(self) -> Rtnl:
        if self._rtnl is None:
            self._rtnl = Rtnl()
        return self._rtnl

    def watch(self, port: Port) -> None:
        """Keep ``port``'s view of its master (prefixes, ``in_use``) from the kernel."""
        self.ports[port.master] = port
        port.in_use = partial(self.in_use, port.master)

    def unwatch(self, port: Port) -> None:
        if self.ports.get(port.master) is port:
            del self.ports[port.master]
        self._in_use.pop(port.master, None)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Many slaves checked at once: each master's addresses are read once."""
        self._batch = {}
        try:
            yield
        finally:
            self._batch = None

    def _read(self, master: str) -> list[tuple[bytes | None, int]]:
        try:
            msgs = self._call().call("get_addr", index=socket.if_nametoindex(master))
        except (NetlinkError, OSError) as e:
            raise UplinkError(f"master {master}: cannot read its addresses: {e}") from e
        return [(message_address(m), int(m["prefixlen"])) for m in msgs]

    def own_addresses(self, master: str) -> frozenset[bytes]:
        """The master's own addresses (read now, or once per ``batch``)."""
        if self._batch is not None and master in self._batch:
            return self._batch[master]
        own = frozenset(a for a, _ in self._read(master) if a is not None)
        if self._batch is not None:
            self._batch[master] = own
        return own

    def master_addresses(self, master: str) -> frozenset[bytes]:
        """The master's own addresses, read from the kernel now (the watched port's
        prefixes are updated from the same read)."""
        found = self._read(master)
        port = self.ports.get(master)
        if port is not None:
            prefixes = [(a, plen) for a, plen in found if a is not None]
            try:
                prefixes += self._connected_routes(master)
                port.gateway_v4 = self._default_gateway(master, socket.AF_INET)
                port.gateway_v6 = self._default_gateway(master, socket.AF_INET6)
            except (NetlinkError, OSError) as e:
                log.warning("master %s: cannot read its routes: %s", master, e)
            port.set_master_prefixes(prefixes)
        return frozenset(a for a, _ in found if a is not None)

    def _connected_routes(self, master: str) -> list[tuple[bytes, int]]:
        """Unicast routes through ``master`` without a gateway (not the default): the
        prefixes on its link, also where the host has no address in them."""
        rtnl = self._call()
        index = socket.if_nametoindex(master)
        out = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for m in rtnl.call("get_routes", family=family, oif=index):
                dst = m.get_attr("RTA_DST")
                if m["type"] != RTN_UNICAST or not m["dst_len"] or m.get_attr("RTA_GATEWAY") or \
                        not isinstance(dst, str):
                    continue
                with contextlib.suppress(ValueError):
                    out.append((ipaddress.ip_address(dst).packed, int(m["dst_len"])))
        return out

    def _default_gateway(self, master: str, family: int) -> bytes | None:
        """The gateway of the IPv4 or IPv6 default route through ``master`` (the lowest metric), if any."""
        best: tuple[int, bytes] | None = None
        for m in self._call().call("get_routes", family=family, oif=socket.if_nametoindex(master)):
            gateway = m.get_attr("RTA_GATEWAY")
            if m["type"] != RTN_UNICAST or m["dst_len"] or not isinstance(gateway, str):
                continue
            metric = m.get_attr("RTA_PRIORITY") or 0
            with contextlib.suppress(ValueError):
                candidate = (int(metric), ipaddress.ip_address(gateway).packed)
                if best is None or candidate < best:
                    best = candidate
        return best[1] if best is not None else None

    def in_use(self, master: str, addr: bytes) -> bool:
        """``Port.in_use``: ``addr`` is a gateway or an in-use neighbour of ``master``."""
        now = self.clock()
        cached = self._in_use.get(master)
        if cached is None or now - cached[0] >= IN_USE_REFRESH:
            try:
                found = self._read_in_use(master)
            except (NetlinkError, OSError) as e:
                log.debug("master %s: cannot read its neighbours: %s", master, e)
                found = cached[1] if cached is not None else frozenset()
            cached = self._in_use[master] = (now, found)
        return addr in cached[1]

    def _read_in_use(self, master: str) -> frozenset[bytes]:
        rtnl = self._call()
        index = socket.if_nametoindex(master)
        neighbours = [m for m in rtnl.call("get_neighbours", ifindex=index) if m["state"] & NUD_IN_USE]
        texts: list[object] = [m.get_attr("NDA_DST") for m in neighbours]
        for family in (socket.AF_INET, socket.AF_INET6):
            texts += [m.get_attr("RTA_GATEWAY") for m in rtnl.call("get_routes", family=family, oif=index)]
        out = set()
        for text in texts:
            if isinstance(text, str):
                with contextlib.suppress(ValueError):
                    out.add(ipaddress.ip_address(text).packed)
        for m in neighbours:  # their MACs too (6 bytes: no address has that length)
            mac = m.get_attr("NDA_LLADDR")
            if isinstance(mac, str):
                with contextlib.suppress(ValueError):
                    out.add(parse_mac(mac))
        return frozenset(out)

    def check_master(self, where: str, port: Port, addresses: tuple[cfg.IPInterface, ...],
                     new: AbstractSet[object]) -> None:
        """Refuse any of ``new`` (among ``addresses``) that the master itself has."""
        if not new:
            return
        own = self.own_addresses(port.master)
        port.master_addresses = own
        for j, a in enumerate(addresses):
            if a.ip in new and a.ip.packed in own:
                raise MasterAddress(f"{where}.addresses[{j}]: {a.ip} is an address of the master "
                                    f"{port.master} itself")

    def learned(self, master: str, slave: Slave, addr: bytes) -> None:
        """``Port.on_learn``: a learning slave took ``addr``; consume it and route it soon."""
        log.info("slave %s: learned address %s%s", slave.name, format_ip(addr),
                 "" if learnable_more(slave) else "; no more addresses will be learned")
        if master not in self._pending:
            self._pending.add(master)
            self.loop.call_soon_threadsafe(self._sync, master)  # from the port's worker thread

    def _sync(self, master: str) -> None:
        self._pending.discard(master)
        self.sync(master)

    def close(self) -> None:
        self.ports.clear()
        if self._rtnl is not None:
            self._rtnl.close()
            self._rtnl = None


def learned_by_others(port: Port, name: str, addresses: tuple[cfg.IPInterface, ...]) -> list[tuple[str, str]]:
    """(slave, address) for each of ``addresses`` another slave has learned: configuring
    it takes it away from that slave."""
    out = []
    for a in addresses:
        owner = port.by_addr.get(a.ip.packed)
        if owner is not None and owner.name != name and a.ip.packed in owner.learned_addrs:
            out.append((owner.name, str(a.ip)))
    return out


def log_taken(taken: list[tuple[str, str]], name: str) -> None:
    for owner, addr in taken:
        log.warning("slave %s: learned address %s now belongs to slave %s (configured addresses win)",
                    owner, addr, name)
