"""Many slaves on one master: configurations and a daemon process to measure (bench/scale.py, tests).

A namespace with one veth master (``vsm0``, its peer ``vsp0`` beside it) and N
slaves, each with a server socket, a configured MAC, one IPv4 and one IPv6 address.
The daemon runs as ``vhost-ipvlan serve`` inside the namespace; it is ready when it
sends ``READY=1`` to ``$NOTIFY_SOCKET`` (a datagram socket of ours), which is what
systemd waits for too. An optional RLIMIT_NOFILE (``SOFT[:HARD]``) is set for the daemon
before it starts (``prlimit``), e.g. systemd's default soft limit of 1024.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .netns import Netns, veth_pair
from .proc import stop_process

MASTER = "vsm0"
PEER = "vsp0"


def slave_table(i: int, sockdir: Path, prefix: str = "s") -> dict[str, Any]:
    """Slave number ``i``: its control-API params (and ``[[port.slave]]`` table)."""
    v4 = f"10.{64 + (i >> 16) % 64}.{(i >> 8) & 255}.{i & 255}"
    return {"name": f"{prefix}{i}", "socket": str(sockdir / f"{prefix}{i}.sock"),
            "mac": f"52:54:{0x40 + (i >> 24) % 64:02x}:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}",
            "addresses": [f"{v4}/8", f"fd00:5ca1::{i >> 16:x}:{i & 0xFFFF:x}/64"]}


def config_text(n: int, sockdir: Path, master: str = MASTER) -> str:
    lines = ["[[port]]", f'master = "{master}"', 'mode = "l2"', 'flag = "bridge"']
    for i in range(n):
        t = slave_table(i, sockdir)
        lines += ["", "[[port.slave]]", *(f"{k} = {json.dumps(v)}" for k, v in t.items())]
    return "\n".join(lines) + "\n"


def make_namespace() -> Netns:
    ns = Netns("vi-scale-")
    try:
        veth_pair(ns, MASTER, ns, PEER)
    except BaseException:
        ns.close()
        raise
    return ns


class Daemon:
    """``vhost-ipvlan serve`` in ``ns``; ``ready()`` waits for READY=1."""

    def __init__(self, ns: Netns, workdir: Path, *, config: Path | None, nofile: str | None = None,
                 metrics: str | None = None, profile: Path | None = None) -> None:
        self.workdir = workdir
        self.control = workdir / "ctl" / "control.sock"
        self.state = workdir / "state.toml"
        self.log = workdir / "daemon.log"
        notify = workdir / "notify"
        notify.unlink(missing_ok=True)
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(notify))
        argv = [sys.executable]
        if profile is not None:
            argv += ["-m", "cProfile", "-o", str(profile)]
        argv += ["-m", "vhost_ipvlan.cli", "serve", "--state", str(self.state), "--control", str(self.control)]
        if config is not None:
            argv += ["--config", str(config)]
        if metrics is not None:
            argv += ["--metrics", metrics]
        limit = ["prlimit", f"--nofile={nofile}"] if nofile is not None else []  # SOFT:HARD, or SOFT
        self.started = time.monotonic()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(ns.argv(*limit, *argv), stdout=subprocess.DEVNULL, stderr=log,
                                         env={**os.environ, "NOTIFY_SOCKET": str(notify)})

    def exit_status(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def ready(self, timeout: float = 120) -> float:
        """Seconds from the start to READY=1; RuntimeError if it exits or times out first."""
        deadline = self.started + timeout
        while True:
            left = deadline - time.monotonic()
            if self.proc.poll() is not None or left <= 0:
                tail = self.log.read_text(errors="replace").splitlines()[-5:]
                raise RuntimeError(f"daemon not ready (exit {self.proc.returncode}): " + " | ".join(tail))
            self._notify.settimeout(min(left, 0.2))
            try:
                msg = self._notify.recv(4096)
            except TimeoutError:
                continue
            if b"READY=1" in msg.split(b"\n"):
                return time.monotonic() - self.started

    @property
    def pid(self) -> int:
        return self.proc.pid  # ``ip netns exec`` and ``prlimit`` exec the daemon: same pid

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def nofile(self) -> tuple[int, int]:
        soft, hard = resource.prlimit(self.pid, resource.RLIMIT_NOFILE)
        return soft, hard

    def stop(self) -> None:
        stop_process(self.proc, 60)
        self._notify.close()
