"""Test topologies from real network namespaces and veth pairs (needs root).

Namespaces are named ``vi-<random>`` so parallel runs never clash, and are deleted on
exit (context manager), at interpreter exit, or by ``close()``, even after failures.
Every namespace gets ``lo`` up and IPv6 DAD disabled (``accept_dad=0`` for ``all`` and
``default``, so interfaces created in or moved into it later inherit it), so IPv6
addresses are usable at once.

Links and addresses are managed with pyroute2; commands run with ``ip netns exec``.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import secrets
import signal
import subprocess
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from pyroute2 import NetNS as _PyNetNS
from pyroute2 import netns as _netns

from .proc import stop_process

_live: set[Netns] = set()
_live_lock = threading.Lock()


class Netns:
    """A uniquely named network namespace, created on construction."""

    def __init__(self, prefix: str = "vi-") -> None:
        self.name = f"{prefix}{secrets.token_hex(4)}"
        self._procs: list[subprocess.Popen[str]] = []
        self._closed = False
        _netns.create(self.name)
        with _live_lock:
            _live.add(self)
        try:
            self.run(
                "sh",
                "-c",
                "echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad;"
                "echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad;"
                "echo 0 > /proc/sys/net/ipv6/conf/lo/accept_dad",
            )
            link_up(self, "lo")
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ commands

    def argv(self, *argv: str) -> list[str]:
        """The argv that runs ``argv`` inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, *argv: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the namespace; stdout and stderr captured as text.

        With ``check`` a non-zero status raises CalledProcessError (whose str()
        includes the output).
        """
        proc = subprocess.run(
            self.argv(*argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise _CommandError(proc.returncode, proc.args, proc.stdout, proc.stderr)
        return proc

    def popen(self, *argv: str, **kw: Any) -> subprocess.Popen[str]:
        """Start a command in the namespace (text mode); killed on ``close()``."""
        kw.setdefault("text", True)
        kw.setdefault("start_new_session", True)
        proc: subprocess.Popen[str] = subprocess.Popen(self.argv(*argv), **kw)
        self._procs.append(proc)
        return proc

    def sysctl(self, key: str, value: str | int) -> None:
        """Set a sysctl (dotted name) inside the namespace."""
        path = "/proc/sys/" + key.replace(".", "/")
        self.run("sh", "-c", f'echo "$1" > "{path}"', "sh", str(value))

    @contextlib.contextmanager
    def ipr(self) -> Iterator[Any]:
        """A pyroute2 IPRoute-like handle bound to this namespace."""
        handle = _PyNetNS(self.name)
        try:
            yield handle
        finally:
            handle.close()

    def ifindex(self, dev: str) -> int:
        with self.ipr() as ipr:
            found = ipr.link_lookup(ifname=dev)
        if not found:
            raise LookupError(f"no {dev} in netns {self.name}")
        return int(found[0])

    # ------------------------------------------------------------- cleanup

    def pids(self) -> list[int]:
        proc = subprocess.run(
            ["ip", "netns", "pids", self.name], capture_output=True, text=True, check=False
        )
        return [int(p) for p in proc.stdout.split()]

    def close(self) -> None:
        """Kill the processes in the namespace and delete it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for proc in self._procs:
            stop_process(proc, 3)
        for pid in self.pids():  # anything else still inside (our own children)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError, OSError):
            _netns.remove(self.name)
        with _live_lock:
            _live.discard(self)

    @property
    def exists(self) -> bool:
        return self.name in _netns.listnetns()

    def __enter__(self) -> Netns:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __hash__(self) -> int:
        return hash(self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Netns) and other.name == self.name

    def __repr__(self) -> str:
        return f"<Netns {self.name}>"


class _CommandError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout: {self.stdout}\nstderr: {self.stderr}"


@atexit.register
def _cleanup_all() -> None:
    with _live_lock:
        live = list(_live)
    for ns in live:
        ns.close()


# ------------------------------------------------------------------ helpers


def veth_pair(
    a: Netns,
    a_name: str,
    b: Netns,
    b_name: str,
    *,
    a_mac: str | None = None,
    b_mac: str | None = None,
    mtu: int | None = None,
    up: bool = True,
) -> None:
    """Create a veth pair with ``a_name`` in ``a`` and ``b_name`` in ``b`` (may be the
    same namespace); IPv6 DAD off on both ends; both brought up unless ``up=False``."""
    peer: dict[str, Any] = {"ifname": b_name, "net_ns_fd": b.name}
    if b_mac:
        peer["address"] = b_mac
    kw: dict[str, Any] = {"ifname": a_name, "kind": "veth", "peer": peer}
    if a_mac:
        kw["address"] = a_mac
    with a.ipr() as ipr:
        ipr.link("add", **kw)
    for ns, dev in ((a, a_name), (b, b_name)):
        ns.sysctl(f"net.ipv6.conf.{dev}.accept_dad", 0)
        if mtu is not None:
            with ns.ipr() as ipr:
                ipr.link("set", index=ns.ifindex(dev), mtu=mtu)
        if up:
            link_up(ns, dev)


def link_up(ns: Netns, dev: str) -> None:
    with ns.ipr() as ipr:
        ipr.link("set", index=ns.ifindex(dev), state="up")


def link_down(ns: Netns, dev: str) -> None:
    with ns.ipr() as ipr:
        ipr.link("set", index=ns.ifindex(dev), state="down")


def add_addr(ns: Netns, dev: str, cidr: str) -> None:
    """Add an address (``192.0.2.1/24`` or ``2001:db8::1/64``; IPv6 without DAD)."""
    iface = ipaddress.ip_interface(cidr)
    kw: dict[str, Any] = {
        "index": ns.ifindex(dev),
        "address": str(iface.ip),
        "prefixlen": iface.network.prefixlen,
    }
    if iface.version == 6:
        kw["flags"] = 0x02  # IFA_F_NODAD
    with ns.ipr() as ipr:
        ipr.addr("add", **kw)


def add_route(ns: Netns, dst: str, via: str | None = None, dev: str | None = None) -> None:
    """Add a route (``dst`` a prefix or ``default``) via a gateway and/or a device."""
    argv = ["ip"]
    if ":" in dst or (via is not None and ":" in via):
        argv.append("-6")
    argv += ["route", "add", dst]
    if via:
        argv += ["via", via]
    if dev:
        argv += ["dev", dev]
    ns.run(*argv)
