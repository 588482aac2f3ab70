"""``vhost-ipvlan libvirt watch``: hotplug, daemon restarts and master link, for running domains.

libvirt runs no hook for ``virsh attach-device``/``detach-device``, so this small
service follows libvirt's domain events and keeps the daemon's slaves in step with
each running domain's *live* XML (``domain.slave_requests``): it *reconciles* a
domain on start, device added/removed and metadata change, and every domain when
it starts and every ``RESCAN`` seconds (so a missed event is repaired).

Rules:
- Reconcile = create the slaves the live XML asks for and that are missing, remove
  the slaves this domain owns (``owner`` = ``libvirt:<its uuid>``) that it no longer
  asks for; other slaves are never touched. Stopped domains are the ``release``
  hook's business.
- Events only queue the domain's name; libvirt is called from the main thread.
- QMP, best-effort (``libvirt_qemu.qemuMonitorCommand``, through libvirt, which owns
  the monitor; libvirt marks such domains "tainted: custom-monitor"): the daemon's
  control socket is polled every ``interval`` seconds. A new daemon process (the
  peer pid of the control connection changed) means it restarted: each of our NICs
  gets ``announce-self`` once its slave is up again. A slave whose ``link`` (its
  master's) goes down gets ``set_link up=false`` on its NIC, and ``up=true`` when it
  comes back. Failures are logged, never fatal.
- Multicast filters: each NIC's RX filter (``query-rx-filter`` on its alias, through
  libvirt's monitor) is handed to the daemon (control ``slave.rx_filter``), so the
  slave's filter is what the guest asked for (not IGMP/MLD snooping): on every
  ``NIC_RX_FILTER_CHANGED`` (libvirt's ``qemu-monitor-event`` API), at reconcile
  (domain start, every ``RESCAN``) and after a daemon restart; only sent when it
  changed. Slaves with their own ``qmp`` refuse it (the daemon asks QEMU itself).
  On exit the watcher gives its slaves back to snooping; if it dies, the last filter
  it sent stays until the daemon restarts.
- libvirtd may restart under it: a closed connection (libvirt's close callback, or a
  failed keepalive) is reopened with backoff, the events are subscribed again and every
  running domain is reconciled, so nothing that happened meanwhile is lost for long.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

from ..control.client import Client
from ..errors import ControlUnavailable, DomainError, HookError, RemoteError
from .domain import parse, slave_requests
from .hook import ensure, remove

log = logging.getLogger(__name__)
RESCAN = 30.0
ANNOUNCE = {"initial": 50, "max": 550, "rounds": 5, "step": 100}  # QEMU's own defaults


def peer_pid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid: int = struct.unpack("3i", creds)[0]
    return pid


class Watcher:
    def __init__(self, uri: str, control: Path, socket_dir: Path, interval: float = 1.0) -> None:
        self.uri, self.control, self.socket_dir, self.interval = uri, control, socket_dir, interval
        self.pending: queue.Queue[tuple[str, str]] = queue.Queue()  # ("domain" | "rx", domain name)
        self.stopped = threading.Event()
        self.nics: dict[str, tuple[str, str]] = {}  # slave name -> (domain name, NIC alias)
        self.links: dict[str, bool] = {}  # slave name -> last link state seen
        self.daemon_pid: int | None = None
        self.announce: set[str] = set()  # slaves to announce once they are up
        self.rx_sent: dict[str, Any] = {}  # slave name -> the RX filter last given to the daemon
        self.conn: Any = None
        self._callbacks: list[int] = []
        self._monitor_callbacks: list[int] = []

    # -- libvirt -------------------------------------------------------------------------------

    def open(self) -> None:
        import libvirt

        libvirt.registerErrorHandler(lambda *_: None, None)  # errors are raised (and logged) anyway
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=self._event_loop, name="libvirt-events", daemon=True).start()
        self._connect()

    def _connect(self) -> None:
        """Open the connection, subscribe to the events, queue every running domain."""
        import libvirt

        self.conn = libvirt.open(self.uri)
        self.conn.setKeepAlive(5, 3)
        self.conn.registerCloseCallback(self._closed, None)
        for ev in (libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED,
                   libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE):
            self._callbacks.append(self.conn.domainEventRegisterAny(None, ev, self._event, None))
        try:
            import libvirt_qemu

            self._monitor_callbacks.append(libvirt_qemu.qemuMonitorEventRegister(
                self.conn, None, "NIC_RX_FILTER_CHANGED", self._rx_event, None, 0))
        except libvirt.libvirtError as e:
            log.warning("no NIC_RX_FILTER_CHANGED events (%s): RX filters are read every %g s", e, RESCAN)
        for dom in self.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            self.pending.put(("domain", dom.name()))

    def _closed(self, conn: Any, reason: int, opaque: Any) -> None:
        self.pending.put(("closed", str(reason)))

    def _disconnect(self) -> None:
        """Forget the connection (deregistering what can be; a dead one refuses)."""
        if self.conn is None:
            return
        import libvirt_qemu

        for cb in self._monitor_callbacks:
            with contextlib.suppress(Exception):
                libvirt_qemu.qemuMonitorEventDeregister(self.conn, cb)
        for cb in self._callbacks:
            with contextlib.suppress(Exception):
                self.conn.domainEventDeregisterAny(cb)
        with contextlib.suppress(Exception):
            self.conn.unregisterCloseCallback()
        with contextlib.suppress(Exception):
            self.conn.close()
        self.conn = None
        self._callbacks, self._monitor_callbacks = [], []

    def _reconnect(self) -> None:
        """libvirtd went away (restart, upgrade): reconnect with backoff, then resync."""
        import libvirt

        self._disconnect()
        log.warning("lost the connection to %s: reconnecting", self.uri)
        delay = 0.5
        while not self.stopped.is_set():
            try:
                self._connect()
            except libvirt.libvirtError as e:
                self._disconnect()
                log.debug("reconnect to %s: %s", self.uri, e)
                self.stopped.wait(delay)
                delay = min(delay * 2, 10.0)
                continue
            log.info("reconnected to %s", self.uri)
            return

    def _event_loop(self) -> None:
        import libvirt

        while not self.stopped.is_set():
            libvirt.virEventRunDefaultImpl()

    def _event(self, conn: Any, dom: Any, *args: Any) -> None:
        log.debug("event for domain %s: %s", dom.name(), args[:-1])
        self.pending.put(("domain", dom.name()))

    def _rx_event(self, conn: Any, dom: Any, event: str, *args: Any) -> None:
        log.debug("domain %s: %s %s", dom.name(), event, args[2] if len(args) > 2 else "")
        self.pending.put(("rx", dom.name()))

    def close(self) -> None:
        self.stopped.set()
        self._release_rx_filters()
        self._disconnect()

    # -- reconcile -----------------------------------------------------------------------------

    def reconcile(self, name: str) -> None:
        import libvirt

        try:
            dom = self.conn.lookupByName(name)
            active = dom.isActive()
            xml = dom.XMLDesc(0) if active else ""
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                log.warning("domain %s: %s", name, e)
            active = False
        if not active:
            self._forget(name)
            return
        try:
            requests = slave_requests(xml, self.socket_dir)
            owner = parse(xml).owner
        except DomainError as e:
            log.warning("%s", e)
            return
        try:
            with Client(self.control, timeout=30) as c:
                have = {s["name"] for s in c.call("slave.list") if s.get("owner") == owner}
                want = {r.name for r in requests}
                created = ensure(c, [r for r in requests if r.name not in have])
                removed = remove(c, sorted(have - want), owner)
        except (HookError, RemoteError, ControlUnavailable) as e:
            log.warning("domain %s: %s", name, e)
            return
        for n in created:
            log.info("domain %s: slave %s added", name, n)
        for n in removed:
            log.info("domain %s: slave %s removed", name, n)
        keep = {r.name for r in requests if r.alias is not None}
        self._forget(name, keep)
        for r in requests:
            if r.alias is not None:
                self.nics[r.name] = (name, r.alias)
        self.refresh_rx(name)

    def _forget(self, domain: str, keep: set[str] | None = None) -> None:
        """Drop a domain's NICs (but those in ``keep``: their last link state stays)."""
        for slave in [s for s, (d, _) in self.nics.items() if d == domain and s not in (keep or set())]:
            del self.nics[slave]
            self.links.pop(slave, None)
            self.rx_sent.pop(slave, None)

    # -- the daemon and QMP ----------------------------------------------------------------------

    def poll_daemon(self) -> None:
        try:
            with Client(self.control, timeout=10) as c:
                pid = peer_pid(c.sock)
                stats = c.call("stats")
        except (ControlUnavailable, RemoteError) as e:
            log.debug("daemon: %s", e)
            return
        if self.daemon_pid is not None and pid != self.daemon_pid:
            log.info("daemon restarted (pid %d -> %d): announcing the guests' NICs when they are up",
                     self.daemon_pid, pid)
            self.announce = set(self.nics)
            self.rx_sent.clear()  # the new daemon snoops until told again
            for domain in {d for d, _ in self.nics.values()}:
                self.pending.put(("rx", domain))
        self.daemon_pid = pid
        for master in stats.values():
            for slave, s in master.get("slaves", {}).items():
                if slave not in self.nics:
                    continue
                link = s.get("link") == "up"
                if self.links.get(slave, True) != link:  # a NIC starts with its link up
                    self.qmp(slave, "set_link", {"name": self.nics[slave][1], "up": link})
                self.links[slave] = link
                if slave in self.announce and s.get("up"):
                    self.announce.discard(slave)
                    self.qmp(slave, "announce-self", dict(ANNOUNCE))

    def qmp(self, slave: str, command: str, arguments: dict[str, Any], *, quiet: bool = False) -> Any:
        """Run a QMP command on the slave's domain; its ``return``, or None if it failed."""
        import libvirt
        import libvirt_qemu

        domain, alias = self.nics[slave]
        try:
            dom = self.conn.lookupByName(domain)
            reply = libvirt_qemu.qemuMonitorCommand(
                dom, json.dumps({"execute": command, "arguments": arguments}), 0)
            if not quiet:
                log.info("domain %s: %s %s: %s", domain, command, json.dumps(arguments), reply.strip())
            result = json.loads(reply)
        except (libvirt.libvirtError, ValueError) as e:
            log.warning("domain %s, NIC %s: %s failed: %s", domain, alias, command, e)
            return None
        if "error" in result:
            log.warning("domain %s, NIC %s: %s failed: %s", domain, alias, command, result["error"])
            return None
        return result.get("return")

    def refresh_rx(self, domain: str) -> None:
        """Hand each of the domain's NICs' RX filter to the daemon, if it changed."""
        for slave, (d, alias) in sorted(self.nics.items()):
            if d != domain:
                continue
            reply = self.qmp(slave, "query-rx-filter", {"name": alias}, quiet=True)
            if not isinstance(reply, list) or len(reply) != 1 or reply[0] == self.rx_sent.get(slave):
                continue
            if self._send_rx_filter(slave, reply[0]):
                self.rx_sent[slave] = reply[0]

    def _send_rx_filter(self, slave: str, info: Any) -> bool:
        try:
            with Client(self.control, timeout=10) as c:
                got = c.call("slave.rx_filter", {"name": slave, "rx_filter": info})
        except RemoteError as e:
            own = e.code == "qmp_configured"  # the daemon asks QEMU itself: stop offering
            log.log(logging.DEBUG if own else logging.WARNING, "slave %s: RX filter not taken: %s", slave, e)
            return own
        except ControlUnavailable as e:
            log.debug("daemon: %s", e)
            return False
        log.info("slave %s: RX filter %s", slave, "(back to snooping)" if info is None else
                 json.dumps(got.get("rx_filter")))
        return True

    def _release_rx_filters(self) -> None:
        for slave in sorted(self.rx_sent):
            self._send_rx_filter(slave, None)
        self.rx_sent.clear()

    # -- main loop -----------------------------------------------------------------------------

    def run(self) -> None:
        self.open()
        log.info("watching %s (control %s, sockets in %s)", self.uri, self.control, self.socket_dir)
        next_poll = next_scan = time.monotonic()
        try:
            while not self.stopped.is_set():
                now = time.monotonic()
                try:
                    items = {self.pending.get(timeout=max(0.0, min(next_poll, next_scan) - now))}
                    while not self.pending.empty():
                        items.add(self.pending.get_nowait())
                except queue.Empty:
                    items = set()
                if any(kind == "closed" for kind, _ in items) or not self.conn.isAlive():
                    self._reconnect()
                    if self.stopped.is_set():
                        break
                    continue  # _connect queued every running domain
                names = {name for kind, name in items if kind == "domain"}
                for name in sorted(names):
                    self.reconcile(name)  # reads the RX filters too
                for name in sorted({name for kind, name in items if kind == "rx"} - names):
                    self.refresh_rx(name)
                now = time.monotonic()
                if now >= next_scan:
                    for dom in self.conn.listAllDomains(1):  # VIR_CONNECT_LIST_DOMAINS_ACTIVE
                        self.reconcile(dom.name())
                    next_scan = now + RESCAN
                if now >= next_poll:
                    self.poll_daemon()
                    next_poll = now + self.interval
        finally:
            self.close()
