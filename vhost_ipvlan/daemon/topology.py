"""Ports and slaves at run time: the one code path for start-up, control requests and SIGHUP.

Theory of operation. ``Topology.config`` is the configuration being served (a
``config.Config``, the same shape as the file). Every change goes through one of
``add_port``, ``change_port``, ``remove_port``, ``add_slave``, ``change_slave``,
``remove_slave``; start-up and a SIGHUP reload are ``apply(config)``, which
computes the difference from what runs and calls those same methods.

Rules:
- All or nothing: each method validates first (``config.check_*``, the same
  cross-checks as the file), then makes its changes, registering the inverse of
  each step on the caller's ``undo`` stack (an ``ExitStack``). If a step fails,
  the caller's ``with`` unwinds the stack and nothing stays half-applied.
  ``transaction()`` is that ``with``; ``on_commit`` (the state file) runs inside
  it, so a change that cannot be recorded is undone too.
- Adding a slave creates its ``NetDevice`` and ``Endpoint`` (socket) and updates
  the master's nftables chain; removing closes the connection and the socket and
  updates the chain. A change that keeps the socket, its role and the MAC is done
  in place (the guest stays connected); any other change re-creates the slave.
- Scale (1000 slaves): the chain and the host routes change by difference
  (``nft.Chain``, ``HostLink.sync``), and ``apply`` (start-up, SIGHUP) brings each
  master's up to date once, at its end, reading the master's addresses once;
  slaves are found by name through ``config.SlaveIndex`` (kept with ``config``),
  never by walking them.
- A slave with ``qmp`` gets an ``rxfilter.RxFilterWatch`` (its multicast filter
  from the guest's RX filter) while it exists; a change of ``qmp``/``qmp_device``
  restarts it in place.
- ``apply`` checks that every new master exists before it changes anything, so
  the usual mistake in a reloaded file does not disturb running guests.
- ``remove_port`` refuses a port that still has slaves; ``apply`` removes them first.
- Each port gets a host link (``hostlink``: host <-> guest, and l3s's path
  through the host's stack) whose routes follow the slaves' addresses with the
  nftables chain; failing to create it is logged, not fatal (no host <-> guest).
  l3 and l3s ports also get a ``routing.Router`` (l3s routes only link-local
  destinations, and vepa's guest -> guest unicast, out the master). In l3s the
  chain consumes only ARP/NS and IPv6 to link-locals: the host forwards the other
  guest-bound IP into the host link.
- Addresses (``ownership``): a slave may not have one of its master's own
  addresses (checked whenever a slave is added or given new addresses: start-up,
  control requests and SIGHUP alike; refused on one line, nothing applied); an
  address a learning slave learns is consumed and routed on the loop's next turn.
  Learned addresses live in the ``Port`` only: the configuration, hence the state
  file, never holds them.
- A new slave (or one whose ``queues`` grows) must fit in the file descriptor budget (``fdbudget``) with its guest
  connected; else it is refused (``FdBudget``) before anything changes.
- Errors (``errors``): ``ConfigError`` (its ``Conflict`` subclasses name the clash),
  ``NotFound`` for an unknown port or slave, ``UplinkError`` from the host. A
  refusal from the switch's ``Port`` keeps its class (its code) and gets the key path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import replace
from functools import partial

from .. import config as cfg
from ..config import Config, DaemonConfig, PortConfig, SlaveConfig
from ..errors import AddressInUse, ConfigError, MacInUse, NoSuchInterface, NotFound, PortBusy, UplinkError
from ..switch.port import Port, Slave
from . import fastpath, fdbudget, nft, resolv
from .datapath import PortDatapath
from .device import NetDevice
from .endpoint import Endpoint
from .hostlink import HostLink
from .ownership import Ownership, learned_by_others, log_taken
from .routing import Router
from .rxfilter import RxFilterWatch
from .uplink import Uplink
from .workers import Workers

log = logging.getLogger(__name__)


class Topology:
    """The running ports (``PortDatapath``) and slave endpoints, kept equal to ``config``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, workers: Workers | None = None) -> None:
        self.loop = loop
        #: the data path's threads: each port runs on the loop ``workers`` gives it
        #: (``dp.loop``, ``dp.worker``); with one worker, on ``loop``
        if workers is None:
            workers = Workers()
        if workers.main is None:
            workers.main = loop
        self.workers = workers
        self.config = Config(())
        self.ports: list[PortDatapath] = []
        self.endpoints: list[Endpoint] = []
        self.on_commit: Callable[[Config], None] | None = None
        # told when a port's data path starts (with its nftables chain) and stops
        self.on_port_added: Callable[[PortDatapath, nft.Chain], None] | None = None
        self.on_port_removed: Callable[[str], None] | None = None
        self._chains: dict[str, nft.Chain] = {}
        #: during ``apply``: the masters whose nftables chain and host routes wait for its end
        self._deferred: set[str] | None = None
        #: slaves with ``qmp``: their multicast filter from the guest's RX filter
        self.rxfilters: dict[str, RxFilterWatch] = {}
        self._serial = 0
        #: ``config``'s slaves by name, socket and address (``_index()``); with ``_indexed``,
        #: the ``Config`` it describes (another one, e.g. after an undo: rebuilt when asked)
        self._slave_index = cfg.SlaveIndex()
        self._indexed: Config | None = self.config
        self._endpoints: dict[str, Endpoint] = {}
        self._nft_used = False
        self.owners = Ownership(loop, self._sync_learned)

    # -- lookups ------------------------------------------------------------------

    def port_config(self, master: str, where: str = "params") -> PortConfig:
        for p in self.config.ports:
            if p.master == master:
                return p
        raise NotFound(f"{where}.master: no port on master {master!r}")

    def slave_config(self, name: str, where: str = "params") -> tuple[PortConfig, SlaveConfig]:
        found = self._index().slaves.get(name)
        if found is None:
            raise NotFound(f"{where}.name: no slave named {name!r}")
        return self.port_config(found[0]), found[1]

    def datapath(self, master: str) -> PortDatapath:
        return next(dp for dp in self.ports if dp.port.master == master)

    def endpoint(self, name: str) -> Endpoint:
        """The slave's endpoint (``KeyError`` if there is none)."""
        return self._endpoints[name]

    def _index(self) -> cfg.SlaveIndex:
        if self._indexed is not self.config:
            self._slave_index = cfg.SlaveIndex(self.config.ports)
            self._indexed = self.config
        return self._slave_index

    # -- transactions -------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[ExitStack]:
        """Changes made with the yielded stack are committed (``on_commit``) or all undone."""
        with ExitStack() as undo:
            before = self.config
            undo.callback(self._set_config, before)
            yield undo
            if self.on_commit is not None and self.config != before:
                self.on_commit(self.config)
            undo.pop_all()

    def _set_config(self, config: Config) -> None:
        self.config = config

    def apply(self, new: Config, where: str = "config") -> None:
        """Make the running ports and slaves equal to ``new`` (already validated)."""
        with self.transaction() as undo, self._batch():
            self._apply(new, undo, where)

    @contextlib.contextmanager
    def _batch(self) -> Iterator[None]:
        """Many changes at once (start-up, SIGHUP): each master's nftables chain and host
        routes are brought up to date once, at the end, and its addresses read once."""
        self._deferred = set()
        try:
            with self.owners.batch():
                yield
            deferred, self._deferred = self._deferred, None
            for dp in self.ports:
                if dp.port.master in deferred:
                    self._sync_nft(dp)
        finally:
            self._deferred = None

    def _set_dns(self) -> None:
        """Give every port the DHCP server's DNS options (``[daemon]``, else the host's)."""
        found = resolv.dns(self.config.daemon)
        for dp in self.ports:
            dp.dns = found

    def _set_polling(self, daemon: DaemonConfig, undo: ExitStack) -> None:
        """``daemon.busy_poll_us`` and ``adaptive_poll_us``: apply at each loop's next wait
        (workers.py). Without a WorkerCore either is ignored, with a warning."""
        for key, us in (("busy_poll_us", daemon.busy_poll_us), ("adaptive_poll_us", daemon.adaptive_poll_us)):
            was = getattr(self.workers, key)
            if us == was:
                continue
            if us and not self.workers.cores():
                log.warning("daemon.%s: ignored: busy polling is the C accelerator's (%s)", key,
                            "VHOST_IPVLAN_CORE=0" if fastpath.ext is not None
                            else "not built, or VHOST_IPVLAN_PURE=1")
            undo.callback(setattr, self.workers, key, was)
            setattr(self.workers, key, us)

    def _apply(self, new: Config, undo: ExitStack, where: str) -> None:
        undo.callback(self._set_dns)  # runs after the configuration is restored
        if new.daemon != self.config.daemon:  # socket ownership: applies to sockets made from now on
            undo.callback(self._set_config, self.config)
            self.config = replace(self.config, daemon=new.daemon)
            if new.daemon.workers != self.workers.count:
                log.warning("daemon.workers: %d from the next start (%d now: the threads are made at start)",
                            new.daemon.workers, self.workers.count)
            self._set_polling(new.daemon, undo)
        self._set_dns()  # the host's resolv.conf may have changed too (start-up, SIGHUP)
        wanted = {p.master: p for p in new.ports}
        have = {p.master for p in self.config.ports}
        for i, p in enumerate(new.ports):  # before anything changes: a missing master refuses it all
            if p.master not in have:
                _check_interface(f"port[{i}]", p.master)
        target = {s.name: (p, s) for p, s in new.slaves()}
        # 1. shrink: remove slaves that go or move or need re-creating; narrow in-place changes
        for p, s in list(self.config.slaves()):
            want = target.get(s.name)
            wp = wanted.get(p.master)
            if want is None or want[0].master != p.master or not _in_place(s, want[1]) or (
                    wp is not None and (wp.mode, wp.flag) != (p.mode, p.flag)):
                self.remove_slave(s.name, undo)
            elif want[1] != s:
                keep = tuple(a for a in s.addresses if a in want[1].addresses)
                self.change_slave(s.name, p.master, replace(s, addresses=keep), undo)
        # 2. ports
        for p in list(self.config.ports):
            if p.master not in wanted:
                self.remove_port(p.master, undo)
            elif (wanted[p.master].mode, wanted[p.master].flag) != (p.mode, p.flag):
                self.change_port(replace(wanted[p.master], slaves=()), undo)
        have = {p.master for p in self.config.ports}
        for i, p in enumerate(new.ports):
            if p.master not in have:
                self.add_port(replace(p, slaves=()), undo, where=f"port[{i}]")
        # 3. grow: add slaves, widen in-place changes
        for i, p in enumerate(new.ports):
            for j, s in enumerate(p.slaves):
                w = f"port[{i}].slave[{j}]"
                try:
                    _, cur = self.slave_config(s.name)
                except NotFound:
                    self.add_slave(p.master, s, undo, where=w)
                else:
                    if cur != s:
                        self.change_slave(s.name, p.master, s, undo, where=w)

    # -- ports ----------------------------------------------------------------------

    def add_port(self, pc: PortConfig, undo: ExitStack, where: str = "params") -> None:
        """Open the master and start its port, then add ``pc``'s slaves."""
        cfg.check_port(where, self.config.ports, replace(pc, slaves=()))
        _check_interface(where, pc.master)
        undo.callback(self._set_config, self.config)
        if not self._nft_used:
            nft.reset()
            self._nft_used = True
        uplink = Uplink(pc.master)
        undo.callback(uplink.close)
        try:
            port = Port(pc.master, uplink.mac, pc.mode, pc.flag)
        except ConfigError as e:
            raise e.at(where) from e
        self.owners.watch(port)
        undo.callback(self.owners.unwatch, port)
        port.master_addresses = self.owners.master_addresses(pc.master)
        port.on_learn = partial(self.owners.learned, pc.master)
        worker, loop = self.workers.loop_for_port()
        undo.callback(self.workers.port_removed, worker)
        dp = PortDatapath(port, uplink, loop)
        dp.worker = worker
        dp.plans = self.workers.wanted(worker)
        dp.dns = resolv.dns(self.config.daemon)
        undo.callback(_close_extras, dp)
        try:
            dp.hostlink = HostLink(port, uplink.ifindex)
        except UplinkError as e:
            log.warning("%s; host <-> guest traffic is not available", e)
        if port.traits.routes:
            dp.router = Router(uplink.ifindex, loop)
            dp.router.on_release = dp.routed_later  # packets held while their next hop resolves
        if port.traits.host_forwarding and dp.hostlink is not None:
            dp.hostlink.enable_forwarding()
        self._serial += 1
        self._chains[pc.master] = nft.Chain(f"p{self._serial}", pc.master, ip=port.traits.consume_ip)
        self.ports.append(dp)
        undo.callback(self._forget_port, dp)
        self.config = replace(self.config, ports=(*self.config.ports, replace(pc, slaves=())))
        self._sync_nft(dp)
        dp.start()  # reads the host link too
        undo.callback(dp.stop)
        if self.on_port_added is not None:
            self.on_port_added(dp, self._chains[pc.master])
            if self.on_port_removed is not None:
                undo.callback(self.on_port_removed, pc.master)
        for j, sc in enumerate(pc.slaves):
            self.add_slave(pc.master, sc, undo, where=f"{where}.slave[{j}]")
        log.info("master %s: port added (%s %s)", pc.master, pc.mode, pc.flag)

    def _forget_port(self, dp: PortDatapath) -> None:
        self.ports.remove(dp)
        chain = self._chains.pop(dp.port.master)
        with contextlib.suppress(UplinkError):
            chain.release()

    def remove_port(self, master: str, undo: ExitStack, where: str = "params") -> None:
        pc = self.port_config(master, where)
        if pc.slaves:
            names = ", ".join(s.name for s in pc.slaves)
            raise PortBusy(f"{where}.master: port {master} still has slave(s) {names}; remove them first")
        dp = self.datapath(master)
        undo.callback(self._set_config, self.config)
        self._chains[master].release()  # first: refused by nft, nothing has changed
        del self._chains[master]
        if self.on_port_removed is not None:
            self.on_port_removed(master)
        dp.stop()
        dp.uplink.close()
        _close_extras(dp)
        self.ports.remove(dp)
        self.workers.port_removed(dp.worker)
        self.owners.unwatch(dp.port)
        self.config = replace(self.config, ports=tuple(p for p in self.config.ports if p.master != master))
        undo.callback(self._readd_port, pc)
        log.info("master %s: port removed", master)

    def _readd_port(self, pc: PortConfig) -> None:
        with ExitStack() as again:
            self.add_port(pc, again)
            again.pop_all()

    def change_port(self, pc: PortConfig, undo: ExitStack, where: str = "params") -> None:
        """Give a port a new mode or flag: its slaves are re-created (connections drop)."""
        old = self.port_config(pc.master, where)
        if (old.mode, old.flag) == (pc.mode, pc.flag):
            return
        for s in old.slaves:
            self.remove_slave(s.name, undo)
        self.remove_port(pc.master, undo)
        self.add_port(replace(pc, slaves=old.slaves), undo, where)

    # -- slaves -----------------------------------------------------------------------

    def add_slave(self, master: str, sc: SlaveConfig, undo: ExitStack, where: str = "params") -> None:
        """Create the slave, its device and endpoint (socket), and update nftables."""
        self.port_config(master, where)
        cfg.check_slave(where, self.config.ports, master, sc, index=self._index())
        index = self._index()
        fdbudget.check(where, sc.name, len(self.ports), len(index.slaves) + 1,
                       extra_pairs=index.extra_pairs + sc.queues - 1, workers=self.workers.threads)
        dp = self.datapath(master)
        self.owners.check_master(where, dp.port, sc.addresses, {a.ip for a in sc.addresses})
        taken = learned_by_others(dp.port, sc.name, sc.addresses)
        undo.callback(self._set_config, self.config)
        undo.callback(self._resync_nft, dp)  # runs after the slave is gone again
        try:
            slave = dp.port.add_slave(sc.name, [a.ip.packed for a in sc.addresses], mac=sc.mac, learn=sc.learn,
                                      allow_router=sc.allow_router)
        except MacInUse as e:
            raise e.at(f"{where}.mac") from e
        except AddressInUse as e:
            raise e.at(f"{where}.addresses") from e
        except ConfigError as e:
            raise e.at(where) from e
        undo.callback(dp.port.remove_slave, slave)
        slave.dhcp = cfg.dhcp_lease(sc)
        slave.dhcp6 = cfg.dhcp6_lease(sc)
        dev = NetDevice(slave, dp, queues=sc.queues)
        dp.devices[sc.name] = dev
        undo.callback(self._forget_device, dp, dev)
        d = self.config.daemon
        ep = Endpoint(sc.socket, sc.socket_mode, dev, self.workers.loop(dp.worker), d.socket_permissions,
                      d.socket_owner, d.socket_group, peer=(sc.peer_uid, sc.peer_gid))
        self.endpoints.append(ep)
        self._endpoints[sc.name] = ep
        undo.callback(self._close_endpoint, ep)
        self._set_slave(master, sc.name, sc)
        self._sync_nft(dp)
        ep.start()
        self._watch(sc, slave)
        undo.callback(self._unwatch, sc.name)
        log_taken(taken, sc.name)
        log.info("slave %s: added on %s", sc.name, master)

    def remove_slave(self, name: str, undo: ExitStack, where: str = "params") -> None:
        """Close the slave's connection and socket, forget it, and update nftables."""
        pc, sc = self.slave_config(name, where)
        dp = self.datapath(pc.master)
        dev = dp.devices[name]
        undo.callback(self._set_config, self.config)
        self._set_slave(pc.master, name, None)
        undo.callback(self._readd_slave, pc.master, sc)
        self._unwatch(name)
        self._close_endpoint(self.endpoint(name))
        self._forget_device(dp, dev)
        dp.port.remove_slave(dev.slave)
        self._sync_nft(dp)
        log.info("slave %s: removed from %s", name, pc.master)

    def _readd_slave(self, master: str, sc: SlaveConfig) -> None:
        with ExitStack() as again:
            self.add_slave(master, sc, again)
            again.pop_all()

    def change_slave(self, name: str, master: str, sc: SlaveConfig, undo: ExitStack,
                     where: str = "params") -> None:
        """Make slave ``name`` equal to ``sc`` (on ``master``); in place when possible."""
        pc, old = self.slave_config(name, where)
        self.port_config(master, where)
        cfg.check_slave(where, self.config.ports, master, sc, replaces=name, index=self._index())
        if pc.master != master or not _in_place(old, sc) or sc.name != name:
            self.remove_slave(name, undo, where)
            self.add_slave(master, sc, undo, where)
            return
        dp = self.datapath(master)
        slave = dp.devices[name].slave
        new_ips = {a.ip for a in sc.addresses}
        old_ips = {a.ip for a in old.addresses}
        self.owners.check_master(where, dp.port, sc.addresses, new_ips - old_ips)
        taken = learned_by_others(dp.port, name, sc.addresses)
        undo.callback(self._set_config, self.config)
        undo.callback(self._resync_nft, dp)
        for ip in old_ips - new_ips:
            dp.port.remove_address(slave, ip.packed)
            undo.callback(dp.port.add_address, slave, ip.packed)
        for ip in new_ips - old_ips:
            try:
                dp.port.add_address(slave, ip.packed)
            except ConfigError as e:  # the real cause: in use, or not a unicast address
                raise e.at(f"{where}.addresses") from e
            undo.callback(dp.port.remove_address, slave, ip.packed)
        if old.allow_router != sc.allow_router:
            slave.allow_router = sc.allow_router
            undo.callback(setattr, slave, "allow_router", old.allow_router)
        lease = cfg.dhcp_lease(sc)
        if lease != slave.dhcp:  # addresses, or dhcp on/off: answered from the next message on
            undo.callback(setattr, slave, "dhcp", slave.dhcp)
            slave.dhcp = lease
        lease6 = cfg.dhcp6_lease(sc)
        if lease6 != slave.dhcp6:
            undo.callback(setattr, slave, "dhcp6", slave.dhcp6)
            slave.dhcp6 = lease6
        if old.queues != sc.queues:  # for the next connection: the connected one keeps its pairs
            index = self._index()
            if sc.queues > old.queues:
                fdbudget.check(where, name, len(self.ports), len(index.slaves),
                               extra_pairs=index.extra_pairs + sc.queues - old.queues, workers=self.workers.threads)
            dev = dp.devices[name]
            dev.queues = sc.queues
            undo.callback(setattr, dev, "queues", old.queues)
        if (old.qmp, old.qmp_device) != (sc.qmp, sc.qmp_device):
            self._unwatch(name)
            undo.callback(self._watch, old, slave)
            undo.callback(self._unwatch, name)
            self._watch(sc, slave)
        self._set_slave(master, name, sc)
        self._sync_nft(dp)
        log_taken(taken, name)
        log.info("slave %s: changed", name)

    def _sync_learned(self, master: str) -> None:
        """A slave of ``master`` learned an address: consume it and route it."""
        dp = next((dp for dp in self.ports if dp.port.master == master), None)
        if dp is None:
            return
        try:
            self._sync_nft(dp)
        except UplinkError as e:
            log.warning("master %s: cannot consume learned addresses: %s", master, e)

    # -- internals --------------------------------------------------------------------

    def _set_slave(self, master: str, name: str, sc: SlaveConfig | None) -> None:
        """Replace (or with ``None`` remove) slave ``name`` in ``config``; append if new.
        Only the ports concerned are rebuilt, and the index follows."""
        index = self._index()
        old = index.slaves.get(name)
        ports = []
        for p in self.config.ports:
            slaves = p.slaves
            if old is not None and p.master == old[0] and (sc is None or p.master != master):
                slaves = tuple(s for s in slaves if s.name != name)
            elif sc is not None and p.master == master:
                in_place = old is not None and old[0] == master
                slaves = tuple(sc if s.name == name else s for s in slaves) if in_place else (*slaves, sc)
            ports.append(p if slaves is p.slaves else replace(p, slaves=slaves))
        self.config = replace(self.config, ports=tuple(ports))
        if old is not None:
            index.remove(*old)
        if sc is not None:
            index.add(master, sc)
        self._indexed = self.config

    def _watch(self, sc: SlaveConfig, slave: Slave) -> None:
        if sc.qmp is not None:
            self.rxfilters[sc.name] = RxFilterWatch(slave, sc.qmp, sc.qmp_device, self.loop)

    def _unwatch(self, name: str) -> None:
        watch = self.rxfilters.pop(name, None)
        if watch is not None:
            watch.close()

    def _forget_device(self, dp: PortDatapath, dev: NetDevice) -> None:
        if dp.devices.get(dev.slave.name) is dev:
            del dp.devices[dev.slave.name]
        dp.dirty.discard(dev)

    def _close_endpoint(self, ep: Endpoint) -> None:
        if self._endpoints.get(ep.name) is ep:
            del self._endpoints[ep.name]
            self.endpoints.remove(ep)
        ep.close()

    def _sync_nft(self, dp: PortDatapath) -> None:
        """Bring the master's nftables chain and host routes up to date (by difference)."""
        if self._deferred is not None:
            self._deferred.add(dp.port.master)
            return
        self._chains[dp.port.master].sync(dp.port.by_addr)
        if dp.hostlink is not None:
            dp.hostlink.sync()

    def _resync_nft(self, dp: PortDatapath) -> None:
        if dp in self.ports:
            with contextlib.suppress(UplinkError):
                self._sync_nft(dp)

    def close(self) -> None:
        """Stop everything (daemon exit): sockets unlinked, nftables rules removed."""
        for name in list(self.rxfilters):
            self._unwatch(name)
        self.owners.close()
        for ep in self.endpoints:
            ep.close()
        for dp in self.ports:
            with contextlib.suppress(Exception):
                dp.stop()
            dp.uplink.close()
            _close_extras(dp)
            self.workers.port_removed(dp.worker)
        if self._nft_used:
            with contextlib.suppress(UplinkError):
                nft.remove()
        self.endpoints.clear()
        self._endpoints.clear()
        self.ports.clear()


def _close_extras(dp: PortDatapath) -> None:
    """Close the port's host link (deleting the tap and its routes) and router."""
    dp.close_hostlink()
    if dp.router is not None:
        dp.router.close()
        dp.router = None


def _check_interface(where: str, master: str) -> None:
    try:
        socket.if_nametoindex(master)
    except OSError:
        raise NoSuchInterface(f"{where}.master: interface {master!r} does not exist") from None


def _in_place(old: SlaveConfig, new: SlaveConfig) -> bool:
    """Whether ``old`` can become ``new`` without re-creating the slave."""
    return (old.name, old.socket, old.socket_mode, old.mac, old.learn, old.peer_uid, old.peer_gid) == \
        (new.name, new.socket, new.socket_mode, new.mac, new.learn, new.peer_uid, new.peer_gid)
