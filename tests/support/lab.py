"""A test lab: a veth master in its own namespace, an outside host, the real daemon.

    guests (vhost-user) --- vhost-ipvlan --- vim0 (ns host) <== veth ==> vio0 (ns out)

``Lab(tmp, slaves)`` builds it (``with`` tears everything down, also on failure):
two uniquely named network namespaces, the veth pair, the outside host's
addresses (192.0.2.1/24, 2001:db8::1/64), a config file for the slaves given,
and the daemon running inside the host namespace, with its state file
(``state``) and control socket (``control``) in ``tmp``. The sockets are paths, so
guests started outside the namespaces connect to them.

``ipv6=False`` turns IPv6 off on both ends of the veth (and gives the outside host
no IPv6 address): no ND/MLD multicast from either kernel, which a bridge-mode
master would hand to every slave as noise for tests that count frames.
``master_ipv6=False`` (the default) turns it off on the master only. ``cpus`` pins
the daemon with ``taskset -c CPUS``. ``daemon_args`` are added to ``serve``'s
command line, ``daemon_env`` to its environment, and ``config_head`` (TOML, e.g.
a ``[daemon]`` table) goes at the top of the config file. ``mode`` and ``flag`` are
the port's (``l2``/``l3``/``l3s``; ``bridge``/``private``/``vepa``);
``master_addresses`` are given to the master (the host's own addresses).
``command`` replaces ``python -m vhost_ipvlan.cli`` (an installed ``/usr/bin/vhost-ipvlan``,
run with the environment less ``PYTHONPATH``: it must not import the checkout), and
``config_file`` is served as it is instead of a file written for ``slaves`` (which
should then be empty: slaves come through the control socket).

On the outside: ``wire_counter``/``wire_count`` count frames arriving at vio0 (an
nftables netdev ingress chain per counter), ``hairpin`` makes vio0 the only port of
a bridge with ``hairpin on`` (a reflective relay), ``send_from_outside`` writes raw
frames to vio0.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from scapy.layers.l2 import Ether
from scapy.packet import Packet

from .frontend import FakeFrontend
from .proc import stop_process
from .wait import wait_until

OUT_IP, OUT_IP6 = "192.0.2.1", "2001:db8::1"
MASTER = "vim0"


def sh(*argv: str, timeout: float = 30) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=timeout).stdout


@dataclass
class SlaveSpec:
    name: str
    addresses: list[str]
    mac: str | None = None
    socket_mode: str = "server"
    #: more keys of the slave's table (strings, numbers, booleans), e.g. {"learn": True}
    extra: dict[str, Any] = field(default_factory=dict)


class DaemonError(RuntimeError):
    """vhost-ipvlan exited."""


class Lab:
    def __init__(
        self,
        tmp: Path,
        slaves: list[SlaveSpec],
        *,
        master_ipv6: bool = False,
        ipv6: bool = True,
        cpus: str | None = None,
        pure_python: bool = False,
        daemon_args: list[str] | None = None,
        daemon_env: dict[str, str] | None = None,
        config_head: str = "",
        mode: str = "l2",
        flag: str = "bridge",
        master_addresses: tuple[str, ...] = (),
        command: list[str] | None = None,
        config_file: Path | None = None,
    ) -> None:
        tag = secrets.token_hex(3)
        self.host, self.out = f"vi-h-{tag}", f"vi-o-{tag}"
        self.tmp = tmp
        self.slaves = slaves
        self.master_ipv6 = master_ipv6
        self.ipv6 = ipv6
        self.cpus = cpus
        self.pure_python = pure_python  # run the daemon without its C accelerator
        self.daemon_args = daemon_args or []
        self.daemon_env = {**(daemon_env or {}), **({"VHOST_IPVLAN_PURE": "1"} if pure_python else {})}
        self.config_head = config_head
        self.mode = mode
        self.flag = flag
        self.master_addresses = master_addresses
        self.daemon: subprocess.Popen[bytes] | None = None
        self.log = tmp / "daemon.log"
        self.command = command
        self.config = config_file or tmp / "vhost-ipvlan.toml"
        self.write_config = config_file is None
        self.state = tmp / "state.toml"
        self.control = tmp / "control.sock"
        self.master_mac = self.out_mac = ""

    def __enter__(self) -> Self:
        try:
            self.build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.teardown()

    def sock(self, name: str) -> Path:
        return self.tmp / f"{name}.sock"

    def config_text(self) -> str:
        lines = [self.config_head, *self.port_lines(MASTER, self.slaves)]
        return "\n".join(lines) + "\n"

    def port_lines(self, master: str, slaves: list[SlaveSpec]) -> list[str]:
        """The config file's ``[[port]]`` table for ``master`` (the lab's mode and flag) with ``slaves``."""
        lines = ["[[port]]", f'master = "{master}"', f'mode = "{self.mode}"', f'flag = "{self.flag}"']
        for s in slaves:
            lines += ["[[port.slave]]", f'name = "{s.name}"', f'socket = "{self.sock(s.name)}"',
                      f'socket_mode = "{s.socket_mode}"', f"addresses = {json.dumps(s.addresses)}"]
            if s.mac:
                lines.append(f'mac = "{s.mac}"')
            lines += [f"{k} = {json.dumps(v)}" for k, v in s.extra.items()]  # strings, lists, numbers
        return lines

    def build(self) -> None:
        sh("ip", "netns", "add", self.host)
        sh("ip", "netns", "add", self.out)
        if not self.ipv6:  # before the veth exists: its ends inherit "default"
            for ns in (self.host, self.out):
                for key in ("all", "default"):
                    sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")
        sh("ip", "link", "add", MASTER, "netns", self.host, "type", "veth", "peer", "name", "vio0",
           "netns", self.out)
        for ns, dev in ((self.host, MASTER), (self.out, "vio0")):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.accept_dad=0")
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        if not self.master_ipv6:
            sh("ip", "netns", "exec", self.host, "sysctl", "-qw", f"net.ipv6.conf.{MASTER}.disable_ipv6=1")
        sh("ip", "-n", self.out, "addr", "add", f"{OUT_IP}/24", "dev", "vio0")
        if self.ipv6:
            sh("ip", "-n", self.out, "addr", "add", f"{OUT_IP6}/64", "dev", "vio0", "nodad")
        for a in self.master_addresses:
            sh("ip", "-n", self.host, "addr", "add", a, "dev", MASTER, *(["nodad"] if ":" in a else []))
        self.master_mac = self.read_sys(self.host, MASTER, "address")
        self.out_mac = self.read_sys(self.out, "vio0", "address")
        self.build_more()
        if self.write_config:
            self.config.write_text(self.config_text())
        self.start_daemon()

    def build_more(self) -> None:
        """A subclass's own links, made after the namespaces and veth, before the daemon starts."""

    def start_daemon(self) -> None:
        pin = ["taskset", "-c", self.cpus] if self.cpus is not None else []
        env = {**os.environ, **self.daemon_env}
        if self.command is not None:
            env.pop("PYTHONPATH", None)
        self.daemon = subprocess.Popen(
            ["ip", "netns", "exec", self.host, *pin, *(self.command or [sys.executable, "-m", "vhost_ipvlan.cli"]),
             "serve", "--config", str(self.config), "--state", str(self.state), "--control", str(self.control),
             "--log-level", "debug", *self.daemon_args],
            stdout=subprocess.DEVNULL, stderr=self.log.open("ab"), env=env,
        )
        ready = self.log_text().count("ready:")
        wait_until(lambda: self.log_text().count("ready:") > ready or self.daemon_exited(), 30,
                   what="daemon ready")
        self.check_daemon()

    def read_sys(self, ns: str, dev: str, attr: str) -> str:
        return sh("ip", "netns", "exec", ns, "cat", f"/sys/class/net/{dev}/{attr}").strip()

    def log_text(self) -> str:
        try:
            return self.log.read_text()
        except FileNotFoundError:
            return ""

    def daemon_exited(self) -> bool:
        return self.daemon is not None and self.daemon.poll() is not None

    def check_daemon(self) -> None:
        """Raise DaemonError, with the daemon's log, if it has exited."""
        if self.daemon_exited():
            assert self.daemon is not None
            raise DaemonError(f"vhost-ipvlan exited with status {self.daemon.returncode}; "
                              f"log {self.log}:\n{self.log_text()}")

    def wait_log(self, needle: str, count: int, timeout: float = 10) -> None:
        """Wait until ``needle`` occurs more than ``count`` times in the daemon's log."""
        wait_until(lambda: self.log_text().count(needle) > count, timeout, what=f"log: {needle!r}")

    def out_run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.out, *argv], capture_output=True, text=True,
                              timeout=timeout)

    def wire_counter(self, match: str, name: str = "c") -> None:
        """Count frames arriving at the outside host (vio0 ingress) that match ``match``
        (an nftables expression), in a chain of its own called ``name``."""
        chain = f"type filter hook ingress device vio0 priority 0; {match} counter;"
        sh("ip", "netns", "exec", self.out, "nft", f"table netdev vt {{ chain {name} {{ {chain} }}; }}")

    def wire_count(self, name: str = "c") -> int:
        data = json.loads(sh("ip", "netns", "exec", self.out, "nft", "-j", "list", "chain", "netdev", "vt", name))
        return sum(e["counter"]["packets"] for item in data["nftables"] if "rule" in item
                   for e in item["rule"]["expr"] if "counter" in e)

    def hairpin(self) -> None:
        """Make the outside a reflective relay: vio0 the only port of a hairpinning bridge."""
        for argv in (["link", "add", "vbr0", "type", "bridge", "stp_state", "0"],
                     ["link", "set", "vio0", "master", "vbr0"],
                     ["link", "set", "dev", "vio0", "type", "bridge_slave", "hairpin", "on"],
                     ["link", "set", "vbr0", "up"]):
            sh("ip", "-n", self.out, *argv)

    def send_from_outside(self, *frames: Packet) -> None:
        code = ("import socket,sys\ns=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\ns.bind(('vio0',0))\n"
                "for h in sys.argv[1:]: s.send(bytes.fromhex(h))\n")
        proc = self.out_run(sys.executable, "-c", code, *(bytes(f).hex() for f in frames))
        assert proc.returncode == 0, proc.stderr

    def stats(self) -> dict[str, Any]:
        """The daemon's counters: SIGUSR1, then the JSON of the ``stats {...}`` log line."""
        assert self.daemon is not None
        self.check_daemon()
        before = self.log_text().count(" stats ")
        os.kill(self.daemon.pid, signal.SIGUSR1)
        wait_until(lambda: self.log_text().count(" stats ") > before or self.daemon_exited(), 10,
                   what="log: ' stats '")
        self.check_daemon()
        line = [ln for ln in self.log_text().splitlines() if " stats " in ln][-1]
        data: dict[str, Any] = json.loads(line.split(" stats ", 1)[1])
        return data

    def slave_stats(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.stats()[MASTER]["slaves"][name]
        return result

    def stop_daemon(self) -> None:
        if self.daemon is not None:
            stop_process(self.daemon, 10)

    def teardown(self) -> None:
        self.stop_daemon()
        for ns in (self.host, self.out):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class FrontendLab(Lab):
    """A lab whose guests are fake front-ends (``tests/support/frontend.py``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frontends: list[FakeFrontend] = []

    def frontend(self, name: str, queues: int = 1, features: int | None = None) -> FakeFrontend:
        """Connect a fake front-end (``queues`` pairs, all enabled) to slave ``name`` and wait
        until the daemon has it up with every pair enabled ("up" is logged at the first
        enabled RX ring: ``sync`` waits for the rest of the set-up)."""
        ups = self.log_text().count(f"slave {name}: up")
        fe = FakeFrontend(features, queues=queues)
        self.frontends.append(fe)
        fe.connect(str(self.sock(name)))
        fe.setup()
        fe.sync()
        self.wait_log(f"slave {name}: up", ups)
        return fe

    def teardown(self) -> None:
        for fe in self.frontends:
            fe.close()
        super().teardown()


def receive(fe: FakeFrontend, match: Callable[[Packet], bool], what: str, timeout: float = 5) -> Packet:
    """Wait until ``fe`` receives a frame ``match`` accepts; fail listing what came instead."""
    got: list[Packet] = []

    def check() -> Packet | None:
        for _, data in fe.receive():
            pkt = Ether(data)
            got.append(pkt)
            if match(pkt):
                return pkt
        return None

    try:
        found = wait_until(check, timeout, what=what)
    except TimeoutError as e:
        raise AssertionError(f"{e}; received instead: {[p.summary() for p in got]}") from None
    assert found is not None
    return found


def nothing_received(fe: FakeFrontend, match: Callable[[Packet], bool]) -> bool:
    """True if nothing ``fe`` received so far matches."""
    return not any(match(Ether(d)) for _, d in fe.receive())


MASTER2, OUT2, OUT2_IP, MASTER2_IP = "vim1", "vio1", "198.51.100.1", "198.51.100.2"


class TwoPortLab(FrontendLab):
    """The lab with a second master, ``vim1`` (198.51.100.2/24; its peer ``vio1`` in the
    outside namespace, 198.51.100.1/24) and its own port with ``slaves2``; ``[daemon]
    workers = workers``."""

    def __init__(self, tmp: Path, slaves: list[SlaveSpec], slaves2: list[SlaveSpec], *, workers: int = 2,
                 **kwargs: Any) -> None:
        super().__init__(tmp, slaves, config_head=f"[daemon]\nworkers = {workers}\n", **kwargs)
        self.slaves2 = slaves2
        self.out2_mac = ""

    def config_text(self) -> str:
        return super().config_text() + "\n".join(self.port_lines(MASTER2, self.slaves2)) + "\n"

    def build_more(self) -> None:
        sh("ip", "link", "add", MASTER2, "netns", self.host, "type", "veth", "peer", "name", OUT2, "netns", self.out)
        if not self.ipv6:
            sh("ip", "netns", "exec", self.host, "sysctl", "-qw", f"net.ipv6.conf.{MASTER2}.disable_ipv6=1")
            sh("ip", "netns", "exec", self.out, "sysctl", "-qw", f"net.ipv6.conf.{OUT2}.disable_ipv6=1")
        sh("ip", "-n", self.host, "link", "set", MASTER2, "up")
        sh("ip", "-n", self.out, "link", "set", OUT2, "up")
        sh("ip", "-n", self.out, "addr", "add", f"{OUT2_IP}/24", "dev", OUT2)
        sh("ip", "-n", self.host, "addr", "add", f"{MASTER2_IP}/24", "dev", MASTER2)  # a subnet: learning
        self.out2_mac = self.read_sys(self.out, OUT2, "address")
