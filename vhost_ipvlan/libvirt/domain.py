"""A libvirt domain's XML -> the vhost-ipvlan slaves it needs, and what would break it.

Pure: no libvirt, no sockets, no files, except that a socket's directory is
resolved (``realpath``) to refuse symlinks. The hook, the watcher and ``libvirt
check`` all start here.

Rules:
- An ``<interface type='vhostuser'>`` is ours when its ``<source path>`` points
  into the socket directory (default ``/run/vhost-ipvlan``), ``..`` resolved or not;
  other interfaces are left alone. Ours must then be a plain file name directly in
  the socket directory (the daemon listens: QEMU only connects, so the directory
  is ``root:kvm 0750`` and nobody but root can swap a socket there), or, for
  QEMU-listens sockets, in its ``qemu`` subdirectory (``root:kvm 1770``): no
  ``..``, no name starting with ``.``, no control character, and the directory must
  not resolve elsewhere (``realpath``: no symlink). The XML is a domain definer's
  word and the hook runs as root: a path elsewhere once made the daemon unlink and
  take over any unix socket on the host.
- Its slave's settings come from the ``<metadata>`` element in our namespace
  (``NS``), keyed by the interface's ``<mac address>``::

      <metadata>
        <vi:vhost-ipvlan xmlns:vi='https://vhost-ipvlan.example/xmlns/1'>
          <vi:interface mac='52:54:00:00:00:10' master='eth0' mode='l2' flag='bridge'>
            <vi:address>192.0.2.10/24</vi:address>
          </vi:interface>
        </vi:vhost-ipvlan>
      </metadata>

  (``<vi:interface>`` directly under ``<metadata>`` is accepted too.) ``master`` is
  required; ``mode``/``flag`` are the port's and only used when the hook creates
  the port. An optional ``socket`` (with ``socket-mode``) *pre-declares* a NIC that
  is not in the domain yet: its slave exists while the domain runs, so a later
  ``virsh attach-device`` finds it (QEMU 7.2 blocks in ``netdev_add`` until the
  backend answers; see docs/libvirt.md).
- Socket roles: libvirt ``mode='client'`` (QEMU connects) is the daemon's
  ``server`` role; ``mode='server'`` (QEMU listens) is the daemon's ``client`` role.
- Slave names are ``vm-<domain UUID, 32 hex digits>-<mac, 12 hex digits>`` (48
  characters): injective, so two domains never share a name whatever their names
  ("web 1" and "web_1" once did), and a rename changes nothing. Each slave also
  records its ``owner``, ``libvirt:<uuid>``: the hook and the watcher change and
  remove only slaves they own for that domain.
- The interface's ``<driver queues='N'/>`` (what libvirt gives QEMU as
  ``-netdev vhost-user,queues=N``) becomes the slave's ``queues`` (1 to
  ``config.MAX_QUEUES``; absent: 1). A pre-declared NIC takes it from
  ``<vi:interface queues='N'>``.
- Names (the domain's, the master) and paths with control characters are refused.
- Problems are one line each, naming the domain and the interface's MAC.
"""

from __future__ import annotations

import os
import re
import uuid as uuidlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import config as cfg
from ..errors import ConfigError, DomainError, escape_controls
from ..switch.decisions import FLAGS, MODES

NS = "https://vhost-ipvlan.example/xmlns/1"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
DEFAULT_SOCKET_DIR = Path("/run/vhost-ipvlan")
QEMU_SUBDIR = "qemu"  # <socket dir>/qemu: QEMU-listens sockets (QEMU creates them), root:kvm 1770
ROLE = {"client": "server", "server": "client"}  # libvirt's mode (QEMU's role) -> the daemon's socket_mode


@dataclass(frozen=True)
class SlaveRequest:
    """One slave the daemon should have for a domain (the control API's ``slave.add`` params)."""

    domain: str
    name: str
    master: str
    socket: str
    socket_mode: str
    addresses: tuple[str, ...]
    mac: str
    mode: str | None = None
    flag: str | None = None
    alias: str | None = None  # the NIC's libvirt alias (live XML), for QMP set_link
    learn: bool = False  # <vi:interface learn='yes'>: learning mode
    allow_router: bool = False  # <vi:interface allow-router='yes'>: no RA/DHCP-server guard
    owner: str = ""  # libvirt:<domain uuid>
    queues: int = 1  # <driver queues='N'/>: virtio-net queue pairs
    dhcp: bool = True  # <vi:interface dhcp='no'>: the daemon does not answer the guest's DHCPv4, DHCPv6, RS
    hostname: str | None = None  # the DHCP host name: the domain's name when it is one DNS label

    def params(self) -> dict[str, Any]:
        p: dict[str, Any] = {"master": self.master, "name": self.name, "socket": self.socket,
                             "socket_mode": self.socket_mode, "addresses": list(self.addresses), "mac": self.mac,
                             "owner": self.owner, "queues": self.queues,  # queues, dhcp always: a change resets them
                             "dhcp": self.dhcp}
        if self.hostname is not None:
            p["hostname"] = self.hostname
        if self.learn:
            p["learn"] = True
        if self.allow_router:
            p["allow_router"] = True
        return p

    def port_params(self) -> dict[str, Any]:
        p: dict[str, Any] = {"master": self.master}
        if self.mode is not None:
            p["mode"] = self.mode
        if self.flag is not None:
            p["flag"] = self.flag
        return p


@dataclass(frozen=True)
class Interface:
    index: int
    mac: str | None
    socket: str | None
    libvirt_mode: str | None
    alias: str | None
    queues: str | None = None  # <driver queues>, checked when the interface is ours


@dataclass(frozen=True)
class Meta:
    mac: str
    master: str | None
    addresses: tuple[str, ...]
    mode: str | None
    flag: str | None
    socket: str | None
    socket_mode: str
    learn: bool = False
    allow_router: bool = False
    queues: str | None = None  # <vi:interface queues>: a pre-declared NIC's
    dhcp: bool = True  # <vi:interface dhcp='no'>


@dataclass
class Domain:
    name: str
    type: str
    interfaces: list[Interface] = field(default_factory=list)
    meta: dict[str, Meta] = field(default_factory=dict)
    shared_memory: bool = False
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)  # alias -> frontend property -> value
    uuid: str | None = None  # canonical (lower case, dashes), None if absent or not a UUID

    @property
    def owner(self) -> str:
        """The ``owner`` of this domain's slaves (``DomainError`` without a UUID)."""
        if self.uuid is None:
            raise DomainError(f"domain {self.name}: no valid <uuid> (vhost-ipvlan names and owns slaves by it)")
        return owner_of(self.uuid)


def slave_name(uuid: str, mac: str) -> str:
    """The slave of the domain ``uuid``'s NIC ``mac``: ``vm-<32 hex>-<12 hex>``."""
    return f"vm-{uuidlib.UUID(uuid).hex}-{mac.replace(':', '').lower()}"


def owner_of(uuid: str) -> str:
    return f"libvirt:{uuidlib.UUID(uuid)}"


def claims(path: str, directory: Path) -> bool:
    """``path`` points into ``directory``, lexically or with ``..`` resolved: ours to serve or refuse."""
    d = Path(os.path.normpath(directory))
    return any(p.is_absolute() and p != d and d in p.parents for p in (Path(path), Path(os.path.normpath(path))))


def socket_problem(path: str, directory: Path, role: str) -> str | None:
    """Why ``path`` cannot be the socket of a slave in ``role`` (the daemon's), None if it can."""
    m = _CONTROL.search(path)
    if m is not None:
        return f"socket {path!r} contains a control character ({m.group()!r})"
    d = Path(os.path.normpath(directory))
    dirs = [d] if role == "server" else [d / QEMU_SUBDIR, d]
    where = " or ".join(str(x) for x in dirs)
    p = Path(path)
    if not p.is_absolute() or ".." in p.parts or p.parent not in dirs:
        return (f"socket {path}: must be a file directly in {where} "
                f"(the daemon listens: {d}; QEMU listens: {d / QEMU_SUBDIR})")
    if p.name.startswith("."):
        return f"socket {path}: the file name must not start with '.'"
    expected = Path(os.path.realpath(d)) / p.parent.relative_to(d)  # the socket dir may be a link, not qemu/
    real = Path(os.path.realpath(p.parent))
    if real != expected:
        return f"socket {path}: {p.parent} resolves to {real} (a symlink), not a directory of vhost-ipvlan's"
    return None


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def parse(xml: str) -> Domain:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise DomainError(f"domain XML: {e}") from None
    if root.tag != "domain":
        raise DomainError(f"domain XML: the root element is <{root.tag}>, not <domain>")
    dom = Domain(name=(root.findtext("name") or "").strip() or "?", type=root.get("type", ""))
    try:
        dom.uuid = str(uuidlib.UUID((root.findtext("uuid") or "").strip()))
    except ValueError:
        pass
    for i, el in enumerate(root.findall("./devices/interface")):
        if el.get("type") != "vhostuser":
            continue
        mac_el, src, alias, driver = el.find("mac"), el.find("source"), el.find("alias"), el.find("driver")
        mac = mac_el.get("address") if mac_el is not None else None
        dom.interfaces.append(Interface(
            index=i, mac=mac.lower() if mac else None,
            socket=src.get("path") if src is not None else None,
            libvirt_mode=src.get("mode") if src is not None else None,
            alias=alias.get("name") if alias is not None else None,
            queues=driver.get("queues") if driver is not None else None))
    meta = root.find("metadata")
    if meta is not None:
        for el in [*meta.findall(f"{{{NS}}}interface"), *meta.findall(f"{{{NS}}}*/{{{NS}}}interface")]:
            m = _meta(dom.name, el)
            dom.meta[m.mac] = m
    mb = root.find("memoryBacking")
    if mb is not None:
        access, source = mb.find("access"), mb.find("source")
        dom.shared_memory = (access is not None and access.get("mode") == "shared"
                             and (source is None or source.get("type") in ("memfd", "file")
                                  or mb.find("hugepages") is not None))
    if not dom.shared_memory:  # per-NUMA-cell shared memory counts too
        cells = root.findall("./cpu/numa/cell")
        dom.shared_memory = bool(cells) and all(c.get("memAccess") == "shared" for c in cells)
    for dev in root.findall(f"./{{{QEMU_NS}}}override/{{{QEMU_NS}}}device"):
        props = dom.overrides.setdefault(dev.get("alias", ""), {})
        for prop in dev.findall(f"./{{{QEMU_NS}}}frontend/{{{QEMU_NS}}}property"):
            props[prop.get("name", "")] = prop.get("value", "")
    return dom


def _meta(domain: str, el: ET.Element) -> Meta:
    where = f"domain {domain}: <vi:interface mac={el.get('mac')!r}>"
    raw_mac = el.get("mac")
    if not raw_mac:
        raise DomainError(f"domain {domain}: a <vi:interface> has no mac attribute")
    mac = _mac(where, raw_mac)
    addresses = tuple((a.text or "").strip() for a in el.findall(f"{{{NS}}}address"))
    for i, a in enumerate(addresses):
        _check(lambda a=a, i=i: cfg.parse_address(f"{where}: address[{i}]", a))
    for key, choices in (("mode", MODES), ("flag", FLAGS)):
        value = el.get(key)
        if value is not None and value not in choices:
            raise DomainError(f"{where}: {key} {value!r} is not one of {', '.join(choices)}")
    socket_mode = el.get("socket-mode", "server")
    if socket_mode not in cfg.SOCKET_MODES:
        raise DomainError(f"{where}: socket-mode {socket_mode!r} is not server or client")
    learn = el.get("learn", "no")
    if learn not in _BOOL:
        raise DomainError(f"{where}: learn {learn!r} is not yes or no")
    allow_router = el.get("allow-router", "no")
    if allow_router not in _BOOL:
        raise DomainError(f"{where}: allow-router {allow_router!r} is not yes or no")
    dhcp = el.get("dhcp", "yes")
    if dhcp not in _BOOL:
        raise DomainError(f"{where}: dhcp {dhcp!r} is not yes or no")
    master = el.get("master")
    if master:
        _check(lambda: cfg.check_ifname(f"{where}: master", master))
    return Meta(mac, el.get("master"), addresses, el.get("mode"), el.get("flag"), el.get("socket"), socket_mode,
                _BOOL[learn], _BOOL[allow_router], el.get("queues"), _BOOL[dhcp])


def _queues(where: str, text: str | None) -> int:
    """A NIC's queue pairs from the XML (absent: 1), with the daemon's bounds."""
    if text is None:
        return 1
    try:
        return cfg.parse_queues(where, int(text.strip()))
    except ValueError:
        raise DomainError(f"{where}: {text!r} is not a number of queue pairs") from None
    except ConfigError as e:
        raise DomainError(str(e)) from None


_BOOL = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}


def _mac(where: str, text: str) -> str:
    _check(lambda: cfg.parse_mac(where, text))
    return text.lower()


def _check(f: Any) -> None:
    try:
        f()
    except ConfigError as e:
        raise DomainError(str(e)) from None


def ours(dom: Domain, socket_dir: Path) -> list[Interface]:
    return [i for i in dom.interfaces if i.socket is not None and claims(i.socket, socket_dir)]


def _checked_name(dom: Domain) -> None:
    m = _CONTROL.search(dom.name)
    if m is not None:
        raise DomainError(f"domain {dom.name!r}: the name contains a control character ({m.group()!r})")


def slave_requests(xml: str, socket_dir: Path = DEFAULT_SOCKET_DIR) -> list[SlaveRequest]:
    """The slaves a domain needs: one per interface of ours, plus pre-declared ones.

    Raises ``DomainError`` when an interface of ours cannot be served (no MAC, a MAC
    another of ours has, no metadata, no master).
    """
    dom = parse(xml)
    out: list[SlaveRequest] = []
    seen: set[str] = set()
    mine = ours(dom, socket_dir)
    owner = ""
    if mine or any(m.socket is not None for m in dom.meta.values()):
        _checked_name(dom)
        owner = dom.owner
    hostname = dom.name if cfg.is_hostname(dom.name) else None  # else the slave's name
    for iface in mine:
        if iface.mac is None:
            raise DomainError(f"domain {dom.name}: interface {iface.socket} has no <mac address>; "
                              "vhost-ipvlan needs it to find its <vi:interface> metadata")
        mac = _mac(f"domain {dom.name}: interface {iface.socket}: <mac address>", iface.mac)
        meta = dom.meta.get(mac)
        where = f"domain {dom.name}: interface {mac}"
        if mac in seen:  # one slave name per MAC: the second NIC would take over the first's slave
            raise DomainError(f"{where}: two interfaces of vhost-ipvlan's have this MAC; each needs its own")
        if meta is None:
            raise DomainError(f"{where}: no <vi:interface mac='{mac}'> in <metadata> (namespace {NS})")
        if not meta.master:
            raise DomainError(f"{where}: <vi:interface> has no master attribute")
        if iface.libvirt_mode not in ROLE:
            raise DomainError(f"{where}: <source mode={iface.libvirt_mode!r}> must be 'client' or 'server'")
        assert iface.socket is not None and dom.uuid is not None
        role = ROLE[iface.libvirt_mode]
        bad = socket_problem(iface.socket, socket_dir, role)
        if bad is not None:
            raise DomainError(f"{where}: {bad}")
        queues = _queues(f"{where}: <driver queues>", iface.queues)
        out.append(SlaveRequest(dom.name, slave_name(dom.uuid, mac), meta.master, iface.socket,
                                role, meta.addresses, mac, meta.mode, meta.flag,
                                iface.alias, meta.learn, meta.allow_router, owner, queues, meta.dhcp, hostname))
        seen.add(mac)
    for mac, meta in dom.meta.items():
        if mac in seen or meta.socket is None:
            continue
        where = f"domain {dom.name}: <vi:interface mac='{mac}' socket={meta.socket!r}>"
        if not claims(meta.socket, socket_dir):
            raise DomainError(f"{where}: the socket is not inside {socket_dir}")
        bad = socket_problem(meta.socket, socket_dir, meta.socket_mode)
        if bad is not None:
            raise DomainError(f"{where}: {bad}")
        if not meta.master:
            raise DomainError(f"{where}: no master attribute")
        assert dom.uuid is not None
        out.append(SlaveRequest(dom.name, slave_name(dom.uuid, mac), meta.master, meta.socket,
                                meta.socket_mode, meta.addresses, mac, meta.mode, meta.flag, learn=meta.learn,
                                allow_router=meta.allow_router, owner=owner,
                                queues=_queues(f"{where}: queues", meta.queues), dhcp=meta.dhcp,
                                hostname=hostname))
    return out


def problems(xml: str, socket_dir: Path = DEFAULT_SOCKET_DIR, *, msix_bug: bool = True) -> list[str]:
    """What in the XML alone would break the domain's vhost-ipvlan NICs (one line each).

    ``msix_bug``: the host's QEMU is 7.2, which crashes under TCG (domain type
    ``qemu``) when a vhost-user NIC uses MSI-X, unless the NIC has ``vectors=0``.
    """
    try:
        dom = parse(xml)
    except DomainError as e:
        return [str(e)]
    return [escape_controls(line) for line in _problems(dom, socket_dir, msix_bug)]


def _problems(dom: Domain, socket_dir: Path, msix_bug: bool) -> list[str]:
    out: list[str] = []
    vhost = dom.interfaces
    if not vhost:
        return out
    if not dom.shared_memory:
        out.append(f"domain {dom.name}: no shared memory: vhost-user needs <memoryBacking><source type='memfd'/>"
                   "<access mode='shared'/></memoryBacking>")
    if _CONTROL.search(dom.name):
        out.append(f"domain {dom.name!r}: the name contains a control character")
    if dom.uuid is None:
        out.append(f"domain {dom.name}: no valid <uuid> (vhost-ipvlan names and owns slaves by it)")
    for iface in vhost:
        name = f"domain {dom.name}: interface {iface.mac or '(no mac)'}"
        if iface.socket is None or not claims(iface.socket, socket_dir):
            out.append(f"{name}: socket {iface.socket} is not inside vhost-ipvlan's socket directory {socket_dir}")
            continue
        if iface.libvirt_mode in ROLE:
            bad = socket_problem(iface.socket, socket_dir, ROLE[iface.libvirt_mode])
            if bad is not None:
                out.append(f"{name}: {bad}")
                continue
        if iface.mac is None:
            out.append(f"{name}: no <mac address>: vhost-ipvlan keys its metadata by MAC")
        else:
            meta = dom.meta.get(iface.mac)
            if meta is None:
                out.append(f"{name}: no <vi:interface mac='{iface.mac}'> in <metadata> (namespace {NS})")
            elif not meta.master:
                out.append(f"{name}: <vi:interface> has no master attribute")
        if iface.libvirt_mode not in ROLE:
            out.append(f"{name}: <source mode={iface.libvirt_mode!r}> must be 'client' or 'server'")
        if msix_bug and dom.type == "qemu":
            alias = iface.alias or f"net{iface.index}"
            if dom.overrides.get(alias, {}).get("vectors") != "0":
                out.append(f"{name}: TCG with QEMU 7.2 crashes when a vhost-user NIC uses MSI-X: add "
                           f"<qemu:override><qemu:device alias='{alias}'><qemu:frontend><qemu:property "
                           "name='vectors' type='unsigned' value='0'/>... (see docs/libvirt.md)")
    return out
