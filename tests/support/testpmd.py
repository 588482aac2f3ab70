"""Drive DPDK ``dpdk-testpmd`` as a real vhost-user peer.

testpmd stands in for a guest (``net_virtio_user`` front-end) or for a reference C
vhost-user backend (``net_vhost``).  It runs in interactive mode (``-i``) with its stdin
kept open as a pipe (testpmd quits when stdin closes) and its output going to a log
file; :meth:`Testpmd.cmd` writes one command and returns the text printed up to the
next ``testpmd>`` prompt.

testpmd writes its prompt with ``write(2)`` but everything else through stdio, which is
block-buffered when stdout is not a terminal, so it is run under ``stdbuf -o0 -e0``.

Also here, shared by the interop test and ``bench/bench.py``: :func:`virtio_user_vdev`
(a guest's ``--vdev``) and :func:`reference_backend` (testpmd's own C vhost-user
backend as the switch).  The vhost-ipvlan side is ``tests/support/lab.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from .proc import stop_process
from .wait import wait_until

TESTPMD = "dpdk-testpmd"
PROMPT = "testpmd> "
#: what testpmd's other threads print whenever they like: the vhost and virtio-user
#: drivers' ``function(): message`` log lines (connections, reconnection, link state),
#: the vhost library's ``VHOST_CONFIG:`` lines and port events. One can land inside the
#: prompt ("tes", a whole line, "tpmd> "), so they are taken out of an answer. (A
#: function name is matched from its ``vhost``/``virtio``: what is before may be the
#: prompt's start.)
_ASYNC_LINE_RE = re.compile(
    r"(?:vhost|virtio)_[a-z0-9_]*\(\): [^\n]*\n|VHOST_CONFIG: [^\n]*\n|\nPort \d+: [^\n]*event\n")


def answer_of(output: str) -> str | None:
    """The answer to a command in what testpmd printed after it was sent: the text up to
    the next prompt, without the other threads' lines; None while the prompt has not come."""
    text = _ASYNC_LINE_RE.sub("", output)
    idx = text.find(PROMPT)
    return text[:idx] if idx >= 0 else None


class TestpmdError(RuntimeError):
    """testpmd failed to start, died, or did not answer in time."""

    __test__ = False  # not a pytest test class, despite the name


def testpmd_path() -> str | None:
    """The dpdk-testpmd binary, or None when it is not installed."""
    return shutil.which(TESTPMD)


def virtio_user_vdev(
    index: int, sock: Path, mac: str, queue_size: int | None = 1024, *, server: bool = False, queues: int = 1
) -> str:
    """The ``--vdev`` of a virtio-user front-end (a guest) on vhost-user socket ``sock``.

    ``queue_size=None`` leaves the ring size to DPDK (its default, 256); ``server``
    makes testpmd listen on ``sock`` (the back-end connects, and reconnects);
    ``queues`` > 1 adds the control queue multiqueue needs (``cq=1``: virtio-user
    turns the driver's VQ_PAIRS_SET into SET_VRING_ENABLE per ring, as QEMU does).
    """
    vdev = f"net_virtio_user{index},path={sock},mac={mac},queues={queues}" + (",cq=1" if queues > 1 else "")
    if queue_size is not None:
        vdev += f",queue_size={queue_size}"
    return vdev + (",server=1" if server else "")


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
    ``netns`` runs it inside that network namespace (a ``net_af_packet`` port's interface
    is there; vhost-user sockets are paths, reachable from any namespace).
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
        netns: str | None = None,
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
        self.netns = netns
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
        netns = ["ip", "netns", "exec", self.netns] if self.netns is not None else []
        argv = [*netns, "stdbuf", "-o0", "-e0", *self.argv()]
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
            wait_until(ready, timeout, interval=0.05, what=f"testpmd {self.name} prompt", fatal=(TestpmdError,))
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
                    stop_process(proc, 5, kill_timeout=5, group=True)
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
                    return answer_of(f.read().decode(errors="replace"))

            self._proc.stdin.write(line.encode() + b"\n")
            self._proc.stdin.flush()
            try:
                out = wait_until(
                    answered, timeout, interval=0.02, what=f"testpmd {self.name}: {line!r}", fatal=(TestpmdError,)
                )
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
            wait_until(
                lambda: self.link_up(port),
                timeout,
                interval=0.1,
                what=f"testpmd {self.name} port {port} link up",
                fatal=(TestpmdError,),
            )
        except TimeoutError as e:
            raise TestpmdError(f"{e}; log {self.log_path}:\n{self.log_tail()}") from e


@contextlib.contextmanager
def reference_backend(
    name: str, workdir: Path, sockets: Sequence[Path], *, lcores: str, mem_mb: int, vdev_options: str = ""
) -> Iterator[Testpmd]:
    """testpmd's C vhost-user backend (``net_vhostN`` on ``sockets[N]``) forwarding
    port 0 -> port 1 (io mode), started; stopped on exit. ``vdev_options`` is appended
    to every vdev (e.g. ``",tso=1"`` to offer TSO to the front-ends)."""
    vdevs = [f"net_vhost{i},iface={sock}{vdev_options}" for i, sock in enumerate(sockets)]
    with Testpmd(name, workdir, vdevs=vdevs, lcores=lcores, mem_mb=mem_mb, forward_mode="io") as be:
        be.cmd("start")
        yield be
