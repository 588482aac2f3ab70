"""Restarting the daemon under live guests, and the outage window it costs them.

``RestartWorld(tmp)`` (a context manager) is the lab with two TCG guests, one per
vhost-user socket role:

* ``vm1``: the daemon listens, QEMU is the client with ``reconnect=1``;
* ``vm2``: QEMU listens (``server=on``), the daemon connects and retries every second.

Both slaves have their MAC in the daemon's config. ``restart(kind)`` restarts the
daemon (``"term"``: SIGTERM, wait for the exit, start again; ``"kill"``: SIGKILL,
the same) while the outside host pings each guest every ``INTERVAL`` s
(``ping -D -O``: every reply line carries its receive time), waits until both guests
answer again, and returns one ``Outage`` per guest.

The outage window is the longest gap between two consecutive replies seen by one
pinger, which runs from ``LEAD`` s before the signal until ``TAIL`` s after the
first reply that follows the restart. It is a measurement to report, not a figure
to assert: the machine is shared and the guests run under TCG.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from .guest import Guest
from .lab import Lab, SlaveSpec
from .proc import stop_process
from .wait import wait_until

VM1_IP, VM2_IP = "192.0.2.10", "192.0.2.11"
VM1_MAC, VM2_MAC = "52:54:00:00:00:10", "52:54:00:00:00:11"
ROLES = {"vm1": "daemon listens (QEMU reconnect=1)", "vm2": "QEMU listens (daemon reconnects)"}
KINDS = ("term", "kill")
INTERVAL = 0.05  # s between echo requests
LEAD = 1.5  # s of steady replies before the signal
TAIL = 1.0  # s of replies after the first one past the restart
RECOVERY_TIMEOUT = 60.0  # generous: TCG guests, a shared 2-core machine
_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from [^:]+: icmp_seq=(\d+)", re.M)


@dataclass(frozen=True)
class Outage:
    guest: str
    kind: str
    window: float  # longest gap between consecutive replies, s
    recovered_after: float  # first reply after the signal, s after the signal
    lost: int  # echo requests sent in the run and never answered
    replies: int


class Pinger:
    """``ping -D -O -i INTERVAL dst`` from the lab's outside host, output to a file."""

    def __init__(self, lab: Lab, dst: str, out: Path) -> None:
        self.dst = dst
        self.out = out
        with out.open("wb") as f:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", lab.out, "ping", "-n", "-D", "-O", "-i", str(INTERVAL), "-W", "1", dst],
                stdout=f, stderr=subprocess.STDOUT)

    def replies(self) -> list[tuple[float, int]]:
        """(receive time, icmp_seq) of every reply so far."""
        text = self.out.read_text(errors="replace")
        return [(float(t), int(seq)) for t, seq in _REPLY.findall(text)]

    def replied_after(self, t: float) -> float | None:
        return next((rt for rt, _ in self.replies() if rt > t), None)

    def stop(self) -> None:
        stop_process(self.proc, 5)


def outage(guest: str, kind: str, replies: list[tuple[float, int]], t_signal: float) -> Outage:
    times = [t for t, _ in replies]
    seqs = [s for _, s in replies]
    window = max(b - a for a, b in itertools.pairwise(times))
    first_after = min(t for t in times if t > t_signal)
    lost = (max(seqs) - min(seqs) + 1) - len(set(seqs))
    return Outage(guest, kind, window, first_after - t_signal, lost, len(replies))


class RestartWorld:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.lab = Lab(tmp, [
            SlaveSpec("vm1", [f"{VM1_IP}/24"], VM1_MAC),
            SlaveSpec("vm2", [f"{VM2_IP}/24"], VM2_MAC, socket_mode="client"),
        ])
        self.vm1 = Guest("vm1", tmp, vhost_socket=self.lab.sock("vm1"), mac=VM1_MAC, ip4=f"{VM1_IP}/24")
        self.vm2 = Guest("vm2", tmp, vhost_socket=self.lab.sock("vm2"), socket_server=True, mac=VM2_MAC,
                         ip4=f"{VM2_IP}/24")
        self.guests = {"vm1": (self.vm1, VM1_IP), "vm2": (self.vm2, VM2_IP)}
        self.runs = 0
        self.socket_left = False  # whether the last restart found vm1's socket file left behind

    def __enter__(self) -> Self:
        self.lab.__enter__()
        try:
            for vm, _ in self.guests.values():
                vm.start()
            for vm, _ in self.guests.values():
                vm.wait_ready(240)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        try:
            for vm, _ in self.guests.values():
                vm.stop()
        finally:
            self.lab.teardown()

    def boot_id(self, name: str) -> str:
        return self.guests[name][0].check("cat /proc/sys/kernel/random/boot_id", timeout=60).strip()

    def diagnostics(self) -> str:
        parts = [f"--- daemon log {self.lab.log} (tail) ---", "\n".join(self.lab.log_text().splitlines()[-60:])]
        for vm, _ in self.guests.values():
            try:
                parts += [f"--- {vm.qemu_log} ---", vm.qemu_log.read_text(errors="replace")[-3000:]]
            except FileNotFoundError:
                pass
        return "\n".join(parts)

    def signal_daemon(self, kind: str) -> None:
        daemon = self.lab.daemon
        assert daemon is not None
        self.lab.check_daemon()
        if kind == "term":
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
        elif kind == "kill":
            os.kill(daemon.pid, signal.SIGKILL)
            daemon.wait(30)
        else:
            raise ValueError(f"unknown restart kind {kind!r}")

    def restart(self, kind: str) -> dict[str, Outage]:
        """Restart the daemon under a ping to each guest; the outage per guest."""
        self.runs += 1
        pingers = {name: Pinger(self.lab, ip, self.tmp / f"ping-{kind}-{self.runs}-{name}.log")
                   for name, (_, ip) in self.guests.items()}
        try:
            start = time.time()
            wait_until(lambda: all(p.replied_after(start) for p in pingers.values()), RECOVERY_TIMEOUT,
                       0.1, "replies before the restart")
            time.sleep(LEAD)
            t_signal = time.time()
            self.signal_daemon(kind)
            self.socket_left = self.lab.sock("vm1").exists()
            self.lab.start_daemon()
            wait_until(lambda: all(p.replied_after(t_signal) for p in pingers.values()), RECOVERY_TIMEOUT,
                       0.1, f"replies from both guests after the daemon restart ({kind})")
            time.sleep(TAIL)
        finally:
            for p in pingers.values():
                p.stop()
        return {name: outage(name, kind, p.replies(), t_signal) for name, p in pingers.items()}
