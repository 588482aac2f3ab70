"""IPv6 autoconfiguration through vhost-ipvlan: a real guest kernel does SLAAC, the daemon learns.

    vm (TCG, tiny guest, learn = true, no address configured anywhere)
      -- vhost-ipvlan -- vim0 (ns host: 192.0.2.2/24, 2001:db8::2/64)
      <== veth ==> vio0 (ns out: 2001:db8::1/64, 192.0.2.1/24, "router": RAs for 2001:db8::/64)

The outside sends Router Advertisements (``tests/support/ra.py``, scapy); the
guest's kernel (accept_ra, autoconf: its defaults) forms a SLAAC address, runs
duplicate address detection through the backend, and the daemon learns the address
from the DAD probe. The outside then pings it; link-local pings work both ways; an
IPv4 address the guest configures itself is learned from its first ARP.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support.guest import REPO_ROOT, Guest
from tests.support.lab import OUT_IP, Lab, SlaveSpec, sh
from tests.support.wait import wait_until

pytestmark = [pytest.mark.qemu, pytest.mark.netns]

VM_MAC = "52:54:00:00:00:30"
VM_IP = "192.0.2.30"
PREFIX = ipaddress.IPv6Network("2001:db8::/64")


class World:
    def __init__(self, lab: Lab, vm: Guest) -> None:
        self.lab, self.vm = lab, vm

    def vm_addresses(self, scope: str) -> list[str]:
        """The guest's IPv6 addresses of ``scope`` on eth0 that finished DAD."""
        out = self.vm.check(f"ip -6 -o addr show dev eth0 scope {scope}")
        return [line.split()[3].split("/")[0] for line in out.splitlines()
                if "tentative" not in line and "dadfailed" not in line]

    def out_link_local(self) -> str:
        out = sh("ip", "-n", self.lab.out, "-6", "-o", "addr", "show", "dev", "vio0", "scope", "link")
        return out.split()[3].split("/")[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("slaac")
    # the master is on the link: learning stays inside its prefixes
    with Lab(tmp, [SlaveSpec("vm", [], VM_MAC, extra={"learn": True})], master_ipv6=True,
             master_addresses=("192.0.2.2/24", "2001:db8::2/64")) as lab:
        ra = subprocess.Popen(
            ["ip", "netns", "exec", lab.out, sys.executable, "-m", "tests.support.ra", "vio0", str(PREFIX)],
            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=(tmp / "ra.log").open("wb"))
        # DAD on (the point of the test); the guest configures IPv4 itself, IPv6 by SLAAC
        vm = Guest("vm", tmp, vhost_socket=lab.sock("vm"), mac=VM_MAC, ip4=f"{VM_IP}/24", nodad=False)
        try:
            vm.start()
            vm.wait_ready(240)
            yield World(lab, vm)
        finally:
            vm.stop()
            ra.terminate()
            ra.wait(10)
            if sys.exc_info()[0] is not None:
                print(lab.log_text())
                print((tmp / "ra.log").read_text())


def test_guest_autoconfigures_by_slaac_and_the_daemon_learns_it(world: World) -> None:
    assert world.vm.check("cat /proc/sys/net/ipv6/conf/eth0/accept_ra").strip() == "1"
    assert world.vm.check("cat /proc/sys/net/ipv6/conf/eth0/autoconf").strip() == "1"
    found = wait_until(lambda: [a for a in world.vm_addresses("global")
                                if ipaddress.IPv6Address(a) in PREFIX], 120, interval=1,
                       what="a SLAAC address in 2001:db8::/64 on the guest")
    assert found is not None
    [slaac] = found
    world.lab.wait_log(f"slave vm: learned address {slaac}", 0, timeout=30)
    learned = world.lab.slave_stats("vm")["learned"]
    assert slaac in learned
    # the guest did duplicate address detection through the backend: it still has the address
    assert "dadfailed" not in world.vm.check("ip -6 addr show dev eth0")

    proc = world.lab.out_run("ping", "-c", "3", "-W", "5", slaac, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert world.lab.master_mac in world.lab.out_run("ip", "-6", "neigh", "show", slaac).stdout
    # not in the state file: relearned after a restart
    assert not world.lab.state.exists() or slaac not in world.lab.state.read_text()


def test_link_local_ping_both_ways(world: World) -> None:
    [vm_ll] = wait_until(lambda: world.vm_addresses("link"), 60, interval=1, what="the guest's link-local")
    out_ll = world.out_link_local()
    proc = world.lab.out_run("ping", "-c", "3", "-W", "5", f"{vm_ll}%vio0", timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rc, out = world.vm.run(f"ping -c 3 -W 5 -I eth0 {out_ll}", timeout=90)
    assert rc == 0, out


def test_guest_ipv4_is_learned_from_its_first_arp(world: World) -> None:
    rc, out = world.vm.run(f"ping -c 3 -W 5 {OUT_IP}", timeout=90)
    assert rc == 0, out
    world.lab.wait_log(f"slave vm: learned address {VM_IP}", 0, timeout=30)
    proc = world.lab.out_run("ping", "-c", "3", "-W", "5", VM_IP, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert VM_IP in world.lab.slave_stats("vm")["learned"]


def test_announce_self_teaches_the_addresses_again_after_a_restart(world: World) -> None:
    """Learned addresses are not kept across a restart; QMP announce-self (what the libvirt
    watcher sends) makes the guest announce them (GARP, unsolicited NA) and they are learned again."""
    [slaac] = [a for a in world.vm_addresses("global") if ipaddress.IPv6Address(a) in PREFIX]
    log = world.lab.log_text()
    learned4, learned6 = (log.count(f"slave vm: learned address {a}") for a in (VM_IP, slaac))
    world.lab.stop_daemon()
    world.lab.start_daemon()
    wait_until(lambda: world.lab.slave_stats("vm")["up"], 60, interval=0.5, what="the guest to reconnect")
    world.vm.qmp("announce-self", initial=50, max=550, rounds=2, step=100)
    world.lab.wait_log(f"slave vm: learned address {VM_IP}", learned4, timeout=30)
    world.lab.wait_log(f"slave vm: learned address {slaac}", learned6, timeout=30)
    for dst in (VM_IP, slaac):
        proc = world.lab.out_run("ping", "-c", "3", "-W", "5", dst, timeout=90)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_spoofing_drops_on_the_way(world: World) -> None:
    drops = world.lab.slave_stats("vm")["drops"]
    assert not {"src_ip_spoof", "learn_refused", "too_many_link_locals"} & drops.keys(), drops
