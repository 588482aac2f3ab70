"""Real QEMU guests (TCG, Linux virtio-net driver) behind vhost-ipvlan on a veth master.

vm1 uses the daemon-listens socket role (QEMU ``reconnect=1``); vm2 the
QEMU-listens role (the daemon connects). Both talk to the outside host (the
kernel in namespace ``out``) and to each other, over IPv4 and IPv6, with ping and
with TCP transfers large enough to use TSO/GSO and mergeable receive buffers.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.guest import Guest
from tests.support.lab import OUT_IP, OUT_IP6, Lab, SlaveSpec
from tests.support.wait import wait_until

pytestmark = [pytest.mark.qemu, pytest.mark.netns]

VM1_IP, VM2_IP = "192.0.2.10", "192.0.2.11"
VM1_IP6, VM2_IP6 = "2001:db8::10", "2001:db8::11"
VM1_MAC, VM2_MAC = "52:54:00:00:00:10", "52:54:00:00:00:11"
BLOB_MB = 4


class World:
    def __init__(self, lab: Lab, vm1: Guest, vm2: Guest) -> None:
        self.lab, self.vm1, self.vm2 = lab, vm1, vm2


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("qemu")
    slaves = [
        SlaveSpec("vm1", [f"{VM1_IP}/24", f"{VM1_IP6}/64"], VM1_MAC),
        SlaveSpec("vm2", [f"{VM2_IP}/24", f"{VM2_IP6}/64"], VM2_MAC, socket_mode="client"),
    ]
    with Lab(tmp, slaves) as lab:
        vm1 = Guest("vm1", tmp, vhost_socket=lab.sock("vm1"), mac=VM1_MAC,
                    ip4=f"{VM1_IP}/24", ip6=f"{VM1_IP6}/64")
        vm2 = Guest("vm2", tmp, vhost_socket=lab.sock("vm2"), socket_server=True, mac=VM2_MAC,
                    ip4=f"{VM2_IP}/24", ip6=f"{VM2_IP6}/64")
        try:
            vm1.start()
            vm2.start()
            vm1.wait_ready(180)
            vm2.wait_ready(180)
            for vm in (vm1, vm2):  # a blob to serve over TCP
                vm.check(f"mkdir -p /tmp/www && dd if=/dev/urandom of=/tmp/www/blob bs=1024 count={BLOB_MB * 1024}"
                         " 2>/dev/null && httpd -p 8080 -h /tmp/www")
            yield World(lab, vm1, vm2)
        finally:
            for vm in (vm1, vm2):
                vm.stop()
            if sys.exc_info()[0] is not None:
                print(lab.log_text())


def guest_md5(vm: Guest, path: str) -> str:
    return vm.check(f"md5sum {path}").split()[0]


@pytest.mark.parametrize(("vm", "dst"), [("vm1", OUT_IP), ("vm2", OUT_IP), ("vm1", OUT_IP6), ("vm2", OUT_IP6)])
def test_guest_pings_outside(world: World, vm: str, dst: str) -> None:
    guest = getattr(world, vm)
    rc, out = guest.run(f"ping -c 3 -W 5 {dst}", timeout=60)
    assert rc == 0, out
    assert "3 packets received" in out


@pytest.mark.parametrize("dst", [VM1_IP, VM2_IP, VM1_IP6, VM2_IP6])
def test_outside_pings_guest(world: World, dst: str) -> None:
    proc = world.lab.out_run("ping", "-c", "3", "-W", "5", dst, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    neigh = world.lab.out_run("ip", "neigh", "show", dst).stdout
    assert world.lab.master_mac in neigh  # the wire only knows the master's MAC


@pytest.mark.parametrize("dst", [VM2_IP, VM2_IP6])
def test_guest_pings_guest(world: World, dst: str) -> None:
    rc, out = world.vm1.run(f"ping -c 3 -W 5 {dst}", timeout=60)
    assert rc == 0, out


def test_tcp_outside_downloads_from_guests(world: World) -> None:
    """Guest -> outside bulk TCP (guest TX with TSO), connection opened by the outside."""
    for vm, url in ((world.vm1, f"http://{VM1_IP}:8080/blob"), (world.vm2, f"http://[{VM2_IP6}]:8080/blob")):
        code = ("import hashlib,urllib.request;"
                f"print(hashlib.md5(urllib.request.urlopen('{url}',timeout=60).read()).hexdigest())")
        proc = world.lab.out_run(sys.executable, "-c", code, timeout=180)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == guest_md5(vm, "/tmp/www/blob")


def test_tcp_guests_download_from_outside(world: World, tmp_path: Path) -> None:
    """Outside -> guest bulk TCP (GSO frames to the guest, mergeable RX), opened by the guest."""
    blob = tmp_path / "blob"
    blob.write_bytes(hashlib.sha256(b"seed").digest() * (BLOB_MB * 32768))
    want = hashlib.md5(blob.read_bytes()).hexdigest()
    server = subprocess.Popen(
        ["ip", "netns", "exec", world.lab.out, sys.executable, "-m", "http.server", "8000", "--bind", "::",
         "--directory", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for vm, host in ((world.vm1, OUT_IP), (world.vm2, f"[{OUT_IP6}]")):
            out = ""
            for _ in range(3):  # the server may still be starting
                rc, out = vm.run(f"wget -q -O - http://{host}:8000/blob | md5sum", timeout=180)
                if rc == 0 and out.split()[0] == want:
                    break
            assert out.split()[0] == want, out
    finally:
        server.terminate()
        server.wait(10)


def test_tcp_guest_to_guest(world: World) -> None:
    rc, out = world.vm2.run(f"wget -q -O - http://{VM1_IP}:8080/blob | md5sum", timeout=180)
    assert rc == 0, out
    assert out.split()[0] == guest_md5(world.vm1, "/tmp/www/blob")
    rc, out = world.vm1.run(f"wget -q -O - http://[{VM2_IP6}]:8080/blob | md5sum", timeout=180)
    assert rc == 0, out
    assert out.split()[0] == guest_md5(world.vm2, "/tmp/www/blob")


def test_counters_reflect_the_traffic(world: World) -> None:
    stats = world.lab.stats()["vim0"]
    for name in ("vm1", "vm2"):
        s = stats["slaves"][name]
        assert s["up"] is True
        assert s["tx_packets"] > 0 and s["rx_packets"] > 0
        assert s["rx_bytes"] > BLOB_MB << 20  # each guest downloaded at least one blob
        assert "queue_broken" not in s["drops"]


def test_announce_self_makes_the_guest_announce(world: World) -> None:
    """GUEST_ANNOUNCE is offered, so QMP ``announce-self`` makes the guest itself send a
    gratuitous ARP and an unsolicited NA, which reach the wire with the master's MAC."""
    features = world.vm1.check("cat /sys/bus/virtio/devices/virtio*/features | head -n 1")
    assert features[21] == "1", f"the guest did not negotiate VIRTIO_NET_F_GUEST_ANNOUNCE: {features}"
    garp = f"Request who-has {VM1_IP} tell {VM1_IP}"
    una = f"neighbor advertisement, tgt is {VM1_IP6}"
    dump = subprocess.Popen(
        ["ip", "netns", "exec", world.lab.out, "tcpdump", "-i", "vio0", "-n", "-l", "-e", "-p", "arp or icmp6"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(dump.stdout.readline, "")) if dump.stdout else None,
                              daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("listening on" in ln for ln in lines), 30, what="tcpdump to listen")
        world.vm1.qmp("announce-self", initial=50, max=550, rounds=2, step=100)
        wait_until(lambda: any(garp in ln for ln in lines) and any(una in ln for ln in lines), 60,
                   what="the guest's gratuitous ARP and unsolicited NA on the wire")
    finally:
        dump.kill()
        dump.wait()
    announced = [ln for ln in lines if garp in ln or una in ln]
    assert all(f" {world.lab.master_mac} > " in ln for ln in announced), announced
