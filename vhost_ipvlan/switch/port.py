"""A port: one master interface, its slaves, and the port-wide address table.

Rules (kernel ``ipvlan_main.c``: docs/kernel-behaviour.md §2 and §7, with its departures):
- Mode and flag are per port (the kernel's are port-wide too): any of
  ``decisions.MODES`` x ``decisions.FLAGS``; another value raises
  ``errors.ConfigError`` saying which values exist. ``Port.traits`` is the pair's
  ``decisions.Traits``: what the daemon does differently for it.
- One address (IPv4 or IPv6, keyed by its packed bytes alone) belongs to at most one
  slave of the port: ``errors.AddressInUse`` names the owner. A down slave keeps its
  addresses reserved (kernel: the busy check ignores the state).
- Slave MACs are unique in the port and never the master's. A slave without a
  configured MAC learns it from its first valid frame (see ``l2``); it is then
  locked until the slave is removed.
- IPv6 link-locals a guest uses are learned: the first slave to send from one owns it,
  at most ``MAX_LEARNED_LINK_LOCALS`` per slave. When a slave's MAC becomes known the
  EUI-64 link-local derived from it is reserved for it, so another guest cannot squat
  it first. A configured address always wins over a learned one: configuring it takes
  it away from the slave that had learned it.
- Learning mode (``add_slave(..., learn=True)``, where ``traits.learning``: mode l2): the slave also
  learns up to ``source.MAX_LEARNED_V4`` IPv4 and ``MAX_LEARNED_V6`` IPv6 addresses
  nobody owns from its frames (``source``), then it is locked. Learned addresses
  (``Slave.learned_addrs``) own traffic exactly as configured ones do; they are
  forgotten when the slave goes. ``master_addresses`` (the master's own, kept up to
  date by the daemon) are never learned; ``on_learn`` is told of every new one.
- What may be learned also depends on the master's link (the daemon supplies the
  data, the switch stays pure): only addresses inside the master's connected
  prefixes (``set_master_prefixes``; none known: nothing is learned, ``on_link``),
  never one the daemon's ``in_use`` predicate names (the master's gateways and
  neighbours in use, from netlink). The port also remembers, from the frames the
  wire sends (``saw_on_wire``), the source MACs (``wire_macs``) and IPv6 link-local
  sources (``wire_link_locals``) in use out there, at most ``MAX_WIRE_SEEN`` of each
  (later ones are not recorded): a slave never learns one (``source``).
- The tables (``by_addr``, ``by_mac``) hold every slave, up or down; delivery
  checks ``Slave.up``. ``generation`` increases on every address change so the
  daemon knows when to re-sync what it steals from the host (``consumed_addresses``).
- A slave whose ``dhcp`` lease is set (the daemon sets it: ``dhcp`` on, an IPv4
  address configured, not learning) has its DHCPv4 client messages answered by
  the backend (``l2``/``l3``: ``ANSWERED_DHCP``), whatever their destination.
- A slave whose ``dhcp6`` lease is set (``dhcp`` on, any address configured, not
  learning; its IPv6 addresses, maybe none) has its DHCPv6 client messages answered
  (``ANSWERED_DHCP6``) and, where the daemon is the guests' router
  (``Port.advertises``: l3/l3s always; l2 while the host has no IPv6 default route
  through the master, ``gateway_v6``, and no Router Advertisement came from the wire
  or from a guest with ``allow_router``, ``link_router``, in the last ``LINK_ROUTER_TICKS``
  RA intervals: the daemon's ``age_link_router`` every interval), its Router Solicitations
  too (``ANSWERED_RS``); otherwise an RS is switched like any frame and the router answers it.
- Each slave has a multicast filter (``mcast.GroupFilter``): the policy feeds it the
  guest's IGMP/MLD, the daemon asks it before flooding to that slave.
- Per-frame decisions are ``port.from_guest(slave, frame)`` and
  ``port.from_uplink(frame)``, bound from ``decisions.DECISIONS`` for the port's mode
  and flag. Configuration errors raise ``errors.ConfigError`` (``AddressInUse``,
  ``MacInUse``, ``NameInUse`` for a clash) without a key path: the caller adds it
  (``ConfigError.at``). Frame problems never raise.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from functools import partial

from ..drops import counts, new_counters
from ..errors import AddressInUse, ConfigError, MacInUse, NameInUse
from ..net.addr import (
    ZERO_MAC,
    eui64_link_local,
    format_ip,
    format_mac,
    is_unicast_ip,
    parse_ip,
    parse_mac,
)
from ..net.dhcp import Lease
from ..net.frames import ETH_HLEN, L3_IPV6, Frame
from .decisions import DECISIONS, FLAGS, MODES, TRAITS, modes_with
from .mcast import GroupFilter
from .verdict import TO_SLAVE, TO_UPLINK, Verdict

MAX_LEARNED_LINK_LOCALS = 8
MAX_WIRE_SEEN = 4096
#: RA intervals (the daemon's, 600 s) without an RA from the wire after which l2 forgets
#: the wire's router: more than RFC 4861's longest MaxRtrAdvInterval (1800 s)
LINK_ROUTER_TICKS = 3

AddressLike = str | bytes | ipaddress.IPv4Address | ipaddress.IPv6Address


def _nobody(addr: bytes) -> bool:
    return False


class Slave:
    """One guest NIC on a port. Created by ``Port.add_slave`` only."""

    __slots__ = (
        "addresses", "allow_router", "dhcp", "dhcp6", "drops", "index", "learn", "learned", "learned_addrs", "mac",
        "mcast", "name", "port", "to_me", "up", "via_wire",
    )

    def __init__(self, port: Port, name: str, index: int, mac: bytes | None) -> None:
        self.port = port
        self.name = name
        self.index = index
        self.mac = mac
        #: configured addresses (packed, 4 or 16 bytes)
        self.addresses: set[bytes] = set()
        #: learned IPv6 link-locals (including the reserved EUI-64 one)
        self.learned: set[bytes] = set()
        #: learning mode: learns up to 1 IPv4 + 4 IPv6 addresses from its frames
        self.learn = False
        #: addresses learned in learning mode (not link-local)
        self.learned_addrs: set[bytes] = set()
        #: may send Router Advertisements, Redirects and DHCP server messages (``guard``)
        self.allow_router = False
        #: what the backend's DHCPv4 server gives this guest (``net.dhcp``), set by the daemon;
        #: ``None``: its DHCP client messages are switched like any frame
        self.dhcp: Lease | None = None
        #: what its DHCPv6 server gives it (IPv6 addresses, maybe none), and whether its
        #: RS are answered (``net.dhcp6``, ``net.ra``); ``None``: switched like any frame
        self.dhcp6: Lease | None = None
        #: set by the daemon when the guest's RX queue is ready
        self.up = False
        #: drop counters, indexed by DropReason
        self.drops = new_counters()
        #: the TO_SLAVE verdict for this slave, built once
        self.to_me: Verdict = (TO_SLAVE, self)
        #: the TO_UPLINK verdict for a frame addressed to this slave's MAC (vepa)
        self.via_wire: Verdict = (TO_UPLINK, self)
        #: which multicast this guest receives
        self.mcast = GroupFilter(self.addresses, self.learned, self.learned_addrs)

    def learned_v4(self) -> int:
        return sum(1 for a in self.learned_addrs if len(a) == 4)

    def learned_v6(self) -> int:
        return sum(1 for a in self.learned_addrs if len(a) == 16)

    def owned(self) -> set[bytes]:
        """Configured and learned addresses that are not link-local: what the host
        routes to this guest."""
        return self.addresses | self.learned_addrs

    def drop_counts(self) -> dict[str, int]:
        """Non-zero drop counters by ``DropReason.label``."""
        return counts(self.drops)

    def __repr__(self) -> str:
        mac = format_mac(self.mac) if self.mac is not None else "unlearned"
        return f"<Slave {self.name} #{self.index} {mac} {'up' if self.up else 'down'}>"


def learned_addresses(slave: Slave) -> list[str]:
    """``slave``'s learned (learning mode) addresses as sorted text, IPv4 first."""
    return [format_ip(a) for a in sorted(slave.learned_addrs, key=lambda a: (len(a), a))]


def _check_mac(mac: bytes | str) -> bytes:
    try:
        packed = parse_mac(mac) if isinstance(mac, str) else bytes(mac)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if len(packed) != 6:
        raise ConfigError(f"invalid MAC address {packed!r} (need 6 bytes)")
    if packed[0] & 1 or packed == ZERO_MAC:
        raise ConfigError(f"MAC address {format_mac(packed)} is not a unicast address")
    return packed


class Port:
    """The switch of one master interface."""

    from_guest: Callable[[Slave, Frame], Verdict]
    from_uplink: Callable[[Frame], Verdict]

    def __init__(self, master: str, master_mac: bytes, mode: str = "l2", flag: str = "bridge"):
        if mode not in MODES:
            raise ConfigError(f"unknown mode {mode!r} (expected one of {', '.join(MODES)})")
        if flag not in FLAGS:
            raise ConfigError(f"unknown flag {flag!r} (expected one of {', '.join(FLAGS)})")
        decisions = DECISIONS[(mode, flag)]
        self.master = master
        self.mode = mode
        self.flag = flag
        #: what the daemon does differently for this mode and flag
        self.traits = TRAITS[(mode, flag)]
        self.master_mac = _check_mac(master_mac)
        self.slaves: dict[str, Slave] = {}
        self.by_addr: dict[bytes, Slave] = {}
        self.by_mac: dict[bytes, Slave] = {}
        self.uplink_drops = new_counters()
        self.generation = 0
        #: the master's own addresses (packed); set by the daemon, never learned
        self.master_addresses: frozenset[bytes] = frozenset()
        #: called with (slave, address) when a slave learns an address
        self.on_learn: Callable[[Slave, bytes], None] | None = None
        #: the longest frame (Ethernet header + the master's MTU) the wire takes; the
        #: daemon keeps it; longer non-GSO frames are dropped, and never snooped
        self.max_frame = ETH_HLEN + 1500
        #: the master's IPv4 default gateway (packed), read from the host's routes by the
        #: daemon; the DHCP server's router in l2 (``None``: unknown, no router option)
        self.gateway_v4: bytes | None = None
        #: the master's IPv6 default gateway (packed), likewise: in l2 a router is on the link
        self.gateway_v6: bytes | None = None
        #: a Router Advertisement came from the wire or from a guest that may route
        #: (``allow_router``): in l2 a router is on the link, the daemon sends no RA; and the
        #: daemon's RA intervals since the last one (``age_link_router``)
        self.link_router = False
        self.link_router_age = 0
        #: the master's connected prefixes, as (address length, network, mask) integers
        self.master_prefixes: tuple[tuple[int, int, int], ...] = ()
        #: the daemon's predicate: the address (or 6-byte MAC) is in use beyond the port
        #: (a gateway or neighbour of the master); never learned
        self.in_use: Callable[[bytes], bool] = _nobody
        #: source MACs and IPv6 link-local sources seen on the wire (``saw_on_wire``)
        self.wire_macs: set[bytes] = set()
        self.wire_link_locals: set[bytes] = set()
        self.from_guest = partial(decisions[0], self)
        self.from_uplink = partial(decisions[1], self)

    # -- configuration -------------------------------------------------------------

    def add_slave(
        self, name: str, addresses: Iterable[AddressLike] = (), mac: bytes | str | None = None,
        learn: bool = False, allow_router: bool = False,
    ) -> Slave:
        """Create a slave; every check happens before anything changes."""
        if name in self.slaves:
            raise NameInUse(f"slave {name!r} already exists on {self.master}")
        packed_mac = None if mac is None else self._check_free_mac(_check_mac(mac), None)
        packed = [self._check_free_address(a, None) for a in addresses]
        used = {s.index for s in self.slaves.values()}
        index = next(i for i in range(1, len(used) + 2) if i not in used)
        if learn and not self.traits.learning:
            modes = ", ".join(repr(m) for m in modes_with("learning"))
            raise ConfigError(f"address learning is only implemented for mode {modes}, not {self.mode!r}")
        slave = Slave(self, name, index, None)
        slave.learn = learn
        slave.allow_router = allow_router
        self.slaves[name] = slave
        for addr in packed:
            self._claim(slave, addr)
        if packed_mac is not None:
            self.learn_mac(slave, packed_mac)
        self.generation += 1
        return slave

    def remove_slave(self, slave: Slave) -> None:
        """Forget a slave, its MAC and all its addresses."""
        if self.slaves.get(slave.name) is not slave:
            raise ConfigError(f"slave {slave.name!r} is not on {self.master}")
        del self.slaves[slave.name]
        for addr in slave.addresses | slave.learned | slave.learned_addrs:
            if self.by_addr.get(addr) is slave:
                del self.by_addr[addr]
        if slave.mac is not None and self.by_mac.get(slave.mac) is slave:
            del self.by_mac[slave.mac]
        slave.up = False
        self.generation += 1

    def add_address(self, slave: Slave, address: AddressLike) -> None:
        """Give ``slave`` one more configured address."""
        self._claim(slave, self._check_free_address(address, slave))
        self.generation += 1

    def remove_address(self, slave: Slave, address: AddressLike) -> None:
        """Take a configured address away from ``slave``."""
        addr = parse_ip(address)
        if addr not in slave.addresses:
            raise ConfigError(f"{format_ip(addr)} is not an address of slave {slave.name!r}")
        slave.addresses.discard(addr)
        if self.by_addr.get(addr) is slave:
            del self.by_addr[addr]
        self.generation += 1

    def set_master_mac(self, mac: bytes | str) -> None:
        """Follow a change of the master's MAC (kernel: NETDEV_CHANGEADDR)."""
        packed = _check_mac(mac)
        owner = self.by_mac.get(packed)
        if owner is not None:
            raise MacInUse(f"MAC {format_mac(packed)} is the MAC of slave {owner.name!r}")
        self.master_mac = packed

    def set_master_prefixes(self, prefixes: Iterable[tuple[bytes, int]]) -> None:
        """The master's connected prefixes, as (packed address, prefix length) pairs;
        nonsense lengths are ignored."""
        out = []
        for addr, plen in prefixes:
            bits = len(addr) * 8
            if bits not in (32, 128) or not 0 <= plen <= bits:
                continue
            mask = ((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1)
            out.append((len(addr), int.from_bytes(addr, "big") & mask, mask))
        self.master_prefixes = tuple(sorted(set(out)))

    @property
    def advertises(self) -> bool:
        """Whether the daemon is its guests' IPv6 router (answers RS, sends RAs): l3/l3s,
        or l2 with no IPv6 default route through the master and no RA seen on the wire."""
        return self.traits.master_src_mac or (self.gateway_v6 is None and not self.link_router)

    def age_link_router(self) -> None:
        """One RA interval passed: a wire router not heard for more than
        ``LINK_ROUTER_TICKS`` of them is gone (see the rules)."""
        if self.link_router:
            self.link_router_age += 1
            if self.link_router_age > LINK_ROUTER_TICKS:
                self.link_router = False

    def on_link(self, addr: bytes) -> bool:
        """Whether ``addr`` is inside one of the master's connected prefixes."""
        n = len(addr)
        value = int.from_bytes(addr, "big")
        return any(length == n and value & mask == net for length, net, mask in self.master_prefixes)

    def saw_on_wire(self, src: bytes, kind: int, l3src: bytes) -> None:
        """A frame from the wire: remember its source MAC and IPv6 link-local source
        (not the master's own frames, looped back)."""
        if src == self.master_mac:
            return
        if src not in self.wire_macs and len(self.wire_macs) < MAX_WIRE_SEEN:
            self.wire_macs.add(src)
        if kind >= L3_IPV6 and l3src[0] == 0xFE and l3src[1] & 0xC0 == 0x80 and \
                l3src not in self.wire_link_locals and len(self.wire_link_locals) < MAX_WIRE_SEEN:
            self.wire_link_locals.add(l3src)

    # -- learning (called by the decisions, from a frame that passed validation) --

    def learn_mac(self, slave: Slave, mac: bytes) -> None:
        """Lock ``slave``'s MAC and reserve its EUI-64 link-local."""
        slave.mac = mac
        self.by_mac[mac] = slave
        ll = eui64_link_local(mac)
        if ll not in self.by_addr:
            slave.learned.add(ll)
            self.by_addr[ll] = slave
            self.generation += 1

    def can_learn_link_local(self, slave: Slave) -> bool:
        return len(slave.learned) < MAX_LEARNED_LINK_LOCALS

    def learn_link_local(self, slave: Slave, addr: bytes) -> None:
        """Record that ``slave`` owns the (unowned) link-local ``addr``."""
        slave.learned.add(addr)
        self.by_addr[addr] = slave
        self.generation += 1

    def learn_address(self, slave: Slave, addr: bytes) -> None:
        """Record that ``slave`` (learning mode) owns the unowned address ``addr``."""
        slave.learned_addrs.add(addr)
        self.by_addr[addr] = slave
        self.generation += 1
        if self.on_learn is not None:
            self.on_learn(slave, addr)

    # -- queries ------------------------------------------------------------------

    def owner(self, address: AddressLike) -> Slave | None:
        """The slave owning ``address`` (configured or learned), if any."""
        return self.by_addr.get(parse_ip(address))

    def consumed_addresses(self) -> tuple[list[str], list[str]]:
        """``(ipv4, ipv6)``: every slave address (up or down, configured or learned),
        as sorted text. The daemon steals traffic to these from the host stack."""
        v4 = sorted(a for a in self.by_addr if len(a) == 4)
        v6 = sorted(a for a in self.by_addr if len(a) == 16)
        return [format_ip(a) for a in v4], [format_ip(a) for a in v6]

    def drop_counts(self) -> dict[str, int]:
        """Non-zero uplink-side drop counters by ``DropReason.label``."""
        return counts(self.uplink_drops)

    # -- internals ----------------------------------------------------------------

    def _check_free_mac(self, mac: bytes, slave: Slave | None) -> bytes:
        if mac == self.master_mac:
            raise MacInUse(f"MAC {format_mac(mac)} is the master {self.master}'s MAC")
        owner = self.by_mac.get(mac)
        if owner is not None and owner is not slave:
            raise MacInUse(f"MAC {format_mac(mac)} is already used by slave {owner.name!r}")
        return mac

    def _check_free_address(self, address: AddressLike, slave: Slave | None) -> bytes:
        try:
            addr = parse_ip(address)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if not is_unicast_ip(addr):
            raise ConfigError(f"{format_ip(addr)} cannot be a slave address (not unicast)")
        owner = self.by_addr.get(addr)
        if owner is not None and owner is not slave and addr in owner.addresses:
            raise AddressInUse(
                f"address {format_ip(addr)} is already in use by slave {owner.name!r}"
                f" on {self.master}"
            )
        return addr

    def _claim(self, slave: Slave, addr: bytes) -> None:
        previous = self.by_addr.get(addr)
        if previous is not None and previous is not slave:
            previous.learned.discard(addr)  # a learned address yields to configuration
            previous.learned_addrs.discard(addr)
        slave.learned.discard(addr)
        slave.learned_addrs.discard(addr)
        slave.addresses.add(addr)
        self.by_addr[addr] = slave

    def __repr__(self) -> str:
        return f"<Port {self.master} {self.mode} {self.flag} slaves={len(self.slaves)}>"


__all__ = [
    "MAX_LEARNED_LINK_LOCALS",
    "MAX_WIRE_SEEN",
    "Port",
    "Slave",
    "learned_addresses",
]
