"""Worker threads (``[daemon] workers = 2``) against the real daemon: two ports, one per worker.

    fake front-end a (192.0.2.10)    -- vhost-ipvlan -- vim0 (ns host) <== veth ==> vio0 (ns out, 192.0.2.1)
    fake front-end b (198.51.100.10) --  (2 workers) -- vim1 (ns host) <== veth ==> vio1 (ns out, 198.51.100.1)

Each port runs on its own worker thread; the main thread keeps the control socket.
The outside host is the real kernel stack.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet

from tests.support.frontend import FakeFrontend
from tests.support.lab import MASTER, MASTER2, OUT2_IP, OUT_IP, SlaveSpec, TwoPortLab, receive, sh
from tests.support.wait import wait_until
from vhost_ipvlan.control.client import Client
from vhost_ipvlan.daemon import fastpath

pytestmark = [pytest.mark.netns]

MAC_A, MAC_B, MAC_L = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:21"
A_IP, B_IP, L_IP = "192.0.2.10", "198.51.100.10", "198.51.100.50"


class Lab(TwoPortLab):
    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp, [SlaveSpec("a", [f"{A_IP}/24"], MAC_A)], [
            SlaveSpec("b", [f"{B_IP}/24"], MAC_B),
            SlaveSpec("l", [], MAC_L, extra={"learn": True}),
        ], ipv6=False)

    def client(self) -> Client:
        return Client(self.control, timeout=20)

    def threads(self) -> list[str]:
        assert self.daemon is not None
        pid = self.daemon.pid  # ip netns exec execs the daemon: the same process
        return [Path(f"/proc/{pid}/task/{t}/comm").read_text().strip() for t in os.listdir(f"/proc/{pid}/task")]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path) as lab:
        yield lab


def ping_outside(fe: FakeFrontend, mac: str, ip: str, out_ip: str, out_mac: str, seq: int) -> None:
    fe.transmit(bytes(Ether(src=mac, dst=out_mac) / IP(src=ip, dst=out_ip) / ICMP(id=5, seq=seq) / b"w"))


def answer_arp(fe: FakeFrontend, mac: str, ip: str) -> None:
    """Answer the outside's ARP request for ``ip`` (it asks before its first reply)."""
    req = receive(fe, lambda p: ARP in p and p[ARP].op == 1 and p[ARP].pdst == ip, f"ARP request for {ip}")
    fe.transmit(bytes(Ether(src=mac, dst=req[Ether].src) /
                      ARP(op=2, hwsrc=mac, psrc=ip, hwdst=req[ARP].hwsrc, pdst=req[ARP].psrc)))


def is_reply(seq: int, src: str, p: Packet) -> bool:
    return ICMP in p and p[ICMP].type == 0 and p[ICMP].seq == seq and p[IP].src == src


def test_each_port_runs_on_its_own_worker(lab: Lab) -> None:
    stats = lab.client().call("stats")
    workers = {stats[MASTER]["worker"], stats[MASTER2]["worker"]}
    assert workers == {0, 1}
    for master, names in ((MASTER, ("a",)), (MASTER2, ("b", "l"))):
        for name in names:
            assert stats[master]["slaves"][name]["queues"]["worker"] == stats[master]["worker"]
    threads = lab.threads()
    assert sum(1 for n in threads if n.startswith("vi-worker-")) == 2, threads
    assert "2 worker threads" in lab.log_text()


def test_guests_on_both_workers_reach_the_outside(lab: Lab) -> None:
    a, b = lab.frontend("a"), lab.frontend("b")
    for seq in range(1, 4):
        ping_outside(a, MAC_A, A_IP, OUT_IP, lab.out_mac, seq)
        ping_outside(b, MAC_B, B_IP, OUT2_IP, lab.out2_mac, seq)
        if seq == 1:
            answer_arp(a, MAC_A, A_IP)
            answer_arp(b, MAC_B, B_IP)
        for fe, src, mac in ((a, OUT_IP, MAC_A), (b, OUT2_IP, MAC_B)):
            echo = receive(fe, partial(is_reply, seq, src), f"echo reply {seq} from {src}")
            assert echo[Ether].dst == mac
    stats = lab.client().call("stats")
    assert stats[MASTER]["slaves"]["a"]["tx_packets"] >= 4 and stats[MASTER2]["slaves"]["b"]["tx_packets"] >= 4


@pytest.mark.skipif(not fastpath.accelerated(), reason="the C accelerator is not built")
def test_a_worker_serves_a_guests_kicks_in_c(lab: Lab) -> None:
    """With the C accelerator a worker serves the kicks of a guest whose frames all go out
    the wire itself (WorkerCore), once Python drained its ring and nothing else ran: the
    frames reach the outside host, each once, and are counted as before."""
    a = lab.frontend("a")
    lab.wire_counter("udp dport 9 ip saddr 192.0.2.10")
    frames = [bytes(Ether(src=MAC_A, dst=lab.out_mac) / IP(src=A_IP, dst=OUT_IP, id=i) / UDP(sport=9, dport=9)
                    / b"worker") for i in range(30)]
    for i, f in enumerate(frames, 1):  # a kick each, each waited for, no stats call between (it drops plans)
        a.transmit(f)
        wait_until(partial(lambda n: a.txq.used_idx() == n, i), 10, what="the daemon to take the frame")
    wait_until(lambda: lab.wire_count() == 30, 10, what="30 frames at the outside")
    stats = lab.client().call("stats")[MASTER]["slaves"]["a"]
    assert stats["tx_packets"] == 30
    assert stats["queues"]["kicks_served_in_c"] >= 10, stats["queues"]


def test_learned_address_is_routed_by_the_main_loop(lab: Lab) -> None:
    """A learning slave on a worker: the learned address reaches the main loop (nftables and
    host routes), which sleeps in its wait until told: the outside can then ping it."""
    fe = lab.frontend("l")
    fe.transmit(bytes(Ether(src=MAC_L, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=MAC_L, psrc=L_IP, pdst=L_IP)))
    lab.wait_log(f"slave l: learned address {L_IP}", 0)
    wait_until(lambda: L_IP in sh("ip", "netns", "exec", lab.host, "nft", "list", "table", "netdev",
                                  "vhost_ipvlan"), 10, what="the learned address in the nftables chain")
    ping = subprocess.Popen(["ip", "netns", "exec", lab.out, "ping", "-c", "1", "-W", "5", L_IP],
                            stdout=subprocess.PIPE, text=True)
    answer_arp(fe, MAC_L, L_IP)
    echo = receive(fe, lambda p: ICMP in p and p[ICMP].type == 8, "echo request at l")
    fe.transmit(bytes(Ether(src=MAC_L, dst=echo[Ether].src) / IP(src=L_IP, dst=echo[IP].src) /
                      ICMP(type=0, id=echo[ICMP].id, seq=echo[ICMP].seq) / echo[ICMP].payload))
    out, _ = ping.communicate(timeout=10)
    assert ping.returncode == 0, out


def test_control_answers_while_both_workers_are_busy(lab: Lab) -> None:
    """Both guests transmit as fast as their front-ends can while the control socket is
    asked for stats again and again: every request is answered, and the counters move."""
    a, b = lab.frontend("a"), lab.frontend("b")
    stop = threading.Event()
    sent = {"a": 0, "b": 0}

    def blast(fe: FakeFrontend, name: str, mac: str, ip: str, dst: str, dst_mac: str) -> None:
        frame = bytes(Ether(src=mac, dst=dst_mac) / IP(src=ip, dst=dst) / UDP(sport=9, dport=9) / bytes(18))
        while not stop.is_set():
            while fe.txq.free:
                fe.transmit(frame)
                sent[name] += 1
            fe.reclaim_tx()
            if not fe.txq.free:
                stop.wait(0.001)  # a load generator's pause, not a wait for a condition

    threads = [threading.Thread(target=blast, args=(a, "a", MAC_A, A_IP, OUT_IP, lab.out_mac)),
               threading.Thread(target=blast, args=(b, "b", MAC_B, B_IP, OUT2_IP, lab.out2_mac))]
    for t in threads:
        t.start()
    try:
        client = lab.client()
        seen: list[dict[str, Any]] = []
        for _ in range(20):
            seen.append(client.call("stats"))
        wait_until(lambda: client.call("stats")[MASTER2]["uplink_tx_packets"] > seen[0][MASTER2]["uplink_tx_packets"],
                   10, what="b's frames on its master")
        assert seen[-1][MASTER]["uplink_tx_packets"] > 0
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert sent["a"] > 0 and sent["b"] > 0


def test_sigterm_stops_the_workers_and_cleans_up(lab: Lab) -> None:
    lab.frontend("a")
    lab.frontend("b")
    assert lab.daemon is not None
    lab.daemon.terminate()
    assert lab.daemon.wait(15) == 0, lab.log_text()
    for name in ("a", "b", "l"):
        assert not lab.sock(name).exists()
    assert "Traceback" not in lab.log_text()


def test_sighup_with_another_workers_count_says_when_it_applies(lab: Lab) -> None:
    """The threads are made at start: a reload that changes ``workers`` keeps them,
    says so, and records the new count (the state file) for the next start."""
    text = lab.config.read_text().replace("workers = 2", "workers = 3")
    lab.config.write_text(text)
    assert lab.daemon is not None
    warned = lab.log_text().count("daemon.workers: 3 from the next start (2 now")
    lab.daemon.send_signal(signal.SIGHUP)
    lab.wait_log("daemon.workers: 3 from the next start (2 now", warned)
    wait_until(lambda: "workers = 3" in lab.state.read_text(), 10, what="the state file's workers = 3")
    stats = lab.client().call("stats")
    assert {stats[MASTER]["worker"], stats[MASTER2]["worker"]} == {0, 1}
