"""Multicast filters from QMP, with real QEMU 7.2 guests behind the daemon.

vm1's slave has ``qmp`` (the guest's QMP socket, QEMU started after the daemon, so the
daemon first falls back to snooping and then reconnects) and ``qmp_device``: its
multicast filter is the guest's own RX filter, which QEMU keeps for a vhost-user NIC
too (``query-rx-filter``, ``NIC_RX_FILTER_CHANGED``). vm2's ``qmp`` is a dead socket
(a stale file nobody listens on): its filter stays on IGMP/MLD snooping and the daemon
keeps serving.

Multicast comes from the outside namespace (``ping`` to a group: a guest that has
joined answers, ``icmp_echo_ignore_broadcasts=0``); frames that the filter stops are
seen as the guest's ``rx_packets`` not moving.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.guest import Guest
from tests.support.lab import MASTER, Lab, SlaveSpec
from tests.support.wait import wait_until

pytestmark = [pytest.mark.qemu, pytest.mark.netns]

VM1_IP, VM2_IP = "192.0.2.10", "192.0.2.11"
VM1_MAC, VM2_MAC = "52:54:00:00:00:10", "52:54:00:00:00:11"
JOINED, LINK_ONLY = "239.1.2.3", "239.7.7.7"  # MACs 01:00:5e:01:02:03, 01:00:5e:07:07:07
BURST = 40


class World:
    def __init__(self, lab: Lab, vm1: Guest, vm2: Guest, dead: Path) -> None:
        self.lab, self.vm1, self.vm2, self.dead = lab, vm1, vm2, dead

    def multicast(self, slave: str) -> dict[str, Any]:
        result: dict[str, Any] = self.lab.stats()[MASTER]["slaves"][slave]["multicast"]
        return result

    def ping_group(self, group: str, count: int = 3) -> bool:
        """Ping ``group`` from the outside; True if a guest answered."""
        proc = self.lab.out_run("ping", "-c", str(count), "-i", "0.2", "-W", "3", "-I", "vio0", group, timeout=60)
        return proc.returncode == 0

    def rx_packets(self, vm: Guest) -> int:
        return int(vm.check("cat /sys/class/net/eth0/statistics/rx_packets"))

    def burst_reaches(self, vm: Guest, group: str) -> int:
        """Send BURST pings to ``group``; how many frames ``vm``'s NIC received meanwhile."""
        before = self.rx_packets(vm)
        self.lab.out_run("ping", "-c", str(BURST), "-i", "0.05", "-W", "1", "-I", "vio0", group, timeout=60)
        return self.rx_packets(vm) - before


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("rxf")
    vm1 = Guest("vm1", tmp, vhost_socket=tmp / "vm1.sock", mac=VM1_MAC, ip4=f"{VM1_IP}/24", nic_opts="id=nic0")
    vm2 = Guest("vm2", tmp, vhost_socket=tmp / "vm2.sock", mac=VM2_MAC, ip4=f"{VM2_IP}/24")
    dead = tmp / "dead.qmp"
    with socket.socket(socket.AF_UNIX) as s:  # a socket file nobody listens on
        s.bind(str(dead))
    slaves = [
        SlaveSpec("vm1", [f"{VM1_IP}/24"], VM1_MAC, extra={"qmp": str(vm1.qmp_socket), "qmp_device": "nic0"}),
        SlaveSpec("vm2", [f"{VM2_IP}/24"], VM2_MAC, extra={"qmp": str(dead)}),
    ]
    with Lab(tmp, slaves, ipv6=False) as lab:
        lab.out_run("ip", "route", "add", "224.0.0.0/4", "dev", "vio0")
        try:
            vm1.start()
            vm2.start()
            vm1.wait_ready(240)
            vm2.wait_ready(240)
            for vm in (vm1, vm2):
                vm.check("sysctl -w net.ipv4.icmp_echo_ignore_broadcasts=0")
            yield World(lab, vm1, vm2, dead)
        finally:
            for vm in (vm1, vm2):
                vm.stop()
            if sys.exc_info()[0] is not None:
                print(lab.log_text())


def test_filter_follows_the_guests_rx_filter(world: World) -> None:
    lab, vm1 = world.lab, world.vm1
    # QEMU was not there when the daemon started: snooping first, then QMP
    wait_until(lambda: "slave vm1: multicast filter from QMP" in lab.log_text(), 120, 0.5, "vm1 on QMP")
    log = lab.log_text()
    assert log.index("slave vm1: multicast filter from IGMP/MLD snooping: QMP") < \
        log.index(f"slave vm1: multicast filter from QMP {vm1.qmp_socket} (NIC nic0)")
    assert world.multicast("vm1")["source"] == "qmp"

    # a group the guest has not joined is filtered
    assert not world.ping_group(JOINED)
    assert world.burst_reaches(vm1, LINK_ONLY) < BURST // 2

    # the guest joins a group (IP_ADD_MEMBERSHIP through autojoin): it receives it
    vm1.check(f"ip addr add {JOINED}/32 dev eth0 autojoin")
    wait_until(lambda: "01:00:5e:01:02:03" in (world.multicast("vm1")["rx_filter"] or []), 60, 0.5,
               "the joined group in vm1's filter")
    assert world.ping_group(JOINED)

    # a MAC the guest adds to its NIC filter without any IGMP: only QMP can know it
    vm1.check("ip maddr add 01:00:5e:07:07:07 dev eth0")
    wait_until(lambda: "01:00:5e:07:07:07" in (world.multicast("vm1")["rx_filter"] or []), 60, 0.5,
               "the link-layer group in vm1's filter")
    assert world.burst_reaches(vm1, LINK_ONLY) >= BURST
    assert "239.7.7.7" not in world.multicast("vm1")["groups"]  # snooping never heard of it

    # the filter follows a leave
    vm1.check("ip maddr del 01:00:5e:07:07:07 dev eth0")
    vm1.check(f"ip addr del {JOINED}/32 dev eth0")
    wait_until(lambda: not {"01:00:5e:01:02:03", "01:00:5e:07:07:07"} & set(world.multicast("vm1")["rx_filter"]),
               60, 0.5, "vm1's filter without the groups")
    assert world.burst_reaches(vm1, LINK_ONLY) < BURST // 2
    assert not world.ping_group(JOINED)

    # allmulticast: every group passes
    vm1.check("ip link set eth0 allmulticast on")
    wait_until(lambda: world.multicast("vm1")["rx_filter"] == "all", 60, 0.5, "vm1's filter: all")
    assert world.burst_reaches(vm1, LINK_ONLY) >= BURST
    vm1.check("ip link set eth0 allmulticast off")


def test_dead_qmp_socket_falls_back_to_snooping(world: World) -> None:
    lab, vm2 = world.lab, world.vm2
    wait_until(lambda: f"slave vm2: multicast filter from IGMP/MLD snooping: QMP {world.dead}: " in lab.log_text(),
               60, 0.5, "vm2's fall back logged")
    assert lab.log_text().count("slave vm2: multicast filter from") == 1  # retries are not logged
    assert world.multicast("vm2")["source"] == "snooping"
    # the daemon keeps serving: unicast, and multicast by snooping the guest's join
    assert lab.out_run("ping", "-c", "2", "-W", "5", VM2_IP, timeout=60).returncode == 0
    vm2.check(f"ip addr add {JOINED}/32 dev eth0 autojoin")
    wait_until(lambda: JOINED in world.multicast("vm2")["groups"], 60, 0.5, "vm2's join snooped")
    assert world.ping_group(JOINED)
    assert world.burst_reaches(vm2, LINK_ONLY) < BURST // 2
    vm2.check(f"ip addr del {JOINED}/32 dev eth0")
    wait_until(lambda: JOINED not in world.multicast("vm2")["groups"], 60, 0.5, "vm2's leave snooped")
