"""Two real QEMU guests on an l3 port with the private flag.

As the kernel's l3 private (docs/kernel-behaviour.md §8.1 row a, l3 p): the guests cannot reach
each other, while both reach the outside host and the host (through the host link,
a departure). The guests are plain Linux: a /24 address and nothing else; the
daemon answers their ARP with the master's MAC (their router).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator

import pytest

from tests.interop.test_qemu import World
from tests.support.guest import Guest
from tests.support.lab import MASTER, OUT_IP, Lab, SlaveSpec

pytestmark = [pytest.mark.qemu, pytest.mark.netns]

VM1_IP, VM2_IP, HOST_IP = "192.0.2.10", "192.0.2.11", "192.0.2.2"
VM1_MAC, VM2_MAC = "52:54:00:00:00:10", "52:54:00:00:00:11"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("l3private")
    slaves = [SlaveSpec("vm1", [f"{VM1_IP}/24"], VM1_MAC), SlaveSpec("vm2", [f"{VM2_IP}/24"], VM2_MAC)]
    with Lab(tmp, slaves, mode="l3", flag="private", master_addresses=(f"{HOST_IP}/24",)) as lab:
        vms = [Guest(s.name, tmp, vhost_socket=lab.sock(s.name), mac=s.mac or "", ip4=s.addresses[0])
               for s in slaves]
        try:
            for vm in vms:
                vm.start()
            for vm in vms:
                vm.wait_ready(180)
            yield World(lab, *vms)
        finally:
            for vm in vms:
                vm.stop()
            if sys.exc_info()[0] is not None:
                print(lab.log_text())


def received(vm: Guest, dst: str) -> int:
    """Echo replies ``vm`` got for 4 pings to ``dst`` (none is lost while the next hop
    resolves: the daemon holds the packets, as the kernel's neighbour queue)."""
    _rc, out = vm.run(f"ping -c 4 -i 0.5 -W 3 {dst}", timeout=90)
    m = re.search(r"(\d+) packets received", out)
    assert m is not None, out
    return int(m.group(1))


@pytest.mark.parametrize("vm", ["vm1", "vm2"])
def test_guests_reach_the_outside_and_the_host(world: World, vm: str) -> None:
    guest = getattr(world, vm)
    assert received(guest, OUT_IP) == 4
    assert received(guest, HOST_IP) == 4


def test_guests_cannot_reach_each_other(world: World) -> None:
    before = world.lab.stats()[MASTER]["slaves"]["vm1"]["drops"].get("private", 0)
    assert received(world.vm1, VM2_IP) == 0
    assert received(world.vm2, VM1_IP) == 0
    slaves = world.lab.stats()[MASTER]["slaves"]
    assert slaves["vm1"]["drops"].get("private", 0) >= before + 4  # each echo request, counted at the sender
    assert slaves["vm2"]["drops"].get("private", 0) >= 4
