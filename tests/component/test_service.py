"""Running as a service: readiness notification, socket ownership, SIGHUP, debug trace, metrics.

The daemon runs in the lab's namespace (``tests/support/lab.py``); the metrics
endpoint listens on that namespace's loopback, so it is scraped with ``ip netns exec``.
"""

from __future__ import annotations

import grp
import os
import pwd
import random
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.support import lab as lab_mod
from tests.support.frontend import FakeFrontend
from tests.support.lab import MASTER, SlaveSpec, receive
from tests.support.wait import wait_until

pytestmark = [pytest.mark.netns]

MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
A_IP, B_IP = "192.0.2.10", "192.0.2.11"
SLAVES = [SlaveSpec("a", [f"{A_IP}/24"], MAC_A), SlaveSpec("b", [f"{B_IP}/24"], MAC_B)]


def connect(lab: lab_mod.Lab, name: str) -> FakeFrontend:
    ups = lab.log_text().count(f"slave {name}: up")
    fe = FakeFrontend()
    fe.connect(str(lab.sock(name)))
    fe.setup()
    lab.wait_log(f"slave {name}: up", ups)
    return fe


def test_ready_notification_socket_permissions_and_sighup(tmp_path: Path) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(30)
    try:
        with lab_mod.Lab(tmp_path, SLAVES, ipv6=False, daemon_env={"NOTIFY_SOCKET": str(tmp_path / "notify")}) as lab:
            assert notify.recv(256) == b"READY=1"
            for s in SLAVES:  # every socket listens by then
                st = lab.sock(s.name).stat()
                assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
                kvm = [g.gr_gid for g in grp.getgrall() if g.gr_name == "kvm"]
                assert st.st_gid == (kvm[0] if kvm else 0)
            assert lab.daemon is not None
            os.kill(lab.daemon.pid, signal.SIGHUP)  # ExecReload: must not kill the daemon
            lab.wait_log("reload (SIGHUP)", 0)
            assert not lab.daemon_exited()
            lab.stop_daemon()
            assert notify.recv(256) == b"STOPPING=1"
    finally:
        notify.close()


def test_signals_are_handled_before_ready(tmp_path: Path) -> None:
    """A supervisor may signal the daemon as soon as it says it is ready (SIGUSR1's and
    SIGHUP's default action ends a process). The notify socket's queue is full, so the
    daemon is held in sending READY=1, after its "ready:" line, while it is signalled."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(30)
    filler.setblocking(False)
    try:
        queued = 0
        while True:
            try:
                filler.sendto(b"filler", str(tmp_path / "notify"))
            except BlockingIOError:
                break
            queued += 1
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:  # the queue, not the filler's buffer
            probe.setblocking(False)
            try:
                probe.sendto(b"filler", str(tmp_path / "notify"))
            except BlockingIOError:
                pass
            else:
                pytest.skip(f"the notify socket's queue did not fill ({queued} datagrams; net.unix.max_dgram_qlen)")
        with lab_mod.Lab(tmp_path, SLAVES[:1], ipv6=False,
                         daemon_env={"NOTIFY_SOCKET": str(tmp_path / "notify")}) as lab:
            assert lab.daemon is not None
            os.kill(lab.daemon.pid, signal.SIGUSR1)
            os.kill(lab.daemon.pid, signal.SIGHUP)
            assert [notify.recv(256) for _ in range(queued)] == [b"filler"] * queued
            assert notify.recv(256) == b"READY=1"
            lab.wait_log(" stats ", 0)
            lab.wait_log("reload (SIGHUP)", 0)
            lab.check_daemon()
    finally:
        filler.close()
        notify.close()


def test_socket_owner_group_and_permissions_from_config(tmp_path: Path) -> None:
    head = '[daemon]\nsocket_owner = "nobody"\nsocket_group = "root"\nsocket_permissions = "0600"\n'
    with lab_mod.Lab(tmp_path, SLAVES[:1], ipv6=False, config_head=head) as lab:
        st = lab.sock("a").stat()
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == pwd.getpwnam("nobody").pw_uid and st.st_gid == 0


def test_debug_trace_names_request_and_slave(tmp_path: Path) -> None:
    with lab_mod.Lab(tmp_path, SLAVES[:1], ipv6=False) as lab:
        fe = connect(lab, "a")
        fe.close()
        log = lab.log_text()
        for request in ("GET_FEATURES", "SET_MEM_TABLE", "SET_VRING_KICK"):
            assert f"slave a: <- {request} " in log


def scrape(lab: lab_mod.Lab, port: int) -> dict[str, float]:
    code = f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode())"
    out = subprocess.run(["ip", "netns", "exec", lab.host, sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    samples: dict[str, float] = {}
    for line in out.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return samples


def test_metrics_endpoint(tmp_path: Path) -> None:
    port = random.randint(20000, 60000)  # the namespace is new: every port is free
    with lab_mod.Lab(tmp_path, SLAVES, ipv6=False, daemon_args=["--metrics", f"127.0.0.1:{port}"]) as lab:
        a, b = connect(lab, "a"), connect(lab, "b")
        try:
            a.transmit(bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=A_IP, dst=B_IP) / UDP(dport=7) / b"metrics"))
            receive(b, lambda p: UDP in p and p[UDP].dport == 7, "a->b")
            a.transmit(bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src="192.0.2.99", dst=B_IP) / UDP(dport=8)))
            sa = f'master="{MASTER}",slave="a"'
            sb = f'master="{MASTER}",slave="b"'
            spoof = f'vhost_ipvlan_slave_drops_total{{master="{MASTER}",reason="src_ip_spoof",slave="a"}}'

            def counted() -> dict[str, float] | None:
                s = scrape(lab, port)
                return s if s.get(spoof) == 1 else None

            m = wait_until(counted, 10, what="spoof drop in the metrics")
            stats = lab.stats()[MASTER]["slaves"]
            assert m[f"vhost_ipvlan_slave_transmit_packets_total{{{sa}}}"] == 2 == stats["a"]["tx_packets"]
            assert m[f"vhost_ipvlan_slave_transmit_bytes_total{{{sa}}}"] == stats["a"]["tx_bytes"]
            assert m[f"vhost_ipvlan_slave_receive_packets_total{{{sb}}}"] == stats["b"]["rx_packets"] >= 1
            assert m[f"vhost_ipvlan_slave_receive_bytes_total{{{sb}}}"] == stats["b"]["rx_bytes"]
            assert m[f"vhost_ipvlan_slave_up{{{sa}}}"] == 1 and m[f"vhost_ipvlan_slave_carrier{{{sa}}}"] == 1
            assert m[f'vhost_ipvlan_master_up{{master="{MASTER}"}}'] == 1
            assert m[f'vhost_ipvlan_master_mtu_bytes{{master="{MASTER}"}}'] == 1500
            assert f'vhost_ipvlan_master_transmit_packets_total{{master="{MASTER}"}}' in m
            assert f'vhost_ipvlan_master_receive_packets_total{{master="{MASTER}"}}' in m
        finally:
            a.close()
            b.close()


# In the lab's namespace: hold N idle connections to the metrics port, then scrape.
HOLD = """
import socket, sys, urllib.request
port, n = int(sys.argv[1]), int(sys.argv[2])
idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]
body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=20).read().decode()
print("scraped", "vhost_ipvlan_slave_up" in body, flush=True)
sys.stdin.read()
"""


def test_metrics_idle_connections_are_capped_and_scrapes_still_served(tmp_path: Path) -> None:
    """audit 10 (r15): every idle connection was held 10 s: any local user could starve the daemon of fds."""
    from vhost_ipvlan.daemon.metrics import MAX_CLIENTS

    port = random.randint(20000, 60000)
    with lab_mod.Lab(tmp_path, SLAVES, ipv6=False, daemon_args=["--metrics", f"127.0.0.1:{port}"]) as lab:
        assert lab.daemon is not None
        fds = f"/proc/{lab.daemon.pid}/fd"
        before = len(os.listdir(fds))
        proc = subprocess.Popen(["ip", "netns", "exec", lab.host, sys.executable, "-c", HOLD, str(port),
                                 str(3 * MAX_CLIENTS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().split() == ["scraped", "True"]
            # every idle connection was accepted before the scrape's (FIFO): what is held now is all there is
            assert len(os.listdir(fds)) - before <= MAX_CLIENTS
        finally:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(30)
        lab.check_daemon()


def test_bad_metrics_address_is_a_one_line_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    proc = subprocess.run([sys.executable, "-m", "vhost_ipvlan.cli", "serve", "--config", str(cfg),
                           "--metrics", "localhost"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "vhost-ipvlan: error: --metrics: 'localhost' is not ADDRESS:PORT (e.g. 127.0.0.1:9100 or [::1]:9100)"
    ]
