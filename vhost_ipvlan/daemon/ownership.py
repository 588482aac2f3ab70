"""Who may own an address at run time: never the master's own; learned ones yield.

Rules:
- A slave may not have one of its master's own addresses. ``Ownership.check_master``
  reads them from the kernel (rtnetlink, ``get_addr``) whenever a slave is added or
  given new addresses, so start-up, control requests and SIGHUP all get the same
  check: a one-line ``MasterAddress`` error naming the address and the master,
  raised before anything changes. The set read is also stored in
  ``Port.master_addresses`` (later kept current by ``master.MasterMonitor``) so a
  learning slave never learns one.
- Learning-mode slaves: ``learned`` (``Port.on_learn``) logs each learned address
  and asks, once per loop turn and master, for the nftables chain and host-link
  routes to be brought up to date (the caller's ``sync``); never from inside the
  frame being switched.
- Configured addresses win: ``learned_by_others`` names the learned addresses a
  change takes away from other slaves, ``log_taken`` logs them once it is applied.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from collections.abc import Set as AbstractSet

from pyroute2.netlink.exceptions import NetlinkError

from .. import config as cfg
from ..errors import UplinkError
from ..net.addr import format_ip
from ..switch.port import Port, Slave
from ..switch.source import learnable_more
from .rtnl import Rtnl, interface_addresses

log = logging.getLogger("vhost_ipvlan.topology")


class MasterAddress(cfg.Conflict):
    """A slave address is one of the master's own."""

    code = "master_address"


class Ownership:
    def __init__(self, loop: asyncio.AbstractEventLoop, sync: Callable[[str], None]) -> None:
        self.loop = loop
        self.sync = sync
        self._rtnl: Rtnl | None = None
        self._pending: set[str] = set()

    def master_addresses(self, master: str) -> frozenset[bytes]:
        """The master's own addresses, read from the kernel now."""
        if self._rtnl is None:
            self._rtnl = Rtnl()
        try:
            return interface_addresses(self._rtnl, socket.if_nametoindex(master))
        except (NetlinkError, OSError) as e:
            raise UplinkError(f"master {master}: cannot read its addresses: {e}") from e

    def check_master(self, where: str, port: Port, addresses: tuple[cfg.IPInterface, ...],
                     new: AbstractSet[object]) -> None:
        """Refuse any of ``new`` (among ``addresses``) that the master itself has."""
        if not new:
            return
        own = self.master_addresses(port.master)
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
            self.loop.call_soon(self._sync, master)

    def _sync(self, master: str) -> None:
        self._pending.discard(master)
        self.sync(master)

    def close(self) -> None:
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
