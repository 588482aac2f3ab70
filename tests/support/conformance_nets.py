"""The two networks the conformance scenarios run on, with one interface.

``KernelNet``: the kernel's own IPvlan, inside ONE tiny TCG guest (its kernel has
ipvlan.ko). In the guest the root namespace is the host (it holds the master
``mst0``), ``mst0`` is a veth whose peer ``out0`` sits in namespace ``out`` (the
outside host), and the slaves ``s1..s3`` are ipvlan devices on ``mst0`` moved into
namespaces ``ns1..ns3``. One combination = one shell script sent to the guest: it
rebuilds the namespaces with the mode and flag, then runs every probe. The outside's
end of the veth is the one port of a bridge ``br0`` (``scenarios``: hairpin on/off).

``DaemonNet``: vhost-ipvlan. The real daemon on a veth master in a host namespace
(``tests/support/lab.py``: master ``vim0`` = host, peer ``vio0`` in namespace = outside,
made the port of a bridge ``br0`` there), three tiny QEMU guests as slaves ``s1..s3``.
The guests boot once; a combination is switched at run time through the control API
(``port.change``: the slaves are re-created and the guests reconnect). A combination the daemon refuses raises
``Refused`` with the daemon's message.

Both count non-IP frames with the tiny image's ``rawpkt listen`` at every endpoint
(the kernel guest and the QEMU guests run it from the image; the test host runs the
same static binary, kept next to the image, in its namespaces).

``run(mode, flag) -> Observations`` is the shared interface.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from vhost_ipvlan.control.client import Client
from vhost_ipvlan.errors import RemoteError

from .guest import Guest, tiny_image
from .lab import MASTER, Lab, SlaveSpec
from .scenarios import (
    ADDR4,
    ADDR6,
    COUNTERS_CMD,
    ENDPOINTS,
    ETHERTYPE,
    HOST4,
    HOST6,
    MACS,
    PREFIX4,
    PREFIX6,
    PROBES,
    SLAVES,
    Observations,
    Probe,
    fill,
    next_combo,
    observe,
    parse_counters,
)
from .wait import wait_until

# Per endpoint, once per topology: answer broadcast/multicast echoes, no DAD, keep
# addresses over a link down (the down-slave probe brings the link back up).
PREPARE = ("echo 0 > /proc/sys/net/ipv4/icmp_echo_ignore_broadcasts; "
           "for f in /proc/sys/net/ipv6/conf/*/accept_dad; do echo 0 > $f; done; "
           "for f in /proc/sys/net/ipv6/conf/*/keep_addr_on_down; do echo 1 > $f; done")


class Refused(Exception):
    """The back-end does not run this mode and flag (the daemon's message)."""


class Net(Protocol):
    def run(self, mode: str, flag: str, probes: tuple[Probe, ...] = PROBES) -> Observations: ...


# The outside's bridge: one port (the veth end), no STP delay, no multicast snooping (it
# would filter the IPv6 multicast a plain wire carries).
BRIDGE = "br0"
BRIDGE_ARGS = "type bridge forward_delay 0 mcast_snooping 0"
_LINK_LOCAL = re.compile(r"inet6 (fe80::[0-9a-f:]+)/")


# ----------------------------------------------------------------- the kernel

KERNEL_IF = {"s1": "s1", "s2": "s2", "s3": "s3", "host": "mst0", "out": BRIDGE}
KERNEL_MAC = {"host": "02:00:00:00:00:02", "out": "02:00:00:00:00:01"}


def _kernel_names(endpoint: str) -> dict[str, str]:
    """A probe command's placeholders at ``endpoint``; s1's link-local is read into $LL_s1 by the
    script (it depends on the kernel's dev_id), the command quotes it out of its single quotes."""
    return {"if": KERNEL_IF[endpoint], "mac:host": KERNEL_MAC["host"], "mac:out": KERNEL_MAC["out"],
            "ll:s1": "'\"$LL_s1\"'"}


def _kernel_exec(endpoint: str, cmd: str) -> str:
    """A shell line running ``cmd`` at ``endpoint`` inside the kernel guest."""
    assert "'" not in cmd, cmd
    cmd = fill(cmd, _kernel_names(endpoint))
    if endpoint == "host":
        return f"sh -c '{cmd}' 2>&1"
    return f"{_kernel_enter(endpoint)} sh -c '{cmd}' 2>&1"


def _kernel_ns(endpoint: str) -> str:
    return "out" if endpoint == "out" else f"n{endpoint}"


def _kernel_enter(endpoint: str) -> str:
    """The prefix that runs a command in ``endpoint``'s namespace. nsenter, not ``ip netns
    exec`` or ``ip -n``: those also remount /sys, which costs much time under TCG."""
    return f"nsenter --net=/run/netns/{_kernel_ns(endpoint)}"


def _kernel_setup(mode: str, flag: str) -> list[str]:
    """The topology for one combination, every endpoint's holder and raw frame counter."""
    lines = ["kill $(cat /tmp/conf-holders 2>/dev/null) 2>/dev/null; : > /tmp/conf-holders; rm -f /tmp/raw-*",
             "for n in ns1 ns2 ns3 out; do ip netns del $n 2>/dev/null; done",
             "ip link del mst0 2>/dev/null",
             "echo 0 > /proc/sys/net/ipv4/ip_forward",
             "set -e",
             "ip netns add out",
             "ip netns exec out sh -c 'for f in /proc/sys/net/ipv6/conf/*/accept_dad; do echo 0 > $f; done'",
             f"ip link add mst0 address {KERNEL_MAC['host']} type veth peer name out0 netns out",
             f"ip addr add {HOST4}/{PREFIX4} dev mst0",
             f"ip addr add {HOST6}/{PREFIX6} dev mst0 nodad",
             "ip link set mst0 up",
             "ip -n out link set lo up",
             f"ip -n out link add {BRIDGE} address {KERNEL_MAC['out']} {BRIDGE_ARGS}",
             f"ip -n out link set out0 master {BRIDGE}",
             "ip -n out link set out0 up",
             f"ip -n out link set {BRIDGE} up",
             f"ip -n out addr add {ADDR4['out']}/{PREFIX4} dev {BRIDGE}",
             f"ip -n out addr add {ADDR6['out']}/{PREFIX6} dev {BRIDGE} nodad"]
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
    lines.append("LL_s1=$(nsenter --net=/run/netns/ns1 ip -6 -o addr show dev s1 scope link | "
                 "sed -n 's/.*inet6 \\(fe80::[0-9a-f:]*\\)\\/.*/\\1/p')")
    # A process in each namespace, so one cat of /proc/PID/net/* reads every endpoint's counters.
    for e in ENDPOINTS:
        enter = "" if e == "host" else f"{_kernel_enter(e)} "
        lines += [f"{enter}rawpkt listen {KERNEL_IF[e]} {ETHERTYPE} /tmp/raw-{e} >/dev/null 2>&1 &",
                  "echo $! >> /tmp/conf-holders"]
        if e != "host":
            lines += [f"{enter}sleep 100000 >/dev/null 2>&1 &",
                      f"P_{e}=$!", f"echo $P_{e} >> /tmp/conf-holders"]
    lines += ["P_host=1", "set +e", _kernel_snap_function(),
              "i=0; while [ $(ls /tmp/raw-* 2>/dev/null | wc -l) -lt 5 ] && [ $i -lt 100 ]; do sleep 0.1; "
              "i=$((i+1)); done"]
    return lines


def kernel_script(mode: str, flag: str, probes: tuple[Probe, ...] = PROBES) -> str:
    """The guest script for one combination: topology, then every probe."""
    lines = _kernel_setup(mode, flag)
    combo = f"{mode}-{flag}"
    port, hairpin = combo, False
    for p in probes:
        want = next_combo(combo) if p.port else combo
        if want != port:
            lines.append(f"{_kernel_enter('s1')} ip link set dev s1 type ipvlan mode {' '.join(want.split('-'))}")
            port = want
        if p.hairpin != hairpin:
            hairpin = p.hairpin
            lines.append(f"{_kernel_enter('out')} ip link set dev out0 type bridge_slave "
                         f"hairpin {'on' if hairpin else 'off'}")
        lines += _kernel_snap("B", p)
        if p.down:
            lines.append(f"ip -n {_kernel_ns(p.down)} link set {p.down} down")
        for at, cmd in p.pre:
            lines.append(_kernel_exec(at, cmd) + " >/dev/null")
        lines += [f"echo '@@P {p.id}'", _kernel_exec(p.sender, p.cmd)]
        for at, cmd in p.post:
            lines.append(_kernel_exec(at, cmd) + " >/dev/null")
        if p.down:
            lines.append(f"ip -n {_kernel_ns(p.down)} link set {p.down} up")
        lines += _kernel_snap("A", p)
    return "\n".join(lines) + "\n"


def _kernel_snap(phase: str, p: Probe) -> list[str]:
    """Counters of every endpoint (and, before a probe, empty neighbour caches): ``snap``."""
    return [f"snap {phase} {p.id}"]


def _kernel_snap_function() -> str:
    """``snap PHASE ID``: (before a probe: flush every neighbour cache,) a marker, every
    endpoint's counters in one cat. A shell function keeps the script under the command
    channel's size limit."""
    flush = "; ".join(f"{_kernel_enter(e)} ip neigh flush all" if e != "host" else "ip neigh flush all"
                      for e in ENDPOINTS)
    files = " ".join(f"/proc/$P_{e}/net/snmp /proc/$P_{e}/net/snmp6 /tmp/raw-{e}" for e in ENDPOINTS)
    return f'snap() {{ if [ "$1" = B ]; then {flush}; fi; echo "@@$1 $2"; cat {files}; }}'


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

    def run(self, mode: str, flag: str, probes: tuple[Probe, ...] = PROBES) -> Observations:
        with self.lock:
            rc, out = self.guest.run(kernel_script(mode, flag, probes), timeout=600)
        if rc != 0:
            raise RuntimeError(f"kernel guest: {mode} {flag} setup failed (rc {rc}):\n{out[-3000:]}")
        return parse_kernel_output(out, probes)

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
        self.ifname = {**dict.fromkeys(SLAVES, "eth0"), "host": MASTER, "out": BRIDGE}
        self.raw = {**dict.fromkeys(SLAVES, "/tmp/rawin"), "host": str(workdir / "rawin-host"),
                    "out": str(workdir / "rawin-out")}
        self.names: dict[str, str] = {}
        self.listeners: list[subprocess.Popen[bytes]] = []
        self.mode, self.flag = "l2", "bridge"
        self.hairpin = False
        self.pool = ThreadPoolExecutor(max_workers=len(ENDPOINTS))

    def start(self) -> None:
        self.lab.__enter__()
        for g in self.guests.values():
            g.start()
        for g in self.guests.values():
            g.wait_ready(300)
        for e in ENDPOINTS:
            self.exec(e, PREPARE)
        self._outside_bridge()
        self._listen()
        link_local = _LINK_LOCAL.search(self.exec("s1", "ip -6 -o addr show dev eth0 scope link"))
        if link_local is None:
            raise RuntimeError("guest s1 has no IPv6 link-local address")
        self.names = {"mac:host": self.lab.master_mac, "mac:out": self.lab.out_mac, "ll:s1": link_local.group(1)}

    def _outside_bridge(self) -> None:
        """Make vio0 the one port of a bridge that takes over the outside's addresses (and MAC)."""
        self.exec("out", f"ip addr flush dev vio0 && ip link add {BRIDGE} address {self.lab.out_mac} {BRIDGE_ARGS} "
                         f"&& ip link set vio0 master {BRIDGE} && ip link set {BRIDGE} up "
                         f"&& ip addr add {ADDR4['out']}/{PREFIX4} dev {BRIDGE} "
                         f"&& ip addr add {ADDR6['out']}/{PREFIX6} dev {BRIDGE} nodad && echo bridged",
                  check="bridged")

    def _listen(self) -> None:
        """``rawpkt listen`` at every endpoint; wait until each has written its first count."""
        for s in SLAVES:
            self.exec(s, f"rawpkt listen eth0 {ETHERTYPE} {self.raw[s]} >/dev/null 2>&1 &")
        rawpkt = tiny_image().directory / "rawpkt"
        if not rawpkt.is_file():
            raise RuntimeError(f"{rawpkt} missing: rebuild the tiny image (vm-images/build-tiny.sh)")
        for e, ns in (("host", self.lab.host), ("out", self.lab.out)):
            self.listeners.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, str(rawpkt), "listen", self.ifname[e], ETHERTYPE, self.raw[e]],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_until(lambda: all("RawIn" in self.exec(e, f"cat {self.raw[e]}") for e in ENDPOINTS), 60,
                   interval=0.5, what="rawpkt listen at every endpoint")

    def exec(self, endpoint: str, cmd: str, timeout: float = 60, check: str = "") -> str:
        """Run ``cmd`` at ``endpoint``; its output (``check``: a word the output must contain)."""
        if endpoint in self.guests:
            out = self.guests[endpoint].run(cmd, timeout=timeout)[1]
        else:
            ns = self.lab.host if endpoint == "host" else self.lab.out
            proc = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", cmd], capture_output=True, text=True,
                                  timeout=timeout, check=False)
            out = proc.stdout + proc.stderr
        if check and check not in out:
            raise RuntimeError(f"{endpoint}: {cmd!r} failed: {out[-1000:]}")
        return out

    def at(self, endpoint: str, cmd: str) -> str:
        """A probe's command (placeholders filled in) run at ``endpoint``."""
        return self.exec(endpoint, fill(cmd, {**self.names, "if": self.ifname[endpoint]}))

    def _snap(self) -> dict[str, dict[str, int]]:
        texts = self.pool.map(lambda e: self.exec(e, COUNTERS_CMD.format(raw=self.raw[e])), ENDPOINTS)
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

    def set_hairpin(self, on: bool) -> None:
        """The outside's bridge port reflects frames back (on) or is a plain wire (off)."""
        if on != self.hairpin:
            self.exec("out", f"ip link set dev vio0 type bridge_slave hairpin {'on' if on else 'off'} && echo ok",
                      check="ok")
            self.hairpin = on

    def set_link(self, slave: str, up: bool) -> None:
        """QMP ``set_link`` on the guest's NIC; wait until the daemon has the slave down or up."""
        word = "up" if up else "down"
        seen = self.lab.log_text().count(f"slave {slave}: {word}")
        qmp(self.guests[slave].qmp_socket, "set_link", {"name": "n0", "up": up})
        self.lab.wait_log(f"slave {slave}: {word}", seen, timeout=60)

    def run(self, mode: str, flag: str, probes: tuple[Probe, ...] = PROBES) -> Observations:
        combo = f"{mode}-{flag}"
        self.switch(mode, flag)
        result: Observations = {}
        before = self._snap()
        for p in probes:
            port = next_combo(combo) if p.port else combo
            if port != f"{self.mode}-{self.flag}":
                self.switch(*port.split("-"))
                before = self._snap()
            self.set_hairpin(p.hairpin)
            if p.down:
                self.set_link(p.down, False)
            for at, cmd in p.pre:
                self.at(at, cmd)
            output = self.at(p.sender, p.cmd)
            for at, cmd in p.post:
                self.at(at, cmd)
            if p.down:
                self.set_link(p.down, True)
            after = self._snap()
            result[p.id] = observe(p, output, before, after)
            before = after
        self.set_hairpin(False)
        self.switch(mode, flag)
        return result

    def stop(self) -> None:
        self.pool.shutdown()
        errors: list[BaseException] = []
        stops: list[Callable[[], None]] = [g.stop for g in self.guests.values()]
        stops += [lis.kill for lis in self.listeners]
        stops.append(lambda: self.lab.__exit__(None, None, None))
        for stop in stops:
            try:
                stop()
            except Exception as exc:  # keep tearing down
                errors.append(exc)
        for lis in self.listeners:
            lis.wait(timeout=10)
        if errors:
            raise errors[0]
