"""Following the masters: link state, MTU, MAC, disappearance and return.

Kernel reference (``ipvlan_device_event``, docs/kernel-behaviour.md §7): UP/CHANGE copy the
master's carrier to every slave; CHANGEMTU overwrites the slaves' MTU;
CHANGEADDR gives every slave the new MAC; UNREGISTER deletes all slaves.

Rules (what vhost-ipvlan does, and where it departs):
- Link: a master is *up* when it is administratively up and has carrier. A
  slave's ``link`` is its master's (the kernel copies carrier). While the master
  is down, frames for the wire are dropped and counted ``master_down`` on the
  sending slave; guest <-> guest traffic goes on. (The kernel cannot send on an
  admin-down master either; on carrier loss it turns the slaves' carrier off, and
  a namespace slave then stops transmitting altogether. A VM's own driver does the
  same once told its link is down: ``on_slave_link`` is the hook for QMP
  ``set_link``, not wired yet, so the backend itself does not cut guest <-> guest.)
- MTU: read at start and on every change; a non-GSO frame from a guest whose
  Ethernet payload is larger is dropped (``mtu_exceeded``), never truncated.
- MAC: ``Port.set_master_mac`` on every change; translation uses it at once.
  A new MAC that is a slave's is refused by the port: logged, the old one kept.
- Gone (RTM_DELLINK, or renamed away): the uplink socket is closed and the
  master's nftables chain deleted; the slaves stay (departure: the kernel deletes
  them) and their frames for the wire are dropped (``master_down``). When an
  interface of that name appears again the socket is reopened, the chain
  re-applied, MAC and MTU taken from the new interface, and traffic resumes.
  ``rx_dropped`` (the kernel's drops at the uplink's socket) goes on from the closed
  socket's count, so the counter never goes back; it is absent from the stats of an
  uplink that does not count them.
- Addresses: ``Port.master_addresses`` follows the master's own addresses
  (RTM_NEWADDR/RTM_DELADDR; re-read by ``resync``), so a slave can never learn
  one; every address event re-reads them with their prefixes (``read_addresses``,
  ``Ownership.master_addresses``), which bound what a slave may learn. If the
  host later gives the master an address a slave owns (configured or learned),
  the slave keeps it: the nftables chain still takes the traffic for it away
  from the host. That is logged (one warning) and counted
  (``address_conflicts`` in the master's stats).
- Forwarding (l3s needs it on the master and the host link): every netconf event
  that turns off forwarding an l3s port's host link needs (``HostLink.needs_forwarding``)
  makes it turn that on again; a master that comes back is checked too, and every
  master after lost notifications (``resync``).
- One log line per change; failures to reopen are logged, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigError, UplinkError
from ..net.addr import format_ip, format_mac
from ..net.frames import ETH_HLEN
from ..virtio import net
from . import nft
from .datapath import PortDatapath
from .netlink import LinkMonitor, LinkState, read_link
from .uplink import Uplink

log = logging.getLogger(__name__)

#: called with (slave name, link up) when a slave's link changes (hook for QMP set_link)
SlaveLinkHook = Callable[[str, bool], None]


@dataclass(slots=True)
class Master:
    """What the daemon knows of one master interface."""

    dp: PortDatapath
    chain: nft.Chain
    index: int = 0
    present: bool = True
    up: bool = True
    mtu: int = 1500
    address_conflicts: int = 0
    #: frames the kernel dropped at the master's earlier (closed) sockets
    rx_dropped_before: int = 0

    @property
    def name(self) -> str:
        return self.dp.port.master

    @property
    def link(self) -> str:
        if not self.present:
            return "absent"
        return "up" if self.up else "down"


class MasterMonitor:
    """Applies link events to the ports' data paths."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.masters: dict[str, Master] = {}
        self.on_slave_link: SlaveLinkHook | None = None
        self.events = 0
        self._netlink: LinkMonitor | None = None
        #: reads a master's addresses (set by the daemon: ``Ownership.master_addresses``)
        self.read_addresses: Callable[[str], frozenset[bytes]] | None = None
        #: masters whose forwarding is checked on the loop's next turn
        self._forwarding_due: set[str] = set()

    def start(self) -> None:
        """Subscribe to link events (before reading the initial state, so none is missed)."""
        self._netlink = LinkMonitor(self.loop, self.handle, self.resync, self.handle_address, self.handle_netconf)

    def add(self, dp: PortDatapath, chain: nft.Chain) -> None:
        """Watch ``dp``'s master (its uplink is open); read its link state and MTU now."""
        m = Master(dp, chain, index=dp.uplink.ifindex)
        self.masters[m.name] = m
        state = read_link(m.name)
        if state is not None:
            self._apply(m, state, initial=True)

    def remove(self, master: str) -> None:
        self.masters.pop(master, None)

    def close(self) -> None:
        if self._netlink is not None:
            self._netlink.close()
            self._netlink = None

    # -- state ----------------------------------------------------------------------

    def stats(self, master: str) -> dict[str, object]:
        m = self.masters.get(master)
        if m is None:
            return {}
        uplink = m.dp.uplink
        dropped = _socket_dropped(uplink)
        return {"link": m.link, "mtu": m.mtu, "mac": format_mac(m.dp.port.master_mac),
                "address_conflicts": m.address_conflicts,
                "rx": getattr(uplink, "rx_mechanism", "recvmsg"), "rx_ring_bytes": getattr(uplink, "ring_bytes", 0),
                **({"rx_dropped": m.rx_dropped_before + dropped} if dropped is not None else {})}

    def slave_link(self, master: str) -> str:
        m = self.masters.get(master)
        return "up" if m is None or (m.present and m.up) else "down"

    # -- events ---------------------------------------------------------------------

    def resync(self) -> None:
        """Re-read every master (after lost notifications, or on request)."""
        for m in list(self.masters.values()):
            if self.read_addresses is not None:
                with contextlib.suppress(UplinkError, OSError):
                    m.dp.port.master_addresses = self.read_addresses(m.name)
            state = read_link(m.name)
            if state is None:
                self.handle(LinkState(m.name, m.index, False, False, m.mtu, None))
            else:
                self.handle(state)
            if m.present and m.dp.hostlink is not None:  # a lost netconf event too
                m.dp.hostlink.check_forwarding()

    def handle(self, state: LinkState) -> None:
        m = self.masters.get(state.name)
        if m is None:
            # a master renamed away: its index, under another name
            for other in self.masters.values():
                if other.present and other.index == state.index:
                    self.events += 1
                    self._gone(other, f"renamed to {state.name}")
            return
        self.events += 1
        if not state.present:
            if m.present and state.index == m.index:
                self._gone(m, "deleted")
            return
        if not m.present or state.index != m.index:
            if m.present:
                self._gone(m, "replaced")
            self._back(m, state)
            return
        self._apply(m, state)

    def handle_address(self, index: int, addr: bytes, present: bool) -> None:
        """An address was added to (or removed from) interface ``index``."""
        m = next((m for m in self.masters.values() if m.present and m.index == index), None)
        if m is None:
            return
        port = m.dp.port
        if not present:
            port.master_addresses = port.master_addresses - {addr}
        elif addr not in port.master_addresses:
            port.master_addresses = port.master_addresses | {addr}
            owner = port.by_addr.get(addr)
            if owner is not None:
                m.address_conflicts += 1
                log.warning("master %s: the host added %s, which is slave %s's address; the slave keeps it "
                            "(the host will not receive traffic for it)", m.name, format_ip(addr), owner.name)
        if self.read_addresses is not None:  # the read also gives the port the master's prefixes
            with contextlib.suppress(UplinkError, OSError):
                self.read_addresses(m.name)

    def handle_netconf(self, family: int, index: int, forwarding: int) -> None:
        """Forwarding changed somewhere: if an l3s port's host link needs it, check that
        port's forwarding on the loop's next turn (once: one event comes per interface)."""
        if forwarding:
            return
        for m in self.masters.values():
            link = m.dp.hostlink
            if link is not None and m.name not in self._forwarding_due and \
                    link.needs_forwarding(family, index, m.index):
                self._forwarding_due.add(m.name)
                self.loop.call_soon(self._check_forwarding, m.name)

    def _check_forwarding(self, master: str) -> None:
        self._forwarding_due.discard(master)
        m = self.masters.get(master)
        if m is not None and m.dp.hostlink is not None:
            m.dp.hostlink.check_forwarding()

    def _apply(self, m: Master, state: LinkState, *, initial: bool = False) -> None:
        dp = m.dp
        if state.mtu and state.mtu != m.mtu:
            if not initial:
                log.info("master %s: mtu %d -> %d", m.name, m.mtu, state.mtu)
            m.mtu = state.mtu
        dp.max_frame = net.HDR_LEN + ETH_HLEN + m.mtu
        dp.port.max_frame = ETH_HLEN + m.mtu
        if state.mac is not None and state.mac != dp.port.master_mac:
            old = dp.port.master_mac
            try:
                dp.port.set_master_mac(state.mac)
            except ConfigError as e:
                log.warning("master %s: new MAC %s refused, keeping %s: %s",
                            m.name, format_mac(state.mac), format_mac(old), e)
            else:
                log.info("master %s: mac %s -> %s", m.name, format_mac(old), format_mac(state.mac))
        self._set_link(m, state.up, quiet=initial and state.up)

    def _set_link(self, m: Master, up: bool, *, quiet: bool = False) -> None:
        was = m.present and m.up if not quiet else None
        m.up = up
        now = m.present and m.up
        m.dp.wire_up = now
        if was is not None and was == now:
            return
        if not quiet:
            log.info("master %s: link %s", m.name, "up" if now else "down")
        hook = self.on_slave_link
        if hook is not None:
            for name in m.dp.devices:
                hook(name, now)

    def _gone(self, m: Master, why: str) -> None:
        log.warning("master %s: %s; its slaves stay, their frames for the wire are dropped", m.name, why)
        m.present = False
        self._set_link(m, False, quiet=True)
        m.dp.close_uplink()
        with contextlib.suppress(UplinkError):
            m.chain.release()
        m.chain.forget()  # released, or gone with the device: nothing to release later

    def _back(self, m: Master, state: LinkState) -> None:
        try:
            uplink = Uplink(m.name)
        except UplinkError as e:
            log.warning("master %s: appeared again but cannot be opened: %s", m.name, e)
            return
        m.rx_dropped_before += _socket_dropped(m.dp.uplink) or 0  # the old socket's last count
        m.dp.open_uplink(uplink)
        m.index = uplink.ifindex
        m.present = True
        if m.dp.router is not None:
            m.dp.router.invalidate(uplink.ifindex)
        try:
            m.chain.reapply(m.dp.port.by_addr)
        except UplinkError as e:
            log.warning("master %s: cannot re-apply the nftables chain: %s", m.name, e)
        if m.dp.hostlink is not None:  # a new interface: its forwarding is the default's
            m.dp.hostlink.check_forwarding()
        log.info("master %s: present again (index %d); traffic resumes", m.name, m.index)
        m.up = not state.up  # make _set_link log the state it finds
        self._apply(m, state)


def _socket_dropped(uplink: object) -> int | None:
    """The frames the kernel dropped at ``uplink``'s socket (``Uplink.socket_counts``),
    None for an uplink that does not count them."""
    counts = getattr(uplink, "socket_counts", None)
    if counts is None:
        return None
    dropped: int = counts()[1]
    return dropped
