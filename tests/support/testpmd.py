"""Drive DPDK ``dpdk-testpmd`` as a real vhost-user peer.

testpmd stands in for a guest (``net_virtio_user`` front-end) or for a reference C
vhost-user backend (``net_vhost``).  It runs in interactive mode (``-i``) with its stdin
kept open as a pipe (testpmd quits when stdin closes) and its output going to a log
file; :meth:`Testpmd.cmd` writes one command and returns the text printed up to the
next ``testpmd>`` prompt.

testpmd writes its prompt with ``write(2)`` but everything else through stdio, which is
block-buffered when stdout is not a terminal, so it is run under ``stdbuf -o0 -e0``.

Also here, shared by the interop test and ``bench/bench.py``:

* :func:`wait_for`: poll a condition with a deadline;
* :class:`VethNamespace`: a network namespace holding a veth pair (a master interface
  for the daemon), removed on exit;
* :class:`IpvlanDaemon`: ``vhost-ipvlan serve --config FILE`` run inside that namespace;
* :func:`write_daemon_config`: the TOML config for one master and some slaves.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

TESTPMD = "dpdk-testpmd"
PROMPT = "testpmd> "

REPO_ROOT = Path(__file__).resolve().parents[2]

T = TypeVar("T")


class TestpmdError(RuntimeError):
    """testpmd failed to start, died, or did not answer in time."""


def testpmd_path() -> str | None:
    """The dpdk-testpmd binary, or None when it is not installed."""
    return shutil.which(TESTPMD)


def wait_for(
    cond: Callable[[], T | None],
    timeout: float,
    *,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``cond`` until it returns a true value (returned) or ``timeout`` s pass.

    Raises :class:`TimeoutError` naming ``what`` when the deadline passes.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class PortStats:
    """One port's block of ``show port stats``.

    Counters are cumulative since the port started (or ``clear port stats``);
    the ``*_pps``/``*_bps`` figures are testpmd's "Throughput (since last show)".
    """

    port: int
    rx_packets: int = 0
    rx_missed: int = 0
    rx_bytes: int = 0
    rx_errors: int = 0
    rx_nombuf: int = 0
    tx_packets: int = 0
    tx_errors: int = 0
    tx_bytes: int = 0
    rx_pps: int = 0
    rx_bps: int = 0
    tx_pps: int = 0
    tx_bps: int = 0


_STATS_HEADER = re.compile(r"NIC statistics for port (\d+)")
_STATS_FIELDS: dict[str, str] = {
    "RX-packets": "rx_packets",
    "RX-missed": "rx_missed",
    "RX-bytes": "rx_bytes",
    "RX-errors": "rx_errors",
    "RX-nombuf": "rx_nombuf",
    "TX-packets": "tx_packets",
    "TX-errors": "tx_errors",
    "TX-bytes": "tx_bytes",
    "Rx-pps": "rx_pps",
    "Rx-bps": "rx_bps",
    "Tx-pps": "tx_pps",
    "Tx-bps": "tx_bps",
}
_STATS_PAIR = re.compile(r"([RT]X-[a-z]+|[RT]x-[pb]ps):\s*(\d+)")


def parse_port_stats(text: str) -> dict[int, PortStats]:
    """Parse the output of ``show port stats all`` (or ``show port stats N``)."""
    result: dict[int, PortStats] = {}
    blocks = _STATS_HEADER.split(text)
    # split() gives [before, port, body, port, body, ...]
    for i in range(1, len(blocks) - 1, 2):
        port = int(blocks[i])
        body = blocks[i + 1]
        values: dict[str, int] = {}
        for key, value in _STATS_PAIR.findall(body):
            attr = _STATS_FIELDS.get(key)
            if attr is not None:
                values[attr] = int(value)
        result[port] = PortStats(port=port, **values)
    return result


_MAC_RE = re.compile(r"MAC address:\s*([0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5})")
_STARTUP_MAC_RE = re.compile(r"^Port (\d+): ([0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5})\s*$", re.M)


class Testpmd:
    """One dpdk-testpmd process in interactive mode; a context manager.

    ``vdevs`` are ``--vdev`` arguments, e.g. a front-end standing in for a guest::

        net_virtio_user0,path=/x/a.sock,mac=02:00:00:00:00:01,queues=1,queue_size=1024

    (add ``server=1`` when testpmd must listen and the backend connects) or a
    reference backend: ``net_vhost0,iface=/x/a.sock`` (``client=1`` when the
    front-end listens).

    ``lcores`` is the EAL ``--lcores`` map; the first lcore is the main (command)
    lcore, the others forward.  ``txpkts``, ``tx_ip`` and ``eth_peers`` are the
    txonly frame length, ``(src, dst)`` IPv4 addresses and destination MAC per port.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        name: str,
        workdir: Path,
        *,
        vdevs: list[str],
        lcores: str = "0@0,1@0",
        mem_mb: int = 1024,
        forward_mode: str = "io",
        extra_args: Sequence[str] = (),
        eth_peers: dict[int, str] | None = None,
        txpkts: int | None = None,
        tx_ip: tuple[str, str] | None = None,
        total_mbufs: int = 16384,
        eal_args: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.workdir = Path(workdir)
        self.vdevs = list(vdevs)
        self.lcores = lcores
        self.mem_mb = mem_mb
        self.forward_mode = forward_mode
        self.extra_args = list(extra_args)
        self.eth_peers = dict(eth_peers or {})
        self.txpkts = txpkts
        self.tx_ip = tx_ip
        self.total_mbufs = total_mbufs
        self.eal_args = list(eal_args)
        self.log_path = self.workdir / f"testpmd-{name}.log"
        # unique per process: EAL keeps its runtime files under /var/run/dpdk/PREFIX
        self.file_prefix = f"vitp-{name}-{os.getpid()}-{id(self) & 0xFFFFFF:x}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._lock = threading.Lock()
        self._stopped = False

    # -- lifecycle ---------------------------------------------------------------

    def argv(self) -> list[str]:
        """The full command line (without the stdbuf wrapper)."""
        n_fwd = max(1, len(self.lcores.split(",")) - 1)
        args = [
            TESTPMD,
            "--lcores",
            self.lcores,
            "--no-huge",
            "-m",
            str(self.mem_mb),
            "--no-pci",
            f"--file-prefix={self.file_prefix}",
            *self.eal_args,
        ]
        for vdev in self.vdevs:
            args += ["--vdev", vdev]
        args += [
            "--",
            "-i",
            f"--nb-cores={n_fwd}",
            f"--total-num-mbufs={self.total_mbufs}",
            f"--forward-mode={self.forward_mode}",
        ]
        for port, mac in sorted(self.eth_peers.items()):
            args.append(f"--eth-peer={port},{mac}")
        if self.txpkts is not None:
            args.append(f"--txpkts={self.txpkts}")
        if self.tx_ip is not None:
            args.append(f"--tx-ip={self.tx_ip[0]},{self.tx_ip[1]}")
        args += self.extra_args
        return args

    def start(self) -> None:
        """Start testpmd (returns at once; see :meth:`wait_ready`)."""
        if self._proc is not None:
            raise TestpmdError(f"testpmd {self.name} already started")
        if testpmd_path() is None:
            raise TestpmdError(f"{TESTPMD} not found in PATH")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        argv = ["stdbuf", "-o0", "-e0", *self.argv()]
        self._log.write(("# " + " ".join(argv) + "\n").encode())
        self._log.flush()
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def __enter__(self) -> Testpmd:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        """Everything testpmd printed so far."""
        try:
            return self.log_path.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def _check_alive(self) -> None:
        if self._proc is None:
            raise TestpmdError(f"testpmd {self.name} not started")
        rc = self._proc.poll()
        if rc is not None:
            raise TestpmdError(f"testpmd {self.name} exited with status {rc}; log {self.log_path}:\n" + self.log_tail())

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait for the first interactive prompt (EAL init and port setup done)."""

        def ready() -> bool:
            self._check_alive()
            return PROMPT in self.log_text()

        try:
            wait_for(ready, timeout, interval=0.05, what=f"testpmd {self.name} prompt")
        except TimeoutError as e:
            raise TestpmdError(f"{e}; log {self.log_path}:\n{self.log_tail()}") from e

    def stop(self) -> None:
        """``quit``, then SIGTERM/SIGKILL if it lingers.  Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        proc = self._proc
        try:
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(OSError, ValueError):
                    assert proc.stdin is not None
                    proc.stdin.write(b"quit\n")
                    proc.stdin.flush()
                with contextlib.suppress(OSError, ValueError):
                    assert proc.stdin is not None
                    proc.stdin.close()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    for sig in (signal.SIGTERM, signal.SIGKILL):
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(proc.pid, sig)
                        try:
                            proc.wait(timeout=5)
                            break
                        except subprocess.TimeoutExpired:
                            continue
            elif proc is not None and proc.stdin is not None:
                with contextlib.suppress(OSError, ValueError):
                    proc.stdin.close()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
            if proc is not None and proc.poll() is not None:
                # EAL leaves its runtime directory behind
                shutil.rmtree(Path("/var/run/dpdk") / self.file_prefix, ignore_errors=True)

    # -- commands ----------------------------------------------------------------

    def cmd(self, line: str, timeout: float = 10) -> str:
        """Send one interactive command; return its output up to the next prompt.

        The echoed command line is removed; lines end in ``\\n``.
        """
        if "\n" in line:
            raise ValueError("one command at a time")
        with self._lock:
            self._check_alive()
            assert self._proc is not None and self._proc.stdin is not None
            start = self.log_path.stat().st_size

            def answered() -> str | None:
                self._check_alive()
                with open(self.log_path, "rb") as f:
                    f.seek(start)
                    text = f.read().decode(errors="replace")
                idx = text.find(PROMPT)
                return text[:idx] if idx >= 0 else None

            self._proc.stdin.write(line.encode() + b"\n")
            self._proc.stdin.flush()
            try:
                out = wait_for(answered, timeout, interval=0.02, what=f"testpmd {self.name}: {line!r}")
            except TimeoutError as e:
                raise TestpmdError(f"{e}; log {self.log_path}:\n{self.log_tail()}") from e
        out = out.replace("\r\n", "\n").replace("\r", "")
        first, _sep, rest = out.partition("\n")
        if first.strip() == line.strip():
            out = rest
        return out

    def port_stats(self) -> dict[int, PortStats]:
        """``show port stats all``, parsed per port."""
        return parse_port_stats(self.cmd("show port stats all"))

    def clear_stats(self) -> None:
        self.cmd("clear port stats all")

    def mac(self, port: int) -> str:
        """The port's own MAC address, lower case."""
        m = _MAC_RE.search(self.cmd(f"show port info {port}"))
        if m is None:
            for p, mac in _STARTUP_MAC_RE.findall(self.log_text()):
                if int(p) == port:
                    return str(mac).lower()
            raise TestpmdError(f"testpmd {self.name}: no MAC for port {port}")
        return str(m.group(1)).lower()

    def link_up(self, port: int) -> bool:
        out = self.cmd(f"show port info {port}")
        return re.search(r"Link status:\s*up", out) is not None

    def wait_link_up(self, port: int = 0, timeout: float = 30) -> None:
        try:
            wait_for(
                lambda: self.link_up(port),
                timeout,
                interval=0.1,
                what=f"testpmd {self.name} port {port} link up",
            )
        except TimeoutError as e:
            raise TestpmdError(f"{e}; log {self.log_path}:\n{self.log_tail()}") from e


# --------------------------------------------------------------------------------
# vhost-ipvlan daemon in a namespace with a veth master


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True)


class VethNamespace:
    """``ip netns add NAME`` with a veth pair ``master``/``peer``, both up inside.

    A context manager; the namespace (and so the veth pair) is deleted on exit.
    IPv6 is disabled in it unless ``ipv6`` is true.
    """

    def __init__(self, name: str, master: str = "vib0", peer: str = "vib1", *, ipv6: bool = False) -> None:
        self.name = name
        self.master = master
        self.peer = peer
        self.ipv6 = ipv6
        self._created = False

    def create(self) -> None:
        _run(["ip", "netns", "del", self.name], check=False)
        _run(["ip", "netns", "add", self.name])
        self._created = True
        ns = ["ip", "-n", self.name]
        if not self.ipv6:
            # no IPv6 on the veth: the host kernel would send ND/MLD multicast that a
            # bridge-mode master hands to every slave, noise for counting tests
            for key in ("all", "default"):
                _run(self.exec_argv(["sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1"]))
        _run([*ns, "link", "add", self.master, "type", "veth", "peer", "name", self.peer])
        _run([*ns, "link", "set", "lo", "up"])
        _run([*ns, "link", "set", self.master, "up"])
        _run([*ns, "link", "set", self.peer, "up"])

    def delete(self) -> None:
        if self._created:
            _run(["ip", "netns", "del", self.name], check=False)
            self._created = False

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def __enter__(self) -> VethNamespace:
        try:
            self.create()
        except BaseException:
            self.delete()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.delete()


@dataclass
class SlaveSpec:
    """One ``[[port.slave]]`` of the daemon config."""

    name: str
    socket: Path
    addresses: list[str]
    mac: str
    socket_mode: str = "server"
    extra: dict[str, str] = field(default_factory=dict)


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_daemon_config(master: str, slaves: Sequence[SlaveSpec], *, mode: str = "l2", flag: str = "bridge") -> str:
    lines = [
        "[[port]]",
        f"master = {_toml_str(master)}",
        f"mode = {_toml_str(mode)}",
        f"flag = {_toml_str(flag)}",
    ]
    for s in slaves:
        lines += [
            "",
            "[[port.slave]]",
            f"name = {_toml_str(s.name)}",
            f"socket = {_toml_str(str(s.socket))}",
            f"socket_mode = {_toml_str(s.socket_mode)}",
            "addresses = [" + ", ".join(_toml_str(a) for a in s.addresses) + "]",
            f"mac = {_toml_str(s.mac)}",
        ]
        lines += [f"{k} = {_toml_str(v)}" for k, v in s.extra.items()]
    return "\n".join(lines) + "\n"


def write_daemon_config(
    path: Path, master: str, slaves: Sequence[SlaveSpec], *, mode: str = "l2", flag: str = "bridge"
) -> Path:
    path.write_text(render_daemon_config(master, slaves, mode=mode, flag=flag))
    return path


def daemon_executable() -> Path | None:
    """``vhost-ipvlan`` next to the running interpreter (the venv), or on PATH."""
    local = Path(sys.executable).parent / "vhost-ipvlan"
    if local.exists():
        return local
    found = shutil.which("vhost-ipvlan")
    return Path(found) if found else None


def daemon_command() -> list[str]:
    """The command that runs the daemon: the console script, or failing that
    ``python -c 'vhost_ipvlan.cli.main()'`` from this source tree."""
    exe = daemon_executable()
    if exe is not None:
        return [str(exe)]
    return [
        sys.executable,
        "-c",
        "import sys; from vhost_ipvlan.cli import main; sys.exit(main())",
    ]


class DaemonError(RuntimeError):
    """vhost-ipvlan did not start or died."""


class IpvlanDaemon:
    """``vhost-ipvlan serve --config FILE`` inside a namespace (optionally pinned).

    :meth:`start` waits until every server-mode socket in ``sockets`` exists.
    """

    def __init__(
        self,
        config: Path,
        ns: VethNamespace | None,
        log_path: Path,
        *,
        sockets: Sequence[Path] = (),
        cpus: str | None = None,
        executable: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.config = config
        self.ns = ns
        self.log_path = log_path
        self.sockets = list(sockets)
        self.cpus = cpus
        self.executable = executable
        self.extra_args = list(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def argv(self) -> list[str]:
        cmd = [str(self.executable)] if self.executable is not None else daemon_command()
        argv = [*cmd, "serve", "--config", str(self.config), *self.extra_args]
        if self.cpus is not None:
            argv = ["taskset", "-c", self.cpus, *argv]
        if self.ns is not None:
            argv = self.ns.exec_argv(argv)
        return argv

    def log_tail(self, n: int = 40) -> str:
        try:
            text = self.log_path.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-n:])

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def check_alive(self) -> None:
        if self._proc is None:
            raise DaemonError("vhost-ipvlan not started")
        rc = self._proc.poll()
        if rc is not None:
            raise DaemonError(f"vhost-ipvlan exited with status {rc}; log {self.log_path}:\n{self.log_tail()}")

    def stats(self, timeout: float = 10) -> dict[str, Any]:
        """The daemon's counters: SIGUSR1, then the JSON of the ``stats {...}`` log line."""
        self.check_alive()
        assert self._proc is not None

        def stats_lines() -> list[str]:
            try:
                text = self.log_path.read_bytes().decode(errors="replace")
            except FileNotFoundError:
                return []
            return [ln for ln in text.splitlines() if " stats {" in ln]

        before = len(stats_lines())
        os.kill(self._proc.pid, signal.SIGUSR1)

        def new_line() -> str | None:
            self.check_alive()
            lines = stats_lines()
            return lines[-1] if len(lines) > before else None

        line = wait_for(new_line, timeout, interval=0.05, what="vhost-ipvlan stats line")
        data = json.loads(line.split(" stats ", 1)[1])
        if not isinstance(data, dict):
            raise DaemonError(f"unexpected stats line: {line}")
        return data

    def slave_stats(self, master: str, slave: str) -> dict[str, Any]:
        """One slave's counters (rx/tx packets and bytes, ``drops`` by reason)."""
        result: dict[str, Any] = self.stats()[master]["slaves"][slave]
        return result

    def start(self, timeout: float = 20) -> None:
        argv = self.argv()
        for sock in self.sockets:
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._log.write(("# " + " ".join(argv) + "\n").encode())
        self._log.flush()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def listening() -> bool:
            self.check_alive()
            return all(s.exists() for s in self.sockets)

        try:
            wait_for(listening, timeout, interval=0.05, what="vhost-ipvlan sockets")
        except TimeoutError as e:
            self.stop()
            raise DaemonError(f"{e}; log {self.log_path}:\n{self.log_tail()}") from e

    def stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                try:
                    proc.wait(timeout=10)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> IpvlanDaemon:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
