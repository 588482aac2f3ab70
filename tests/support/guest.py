"""QEMU (TCG) test guests booted from the tiny image (vm-images/build-tiny.sh).

A ``Guest`` is a ``qemu-system-x86_64`` process with

* the console (ttyS0) written to ``<workdir>/<name>.console.log`` (``console_log``),
* a command channel on ttyS1 (a QEMU unix-socket chardev the host connects to, see
  vm-images/tiny/init for the protocol), used by ``run``/``check``,
* a QMP socket (``qmp_socket``) for tests that need the monitor,
* optionally one virtio-net NIC backed by vhost-user (``vhost_socket``).

vhost-user socket roles (QEMU 7.2, observed with dpdk-testpmd as the backend):

* ``socket_server=False`` (default): QEMU is the socket *client*
  (``-chardev socket,path=...,reconnect=1``). QEMU connects and does the vhost-user
  handshake during its startup and does not run the guest before that succeeded. If
  the backend is not listening yet, QEMU logs "Unable to connect character device c0:
  ... No such file or directory", retries every second, and the guest boots as soon as
  the backend appears; so starting the backend first is best, but not required.
  ``reconnect=1`` also lets QEMU survive a backend restart.
* ``socket_server=True``: QEMU *listens* on ``vhost_socket`` (``server=on,wait=off``)
  and the backend connects. Despite ``wait=off`` QEMU still blocks in netdev setup
  ("QEMU waiting for connection on: ...vhost_socket,server=on") until a backend has
  connected, then boots the guest. Start the backend after ``start()`` (the socket
  exists shortly after) and before ``wait_ready()`` times out.

In both roles the command-channel and QMP sockets exist while QEMU waits (chardevs are
created before netdevs), but nothing answers on them before the handshake is done.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from .proc import stop_process
from .wait import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "vm-images" / "build-tiny.sh"
READY_MARKER = "VI-TINY-READY"
QEMU = os.environ.get("VHOST_IPVLAN_QEMU", "qemu-system-x86_64")
MAX_COMMAND_BYTES = 32 * 1024  # the guest tty buffers up to 64 KiB of unread input
_UNIX_PATH_MAX = 107


class GuestError(RuntimeError):
    """The guest died, could not be started, or a checked command failed."""


class CommandFailed(GuestError):
    def __init__(self, guest: str, cmd: str, rc: int, output: str) -> None:
        super().__init__(f"guest {guest}: command {cmd!r} exited with {rc}; output:\n{output}")
        self.cmd = cmd
        self.rc = rc
        self.output = output


@dataclass(frozen=True)
class TinyImage:
    directory: Path
    kernel: Path
    initrd: Path


@functools.cache
def tiny_image() -> TinyImage:
    """Build (or find in the cache) the tiny guest image; cached per process.

    ``VHOST_IPVLAN_TINY_DIR`` set to a directory holding vmlinuz and initrd.img skips
    the build script.
    """
    override = os.environ.get("VHOST_IPVLAN_TINY_DIR")
    if override:
        directory = Path(override)
    else:
        proc = subprocess.run(
            [str(BUILD_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise GuestError(
                f"{BUILD_SCRIPT} failed (rc {proc.returncode}):\n{proc.stderr}{proc.stdout}"
            )
        directory = Path(lines[-1])
    image = TinyImage(directory, directory / "vmlinuz", directory / "initrd.img")
    for path in (image.kernel, image.initrd):
        if not path.is_file():
            raise GuestError(f"tiny image incomplete: {path} missing")
    return image


class Guest:
    """One tiny guest. ``with Guest(...) as g:`` starts it and stops it on exit."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        *,
        vhost_socket: Path | None,
        socket_server: bool = False,
        mac: str = "52:54:00:00:00:01",
        ip4: str | None = None,
        ip6: str | None = None,
        gw4: str | None = None,
        mem_mb: int = 256,
        extra_cmdline: str = "",
        mrg_rxbuf: bool = True,
        gw6: str | None = None,
        mtu: int | None = None,
        nodad: bool = True,
        nic_opts: str = "",
        qemu_args: tuple[str, ...] = (),
        queues: int = 1,
        smp: int = 1,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ValueError(f"bad guest name {name!r}")
        self.name = name
        self.workdir = Path(workdir)
        self.vhost_socket = vhost_socket
        self.socket_server = socket_server
        self.mac = mac
        self.ip4 = ip4
        self.ip6 = ip6
        self.gw4 = gw4
        self.gw6 = gw6
        self.mtu = mtu
        self.nodad = nodad
        self.mem_mb = mem_mb
        self.extra_cmdline = extra_cmdline
        self.mrg_rxbuf = mrg_rxbuf
        self.nic_opts = nic_opts
        self.qemu_args = qemu_args
        self.queues = queues  # virtio-net queue pairs: -netdev vhost-user,queues=N and mq=on
        self.smp = smp  # vCPUs (a Linux guest enables min(queue pairs, vCPUs) pairs at probe)
        self.console_log = self.workdir / f"{name}.console.log"
        self.qemu_log = self.workdir / f"{name}.qemu.log"
        self._sockdir: Path | None = None
        self.cmd_socket = self._socket_path("cmd.sock")
        self.qmp_socket = self._socket_path("qmp.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        self._chan: socket.socket | None = None
        self._buf = b""
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- setup

    def _socket_path(self, suffix: str) -> Path:
        path = self.workdir / f"{self.name}.{suffix}"
        if len(os.fsencode(path)) <= _UNIX_PATH_MAX:
            return path
        if self._sockdir is None:
            self._sockdir = Path(tempfile.mkdtemp(prefix="vi-guest-"))
        return self._sockdir / f"{self.name}.{suffix}"

    def kernel_cmdline(self) -> str:
        args = ["console=ttyS0", "panic=-1", "quiet", f"vi.hostname={self.name}"]
        for key, value in (
            ("ip4", self.ip4),
            ("ip6", self.ip6),
            ("gw4", self.gw4),
            ("gw6", self.gw6),
            ("mtu", self.mtu),
        ):
            if value is not None:
                args.append(f"vi.{key}={value}")
        if self.nodad:
            args.append("vi.nodad=1")
        if self.extra_cmdline:
            args.append(self.extra_cmdline)
        return " ".join(args)

    def qemu_argv(self) -> list[str]:
        image = tiny_image()
        argv = [
            QEMU,
            "-name", self.name,
            "-accel", "tcg" if self.smp == 1 else "tcg,thread=multi",
            "-machine", "pc,memory-backend=mem",
            "-cpu", "max",
            "-smp", str(self.smp),
            "-m", f"{self.mem_mb}M",
            "-object", f"memory-backend-memfd,id=mem,size={self.mem_mb}M,share=on",
            "-nographic",
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-kernel", str(image.kernel),
            "-initrd", str(image.initrd),
            "-append", self.kernel_cmdline(),
            "-chardev", f"file,id=con0,path={self.console_log}",
            "-serial", "chardev:con0",
            "-chardev", f"socket,id=cmd0,path={self.cmd_socket},server=on,wait=off",
            "-serial", "chardev:cmd0",
            "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",
        ]  # fmt: skip
        if self.vhost_socket is None:
            argv += ["-nic", "none"]
        else:
            role = "server=on,wait=off" if self.socket_server else "reconnect=1"
            device = f"virtio-net-pci,netdev=n0,mac={self.mac},vectors=0"
            if not self.mrg_rxbuf:
                device += ",mrg_rxbuf=off"
            if self.queues > 1:
                device += ",mq=on"
            if self.nic_opts:
                device += "," + self.nic_opts
            argv += [
                "-chardev", f"socket,id=c0,path={self.vhost_socket},{role}",
                "-netdev", "vhost-user,id=n0,chardev=c0" + (f",queues={self.queues}" if self.queues > 1 else ""),
                "-device", device,
            ]  # fmt: skip
        argv += list(self.qemu_args)
        return argv

    def start(self) -> None:
        """Spawn QEMU in the background (returns at once)."""
        if self.proc is not None:
            raise GuestError(f"guest {self.name} already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = self.qemu_argv()
        for path in (self.cmd_socket, self.qmp_socket):
            path.unlink(missing_ok=True)
        self.console_log.write_bytes(b"")
        with self.qemu_log.open("wb") as log:
            log.write((" ".join(argv) + "\n").encode())
            log.flush()
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    # ------------------------------------------------------------- console

    def console_text(self) -> str:
        try:
            return self.console_log.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def _diagnostics(self, tail: int = 40) -> str:
        console = "\n".join(self.console_text().splitlines()[-tail:])
        try:
            qemu = self.qemu_log.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            qemu = ""
        return f"--- {self.console_log} (tail) ---\n{console}\n--- {self.qemu_log} ---\n{qemu}"

    def _check_alive(self) -> None:
        if self.proc is None:
            raise GuestError(f"guest {self.name} not started")
        rc = self.proc.poll()
        if rc is not None:
            raise GuestError(f"guest {self.name}: qemu exited with {rc}\n{self._diagnostics()}")

    def wait_console(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        """Wait until the console log matches the regular expression ``pattern``."""
        rx = re.compile(pattern)

        def found() -> re.Match[str] | None:
            self._check_alive()
            return rx.search(self.console_text())

        return wait_until(found, timeout, 0.1, f"{pattern!r} on {self.name}'s console")

    def wait_ready(self, timeout: float = 120) -> None:
        """Wait until the guest has booted and its command channel answers."""
        deadline = time.monotonic() + timeout
        try:
            self.wait_console(READY_MARKER, timeout)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self._diagnostics()}") from exc
        self.wait_channel(max(1.0, deadline - time.monotonic()))

    def wait_channel(self, timeout: float = 60) -> None:
        """Wait until the command channel answers (a guest already running: one that
        arrived by live migration has no boot on this QEMU's console)."""
        deadline = time.monotonic() + timeout
        try:
            if self._chan is None:
                self._connect(max(1.0, deadline - time.monotonic()))
            rc, out = self.run("echo ok", timeout=max(5.0, deadline - time.monotonic()))
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self._diagnostics()}") from exc
        if rc != 0 or out != "ok\n":
            raise GuestError(f"guest {self.name}: bad channel answer {rc} {out!r}")

    # ------------------------------------------------------ command channel

    def _connect(self, timeout: float) -> None:
        def attempt() -> socket.socket | None:
            self._check_alive()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.cmd_socket))
            except OSError:
                sock.close()
                return None
            return sock

        self._chan = wait_until(attempt, timeout, 0.1, f"{self.name}'s command socket")
        self._buf = b""

    def run(self, cmd: str, timeout: float = 60) -> tuple[int, str]:
        """Run ``cmd`` with the guest's /bin/sh; return (exit status, stdout+stderr).

        Raises TimeoutError when no answer comes within ``timeout`` (the command keeps
        running in the guest and blocks the channel until it ends; later calls skip its
        output) and GuestError when QEMU dies.
        """
        payload = base64.b64encode(cmd.encode())
        if len(payload) > MAX_COMMAND_BYTES:
            raise ValueError(f"command too long ({len(payload)} bytes encoded)")
        with self._lock:
            self._check_alive()
            if self._chan is None:
                self._connect(timeout)
            assert self._chan is not None
            nonce = secrets.token_hex(8).encode()
            self._chan.sendall(nonce + b" " + payload + b"\n")
            start_rx = re.compile(rb"(?:^|\n)" + nonce + rb" START\n")
            end_rx = re.compile(rb"\n" + nonce + rb" RC=(\d+)\n")
            deadline = time.monotonic() + timeout
            while True:
                start = start_rx.search(self._buf)
                if start:
                    end = end_rx.search(self._buf, start.end() - 1)
                    if end:
                        output = self._buf[start.end() : end.start()]
                        self._buf = self._buf[end.end() :]
                        return int(end.group(1)), output.decode("utf-8", "replace")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    partial = self._buf[start.end() :] if start else b""
                    raise TimeoutError(
                        f"guest {self.name}: command {cmd!r} did not finish within "
                        f"{timeout:g} s; partial output: {partial[-2000:]!r}"
                    )
                self._chan.settimeout(min(remaining, 0.5))
                try:
                    data = self._chan.recv(65536)
                except TimeoutError:
                    self._check_alive()
                    continue
                if not data:
                    self._check_alive()
                    raise GuestError(f"guest {self.name}: command channel closed")
                self._buf += data

    def check(self, cmd: str, timeout: float = 60) -> str:
        """Like ``run`` but raise CommandFailed (with the output) on a non-zero status."""
        rc, output = self.run(cmd, timeout)
        if rc != 0:
            raise CommandFailed(self.name, cmd, rc, output)
        return output

    # ------------------------------------------------------------- teardown

    def qmp(self, command: str, **arguments: Any) -> Any:
        """One QMP command to this guest's QEMU (through qemu.qmp); its ``return``."""
        from qemu.qmp import QMPClient

        async def go() -> Any:
            client = QMPClient(self.name)
            await client.connect(str(self.qmp_socket))
            try:
                return await client.execute(command, arguments)
            finally:
                await client.disconnect()
        return asyncio.run(go())

    def stop(self, timeout: float = 10) -> None:
        """Terminate QEMU (SIGTERM, then SIGKILL). Idempotent; keeps the logs."""
        if self._chan is not None:
            self._chan.close()
            self._chan = None
        try:
            if self.proc is not None:
                stop_process(self.proc, timeout, kill_timeout=30)
        finally:
            for path in (self.cmd_socket, self.qmp_socket):
                path.unlink(missing_ok=True)
            if self._sockdir is not None:
                shutil.rmtree(self._sockdir, ignore_errors=True)
                self._sockdir = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> Guest:
        if self.proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Guest {self.name} {state} console={self.console_log}>"
