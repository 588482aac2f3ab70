"""``vhost-ipvlan libvirt check DOMAIN``: what would break a domain's vhost-ipvlan NICs.

Rules: the domain's XML (live if it runs, else the persistent one) is read through
libvirt-python; ``domain.problems`` judges the XML; this module adds what needs
the host: socket permissions for QEMU's user (``libvirt-qemu``, group ``kvm`` and
its other groups), the daemon's reachability and the masters' existence (a port
in the daemon, or an interface in this network namespace). One line per problem.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

from ..control.client import Client
from ..errors import ControlUnavailable, DomainError, RemoteError
from ..unixsock import writable_by_others
from .domain import ours, parse, problems

QEMU_USER = "libvirt-qemu"


def qemu_identity(user: str = QEMU_USER) -> tuple[int, set[int]]:
    pw = pwd.getpwnam(user)
    gids = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    return pw.pw_uid, gids


def allowed(st: os.stat_result, uid: int, gids: set[int], want: int) -> bool:
    """Whether (uid, gids) has all of ``want`` (a combination of 4, 2, 1) on a file with ``st``."""
    if uid == 0:
        return True
    if st.st_uid == uid:
        bits = (st.st_mode >> 6) & 7
    elif st.st_gid in gids:
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    return bits & want == want


def socket_problems(sock: Path, qemu_listens: bool, uid: int, gids: set[int]) -> list[str]:
    """Can QEMU (uid, gids) connect to ``sock`` (or, when it listens, create it)?"""
    for parent in reversed(sock.parents):
        try:
            st = parent.stat()
        except FileNotFoundError:
            return [f"socket {sock}: directory {parent} does not exist"]
        if not allowed(st, uid, gids, 1):
            return [f"socket {sock}: QEMU's user cannot enter {parent} (mode {stat.filemode(st.st_mode)}, "
                    f"owner {st.st_uid}:{st.st_gid})"]
    if qemu_listens:
        st = sock.parent.stat()
        if not allowed(st, uid, gids, 3):
            return [f"socket {sock}: QEMU listens, but its user cannot create files in {sock.parent}"]
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            return [f"socket {sock}: {sock.parent} is writable by others without the sticky bit: one QEMU can "
                    "remove another's socket (use 1770 root:kvm; README, Security)"]
        return []
    why = writable_by_others(sock.parent)
    if why is not None:
        return [f"socket {sock}: the daemon listens in {sock.parent}, which is {why}: others can replace its "
                "sockets (use 0750 root:kvm; README, Security)"]
    try:
        st = sock.stat()
    except FileNotFoundError:
        return []  # the hook creates it before QEMU starts
    if not stat.S_ISSOCK(st.st_mode):
        return [f"socket {sock}: exists and is not a socket"]
    if not allowed(st, uid, gids, 2):
        return [f"socket {sock}: QEMU's user cannot connect (mode {stat.filemode(st.st_mode)}, "
                f"owner {st.st_uid}:{st.st_gid}; see [daemon] socket_group/socket_permissions)"]
    return []


def check_xml(xml: str, socket_dir: Path, control: Path, *, msix_bug: bool, qemu_user: str = QEMU_USER) -> list[str]:
    out = problems(xml, socket_dir, msix_bug=msix_bug)
    try:
        dom = parse(xml)
    except DomainError:
        return out
    mine = ours(dom, socket_dir)
    if not mine:
        return out
    try:
        uid, gids = qemu_identity(qemu_user)
    except KeyError:
        out.append(f"user {qemu_user} does not exist: is libvirt-daemon-system installed?")
        uid, gids = -1, set()
    ports: set[str] | None = None
    try:
        with Client(control, timeout=10) as c:
            ports = {p["master"] for p in c.call("port.list")}
    except (ControlUnavailable, RemoteError) as e:
        out.append(f"the daemon: {e}")
    for iface in mine:
        assert iface.socket is not None
        if uid >= 0:
            out += [f"domain {dom.name}: interface {iface.mac}: {p}"
                    for p in socket_problems(Path(iface.socket), iface.libvirt_mode == "server", uid, gids)]
        meta = dom.meta.get(iface.mac or "")
        if meta is not None and meta.master and ports is not None and meta.master not in ports \
                and not Path("/sys/class/net", meta.master).exists():
            out.append(f"domain {dom.name}: interface {iface.mac}: master {meta.master} does not exist "
                       "(no port in the daemon, no such interface here)")
    return out


def msix_bug(hypervisor_version: int) -> bool:
    """QEMU 7.2 crashes under TCG with MSI-X on a vhost-user NIC (libvirt's version number: 7002000)."""
    return hypervisor_version // 1000 == 7002


def check(domain: str, uri: str, socket_dir: Path, control: Path) -> list[str]:
    import libvirt

    libvirt.registerErrorHandler(lambda *_: None, None)  # errors are raised and reported as lines
    conn = libvirt.openReadOnly(uri)
    try:
        try:
            dom = conn.lookupByName(domain)
        except libvirt.libvirtError as e:
            return [f"domain {domain}: {e.get_error_message()}"]
        xml = dom.XMLDesc(0 if dom.isActive() else libvirt.VIR_DOMAIN_XML_INACTIVE)
        return check_xml(xml, socket_dir, control, msix_bug=msix_bug(conn.getVersion()))
    finally:
        conn.close()
