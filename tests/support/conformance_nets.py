"""The two networks the conformance scenarios run on, with one interface.

``KernelNet``: the kernel's own IPvlan, inside ONE tiny TCG guest (its kernel has
ipvlan.ko). In the guest the root namespace is the host (it holds the master
``mst0``), ``mst0`` is a veth whose peer ``out0`` sits in namespace ``out`` (the
outside host), and the slaves ``s1..s3`` are ipvlan devices on ``mst0`` moved into
namespaces ``ns1..ns3``. One combination = one shell script sent to the guest: it
rebuilds the namespaces with the mode and flag, then runs every probe.

``DaemonNet``: vhost-ipvlan. The real daemon on a veth master in a host namespace
(``tests/support/lab.py``: master ``vim0`` = host, peer ``vio0`` in namespace = outside),
three tiny QEMU guests as slaves ``s1..s3``. The guests boot once; a combination is
switched at run time through the control API (``port.change``: the slaves are
re-created and the guests reconnect). A combination the daemon refuses raises
``Refused`` with the daemon's message.

``run(mode, flag) -> Observations`` is the shared interface.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from vhost_ipvlan.control.client import Client
from vhost_ipvlan.errors import RemoteError

from .guest import Guest
from .lab import MASTER, Lab, SlaveSpec
from .scenarios import (
    ADDR4,
    ADDR6,
    COUNTERS_CMD,
    ENDPOINTS,
    HOST4,
    HOST6,
    MACS,
    PREFIX4,
    PREFIX6,
    PROBES,
    SLAVES,
    Observations,
    Probe,
    observe,
    parse_counters,
)

# Per endpoint, once per topology: answer broadcast/multicast echoes, no DAD, keep
# addresses over a link down (the down-slave probe brings the link back up).
PREPARE = ("echo 0 > /proc/sys/net/ipv4/icmp_echo_ignore_broadcasts; "
           "for f in /proc/sys/net/ipv6/conf/*/accept_dad; do echo 0 > $f; done; "
           "for f in /proc/sys/net/ipv6/conf/*/keep_addr_on_down; do echo 1 > $f; done")


class Refused(Exception):
    """The back-end does not run this mode and flag (the daemon's message)."""


class Net(Protocol):
    def run(self, mode: str, flag: str) -> Observations: ...


def _fill(cmd: str, ifname: str) -> str:
    return cmd.replace("{if}", ifname)


# ----------------------------------------------------------------- the kernel

KERNEL_IF = {"s1": "s1", "s2": "s2", "s3": "s3", "host": "mst0", "out": "out0"}


def _kernel_exec(endpoint: str, cmd: str) -> str:
    """A shell line running ``cmd`` at ``endpoint`` inside the kernel guest."""
    assert "'" not in cmd, cmd
    if endpoint == "host":
        return f"sh -c '{cmd}' 2>&1"
    return f"{_kernel_enter(endpoint)} sh -c '{cmd}' 2>&1"


def _kernel_ns(endpoint: str) -> str:
    return "out" if endpoint == "out" else f"n{endpoint}"


def _kernel_enter(endpoint: str) -> str:
    """The prefix that runs a command in ``endpoint``'s namespace. nsenter, not ``ip netns
    exec`` or ``ip -n``: those also remount /sys, which costs much time under TCG."""
    return f"nsenter --net=/run/netns/{_kernel_ns(endpoint)}"


def kernel_script(mode: str, flag: str, probes: tuple[Probe, ...] = PROBES) -> str:
    """The guest script for one combination: topology, then every probe."""
    lines = ["kill $(cat /tmp/conf-holders 2>/dev/null) 2>/dev/null; : > /tmp/conf-holders",
             "for n in ns1 ns2 ns3 out; do ip netns del $n 2>/dev/null; done",
             "ip link del mst0 2>/dev/null",
             "set -e",
             "ip netns add out",
             "ip netns exec out sh -c 'for f in /proc/sys/net/ipv6/conf/*/accept_dad; do echo 0 > $f; done'",
             "ip link add mst0 type veth peer name out0 netns out",
             f"ip addr add {HOST4}/{PREFIX4} dev mst0",
             f"ip addr add {HOST6}/{PREFIX6} dev mst0 nodad",
             "ip link set mst0 up",
             "ip -n out link set lo up",
             "ip -n out link set out0 up",
             f"ip -n out addr add {ADDR4['out']}/{PREFIX4} dev out0",
             f"ip -n out addr add {ADDR6['out']}/{PREFIX6} dev out0 nodad"]
    for s in SLAVES:
        lines += [f"ip netns add n{s}",
                  f"ip netns exec n{s} sh -c '{PREPARE}'",
                  f"ip link add link mst0 name {s} type ipvlan mode {mode} {flag}",
                  f"ip link set {s} netns n{s}",
                  f"ip -n n{s} link set lo up",
                  f"ip -n n{s} link set {s} up",
                  f"ip -n n{s} addr add {ADDR4[s]}/{PREFIX4} dev {s}",
                  f"ip -n n{s} addr add {ADDR6[s]}/{PREFIX6} dev {s} nodad"]
    lines += [_kernel_exec(e, PREPARE) for e in ("host", "out")]
    # A process in each namespace, so one cat of /proc/PID/net/* reads every endpoint's counters.
    for e in ENDPOINTS:
        if e != "host":
            lines += [f"{_kernel_enter(e)} sleep 100000 >/dev/null 2>&1 &",
                      f"P_{e}=$!", f"echo $P_{e} >> /tmp/conf-holders"]
    lines += ["P_host=1", "set +e"]
    for p in probes:
        lines += _kernel_snap("B", p)
        if p.down:
            lines.append(f"ip -n {_kernel_ns(p.down)} link set {p.down} down")
        if p.pre:
            lines.append(_kernel_exec(p.at, _fill(p.pre, KERNEL_IF[p.at])) + " >/dev/null")
        lines += [f"echo '@@P {p.id}'", _kernel_exec(p.sender, _fill(p.cmd, KERNEL_IF[p.sender]))]
        if p.post:
            lines.append(_kernel_exec(p.at, _fill(p.post, KERNEL_IF[p.at])) + " >/dev/null")
        if p.down:
            lines.append(f"ip -n {_kernel_ns(p.down)} link set {p.down} up")
        lines += _kernel_snap("A", p)
    return "\n".join(lines) + "\n"


def _kernel_snap(phase: str, p: Probe) -> list[str]:
    """Counters of every endpoint in one cat (and, before a probe, empty neighbour caches)."""
    out = [f"{_kernel_enter(e)} ip neigh flush all" if e != "host" else "ip neigh flush all"
           for e in ENDPOINTS] if phase == "B" else []
    files = " ".join(f"/proc/$P_{e}/net/snmp /proc/$P_{e}/net/snmp6" for e in ENDPOINTS)
    return [*out, f"echo '@@{phase} {p.id}'", f"cat {files}"]


def parse_kernel_output(text: str, probes: tuple[Probe, ...] = PROBES) -> Observations:
    """Split the script's output at its ``@@`` markers and make the observations."""
    sections: dict[tuple[str, ...], list[str]] = {}
    key: tuple[str, ...] | None = None
    for line in text.splitlines():
        if line.startswith("@@"):
            key = tuple(line[2:].split())
            sections[key] = []
        elif key is not None:
            sections[key].append(line)
    result: Observations = {}
    for p in probes:
        try:
            before = _split_counters(sections[("B", p.id)])
            after = _split_counters(sections[("A", p.id)])
            output = "\n".join(sections[("P", p.id)])
        except (KeyError, ValueError) as exc:
            raise RuntimeError(f"kernel guest: no result for probe {p.id} ({exc}); output:\n{text[-3000:]}") from exc
        result[p.id] = observe(p, output, before, after)
    return result


def _split_counters(lines: list[str]) -> dict[str, dict[str, int]]:
    """Every endpoint's counters from one cat of their snmp and snmp6 files, in ENDPOINTS order."""
    starts = [i for i, ln in enumerate(lines) if ln.startswith("Ip: Forwarding")]
    if len(starts) != len(ENDPOINTS):
        raise ValueError(f"{len(starts)} counter blocks for {len(ENDPOINTS)} endpoints")
    bounds = [*starts, len(lines)]
    return {e: parse_counters("\n".join(lines[bounds[i]:bounds[i + 1]])) for i, e in enumerate(ENDPOINTS)}


class KernelNet:
    """The kernel's IPvlan in one TCG guest (booted by ``start``, reused for every combination)."""

    def __init__(self, workdir: Path) -> None:
        self.guest = Guest("kernel-ref", workdir, vhost_socket=None, mem_mb=384)
        self.lock = threading.Lock()

    def start(self) -> None:
        self.guest.start()
        self.guest.wait_ready(300)

    def run(self, mode: str, flag: str) -> Observations:
        with self.lock:
            rc, out = self.guest.run(kernel_script(mode, flag), timeout=600)
        if rc != 0:
            raise RuntimeError(f"kernel guest: {mode} {flag} setup failed (rc {rc}):\n{out[-3000:]}")
        return parse_kernel_output(out)

    def stop(self) -> None:
        self.guest.stop()


# ----------------------------------------------------------- vhost-ipvlan

def qmp(path: Path, command: str, arguments: dict[str, object], timeout: float = 30) -> object:
    """One QMP command on a fresh connection; its ``return`` value (a QMP error raises)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        f = sock.makefile("rwb")
        json.loads(f.readline())  # greeting
        answer: dict[str, object] = {}
        for req in ({"execute": "qmp_capabilities"}, {"execute": command, "arguments": arguments}):
            f.write(json.dumps(req).encode() + b"\n")
            f.flush()
            while True:
                answer = json.loads(f.readline())
                if "return" in answer or "error" in answer:
                    break  # skip events
            if "error" in answer:
                raise RuntimeError(f"QMP {req['execute']}: {answer['error']}")
        return answer["return"]


class DaemonNet:
    """vhost-ipvlan with three QEMU guests, switched between combinations at run time."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        specs = [SlaveSpec(s, [f"{ADDR4[s]}/{PREFIX4}", f"{ADDR6[s]}/{PREFIX6}"], mac=MACS[s]) for s in SLAVES]
        self.lab = Lab(workdir, specs, master_ipv6=True, master_addresses=(f"{HOST4}/{PREFIX4}", f"{HOST6}/{PREFIX6}"))
        self.guests = {s: Guest(f"conf-{s}", workdir, vhost_socket=self.lab.sock(s), mac=MACS[s],
                                ip4=f"{ADDR4[s]}/{PREFIX4}", ip6=f"{ADDR6[s]}/{PREFIX6}") for s in SLAVES}
        self.ifname = {**dict.fromkeys(SLAVES, "eth0"), "host": MASTER, "out": "vio0"}
        self.mode, self.flag = "l2", "bridge"
        self.pool = ThreadPoolExecutor(max_workers=len(ENDPOINTS))

    def start(self) -> None:
        self.lab.__enter__()
        for g in self.guests.values():
            g.start()
        for g in self.guests.values():
            g.wait_ready(300)
        for e in ENDPOINTS:
            self.exec(e, PREPARE)

    def exec(self, endpoint: str, cmd: str, timeout: float = 60) -> str:
        if endpoint in self.guests:
            return self.guests[endpoint].run(cmd, timeout=timeout)[1]
        ns = self.lab.host if endpoint == "host" else self.lab.out
        proc = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", cmd], capture_output=True, text=True,
                              timeout=timeout, check=False)
        return proc.stdout + proc.stderr

    def _snap(self) -> dict[str, dict[str, int]]:
        texts = self.pool.map(lambda e: self.exec(e, COUNTERS_CMD), ENDPOINTS)
        return {e: parse_counters(t) for e, t in zip(ENDPOINTS, texts, strict=True)}

    def switch(self, mode: str, flag: str) -> None:
        """Make the port ``mode``/``flag``; wait until every guest is connected again."""
        if (mode, flag) == (self.mode, self.flag):
            return
        ups = {s: self.lab.log_text().count(f"slave {s}: up") for s in SLAVES}
        try:
            with Client(self.lab.control) as c:
                c.call("port.change", {"master": MASTER, "mode": mode, "flag": flag})
        except RemoteError as exc:
            raise Refused(str(exc)) from exc
        self.mode, self.flag = mode, flag
        for s in SLAVES:
            self.lab.wait_log(f"slave {s}: up", ups[s], timeout=120)

    def set_link(self, slave: str, up: bool) -> None:
        """QMP ``set_link`` on the guest's NIC; wait until the daemon has the slave down or up."""
        word = "up" if up else "down"
        seen = self.lab.log_text().count(f"slave {slave}: {word}")
        qmp(self.guests[slave].qmp_socket, "set_link", {"name": "n0", "up": up})
        self.lab.wait_log(f"slave {slave}: {word}", seen, timeout=60)

    def run(self, mode: str, flag: str) -> Observations:
        self.switch(mode, flag)
        result: Observations = {}
        before = self._snap()
        for p in PROBES:
            if p.down:
                self.set_link(p.down, False)
            if p.pre:
                self.exec(p.at, _fill(p.pre, self.ifname[p.at]))
            output = self.exec(p.sender, _fill(p.cmd, self.ifname[p.sender]))
            if p.post:
                self.exec(p.at, _fill(p.post, self.ifname[p.at]))
            if p.down:
                self.set_link(p.down, True)
            after = self._snap()
            result[p.id] = observe(p, output, before, after)
            before = after
        return result

    def stop(self) -> None:
        self.pool.shutdown()
        errors: list[BaseException] = []
        stops: list[Callable[[], None]] = [g.stop for g in self.guests.values()]
        stops.append(lambda: self.lab.__exit__(None, None, None))
        for stop in stops:
            try:
                stop()
            except Exception as exc:  # keep tearing down
                errors.append(exc)
        if errors:
            raise errors[0]
