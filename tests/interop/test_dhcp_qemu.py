"""A stock DHCP client in a real guest: busybox ``udhcpc`` in the tiny guest (no address on
its kernel command line) gets its address, prefix, router, DNS, MTU and host name from
the daemon, then reaches the outside, in l2 and l3 (a /32 too: classless static routes).
The lab's Debian image (systemd-networkd, a client-id client) too, where it was built.

    vm1 (udhcpc; slave 192.0.2.10/24) -- vhost-ipvlan -- vim0 (ns host, 192.0.2.2/24,
                                                          default via 192.0.2.1) <== veth ==> vio0 (ns out, 192.0.2.1)
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.guest import Guest
from tests.support.lab import MASTER, OUT_IP, Lab, SlaveSpec, sh
from tests.support.wait import wait_until

pytestmark = [pytest.mark.qemu, pytest.mark.netns]

VM_IP, VM_MAC, HOST_IP = "192.0.2.10", "52:54:00:00:00:10", "192.0.2.2"

# udhcpc calls the script with "bound" and the options in its environment
SCRIPT = r"""#!/bin/sh
[ "$1" = bound ] || exit 0
for v in ip mask subnet router dns domain search mtu hostname lease serverid staticroutes; do
    eval "echo $v=\$$v"
done >/tmp/dhcp.env
ip addr add "$ip/$mask" dev "$interface"
if [ -n "$staticroutes" ]; then  # option 121 (RFC 3442): the router option is then ignored
    set -- $staticroutes
    while [ $# -ge 2 ]; do
        if [ "$2" = 0.0.0.0 ]; then ip route add "$1" dev "$interface"
        else ip route add "$1" via "$2" dev "$interface"; fi
        shift 2
    done
elif [ -n "$router" ]; then
    ip route add default via "${router%% *}" dev "$interface"
fi
exit 0
"""


class DhcpLab(Lab):
    """A master with an address and a default route through it (the l2 guests' router)."""

    def start_daemon(self) -> None:
        if "default" not in sh("ip", "-n", self.host, "route", "show"):
            sh("ip", "-n", self.host, "route", "add", "default", "via", OUT_IP, "dev", MASTER)
        super().start_daemon()


@pytest.fixture(params=[("l2", 24), ("l3", 24), ("l3", 32)], ids=["l2", "l3", "l3-/32"])
def lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[DhcpLab]:
    mode, prefix = request.param
    with DhcpLab(tmp_path, [SlaveSpec("vm1", [f"{VM_IP}/{prefix}"], VM_MAC)], mode=mode,
                 master_addresses=(f"{HOST_IP}/24",),
                 config_head='[daemon]\ndns = ["192.0.2.53"]\ndns_search = ["lab.example"]\n') as lab:
        yield lab


def test_udhcpc_configures_the_guest(lab: DhcpLab, tmp_path: Path) -> None:
    with Guest("vm1", tmp_path, vhost_socket=lab.sock("vm1"), mac=VM_MAC) as vm:
        vm.wait_ready(180)
        vm.check("cat > /tmp/s.sh <<'EOF'\n" + SCRIPT + "EOF\nchmod +x /tmp/s.sh")
        vm.check("udhcpc -i eth0 -q -n -t 5 -T 2 -s /tmp/s.sh", timeout=60)
        env = dict(line.split("=", 1) for line in vm.check("cat /tmp/dhcp.env").splitlines() if "=" in line)
        prefix = lab.slaves[0].addresses[0].split("/")[1]
        assert (env["ip"], env["mask"], env["mtu"], env["hostname"]) == (VM_IP, prefix, "1500", "vm1")
        assert env["router"].split()[0] == (OUT_IP if lab.mode == "l2" else HOST_IP)
        # a /32: the router is off the guest's subnet, so option 121 routes to it on-link first
        assert env["staticroutes"] == ("" if prefix == "24" else f"{HOST_IP}/32 0.0.0.0 0.0.0.0/0 {HOST_IP}")
        assert env["dns"].split() == ["192.0.2.53"] and env["domain"] == "lab.example"
        assert env["serverid"] == HOST_IP and env["lease"] == "86400"
        vm.check(f"ping -c 2 -W 5 {OUT_IP}", timeout=60)  # the address works
        stats = lab.slave_stats("vm1")
        assert stats["dhcp"].get("offered", 0) >= 1 and stats["dhcp"].get("acked", 0) >= 1


def debian_image() -> Path | None:
    """The lab's Debian 12 image (vm-images/build-debian.sh), if it was built here."""
    cache = os.environ.get("VHOST_IPVLAN_CACHE") or \
        str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vhost-ipvlan")
    image = Path(cache) / "images" / "debian12-current"
    return image if (image / "disk.qcow2").exists() else None


@pytest.mark.slow
@pytest.mark.skipif(debian_image() is None, reason="no Debian lab image (vm-images/build-debian.sh)")
@pytest.mark.parametrize("mode", ["l2", "l3"])
def test_debian_systemd_networkd_gets_its_address(tmp_path: Path, mode: str) -> None:
    """The Debian lab image with nothing on its command line: systemd-networkd's
    90-dhcp.network (DHCP=ipv4, its DUID as client identifier, RFC 4361) configures the
    NIC from the daemon; the outside then reaches the guest at the slave's address."""
    image = debian_image()
    assert image is not None
    with DhcpLab(tmp_path, [SlaveSpec("deb", [f"{VM_IP}/24"], VM_MAC)], mode=mode,
                 master_addresses=(f"{HOST_IP}/24",)) as lab:
        qemu = subprocess.Popen([
            "qemu-system-x86_64", "-accel", "tcg", "-machine", "pc,memory-backend=mem", "-cpu", "max",
            "-m", "512M", "-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-nographic",
            "-nodefaults", "-no-user-config", "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initrd.img"),
            "-append", "root=/dev/vda rw console=ttyS0 net.ifnames=0",
            "-drive", f"file={image / 'disk.qcow2'},if=virtio,snapshot=on",
            "-chardev", f"file,id=con0,path={tmp_path / 'console.log'}", "-serial", "chardev:con0",
            "-chardev", f"socket,id=c0,path={lab.sock('deb')},reconnect=1",
            "-netdev", "vhost-user,id=n0,chardev=c0",
            "-device", f"virtio-net-pci,netdev=n0,mac={VM_MAC},vectors=0",
        ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            wait_until(lambda: lab.out_run("ping", "-c", "1", "-W", "2", VM_IP).returncode == 0, 400,
                       what="the Debian guest answering at its DHCP address", interval=3)
            dhcp = lab.slave_stats("deb")["dhcp"]
            assert dhcp.get("offered", 0) >= 1 and dhcp.get("acked", 0) >= 1
        finally:
            qemu.kill()
            qemu.wait()
