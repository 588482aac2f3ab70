"""A live-migration lab: two hosts on one LAN, one guest moving between them.

    guest (QEMU on host a) -- daemon a -- vim0 (ns a) <= veth => vioa -+
                                                                       br0 (ns out: 192.0.2.1, 2001:db8::1)
    guest (QEMU on host b) -- daemon b -- vim0 (ns b) <= veth => viob -+

Two daemons, not one daemon with two masters: each host is a network namespace
with its own daemon, master, host link, nftables chain, state file and control
socket, as two machines have, and both hosts configure the same slave (name,
addresses, MAC) for the guest, as two hosts prepared for one VM do (one daemon
would refuse the same address on two of its slaves, and its two host links would
share one host stack). The outside host is the bridge itself (addresses on br0).

``MigrationLab(tmp, slaves)`` builds it (``with`` tears it down, also on failure);
``hosts`` are two ``Lab``s (``tests/support/lab.py``: daemon, stats, logs) sharing
the outside namespace ``out``. ``MovingGuest`` is one guest: ``boot`` starts it on a
host, ``migrate`` starts a destination QEMU (``-incoming unix:...``) on the other
host's slave, migrates over QMP (``migrate``, polling ``query-migrate`` with a
deadline), stops the source and returns QEMU's figures. ``Pinger`` pings from the
outside every 20 ms and tells which sequence numbers went unanswered.
"""

from __future__ import annotations

import re
import secrets
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from .guest import Guest, GuestError
from .lab import MASTER, OUT_IP, OUT_IP6, Lab, SlaveSpec, sh
from .proc import stop_process
from .wait import wait_until

HOSTS = ("a", "b")


class HostLab(Lab):
    """One host: namespace, master ``vim0`` (its veth peer ``port`` a port of the outside's
    bridge ``br0`` in ``out``), the daemon. The outside namespace is the lab's, not its own."""

    def __init__(self, tmp: Path, slaves: list[SlaveSpec], out: str, port: str, **kwargs: Any) -> None:
        super().__init__(tmp, slaves, **kwargs)
        self.out, self.port = out, port

    def build(self) -> None:
        sh("ip", "netns", "add", self.host)
        sh("ip", "link", "add", MASTER, "netns", self.host, "type", "veth", "peer", "name", self.port,
           "netns", self.out)
        sh("ip", "netns", "exec", self.host, "sysctl", "-qw", f"net.ipv6.conf.{MASTER}.accept_dad=0")
        sh("ip", "netns", "exec", self.host, "sysctl", "-qw", f"net.ipv6.conf.{MASTER}.disable_ipv6=1")
        sh("ip", "-n", self.out, "link", "set", self.port, "master", "br0", "up")
        for dev in (MASTER, "lo"):
            sh("ip", "-n", self.host, "link", "set", dev, "up")
        self.master_mac = self.read_sys(self.host, MASTER, "address")
        self.config.write_text(self.config_text())
        self.start_daemon()

    def teardown(self) -> None:
        self.stop_daemon()
        subprocess.run(["ip", "netns", "del", self.host], capture_output=True)


class MigrationLab:
    def __init__(self, tmp: Path, slaves: list[SlaveSpec], *, daemon_env: dict[str, str] | None = None,
                 pure_python: bool = False) -> None:
        self.tmp = tmp
        self.out = f"vi-mo-{secrets.token_hex(3)}"
        self.hosts = {h: HostLab(tmp / h, slaves, self.out, f"vio{h}", daemon_env=daemon_env,
                                 pure_python=pure_python) for h in HOSTS}

    def __enter__(self) -> Self:
        try:
            self.build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.teardown()

    def build(self) -> None:
        sh("ip", "netns", "add", self.out)
        for argv in (["link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0"],
                     ["link", "set", "br0", "up"], ["link", "set", "lo", "up"],
                     ["addr", "add", f"{OUT_IP}/24", "dev", "br0"],
                     ["addr", "add", f"{OUT_IP6}/64", "dev", "br0", "nodad"]):
            sh("ip", "-n", self.out, *argv)
        for lab in self.hosts.values():
            lab.tmp.mkdir(parents=True, exist_ok=True)
            lab.build()

    def teardown(self) -> None:
        for lab in self.hosts.values():
            lab.teardown()
        subprocess.run(["ip", "netns", "del", self.out], capture_output=True)

    def out_run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.out, *argv], capture_output=True, text=True,
                              timeout=timeout)

    def logs(self) -> str:
        return "\n".join(f"--- daemon {h} ({lab.log}) ---\n{lab.log_text()[-6000:]}" for h, lab in self.hosts.items())


@dataclass
class Migration:
    """What one migration took (QEMU's ``query-migrate`` figures, in ms) and where it went."""

    src: str
    dst: str
    total_ms: int
    downtime_ms: int
    info: dict[str, Any]


class MigrationFailed(AssertionError):
    pass


class MovingGuest:
    """One guest (the tiny image), in one QEMU at a time: ``guest`` is the running one."""

    def __init__(self, lab: MigrationLab, name: str, mac: str, ip4: str, ip6: str, *, mem_mb: int = 256,
                 nic_opts: str = "", mrg_rxbuf: bool = True) -> None:
        self.lab, self.name, self.mac, self.ip4, self.ip6, self.mem_mb = lab, name, mac, ip4, ip6, mem_mb
        self.nic_opts, self.mrg_rxbuf = nic_opts, mrg_rxbuf
        self.host = ""
        self.guest: Guest | None = None
        self.incarnations: list[Guest] = []

    def _qemu(self, host: str, qemu_args: tuple[str, ...] = ()) -> Guest:
        workdir = self.lab.tmp / f"{self.name}-{len(self.incarnations)}-{host}"
        g = Guest(self.name, workdir, vhost_socket=self.lab.hosts[host].sock(self.name), mac=self.mac,
                  ip4=self.ip4, ip6=self.ip6, mem_mb=self.mem_mb, nic_opts=self.nic_opts,
                  mrg_rxbuf=self.mrg_rxbuf, qemu_args=qemu_args)
        self.incarnations.append(g)
        return g

    def boot(self, host: str = "a", timeout: float = 180) -> Guest:
        g = self._qemu(host)
        g.start()
        g.wait_ready(timeout)
        self.guest, self.host = g, host
        return g

    def _destination(self) -> tuple[Guest, str]:
        """A QEMU on the other host's slave, waiting for the guest (``-incoming unix:``)."""
        uri_path = self.lab.tmp / f"mig-{len(self.incarnations)}.sock"
        uri_path.unlink(missing_ok=True)
        dst = self._qemu("b" if self.host == "a" else "a", ("-incoming", f"unix:{uri_path}"))
        dst.start()
        try:
            wait_until(lambda: _status(dst) == "inmigrate", 60, 0.1, what="the destination QEMU waiting",
                       fatal=(GuestError,))
        except BaseException:
            dst.stop()
            raise
        return dst, f"unix:{uri_path}"

    def _start(self, uri: str, max_bandwidth: int) -> Guest:
        src = self.guest
        assert src is not None
        src.qmp("migrate-set-parameters", **{"max-bandwidth": max_bandwidth})
        src.qmp("migrate", uri=uri)
        return src

    def migrate(self, *, max_bandwidth: int = 1 << 30, timeout: float = 180) -> Migration:
        """Live-migrate to the other host; return QEMU's figures once the destination runs.
        MigrationFailed (with QEMU's answer) if the source reports failure; the source then
        keeps running and stays ``guest``."""
        dst, uri = self._destination()
        dst_host = "b" if self.host == "a" else "a"
        try:
            src = self._start(uri, max_bandwidth)
            info = wait_until(lambda: _finished(src), timeout, 0.05, what="query-migrate: completed",
                              fatal=(GuestError,))
            if info["status"] != "completed":
                raise MigrationFailed(f"migration {self.host} -> {dst_host}: {info}")
            wait_until(lambda: _status(dst) == "running", 30, 0.05, what="the destination running",
                       fatal=(GuestError,))
        except BaseException:
            dst.stop()
            raise
        m = Migration(self.host, dst_host, int(info.get("total-time", -1)), int(info.get("downtime", -1)), info)
        src.stop()
        self.guest, self.host = dst, dst_host
        try:
            dst.wait_channel(60)
        except (TimeoutError, GuestError) as e:  # the guest's console is in e; the daemons' side too
            raise GuestError(f"{e}\nafter migration {m}\n{self.lab.logs()}") from e
        return m

    def fail_migration(self, timeout: float = 60) -> dict[str, Any]:
        """Start a slow migration and kill the destination QEMU while RAM is moving; return
        the source's ``query-migrate`` once it has given up (the guest stays where it was)."""
        dst, uri = self._destination()
        try:
            src = self._start(uri, 4 << 20)
            wait_until(lambda: src.qmp("query-migrate").get("ram", {}).get("transferred", 0) > 0, 30, 0.05,
                       what="RAM moving")
        finally:
            dst.stop()
        info = wait_until(lambda: _finished(src), timeout, 0.05, what="query-migrate: failed", fatal=(GuestError,))
        assert src.qmp("query-status")["status"] == "running"
        return info

    def stop(self) -> None:
        for g in self.incarnations:
            g.stop()


def _status(g: Guest) -> str:
    g._check_alive()
    try:
        status: str = g.qmp("query-status")["status"]
    except (OSError, EOFError):
        return ""
    except Exception as e:  # qemu.qmp's connection errors while QEMU starts
        if type(e).__module__.startswith("qemu."):
            return ""
        raise
    return status


def _finished(g: Guest) -> dict[str, Any] | None:
    g._check_alive()
    info: dict[str, Any] = g.qmp("query-migrate")
    return info if info.get("status") in ("completed", "failed", "cancelled") else None


class Pinger:
    """``ping -i 0.02`` from the outside to ``dst``; ``answered`` holds the sequence numbers
    that got an answer, ``lost()`` how many were unanswered between the first and the
    last answer."""

    def __init__(self, lab: MigrationLab, dst: str, interval: float = 0.02) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", lab.out, "ping", "-n", "-i", str(interval), dst],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.answered: list[int] = []
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            m = re.search(r"icmp_seq=(\d+)", line)
            if m and "bytes from" in line:
                self.answered.append(int(m.group(1)))

    def answers(self) -> int:
        return len(self.answered)

    def wait_answers(self, more_than: int, timeout: float = 30) -> None:
        wait_until(lambda: len(self.answered) > more_than, timeout, what=f"more than {more_than} ping answers")

    def lost(self) -> int:
        seqs = sorted(set(self.answered))
        return (seqs[-1] - seqs[0] + 1 - len(seqs)) if seqs else 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            stop_process(self.proc, 5)
        self._reader.join(5)


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
