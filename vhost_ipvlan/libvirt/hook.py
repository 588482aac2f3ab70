"""The libvirt qemu hook: ``prepare`` (and ``migrate``) create a domain's slaves, ``release`` removes them.

libvirt runs ``/etc/libvirt/hooks/qemu.d/vhost-ipvlan DOMAIN OPERATION SUB-OP EXTRA``
with the domain XML on stdin, synchronously, as root. ``install-hook`` writes that
file: a two-line shell script that execs this module with the installing
interpreter, control socket and socket directory.

Rules:
- Only the daemon's control socket is used: never libvirt (deadlock), never netlink.
- ``prepare``: every slave the XML asks for (``domain.slave_requests``) is created;
  a port is added first if the master has none. A slave of the same name left over
  (a crash, a pre-created one) is changed to match, unless it records another
  ``owner`` (another domain's: refused). If anything is refused, the slaves created
  so far are removed again and the hook exits 1 with one line on stderr (libvirt
  shows it: ``virsh start`` fails with it).
- ``migrate`` (``migrate begin -``, on the destination of a live migration, before
  ``prepare``): the incoming domain XML (stdin) gets its slaves exactly as ``prepare``
  does, so the destination QEMU finds them; the XML is printed back unchanged on
  stdout, as libvirt wants from this filter operation (empty would also mean
  unchanged, but with several scripts in ``qemu.d`` each one's stdout is the next
  one's stdin). A refusal exits 1 with one line on stderr: libvirt cancels the
  migration and the source goes on running. ``restore`` is the same kind of filter:
  its XML is printed back, nothing else is done (``prepare`` follows).
- ``release``: the same slaves are removed if this domain owns them; missing ones
  and an unreachable daemon are fine (the exit status of ``release`` is ignored by
  libvirt anyway). libvirt runs it on the source of a migration only once the guest
  runs on the destination (``release end migrated``, 9.0: ``-``); a failed migration
  runs it on the destination only (whose slaves go), never on the source, which keeps
  its guest and its slaves.
- Every other operation exits 0 and does nothing.
- ``install-hook`` keeps the installer's ``PYTHONPATH`` (a development checkout), and
  libvirt runs the hook as root: every entry must be absolute and exist, and it and
  every directory above it (as written and as resolved) must be owned by root and not
  writable by group or others (a sticky directory above it may be): whoever can
  write there runs code as root at the next ``virsh start``. Anything else is
  refused, one line, exit 1, and nothing is written.
"""

from __future__ import annotations

import argparse
import os
import shlex
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from ..control.client import DEFAULT_SOCKET, Client
from ..errors import ControlUnavailable, DomainError, HookError, RemoteError
from .domain import DEFAULT_SOCKET_DIR, SlaveRequest, slave_requests

HOOKS_DIR = Path("/etc/libvirt/hooks")
HOOK_NAME = "vhost-ipvlan"
ClientFactory = Callable[[], Client]


def ensure(client: Client, requests: Sequence[SlaveRequest]) -> list[str]:
    """Create (or fix up) the slaves; return the names created. All or nothing."""
    created: list[str] = []
    try:
        ports = {p["master"]: p for p in client.call("port.list")}
        for r in requests:
            port = ports.get(r.master)
            if port is None:
                ports[r.master] = client.call("port.add", r.port_params())
            else:
                for key in ("mode", "flag"):
                    want = getattr(r, key)
                    if want is not None and port.get(key) != want:
                        raise HookError(f"interface {r.mac}: master {r.master} is in {key} {port.get(key)}, "
                                        f"the metadata asks for {want} (a port's {key} is shared by its slaves)")
            try:
                client.call("slave.add", r.params())
                created.append(r.name)
            except RemoteError as e:
                if e.code != "name_in_use":
                    raise
                _check_owner(client, r)
                client.call("slave.change", r.params())
    except RemoteError as e:
        _undo(client, created)
        raise HookError(e.message) from None
    except HookError:
        _undo(client, created)
        raise
    return created


def _owners(client: Client) -> dict[str, str | None]:
    return {s["name"]: s.get("owner") for s in client.call("slave.list")}


def _check_owner(client: Client, r: SlaveRequest) -> None:
    """A slave of that name exists: it may be changed only if it is not another's."""
    owner = _owners(client).get(r.name)
    if owner is not None and owner != r.owner:
        raise HookError(f"interface {r.mac}: slave {r.name} exists and belongs to {owner}, not to this domain "
                        f"({r.owner}); refusing to change it")


def _undo(client: Client, names: list[str]) -> None:
    for name in reversed(names):
        try:
            client.call("slave.remove", {"name": name})
        except (RemoteError, ControlUnavailable):
            pass


def remove(client: Client, names: Sequence[str], owner: str | None = None) -> list[str]:
    """Remove the slaves that exist (with ``owner``: only those it owns); return the names removed."""
    removed = []
    if owner is not None:
        owners = _owners(client)
        names = [n for n in names if owners.get(n, owner) == owner]
    for name in names:
        try:
            client.call("slave.remove", {"name": name})
            removed.append(name)
        except RemoteError as e:
            if e.code != "not_found":
                raise
    return removed


def run(argv: Sequence[str], stdin: IO[str], connect: ClientFactory, socket_dir: Path) -> int:
    """The hook proper: returns the exit status; problems go to stderr as one line."""
    if len(argv) < 2:
        print("vhost-ipvlan hook: usage: DOMAIN OPERATION [SUB-OP EXTRA] < domain.xml", file=sys.stderr)
        return 2
    domain, op = argv[0], argv[1]
    if op not in ("prepare", "release", "migrate", "restore"):
        return 0
    xml = stdin.read()
    if op == "restore":
        sys.stdout.write(xml)
        return 0
    rc = _apply(domain, op, xml, connect, socket_dir)
    if op == "migrate" and rc == 0:
        sys.stdout.write(xml)
    return rc


def _apply(domain: str, op: str, xml: str, connect: ClientFactory, socket_dir: Path) -> int:
    """``prepare``/``migrate`` (create) or ``release`` (remove) the slaves ``xml`` asks for."""
    try:
        requests = slave_requests(xml, socket_dir)
    except DomainError as e:
        if op == "release":
            return 0
        print(f"vhost-ipvlan: error: {e}", file=sys.stderr)
        return 1
    if not requests:
        return 0
    try:
        with connect() as client:
            if op != "release":
                ensure(client, requests)
            else:
                remove(client, [r.name for r in requests], requests[0].owner)
    except (HookError, RemoteError, ControlUnavailable) as e:
        if op == "release":
            print(f"vhost-ipvlan: warning: domain {domain}: {e}", file=sys.stderr)
            return 0
        print(f"vhost-ipvlan: error: domain {domain}: {e}", file=sys.stderr)
        return 1
    return 0


def script(control: Path, socket_dir: Path, python: str = sys.executable,
           pythonpath: str | None = None) -> str:
    """The hook's text; ``pythonpath`` (the installer's ``PYTHONPATH``, if any) is kept so the
    hook runs the same code as the installer (a development checkout)."""
    args = " ".join(shlex.quote(a) for a in
                    (python, "-m", "vhost_ipvlan.libvirt.hook", "--control", str(control),
                     "--socket-dir", str(socket_dir), "--"))
    env = f"export PYTHONPATH={shlex.quote(pythonpath)}\n" if pythonpath else ""
    return ("#!/bin/sh\n# libvirt qemu hook installed by `vhost-ipvlan install-hook`: creates and removes\n"
            f"# the slaves of a domain's vhost-user interfaces (docs/libvirt.md)\n{env}exec {args} \"$@\"\n")


def pythonpath_problem(pythonpath: str) -> str | None:
    """None if every entry of ``pythonpath`` is safe to bake into a hook run as root
    (see the rules above), else what is wrong with the first that is not."""
    for entry in pythonpath.split(os.pathsep):
        if not os.path.isabs(entry):
            return f"PYTHONPATH entry {entry!r} is relative (the hook runs as root, from libvirt's directory)"
        for path in dict.fromkeys((os.path.normpath(entry), os.path.realpath(entry))):
            problem = _owned_by_root(path)
            if problem is not None:
                return f"PYTHONPATH entry {entry!r}: {problem} (the hook runs it as root)"
    return None


def _owned_by_root(path: str) -> str | None:
    """None if ``path`` and each directory above it are root's and writable by root only
    (a sticky directory above it may be writable by all: only root renames root's files)."""
    parts = Path(path).parts
    for i in range(1, len(parts) + 1):
        here = os.path.join(*parts[:i])
        try:
            st = os.lstat(here)
        except OSError as e:
            return f"{here!r}: {e.strerror}"
        if stat.S_ISLNK(st.st_mode):
            continue  # a symlink cannot change; its directory is checked, its target too (resolved)
        if st.st_uid != 0:
            return f"{here!r} is owned by uid {st.st_uid}, not root"
        sticky_dir = i < len(parts) and stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky_dir:
            return f"{here!r} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def install(hooks_dir: Path, control: Path, socket_dir: Path) -> Path:
    """Write ``<hooks_dir>/qemu.d/vhost-ipvlan`` (mode 0755) atomically; return its path.
    HookError if the installer's PYTHONPATH is not safe to keep (nothing is written)."""
    pythonpath = os.environ.get("PYTHONPATH")
    if pythonpath:
        problem = pythonpath_problem(pythonpath)
        if problem is not None:
            raise HookError(f"{problem}: not installed (fix it or unset PYTHONPATH)")
    d = hooks_dir / "qemu.d"
    d.mkdir(parents=True, exist_ok=True)
    path = d / HOOK_NAME
    tmp = d / f".{HOOK_NAME}.tmp"
    tmp.write_text(script(control, socket_dir, pythonpath=pythonpath))
    tmp.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    os.replace(tmp, path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vhost-ipvlan-hook", description="libvirt qemu hook of vhost-ipvlan")
    p.add_argument("--control", type=Path, default=DEFAULT_SOCKET)
    p.add_argument("--socket-dir", type=Path, default=DEFAULT_SOCKET_DIR)
    p.add_argument("args", nargs="*")
    ns = p.parse_args(argv)
    return run(ns.args, sys.stdin, lambda: Client(ns.control, timeout=60), ns.socket_dir)


if __name__ == "__main__":
    sys.exit(main())
