"""The control API, CLI, state file and SIGHUP against the real daemon in a namespace lab.

Every change goes through the same code as the config file; a refused request
changes nothing; an acknowledged one survives a crash (SIGKILL at random moments).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.component.test_daemon import A_IP, B_IP, MAC_A, MAC_B, Lab
from tests.support import lab as lab_mod
from tests.support.lab import SlaveSpec, receive, sh
from tests.support.wait import wait_until
from vhost_ipvlan.control.client import Client
from vhost_ipvlan.errors import ControlUnavailable, RemoteError

pytestmark = [pytest.mark.netns]

E_IP, MAC_E = "192.0.2.14", "02:00:00:00:00:0e"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path) as lab:
        yield lab


def client(lab: lab_mod.Lab) -> Client:
    return Client(lab.control, timeout=20)


def names(lab: lab_mod.Lab) -> list[str]:
    with client(lab) as c:
        return sorted(s["name"] for s in c.call("slave.list"))


def state_names(lab: lab_mod.Lab) -> list[str]:
    data = tomllib.loads(lab.state.read_text())
    return sorted(s["name"] for p in data["port"] for s in p.get("slave", []))


def nft_rules(lab: lab_mod.Lab) -> str:
    return sh("ip", "netns", "exec", lab.host, "nft", "list", "table", "netdev", "vhost_ipvlan")


def cli(lab: lab_mod.Lab, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vhost_ipvlan.cli", *argv, "--control", str(lab.control)],
                          capture_output=True, text=True, timeout=30)


def test_control_socket_is_root_only(lab: Lab) -> None:
    assert lab.control.stat().st_mode & 0o777 == 0o600


def test_added_slave_works_like_a_configured_one_and_removal_undoes_it(lab: Lab) -> None:
    a = lab.frontend("a")
    with client(lab) as c:
        info = c.call("slave.add", {"master": lab_mod.MASTER, "name": "e", "socket": str(lab.sock("e")),
                                    "addresses": [f"{E_IP}/24"], "mac": MAC_E})
        assert info["name"] == "e" and info["addresses"] == [f"{E_IP}/24"]
        # acknowledged means recorded
        assert "e" in state_names(lab)
        assert E_IP in nft_rules(lab)
        e = lab.frontend("e")
        e.transmit(bytes(Ether(src=MAC_E, dst=MAC_A) / IP(src=E_IP, dst=A_IP) / UDP(dport=21) / b"new"))
        receive(a, lambda p: UDP in p and p[UDP].dport == 21, "e->a")
        # in-place change: e stays connected, gets a second address
        c.call("slave.change", {"name": "e", "addresses": [f"{E_IP}/24", "192.0.2.15/24"]})
        assert "192.0.2.15" in nft_rules(lab)
        e.transmit(bytes(Ether(src=MAC_E, dst=MAC_A) / IP(src="192.0.2.15", dst=A_IP) / UDP(dport=22)))
        receive(a, lambda p: UDP in p and p[UDP].dport == 22, "e->a from its new address")
        assert lab.slave_stats("e")["drops"] == {}
        master_stats = c.call("stats", {"slave": "e"})[lab_mod.MASTER]
        assert set(master_stats["slaves"]) == {"e"}
        assert master_stats["rx_dropped"] == 0  # the uplink's socket never overflowed
        c.call("slave.remove", {"name": "e"})
    assert not lab.sock("e").exists()
    wait_until(lambda: "slave e: connection closed" in lab.log_text(), 5, what="e's connection closed")
    assert "e" not in state_names(lab) and "e" not in names(lab)
    assert E_IP not in nft_rules(lab)


def test_queues_from_the_control_api_and_a_change_applies_at_the_next_connection(lab: Lab) -> None:
    a = lab.frontend("a")
    with client(lab) as c:
        c.call("slave.add", {"master": lab_mod.MASTER, "name": "e", "socket": str(lab.sock("e")),
                             "addresses": [f"{E_IP}/24"], "mac": MAC_E, "queues": 2})
        e = lab.frontend("e", queues=2)  # returns with both pairs enabled in the daemon
        assert e.queue_num == 2
        for port in range(16):  # 16 flows: both rings get some (the flow hash), each flow one ring
            a.transmit(bytes(Ether(src=MAC_A, dst=MAC_E) / IP(src=A_IP, dst=E_IP) / UDP(sport=5000 + port, dport=9)))
        # every frame each ring got, kept before anything parses it: the outside host's
        # IPv6 start-up (MLD reports, router solicitations) is flooded to e too, at any time
        got: list[list[bytes]] = [[], []]

        def take() -> None:
            for pair in (0, 1):
                got[pair] += [f for _h, f in e.receive(pair)]

        def flows(pair: int) -> list[int]:
            return [p[UDP].sport - 5000 for p in map(Ether, got[pair]) if UDP in p and p[UDP].dport == 9]

        def settled() -> dict[str, Any] | None:
            """The queue stats once the 16 flows are in and each ring got what its counter says
            (taken again after the stats: a frame may come in between)."""
            take()
            q: dict[str, Any] = c.call("stats", {"slave": "e"})[lab_mod.MASTER]["slaves"]["e"]["queues"]
            take()
            counted = [p["rx_packets"] for p in q["per_queue"]]
            return q if len(flows(0)) + len(flows(1)) == 16 and counted == [len(got[0]), len(got[1])] else None

        q = wait_until(settled, 10, what="16 flows at e, and e's per-queue counters")
        assert flows(0) and flows(1) and sorted(flows(0) + flows(1)) == list(range(16))
        assert (q["queues"], q["queue_pairs"], q["queue_pairs_enabled"]) == (2, 2, 2)
        assert q["per_queue"][0]["rx"] == "enabled"
        e.enable_pair(1, False)
        wait_until(lambda: c.call("stats", {"slave": "e"})[lab_mod.MASTER]["slaves"]["e"]["queues"]
                   ["queue_pairs_enabled"] == 1, 5, what="pair 1 disabled")
        # a change keeps the guest connected; the new count is offered at its next connection
        info = c.call("slave.change", {"name": "e", "queues": 1})
        assert info["queues"] == 1 and info["queues_connected"] == 2 and info["connected"]
        assert "slave e: connection closed" not in lab.log_text()
        assert "queues" not in tomllib.loads(lab.state.read_text())["port"][0]["slave"][-1]
        e.close()
        lab.frontends.remove(e)
        wait_until(lambda: "slave e: connection closed" in lab.log_text(), 5, what="e's connection closed")
        e = lab.frontend("e")
        assert e.queue_num == 1
        with pytest.raises(RemoteError, match=r"params\.queues: expected an integer from 1 to 16") as err:
            c.call("slave.change", {"name": "e", "queues": 17})
        assert err.value.code == "invalid_params"
    proc = cli(lab, "slave", "change", "e", "--queues", "4")
    assert proc.returncode == 0, proc.stderr
    assert "queues = 4" in lab.state.read_text()


def test_changes_go_on_after_someone_flushes_the_ruleset(lab: Lab) -> None:
    """``nft flush ruleset`` (nftables.service's reload) removes the daemon's table: the
    next change writes the chain whole again, and a port can still be removed."""
    sh("ip", "netns", "exec", lab.host, "nft", "flush", "ruleset")
    with client(lab) as c:
        c.call("slave.add", {"master": lab_mod.MASTER, "name": "e", "socket": str(lab.sock("e")),
                             "addresses": [f"{E_IP}/24"], "mac": MAC_E})
        rules = nft_rules(lab)
        assert E_IP in rules and A_IP in rules and B_IP in rules
        sh("ip", "netns", "exec", lab.host, "nft", "flush", "ruleset")
        c.call("slave.remove", {"name": "e"})
        rules = nft_rules(lab)
        assert E_IP not in rules and A_IP in rules


REFUSED: list[tuple[dict[str, Any], str, str]] = [
    ({"name": "e", "socket": "/tmp/vi-e.sock", "addresses": [f"{A_IP}/24"]},
     "address_in_use", f"params.addresses[0]: {A_IP} is already used by slave 'a' on master {lab_mod.MASTER}"),
    ({"name": "e", "socket": "/tmp/vi-e.sock", "master": "nope0"}, "not_found", "params.master: no port"),
    ({"name": "e f", "socket": "/tmp/vi-e.sock"}, "invalid_params", "params.name: 'e f' must be"),
    ({"name": "e", "socket": "/tmp/vi-e.sock", "addresses": ["192.0.2.300"]}, "invalid_params",
     "params.addresses[0]: '192.0.2.300' is not an IPv4 or IPv6 address"),
    ({"name": "e", "socket": "SOCK_B"}, "socket_in_use", "is already used by slave 'b'"),
    ({"name": "b", "socket": "/tmp/vi-e.sock"}, "name_in_use", "params.name: 'b' is already used"),
    ({"name": "e", "socket": "/tmp/vi-e.sock", "mac": MAC_A}, "mac_in_use", "already used by slave 'a'"),
    ({"name": "e", "socket": "/tmp/vi-e.sock", "colour": "red"}, "invalid_params", "params.colour: unknown key"),
    # audit 6: a slave socket at the control socket's path would unlink it
    ({"name": "e", "socket": "CONTROL"}, "socket_in_use", "is the daemon's control socket"),
    ({"name": "e", "socket": "/tmp/vi-e\x7f.sock"}, "invalid_params", "contains a control character"),
]


def test_refused_requests_change_nothing(lab: Lab) -> None:
    lab.frontend("a")  # a's MAC is configured; make sure a live slave is there too
    before = names(lab)
    rules = nft_rules(lab)
    with client(lab) as c:
        for params, code, message in REFUSED:
            params = {"master": lab_mod.MASTER, **params}
            if params["socket"] == "SOCK_B":
                params["socket"] = str(lab.sock("b"))
            if params["socket"] == "CONTROL":
                params["socket"] = str(lab.control)
            with pytest.raises(RemoteError) as info:
                c.call("slave.add", params)
            assert (info.value.code, "\n" in info.value.message) == (code, False), info.value.message
            assert message in info.value.message
        with pytest.raises(RemoteError) as info:
            c.call("slave.change", {"name": "b", "addresses": [f"{A_IP}/32"]})
        assert info.value.code == "address_in_use"
        with pytest.raises(RemoteError) as info:
            c.call("port.remove", {"master": lab_mod.MASTER})
        assert info.value.code == "port_busy"
        with pytest.raises(RemoteError) as info:
            c.call("port.add", {"master": "vi-none0"})
        assert info.value.code == "no_such_interface"
        with pytest.raises(RemoteError) as info:
            c.call("slave.remove", {"name": "zz"})
        assert info.value.code == "not_found"
        assert c.call("port.list")  # the control socket is still there
    assert names(lab) == before and nft_rules(lab) == rules
    assert not lab.state.exists()  # nothing was ever accepted
    assert lab.sock("b").exists() and not Path("/tmp/vi-e.sock").exists()


def test_owner_is_recorded_and_kept_in_the_state_file(lab: Lab) -> None:
    owner = "libvirt:6f1c3d2e-8a4b-4c5d-9e0f-112233445566"
    with client(lab) as c:
        info = c.call("slave.add", {"master": lab_mod.MASTER, "name": "e", "socket": str(lab.sock("e")),
                                    "owner": owner})
        assert info["owner"] == owner
        assert c.call("slave.change", {"name": "e", "addresses": [f"{E_IP}/24"]})["owner"] == owner
    data = tomllib.loads(lab.state.read_text())
    assert [s.get("owner") for p in data["port"] for s in p["slave"] if s["name"] == "e"] == [owner]


def test_cli_tables_json_and_exit_codes(lab: Lab) -> None:
    proc = cli(lab, "slave", "list")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split() == ["NAME", "MASTER", "SOCKET", "ROLE", "ADDRESSES", "MAC", "STATE"]
    assert len(proc.stdout.splitlines()) == 5
    proc = cli(lab, "slave", "add", "e", "--master", lab_mod.MASTER, "--socket", str(lab.sock("e")),
               "--address", f"{E_IP}/24", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["addresses"] == [f"{E_IP}/24"]
    proc = cli(lab, "port", "list", "--json")
    assert json.loads(proc.stdout)[0]["slave"] == ["a", "b", "c", "d", "e"]
    proc = cli(lab, "stats", "a")
    assert proc.returncode == 0 and proc.stdout.split("\n")[0].split()[:2] == ["MASTER", "SLAVE"]
    # bad arguments: checked locally, one line, exit 2
    proc = cli(lab, "slave", "add", "f", "--master", lab_mod.MASTER, "--socket", "/tmp/f.sock",
               "--address", "300.1.1.1")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "params.addresses[0]" in proc.stderr
    proc = cli(lab, "slave", "add", "f")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    # refused by the daemon: one line, exit 1
    proc = cli(lab, "slave", "add", "f", "--master", lab_mod.MASTER, "--socket", "/tmp/f.sock",
               "--address", A_IP)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "slave 'a'" in proc.stderr
    proc = cli(lab, "slave", "remove", "e")
    assert proc.returncode == 0 and "e" not in names(lab)
    proc = subprocess.run([sys.executable, "-m", "vhost_ipvlan.cli", "stats", "--control", str(lab.tmp / "no.sock")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1


def test_state_file_wins_over_config_at_restart(lab: Lab) -> None:
    with client(lab) as c:
        c.call("slave.remove", {"name": "c"})
        c.call("slave.add", {"master": lab_mod.MASTER, "name": "e", "socket": str(lab.sock("e")),
                             "addresses": [f"{E_IP}/24"], "mac": MAC_E})
    lab.stop_daemon()
    lab.start_daemon()
    assert names(lab) == ["a", "b", "d", "e"]
    a, e = lab.frontend("a"), lab.frontend("e")
    e.transmit(bytes(Ether(src=MAC_E, dst=MAC_A) / IP(src=E_IP, dst=A_IP) / UDP(dport=23)))
    receive(a, lambda p: UDP in p and p[UDP].dport == 23, "e->a after restart")


def test_sighup_applies_the_config_difference_and_a_bad_file_changes_nothing(lab: Lab) -> None:
    a, b = lab.frontend("a"), lab.frontend("b")
    lab.slaves = [s for s in lab.slaves if s.name != "c"]
    lab.slaves[1] = SlaveSpec("b", [f"{B_IP}/24", "192.0.2.21/24"], MAC_B)
    lab.slaves.append(SlaveSpec("e", [f"{E_IP}/24"], MAC_E))
    lab.config.write_text(lab.config_text())
    n = lab.log_text().count("reloaded ")
    assert lab.daemon is not None
    os.kill(lab.daemon.pid, signal.SIGHUP)
    lab.wait_log("reloaded ", n)
    assert names(lab) == ["a", "b", "d", "e"] == state_names(lab)
    assert not lab.sock("c").exists() and lab.sock("e").exists()
    # b was changed in place: still connected, and reachable at its new address
    b.transmit(bytes(Ether(src=MAC_B, dst=MAC_A) / IP(src="192.0.2.21", dst=A_IP) / UDP(dport=24)))
    receive(a, lambda p: UDP in p and p[UDP].dport == 24, "b->a from the reloaded address")
    state = lab.state.read_text()
    for bad in ('[[port]]\nmaster = "vim0"\nmode = "l9"\n', "[[port]\n",
                '[[port]]\nmaster = "vi-gone0"\n'):
        lab.config.write_text(bad)
        n = lab.log_text().count("nothing changed")
        os.kill(lab.daemon.pid, signal.SIGHUP)
        lab.wait_log("nothing changed", n)
        line = [ln for ln in lab.log_text().splitlines() if "nothing changed" in ln][-1]
        assert "reload:" in line
        assert names(lab) == ["a", "b", "d", "e"] and lab.state.read_text() == state
    a.transmit(bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=A_IP, dst=B_IP) / UDP(dport=25)))
    receive(b, lambda p: UDP in p and p[UDP].dport == 25, "a->b after bad reloads")


def _exchange(lab: lab_mod.Lab, payload: bytes) -> list[dict[str, Any]]:
    """Send raw bytes on a fresh connection, half-close, return the decoded replies."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(lab.control))
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return [json.loads(line) for line in data.splitlines()]


MALFORMED: list[tuple[bytes, str]] = [
    (b"hello\n", "bad_request"),
    (b"{\"id\": 1, \"method\": \"slave.list\"\n", "bad_request"),
    (b"[1, 2, 3]\n", "bad_request"),
    (b"\"slave.list\"\n", "bad_request"),
    (b"\xff\xfe\n", "bad_request"),
    (b"{\"id\": 1}\n", "bad_request"),
    (b"{\"id\": 1, \"method\": 42}\n", "bad_request"),
    (b"{\"id\": 1, \"method\": \"slave.explode\"}\n", "unknown_method"),
    (b"{\"id\": 1, \"method\": \"slave.list\", \"extra\": 1}\n", "bad_request"),
    (b"{\"id\": [1], \"method\": \"slave.list\"}\n", "bad_request"),
    (b"{\"id\": 1e400, \"method\": \"slave.list\"}\n", "bad_request"),
    (b"{\"id\": " + b"9" * 5000 + b", \"method\": \"slave.list\"}\n", "bad_request"),
    (b"{\"id\": 1, \"method\": \"slave.list\", \"params\": [1]}\n", "invalid_params"),
    (b"{\"id\": 1, \"method\": \"slave.add\"}\n", "invalid_params"),
    (b"{\"id\": 1, \"method\": \"slave.add\", \"params\": {\"master\": \"vim0\", \"name\": 5, \"socket\": \"/x\"}}\n",
     "invalid_params"),
    (b"{\"id\": 1, \"method\": \"slave.add\", \"params\": {\"master\": \"vim0\", \"name\": \"" + b"x" * 50000
     + b"\", \"socket\": \"/x\"}}\n", "invalid_params"),
    (b"{\"id\": 1, \"method\": \"slave.add\", \"params\": {\"master\": \"vim0\", \"name\": \"q\", "
     b"\"socket\": \"/tmp/q.sock\", \"addresses\": [" + b",".join([b"\"10.9.0.1\""] * 300) + b"]}}\n",
     "invalid_params"),
    (b"{\"id\": 1, \"method\": \"slave.add\", \"params\": {\"master\": \"vim0\", \"name\": \"q\", "
     b"\"socket\": \"/tmp/q.sock\", \"addresses\": [18446744073709551616]}}\n", "invalid_params"),
    (b"{\"id\": 1, \"method\": \"slave.add\", \"params\": {\"master\": \"vim0\", \"name\": \"\\ud800\", "
     b"\"socket\": \"/x\"}}\n", "bad_request"),
    (b"[" * 20000 + b"]" * 20000 + b"\n", "bad_request"),
    (b"{\"id\": 1, \"method\": \"stats\", \"params\": {\"slave\": {}}}\n", "invalid_params"),
    (b"{\"id\": 1, \"method\": \"port.change\", \"params\": {\"master\": \"vim0\", \"mode\": \"l4\"}}\n",
     "invalid_params"),
]


def test_malformed_requests_get_one_line_errors_and_the_daemon_keeps_serving(lab: Lab) -> None:
    a, b = lab.frontend("a"), lab.frontend("b")
    before = names(lab)
    for payload, code in MALFORMED:
        replies = _exchange(lab, payload)
        assert len(replies) == 1, (payload[:80], replies)
        assert replies[0]["error"]["code"] == code, (payload[:80], replies)
        assert len(replies[0]["error"]["message"]) <= 400
    # truncated at the end of the stream (no newline): answered, then closed
    replies = _exchange(lab, b"{\"id\": 1, \"method\": \"sla")
    assert [r["error"]["code"] for r in replies] == ["bad_request"]
    # a 10 MB line cannot be framed: an error, then the connection is closed
    replies = _exchange(lab, b"{\"id\": 1, \"method\": \"" + b"x" * (10 << 20) + b"\"}\n")
    assert [r["error"]["code"] for r in replies] in ([], ["request_too_large"])
    # several requests on one connection, one bad in the middle: answered in order
    replies = _exchange(lab, b"{\"id\": 1, \"method\": \"port.list\"}\nnope\n{\"id\": \"x\", \"method\": \"stats\"}\n")
    assert [r.get("id") for r in replies] == [1, None, "x"] and "error" in replies[1]
    assert not lab.daemon_exited() and names(lab) == before
    a.transmit(bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=A_IP, dst=B_IP) / UDP(dport=26)))
    receive(b, lambda p: UDP in p and p[UDP].dport == 26, "a->b after the malformed corpus")


def test_sigkill_at_random_moments_keeps_exactly_the_acknowledged_slaves(tmp_path: Path) -> None:
    seed = int(os.environ.get("VI_CRASH_SEED", time.time_ns() % 100000))
    rng = random.Random(seed)
    with lab_mod.Lab(tmp_path, [SlaveSpec("a", ["192.0.2.10/24"])], ipv6=False) as lab:
        acked = {"a"}
        total_acks = 0
        for round_ in range(8):
            shared: dict[str, Any] = {"inflight": None, "acks": 0, "error": None}
            crng = random.Random(rng.random())

            def churn(shared: dict[str, Any] = shared, crng: random.Random = crng) -> None:
                try:
                    with client(lab) as c:
                        while True:
                            i = crng.randrange(16)
                            name = f"s{i}"
                            op = "remove" if name in acked else "add"
                            shared["inflight"] = (op, name)
                            if op == "add":
                                c.call("slave.add", {"master": lab_mod.MASTER, "name": name,
                                                     "socket": str(lab.sock(name)),
                                                     "addresses": [f"192.0.2.{100 + i}/24"]})
                                acked.add(name)
                            else:
                                c.call("slave.remove", {"name": name})
                                acked.discard(name)
                            shared["inflight"] = None
                            shared["acks"] += 1
                except ControlUnavailable:
                    pass
                except Exception as e:
                    shared["error"] = e

            worker = threading.Thread(target=churn)
            worker.start()
            time.sleep(rng.uniform(0.02, 0.8))
            assert lab.daemon is not None
            lab.daemon.send_signal(signal.SIGKILL)
            lab.daemon.wait(10)
            worker.join(30)
            assert not worker.is_alive()
            assert shared["error"] is None, f"seed {seed} round {round_}: {shared['error']!r}"
            total_acks += shared["acks"]
            lab.start_daemon()
            now = set(names(lab))
            inflight = shared["inflight"]
            if inflight is None:
                assert now == acked, f"seed {seed} round {round_}"
            else:
                # the unacknowledged request is either fully applied or not at all
                assert now in (acked, acked ^ {inflight[1]}), f"seed {seed} round {round_}: {inflight}"
                acked.clear()
                acked.update(now)
            for name in now:  # fully present: its socket listens
                assert lab.sock(name).exists(), name
        assert total_acks > 0


def rx_entry(*table: str, multicast: str = "normal") -> dict[str, Any]:
    """One entry of QMP query-rx-filter's reply, as QEMU 7.2 gives it."""
    return {"name": "net0", "main-mac": MAC_A, "promiscuous": False, "multicast": multicast,
            "multicast-overflow": False, "multicast-table": list(table), "unicast": "normal",
            "unicast-overflow": False, "unicast-table": [], "vlan": "none", "vlan-table": [],
            "broadcast-allowed": False}


def test_rx_filter_from_the_control_api(lab: Lab) -> None:
    a, b = lab.frontend("a"), lab.frontend("b")

    def to_group(mac: str, port: int) -> None:
        b.transmit(bytes(Ether(src=MAC_B, dst=mac) / IP(src=B_IP, dst="239.9.9.9", ttl=1) / UDP(dport=port)))

    with client(lab) as c:
        got = c.call("slave.rx_filter", {"name": "a", "rx_filter": rx_entry("01:00:5e:01:02:03")})
        assert got["source"] == "qmp" and got["rx_filter"] == ["01:00:5e:01:02:03"]
        to_group("01:00:5e:07:07:07", 7001)
        to_group("01:00:5e:01:02:03", 7002)
        ports: list[int] = []  # frames arrive in order: 7001 would come before 7002

        def seen(p: Any) -> bool:
            ports.extend([p[UDP].dport] if UDP in p else [])
            return 7002 in ports

        receive(a, seen, "the group in a's RX filter")
        assert 7001 not in ports
        # refused: nothing changes
        for params, code, message in (
            ({"name": "a", "rx_filter": {**rx_entry(), "multicast": "some"}}, "invalid_params", "params.rx_filter"),
            ({"name": "a", "rx_filter": []}, "invalid_params", "params.rx_filter: expected"),
            ({"name": "zz", "rx_filter": None}, "not_found", "params.name"),
            ({"name": "a"}, "invalid_params", "params.rx_filter: missing"),
        ):
            with pytest.raises(RemoteError) as info:
                c.call("slave.rx_filter", params)
            assert (info.value.code, message in str(info.value)) == (code, True), str(info.value)
        assert c.call("stats", {"slave": "a"})[lab_mod.MASTER]["slaves"]["a"]["multicast"]["rx_filter"] == [
            "01:00:5e:01:02:03"]
        # null: back to snooping (the guest never reported: every group passes)
        assert c.call("slave.rx_filter", {"name": "a", "rx_filter": None})["source"] == "snooping"
        to_group("01:00:5e:07:07:07", 7003)
        receive(a, lambda p: UDP in p and p[UDP].dport == 7003, "any group with snooping's grace")
        # a slave with qmp reads its filter itself; qmp and qmp_device go through add/change/null
        qmp = str(lab.tmp / "e.qmp")
        info = c.call("slave.add", {"master": lab_mod.MASTER, "name": "e", "socket": str(lab.sock("e")),
                                    "qmp": qmp, "qmp_device": "net0"})
        assert (info["qmp"], info["qmp_device"]) == (qmp, "net0")
        fallback = f"slave e: multicast filter from IGMP/MLD snooping: QMP {qmp}: "
        wait_until(lambda: fallback in lab.log_text(), 10, what="e's fall back to snooping logged")
        with pytest.raises(RemoteError, match="reads its guest's RX filter itself") as refused:
            c.call("slave.rx_filter", {"name": "e", "rx_filter": None})
        assert refused.value.code == "qmp_configured"
        with pytest.raises(RemoteError, match=r"params\.qmp_device: needs qmp"):
            c.call("slave.change", {"name": "e", "qmp": None, "qmp_device": "net0"})
        info = c.call("slave.change", {"name": "e", "qmp": None})
        assert "qmp" not in info and "qmp_device" not in info
    assert lab.log_text().count(fallback) == 1
    assert "slave a: multicast filter from the guest's RX filter (control API)" in lab.log_text()
