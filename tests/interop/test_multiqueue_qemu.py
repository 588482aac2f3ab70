"""A real QEMU guest with two queue pairs: ``-netdev vhost-user,queues=2``, ``mq=on``.

The guest gets two vCPUs: the Linux driver enables min(queue pairs, vCPUs) = 2 pairs
at probe (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, which QEMU turns into SET_VRING_ENABLE on
rings 2 and 3) and maps each vCPU's transmissions to its own TX queue (XPS). The
tests send from each vCPU (``taskset``) and from the outside with 16 UDP flows, and
read the daemon's per-pair counters; ``ethtool -L eth0 combined 1`` and back to 2 (the
tiny image carries the host's ethtool) change the pairs while the guest runs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.guest import Guest
from tests.support.lab import MASTER, OUT_IP, Lab, SlaveSpec
from tests.support.wait import wait_until

pytestmark = [pytest.mark.qemu, pytest.mark.netns]

VM_IP, VM_MAC = "192.0.2.10", "52:54:00:00:00:10"


class World:
    def __init__(self, lab: Lab, vm: Guest) -> None:
        self.lab, self.vm = lab, vm

    def queues(self) -> dict[str, Any]:
        result: dict[str, Any] = self.lab.stats()[MASTER]["slaves"]["vm"]["queues"]
        return result


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("mq")
    with Lab(tmp, [SlaveSpec("vm", [f"{VM_IP}/24"], VM_MAC, extra={"queues": 2})]) as lab:
        vm = Guest("vm", tmp, vhost_socket=lab.sock("vm"), mac=VM_MAC, ip4=f"{VM_IP}/24", queues=2, smp=2)
        try:
            vm.start()
            vm.wait_ready(240)
            yield World(lab, vm)
        finally:
            vm.stop()
            if sys.exc_info()[0] is not None:
                print(lab.log_text())


def test_the_guest_driver_enables_both_pairs(world: World) -> None:
    assert world.vm.check("ls /sys/class/net/eth0/queues").split() == ["rx-0", "rx-1", "tx-0", "tx-1"]
    features = world.vm.check("cat /sys/bus/virtio/devices/virtio*/features | head -n 1")
    assert features[22] == "1", f"the guest did not negotiate VIRTIO_NET_F_MQ: {features}"
    wait_until(lambda: world.queues()["queue_pairs_enabled"] == 2, 30, what="both pairs enabled")
    q = world.queues()
    assert q["queues"] == 2 and q["queue_pairs"] == 2
    assert [(p["rx"], p["tx"]) for p in q["per_queue"]] == [("enabled", "enabled")] * 2
    assert "queue broken" not in world.lab.log_text()


def flows_from_the_outside(world: World) -> list[int]:
    """16 UDP flows of 4 frames each from the outside host to the guest; the frames
    each receive queue took (the daemon's per-pair counters), once all 64 are in."""
    before = [p["rx_packets"] for p in world.queues()["per_queue"]]
    code = ("import socket\n"
            "for port in range(16):\n"
            "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "    s.bind(('', 40000 + port))\n"
            "    for _ in range(4):\n"
            f"        s.sendto(b'x', ('{VM_IP}', 9))\n")
    proc = world.lab.out_run(sys.executable, "-c", code, timeout=60)
    assert proc.returncode == 0, proc.stderr
    wait_until(lambda: sum(p["rx_packets"] for p in world.queues()["per_queue"]) >= sum(before) + 64, 30,
               what="64 UDP frames at the guest")
    return [p["rx_packets"] - b for p, b in zip(world.queues()["per_queue"], before, strict=True)]


def pings_from_each_vcpu(world: World, count: int) -> list[int]:
    """``count`` pings to the outside host from each vCPU; the frames each TX queue took."""
    before = [p["tx_packets"] for p in world.queues()["per_queue"]]
    for cpu in (1, 2):  # affinity masks: vCPU 0, then vCPU 1
        rc, out = world.vm.run(f"taskset {cpu} ping -c {count} -W 5 {OUT_IP}", timeout=60)
        assert rc == 0 and f"{count} packets received" in out, out
    return [p["tx_packets"] - b for p, b in zip(world.queues()["per_queue"], before, strict=True)]


def no_trouble(world: World) -> None:
    drops = world.lab.stats()[MASTER]["slaves"]["vm"]["drops"]
    assert "queue_broken" not in drops and "rx_not_ready" not in drops, drops


def test_each_vcpu_transmits_on_its_own_queue(world: World) -> None:
    assert all(n >= 3 for n in pings_from_each_vcpu(world, 3))


def test_flows_from_the_outside_arrive_on_both_receive_queues(world: World) -> None:
    assert all(n > 0 for n in flows_from_the_outside(world))
    rc, out = world.vm.run(f"ping -c 3 -W 5 {OUT_IP}", timeout=60)  # the guest still answers and is answered
    assert rc == 0, out
    no_trouble(world)


def combined(world: World, n: int) -> None:
    """``ethtool -L eth0 combined n`` in the guest, then wait for the daemon to have n pairs enabled."""
    world.vm.check(f"ethtool -L eth0 combined {n}")
    wait_until(lambda: world.queues()["queue_pairs_enabled"] == n, 30, what=f"{n} pairs enabled")


def test_ethtool_changes_the_pairs_and_traffic_follows(world: World) -> None:
    """combined 1: QEMU disables rings 2 and 3 (SET_VRING_ENABLE 0, each logged), every
    flow and every vCPU's frames use pair 0; combined 2: both pairs again, and used."""
    assert "Combined:\t2" in world.vm.check("ethtool -l eth0")
    log_start = len(world.lab.log_text())
    try:
        combined(world, 1)
        q = world.queues()
        assert [(p["rx"], p["tx"]) for p in q["per_queue"]] == [("enabled", "enabled"), ("disabled", "disabled")]
        assert world.vm.check("ethtool -l eth0").split("Current hardware settings:")[1].split()[-1] == "1"
        rx = flows_from_the_outside(world)
        assert rx[0] >= 64 and rx[1] == 0, rx  # 64 and the outside host's ARP request, if it had none
        tx = pings_from_each_vcpu(world, 2)
        assert tx[0] >= 4 and tx[1] == 0, tx
    finally:
        combined(world, 2)
    log = world.lab.log_text()[log_start:]
    for ring in ("rx1", "tx1"):
        assert (log.count(f"slave vm: {ring} queue disabled"), log.count(f"slave vm: {ring} queue enabled")) == (1, 1)
    assert "rx0 queue disabled" not in log and "tx0 queue disabled" not in log
    assert [(p["rx"], p["tx"]) for p in world.queues()["per_queue"]] == [("enabled", "enabled")] * 2
    assert all(n > 0 for n in flows_from_the_outside(world))
    assert all(n >= 2 for n in pings_from_each_vcpu(world, 2))
    no_trouble(world)


def test_a_restarted_daemon_gets_both_pairs_back(world: World) -> None:
    """QEMU (``reconnect=1``) sets both pairs up again and re-enables the ones its guest
    had enabled; nothing in the guest changes."""
    world.lab.stop_daemon()
    world.lab.start_daemon()
    wait_until(lambda: world.queues()["queue_pairs_enabled"] == 2, 60, what="both pairs enabled again")
    for cpu in (1, 2):
        rc, out = world.vm.run(f"taskset {cpu} ping -c 2 -W 5 {OUT_IP}", timeout=60)
        assert rc == 0, out
    assert all(p["tx_packets"] >= 2 for p in world.queues()["per_queue"])
