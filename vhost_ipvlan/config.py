"""The configuration file (TOML): parsing and validation, all or nothing.

Shape (other tools rely on it; do not change it lightly)::

    [daemon]                    # optional; applies to every socket the daemon listens on
    socket_owner = "root"       # user name or uid (default: the daemon's user)
    socket_group = "kvm"        # group name or gid (default: kvm if it exists, else root)
    socket_permissions = 0o660  # TOML octal integer, or a string "0660" (default 0o660)
    dns = ["192.0.2.53"]        # optional: the DNS servers (IPv4, IPv6) DHCP, DHCPv6 and RAs hand out
    dns_search = ["example.org"]  # optional: its search domains (both default: the host's resolv.conf)
    workers = 2                 # optional: data-path threads, each port on one (default 1: the main thread)
    busy_poll_us = 50           # optional: poll a guest's TX ring this long after its last frame, asking
                                # for no kicks (vhost-net's busyloop_timeout; default 0: none)
    adaptive_poll_us = 32       # optional, while busy_poll_us is 0: poll each TX ring for a window that grows
                                # up to this while its bursts come within it (QEMU's poll-max-ns; default 32; 0: none)

    [[port]]
    master = "veth0"            # host interface: the IPvlan master
    mode = "l2"                 # l2 | l3 | l3s (default l2: ``DEFAULT_MODE``)
    flag = "bridge"             # bridge | private | vepa
    [[port.slave]]
    name = "vm1"
    socket = "/run/vhost-ipvlan/vm1.sock"
    socket_mode = "server"      # server (default: the daemon listens) | client (it connects)
    addresses = ["192.0.2.10/24", "2001:db8::10/64"]
    mac = "52:54:00:00:00:01"   # optional: the guest's MAC; learned from its first frame if absent
    qmp = "/run/qemu/vm1.qmp"   # optional: the guest's QMP socket: its multicast filter (query-rx-filter)
    qmp_device = "net0"         # optional, with qmp: the NIC's device id (default: the NIC with the slave's MAC)
    learn = false               # optional, mode l2: learn up to 1 IPv4 + 4 IPv6 addresses from the guest
    allow_router = false        # optional: the guest may send RAs, Redirects and DHCP(v6) server messages
    owner = "libvirt:<uuid>"    # optional: who created the slave (the libvirt hook: its domain's UUID)
    peer_uid = "qemu-vm1"       # optional: only a front-end running as this user (uid) may connect
    peer_gid = "qemu-vm1"       # optional: ... and as this group (gid)
    queues = 1                  # optional: virtio-net queue pairs offered (1-16; QEMU's -netdev vhost-user,queues=)
    dhcp = true                 # optional: the daemon answers the guest's DHCPv4, DHCPv6 and RS (default true)
    hostname = "vm1"            # optional: the host name DHCP gives the guest (default: the slave's name)

Rules:
- Every problem is a ``ConfigError`` whose message is one line: the key path
  (``port[0].slave[1].addresses[0]``) and what is wrong with it.
- Unknown keys are errors; an address may appear once per master; slave names
  and socket paths are unique across the file.
- The same parsers (``parse_port``, ``parse_slave``) and cross-checks
  (``check_port``, ``check_slave``) validate control-API requests, so a request and
  a config entry get identical checks and messages; only the key path prefix
  differs (``params.addresses[0]``). A clash with what exists is an ``errors.Conflict``
  whose ``code`` names it (``address_in_use``, ...).
- The cross-checks cost O(1) per slave (``SlaveIndex``: names, sockets and
  (master, address) pairs in use), so a file or a daemon with 1000 slaves is
  checked in linear time; only a clash walks the slaves, to name it.
- Modes and flags are the switch's (``switch.decisions.MODES``/``FLAGS``); what
  depends on them is read from its traits (``TRAITS``), never from their names.
- This module only parses; whether the master exists is checked by the daemon
  (it depends on the network namespace the daemon runs in). Socket owner and
  group names are resolved here (they are the host's, whatever the namespace).
- ``learn = true`` (where the mode's traits allow learning: l2) lets the daemon learn the slave's addresses from
  its traffic (``switch.source``); learned addresses are run-time state, never part
  of a ``Config`` (so never written to the state file).
- ``allow_router = true`` lifts the RA guard and DHCP-server guard for that slave
  (``switch.guard``): for a guest that is the segment's router or DHCP server.
- Paths and names never contain control characters (C0, DEL): they end up in log
  lines and in the state file. Interface names are what the kernel accepts, in a
  charset that is safe to splice into an nft script.
- ``owner`` is opaque to the daemon: the libvirt hook records the domain it created
  a slave for and refuses to change or remove another domain's slaves.
- ``queues`` (1 to ``MAX_QUEUES``, default 1) is how many queue pairs the slave's
  device offers (GET_QUEUE_NUM); QEMU's ``queues=`` must not exceed it. A change is
  made in place and takes effect at the front-end's next connection (the
  connected one keeps the pairs it negotiated). Each pair costs the guest's
  connection 6 more descriptors in the budget (``daemon.fdbudget``).
- ``dhcp`` (default true) makes the daemon the guest's DHCPv4 server (``net.dhcp``,
  ``dhcp_lease``): it hands out the slave's configured IPv4 addresses. It takes
  effect only for a slave with an IPv4 address that does not learn (a learning
  slave has nothing to hand out); a change is made in place. The same switch makes
  it the guest's DHCPv6 server and, where it is the guest's router, the sender of
  its Router Advertisements (``net.dhcp6``, ``net.ra``, ``dhcp6_lease``: an IPv6
  address configured, not learning; its IPv6 addresses are handed out).
  ``[daemon] dns`` and ``dns_search`` (IPv4 and IPv6 servers, at most ``MAX_DNS`` of
  each; domain names) are what it tells the guests (DHCPv4 the IPv4 ones, DHCPv6 and
  RAs the IPv6 ones); absent, the daemon reads the host's resolv.conf. ``hostname``
  (one DNS label) is the host name it gives, the slave's name by default (the
  libvirt hook passes the domain's name when it is one).
- ``socket_mode`` (per slave) is the socket's *role*, for historical reasons; the
  file permissions are ``[daemon].socket_permissions``.
"""

from __future__ import annotations

import grp
import ipaddress
import pwd
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import AddressInUse, ConfigError, NameInUse, PortExists, SocketInUse
from .net.dhcp import MAX_DNS, Lease
from .switch.decisions import FLAGS, MODES, TRAITS, modes_with
from .vhost_user.session import MAX_QUEUE_PAIRS

#: A port without ``mode`` (file, control API, ``vhost-ipvlanctl port add``, the
#: libvirt hook). Not the kernel's default (``ip link add ... type ipvlan`` gives
#: l3, docs/kernel-behaviour.md §2): l2 is the mode in which a VM's usual configuration (DHCP,
#: SLAAC from the LAN's router, mDNS) works, the CNI plugin and Docker default to it,
#: and files written without ``mode`` would otherwise change behaviour silently
#: (README, "Behaviour (l2)" departures).
DEFAULT_MODE = "l2"
SOCKET_MODES = ("server", "client")
MAX_ADDRESSES = 256
#: a slave's most queue pairs: QEMU accepts up to 1024 and a Linux guest enables
#: min(pairs, vCPUs) of them; the daemon serves them all on one thread, so more pairs
#: only cost descriptors (6 each): 16, as many vCPUs as a guest here sensibly gets
MAX_QUEUES = MAX_QUEUE_PAIRS
#: the most data-path threads (``[daemon] workers``)
MAX_WORKERS = 64
#: the longest busy polling (``[daemon] busy_poll_us``; ``_fastpath.c``'s CORE_POLL_MAX_US)
MAX_BUSY_POLL_US = 1_000_000
#: adaptive polling's default longest window (``[daemon] adaptive_poll_us``): 32 us, as
#: QEMU's IOThreads (``poll-max-ns``); a guest whose bursts come further apart is not
#: polled for (bench/README.md has the figures behind it)
DEFAULT_ADAPTIVE_POLL_US = 32

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# What iproute2/the kernel accept (dev_valid_name: 1-15 bytes, no '/', ':' or whitespace),
# narrowed to a charset that is safe to splice into an nft script or a log line.
_IFNAME = re.compile(r"[A-Za-z0-9_.@+-]{1,15}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # C0, DEL, C1, lone surrogates
_OWNER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
_DEVICE_ID = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,127}")  # QEMU's id_wellformed()
_DOMAIN = re.compile(r"(?=.{1,253}\.?$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
                     r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")  # one DNS label (RFC 1123)
_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")


@dataclass(frozen=True, slots=True)
class SlaveConfig:
    name: str
    socket: Path
    socket_mode: str
    addresses: tuple[IPInterface, ...]
    mac: bytes | None
    qmp: Path | None = None
    qmp_device: str | None = None
    learn: bool = False
    allow_router: bool = False
    owner: str | None = None  # who created the slave (the libvirt hook: "libvirt:<domain uuid>")
    peer_uid: int | None = None  # only a front-end process with this uid may be the slave (SO_PEERCRED)
    peer_gid: int | None = None  # ... and with this gid
    queues: int = 1  # virtio-net queue pairs (1..MAX_QUEUES)
    dhcp: bool = True  # the daemon answers the guest's DHCPv4 (with an IPv4 address, not learning)
    hostname: str | None = None  # the DHCP host name (None: the slave's name)


@dataclass(frozen=True, slots=True)
class PortConfig:
    master: str
    mode: str
    flag: str
    slaves: tuple[SlaveConfig, ...]


def default_socket_group() -> int:
    """The group QEMU runs in under libvirt (``kvm``) if it exists, else root."""
    try:
        return grp.getgrnam("kvm").gr_gid
    except KeyError:
        return 0


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    socket_owner: int = -1  # -1: unchanged (the daemon's user)
    socket_group: int = field(default_factory=default_socket_group)
    socket_permissions: int = 0o660
    dns: tuple[str, ...] | None = None  # the DHCP server's DNS servers (None: the host's resolv.conf)
    dns_search: tuple[str, ...] | None = None  # ... and search domains
    #: data-path threads (``daemon.workers``): 1 (the default) runs every port on the main
    #: loop; N >= 2 gives each port to one of N worker threads; read at start only
    workers: int = 1
    #: busy polling (``daemon.busy_poll_us``): microseconds a loop polls the TX rings it
    #: serves in C after their last chain, asking the guests for no kicks; 0 (the default)
    #: sleeps at once; applies at once on reload
    busy_poll_us: int = 0
    #: adaptive polling (``daemon.adaptive_poll_us``), while ``busy_poll_us`` is 0: the
    #: longest window a loop polls a TX ring for, grown while the ring's bursts come
    #: within it and halved after a longer gap, down to 0 (sleep) (``_fastpath.c``);
    #: 0: none; applies at once
    adaptive_poll_us: int = DEFAULT_ADAPTIVE_POLL_US


@dataclass(frozen=True, slots=True)
class Config:
    ports: tuple[PortConfig, ...]
    daemon: DaemonConfig = field(default_factory=DaemonConfig)

    def slaves(self) -> list[tuple[PortConfig, SlaveConfig]]:
        return [(p, s) for p in self.ports for s in p.slaves]


def load(path: Path) -> Config:
    """Read and validate a configuration file."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    return parse(data)


def _keys(where: str, table: Any, allowed: set[str], required: set[str]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {type(table).__name__}")
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: unknown key (expected one of {', '.join(sorted(allowed))})")
    for key in sorted(required):
        if key not in table:
            raise ConfigError(f"{where}.{key}: missing")
    return table


check_keys = _keys


def _str(where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
    return value


def _choice(where: str, value: Any, valid: tuple[str, ...]) -> str:
    text = _str(where, value)
    if text not in valid:
        raise ConfigError(f"{where}: {text!r} is not one of {', '.join(valid)}")
    return text


def parse_address(where: str, value: Any) -> IPInterface:
    """A slave address: an IPv4 or IPv6 address with an optional prefix length."""
    text = _str(where, value)
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not an IPv4 or IPv6 address[/prefix]") from None
    ip = iface.ip
    if ip.is_multicast or ip.is_unspecified or ip.is_loopback or (
        isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255")
    ):
        raise ConfigError(f"{where}: {text!r} cannot be a slave address (multicast, unspecified or loopback)")
    return iface


def parse_mac(where: str, value: Any) -> bytes:
    text = _str(where, value)
    if not _MAC.fullmatch(text):
        raise ConfigError(f"{where}: {text!r} is not a MAC address like 52:54:00:12:34:56")
    mac = bytes(int(b, 16) for b in text.split(":"))
    if mac[0] & 1 or mac == bytes(6):
        raise ConfigError(f"{where}: {text!r} is a multicast or zero MAC address")
    return mac


def parse_slave(where: str, table: Any) -> SlaveConfig:
    """One ``[[port.slave]]`` table (a config entry or a control request's params)."""
    t = _keys(where, table, {"name", "socket", "socket_mode", "addresses", "mac", "qmp", "qmp_device", "learn",
                             "allow_router", "owner", "peer_uid", "peer_gid", "queues", "dhcp", "hostname"},
             {"name", "socket"})
    name = _str(f"{where}.name", t["name"])
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{where}.name: {name!r} must be 1-64 characters of A-Z a-z 0-9 _ . -")
    sock = _socket_path(f"{where}.socket", t["socket"])
    mode = _choice(f"{where}.socket_mode", t.get("socket_mode", "server"), SOCKET_MODES)
    raw = t.get("addresses", [])
    if not isinstance(raw, list):
        raise ConfigError(f"{where}.addresses: expected a list of addresses")
    if len(raw) > MAX_ADDRESSES:
        raise ConfigError(f"{where}.addresses: at most {MAX_ADDRESSES} addresses per slave")
    addresses = tuple(parse_address(f"{where}.addresses[{i}]", a) for i, a in enumerate(raw))
    mac = parse_mac(f"{where}.mac", t["mac"]) if "mac" in t else None
    qmp = _socket_path(f"{where}.qmp", t["qmp"]) if "qmp" in t else None
    device = None
    if "qmp_device" in t:
        device = _str(f"{where}.qmp_device", t["qmp_device"])
        if qmp is None:
            raise ConfigError(f"{where}.qmp_device: needs qmp (the QMP socket to ask)")
        if not _DEVICE_ID.fullmatch(device):
            raise ConfigError(f"{where}.qmp_device: {device!r} is not a QEMU device id")
    if qmp is not None and qmp == sock:
        raise ConfigError(f"{where}.qmp: {qmp} is the slave's vhost-user socket")
    learn = _bool(f"{where}.learn", t.get("learn", False))
    allow_router = _bool(f"{where}.allow_router", t.get("allow_router", False))
    owner = None
    if "owner" in t:
        owner = _str(f"{where}.owner", t["owner"])
        if not _OWNER.fullmatch(owner):
            raise ConfigError(f"{where}.owner: {owner!r} must be 1-128 characters of A-Z a-z 0-9 _ . : @ -")
    peer_uid = _id(f"{where}.peer_uid", t["peer_uid"], lambda n: pwd.getpwnam(n).pw_uid, "user") \
        if "peer_uid" in t else None
    peer_gid = _id(f"{where}.peer_gid", t["peer_gid"], lambda n: grp.getgrnam(n).gr_gid, "group") \
        if "peer_gid" in t else None
    queues = parse_queues(f"{where}.queues", t.get("queues", 1))
    dhcp = _bool(f"{where}.dhcp", t.get("dhcp", True))
    hostname = None
    if "hostname" in t:
        hostname = _str(f"{where}.hostname", t["hostname"])
        if not is_hostname(hostname):
            raise ConfigError(f"{where}.hostname: {hostname!r} must be 1-63 characters of A-Z a-z 0-9 - "
                              "(not starting or ending with -)")
    return SlaveConfig(name, sock, mode, addresses, mac, qmp, device, learn, allow_router, owner, peer_uid, peer_gid,
                       queues, dhcp, hostname)


def is_hostname(text: str) -> bool:
    """Whether ``text`` is one DNS label (RFC 1123): what ``hostname`` accepts."""
    return _HOSTNAME.fullmatch(text) is not None


def dhcp_lease(slave: SlaveConfig) -> Lease | None:
    """What the daemon's DHCP server gives ``slave``'s guest: its IPv4 addresses with
    their prefixes, first one first, and its ``hostname`` (default: its name); ``None`` when it is
    not answered (``dhcp = false``, learning, or no IPv4 address)."""
    v4 = tuple((a.ip.packed, a.network.prefixlen) for a in slave.addresses if a.version == 4)
    if not slave.dhcp or slave.learn or not v4:
        return None
    return Lease(v4, slave.hostname or slave.name)


def dhcp6_lease(slave: SlaveConfig) -> Lease | None:
    """What the daemon's DHCPv6 server gives ``slave``'s guest: its IPv6 addresses (not
    link-local) with their prefixes; ``None`` when it is not answered (``dhcp = false``,
    learning, or no IPv6 address: an IPv4-only guest gets no RA and no DHCPv6 from us,
    as from the kernel, so a link that is IPv4-only for the operator stays so)."""
    v6 = tuple((a.ip.packed, a.network.prefixlen) for a in slave.addresses
               if a.version == 6 and not a.ip.is_link_local)
    if not slave.dhcp or slave.learn or not v6:
        return None
    return Lease(v6, slave.hostname or slave.name)


def parse_queues(where: str, value: Any) -> int:
    """A slave's queue pairs: an integer from 1 to ``MAX_QUEUES``."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_QUEUES:
        raise ConfigError(f"{where}: expected an integer from 1 to {MAX_QUEUES} (queue pairs), got {value!r}")
    return value


def _bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {type(value).__name__} {value!r}")
    return value


def check_text(where: str, text: str) -> str:
    """``text`` if it has no control character (C0 or DEL), else a ``ConfigError``."""
    m = _CONTROL.search(text)
    if m is not None:
        raise ConfigError(f"{where}: {text!r} contains a control character ({m.group()!r})")
    return text


def _socket_path(where: str, value: Any) -> Path:
    text = check_text(where, _str(where, value))
    path = Path(text)
    if not path.is_absolute() or len(text.encode()) > 107:
        raise ConfigError(f"{where}: {text!r} must be an absolute path under 108 bytes")
    return path


def check_ifname(where: str, name: str) -> str:
    """An interface name the kernel accepts and that is safe in an nft script (one-line error)."""
    if not _IFNAME.fullmatch(name) or name in (".", ".."):
        raise ConfigError(f"{where}: {name!r} is not a valid interface name "
                          "(1-15 characters of A-Z a-z 0-9 _ . @ + -)")
    return name


def parse_port(where: str, table: Any) -> PortConfig:
    """One ``[[port]]`` table with its slaves (cross-checks within the port included)."""
    t = _keys(where, table, {"master", "mode", "flag", "slave"}, {"master"})
    master = check_ifname(f"{where}.master", _str(f"{where}.master", t["master"]))
    mode = _choice(f"{where}.mode", t.get("mode", DEFAULT_MODE), MODES)
    flag = _choice(f"{where}.flag", t.get("flag", "bridge"), FLAGS)
    raw = t.get("slave", [])
    if not isinstance(raw, list):
        raise ConfigError(f"{where}.slave: expected [[port.slave]] tables")
    slaves: list[SlaveConfig] = []
    index = SlaveIndex()
    for i, s in enumerate(raw):
        slave = parse_slave(f"{where}.slave[{i}]", s)
        check_slave(f"{where}.slave[{i}]", (PortConfig(master, mode, flag, tuple(slaves)),), master, slave,
                    index=index)
        slaves.append(slave)
        index.add(master, slave)
    return PortConfig(master, mode, flag, tuple(slaves))


def check_port(where: str, ports: tuple[PortConfig, ...], port: PortConfig) -> None:
    """Cross-checks of a new port (and its slaves) against the other ``ports``."""
    for i, p in enumerate(ports):
        if p.master == port.master:
            raise PortExists(f"{where}.master: {port.master!r} is already port[{i}]")
    index = SlaveIndex(ports) if port.slaves else None
    for j, s in enumerate(port.slaves):
        check_slave(f"{where}.slave[{j}]", ports, port.master, s, index=index)


class SlaveIndex:
    """The names, sockets and (master, address) pairs the slaves of some ports use,
    each with the slave's name: ``check_slave`` in O(1). Kept by whoever changes the
    ports (``add``/``remove``), or built from them."""

    def __init__(self, ports: tuple[PortConfig, ...] = ()) -> None:
        #: slave name -> (its master, its configuration)
        self.slaves: dict[str, tuple[str, SlaveConfig]] = {}
        self.sockets: dict[Path, str] = {}
        self.addresses: dict[tuple[str, object], str] = {}
        #: queue pairs beyond each slave's first, summed (``daemon.fdbudget``)
        self.extra_pairs = 0
        for p in ports:
            for s in p.slaves:
                self.add(p.master, s)

    def add(self, master: str, slave: SlaveConfig) -> None:
        old = self.slaves.get(slave.name)
        if old is not None:
            self.extra_pairs -= old[1].queues - 1
        self.slaves[slave.name] = (master, slave)
        self.extra_pairs += slave.queues - 1
        self.sockets[slave.socket] = slave.name
        for a in slave.addresses:
            self.addresses[(master, a.ip)] = slave.name

    def remove(self, master: str, slave: SlaveConfig) -> None:
        old = self.slaves.pop(slave.name, None)
        if old is not None:
            self.extra_pairs -= old[1].queues - 1
        if self.sockets.get(slave.socket) == slave.name:
            del self.sockets[slave.socket]
        for a in slave.addresses:
            if self.addresses.get((master, a.ip)) == slave.name:
                del self.addresses[(master, a.ip)]

    def clashes(self, master: str, slave: SlaveConfig, replaces: str | None) -> bool:
        """Whether ``slave`` clashes with a slave other than ``replaces``."""
        others: set[str | None] = {slave.name} if slave.name in self.slaves else set()
        others.add(self.sockets.get(slave.socket, replaces))
        others.update(self.addresses.get((master, a.ip), replaces) for a in slave.addresses)
        return bool(others - {replaces, None})


def check_slave(where: str, ports: tuple[PortConfig, ...], master: str, slave: SlaveConfig,
                replaces: str | None = None, *, index: SlaveIndex | None = None) -> None:
    """Cross-checks of ``slave``, to sit on ``master``, against the slaves of ``ports``.

    Names and sockets are unique across all ports, an address once per master.
    ``replaces`` names a slave that the new one takes the place of (a change).
    ``index`` (of the same ``ports``) makes it O(1) when nothing clashes.
    """
    for p in ports:
        if p.master == master and slave.learn and not TRAITS[(p.mode, p.flag)].learning:
            modes = ", ".join(repr(m) for m in modes_with("learning"))
            raise ConfigError(f"{where}.learn: address learning is only implemented for mode {modes}, "
                              f"not {p.mode!r}")
    if index is None or index.clashes(master, slave, replaces):
        _check_clashes(where, ports, master, slave, replaces)
    seen: set[object] = set()
    for j, a in enumerate(slave.addresses):
        if a.ip in seen:
            raise ConfigError(f"{where}.addresses[{j}]: {a.ip} is listed twice")
        seen.add(a.ip)


def _check_clashes(where: str, ports: tuple[PortConfig, ...], master: str, slave: SlaveConfig,
                   replaces: str | None) -> None:
    """The walk that names the first slave ``slave`` clashes with."""
    for p in ports:
        for s in p.slaves:
            if s.name == replaces:
                continue
            if s.name == slave.name:
                raise NameInUse(f"{where}.name: {slave.name!r} is already used by a slave on master {p.master}")
            if s.socket == slave.socket:
                raise SocketInUse(f"{where}.socket: {slave.socket} is already used by slave {s.name!r}")
            if p.master != master:
                continue
            mine = {a.ip for a in s.addresses}
            for j, a in enumerate(slave.addresses):
                if a.ip in mine:
                    raise AddressInUse(
                        f"{where}.addresses[{j}]: {a.ip} is already used by slave {s.name!r} on master {master}"
                    )


def _id(where: str, value: Any, lookup: Callable[[str], int], what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < 2**32 - 1:
            raise ConfigError(f"{where}: {value} is not a valid {what} id")
        return value
    text = _str(where, value)
    if text.isdigit():
        return int(text)
    try:
        return lookup(text)
    except KeyError:
        raise ConfigError(f"{where}: no {what} named {text!r} on this host") from None


def _permissions(where: str, value: Any) -> int:
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3}", value):
        value = int(value, 8)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0o777:
        raise ConfigError(f"{where}: {value!r} is not a permission mode like 0o660 or \"0660\"")
    if value & 0o600 != 0o600:
        raise ConfigError(f"{where}: {value:#o} must give the owner read and write (0o600)")
    return value


def _daemon(where: str, table: Any) -> DaemonConfig:
    t = _keys(where, table, {"socket_owner", "socket_group", "socket_permissions", "dns", "dns_search", "workers",
                             "busy_poll_us", "adaptive_poll_us"}, set())
    owner = _id(f"{where}.socket_owner", t["socket_owner"], lambda n: pwd.getpwnam(n).pw_uid, "user") \
        if "socket_owner" in t else -1
    group = _id(f"{where}.socket_group", t["socket_group"], lambda n: grp.getgrnam(n).gr_gid, "group") \
        if "socket_group" in t else default_socket_group()
    perms = _permissions(f"{where}.socket_permissions", t["socket_permissions"]) \
        if "socket_permissions" in t else 0o660
    dns = _dns(f"{where}.dns", t["dns"]) if "dns" in t else None
    search = _search(f"{where}.dns_search", t["dns_search"]) if "dns_search" in t else None
    workers = _workers(f"{where}.workers", t["workers"]) if "workers" in t else 1
    poll = _busy_poll(f"{where}.busy_poll_us", t["busy_poll_us"]) if "busy_poll_us" in t else 0
    adaptive = _busy_poll(f"{where}.adaptive_poll_us", t["adaptive_poll_us"]) if "adaptive_poll_us" in t \
        else DEFAULT_ADAPTIVE_POLL_US
    return DaemonConfig(owner, group, perms, dns, search, workers, poll, adaptive)


def _workers(where: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_WORKERS:
        raise ConfigError(f"{where}: {value!r} is not a number of worker threads from 1 to {MAX_WORKERS}")
    return value


def _busy_poll(where: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_BUSY_POLL_US:
        raise ConfigError(f"{where}: {value!r} is not a number of microseconds from 0 to {MAX_BUSY_POLL_US}")
    return value


def _list(where: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _dns(where: str, value: Any) -> tuple[str, ...]:
    out = []
    for i, v in enumerate(_list(where, value)):
        text = _str(f"{where}[{i}]", v)
        try:
            out.append(str(ipaddress.ip_address(text)))
        except ValueError:
            raise ConfigError(f"{where}[{i}]: {text!r} is not an IPv4 or IPv6 address") from None
    for version in (4, 6):
        if sum(1 for a in out if ipaddress.ip_address(a).version == version) > MAX_DNS:
            raise ConfigError(f"{where}: at most {MAX_DNS} servers of IPv{version}")
    return tuple(out)


def _search(where: str, value: Any) -> tuple[str, ...]:
    out = []
    for i, v in enumerate(_list(where, value)):
        text = _str(f"{where}[{i}]", v)
        if not _DOMAIN.fullmatch(text):
            raise ConfigError(f"{where}[{i}]: {text!r} is not a domain name")
        out.append(text)
    return tuple(out)


def parse(data: Any) -> Config:
    """Validate a decoded TOML document."""
    t = _keys("config", data, {"port", "daemon"}, set())
    daemon = _daemon("daemon", t.get("daemon", {}))
    raw = t.get("port", [])
    if not isinstance(raw, list):
        raise ConfigError("port: expected [[port]] tables")
    ports: tuple[PortConfig, ...] = ()
    for i, p in enumerate(raw):
        port = parse_port(f"port[{i}]", p)
        check_port(f"port[{i}]", ports, port)
        ports = (*ports, port)
    return Config(ports, daemon)


def slave_table(slave: SlaveConfig) -> dict[str, Any]:
    """``slave`` as its ``[[port.slave]]`` table (what ``parse_slave`` reads back)."""
    t: dict[str, Any] = {
        "name": slave.name,
        "socket": str(slave.socket),
        "socket_mode": slave.socket_mode,
        "addresses": [str(a) for a in slave.addresses],
    }
    if slave.mac is not None:
        t["mac"] = ":".join(f"{b:02x}" for b in slave.mac)
    if slave.qmp is not None:
        t["qmp"] = str(slave.qmp)
    if slave.qmp_device is not None:
        t["qmp_device"] = slave.qmp_device
    if slave.learn:
        t["learn"] = True
    if slave.allow_router:
        t["allow_router"] = True
    if slave.owner is not None:
        t["owner"] = slave.owner
    if slave.peer_uid is not None:
        t["peer_uid"] = slave.peer_uid
    if slave.peer_gid is not None:
        t["peer_gid"] = slave.peer_gid
    if slave.queues != 1:
        t["queues"] = slave.queues
    if not slave.dhcp:
        t["dhcp"] = False
    if slave.hostname is not None:
        t["hostname"] = slave.hostname
    return t


def port_table(port: PortConfig) -> dict[str, Any]:
    """``port`` as its ``[[port]]`` table, slaves included."""
    return {"master": port.master, "mode": port.mode, "flag": port.flag,
            "slave": [slave_table(s) for s in port.slaves]}


def daemon_table(d: DaemonConfig) -> dict[str, Any]:
    """``d`` as its ``[daemon]`` table, only the keys that differ from the defaults."""
    t: dict[str, Any] = {}
    default = DaemonConfig()
    if d.socket_owner != default.socket_owner:
        t["socket_owner"] = d.socket_owner
    if d.socket_group != default.socket_group:
        t["socket_group"] = d.socket_group
    if d.socket_permissions != default.socket_permissions:
        t["socket_permissions"] = d.socket_permissions
    if d.dns is not None:
        t["dns"] = list(d.dns)
    if d.dns_search is not None:
        t["dns_search"] = list(d.dns_search)
    if d.workers != default.workers:
        t["workers"] = d.workers
    if d.busy_poll_us != default.busy_poll_us:
        t["busy_poll_us"] = d.busy_poll_us
    if d.adaptive_poll_us != default.adaptive_poll_us:
        t["adaptive_poll_us"] = d.adaptive_poll_us
    return t


def to_data(config: Config) -> dict[str, Any]:
    """The document ``parse`` accepts, for ``config``: ``parse(to_data(c)) == c``."""
    data: dict[str, Any] = {"port": [port_table(p) for p in config.ports]}
    daemon = daemon_table(config.daemon)
    if daemon:
        data["daemon"] = daemon
    return data
