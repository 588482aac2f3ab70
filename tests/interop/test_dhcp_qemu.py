"""A stock DHCP client in a real guest: busybox ``udhcpc`` in the tiny guest (no address on
its kernel command line) gets its address, prefix, router, DNS, MTU and host name from
the daemon, then reaches the outside, in l2 and l3 (a /32 too: classless static routes).

    vm1 (udhcpc; slave 192.0.2.10/24) -- vhost-ipvlan -- vim0 (ns host, 192.0.2.2/24,
                                                          default via 192.0.2.1) <== veth ==> vio0 (ns out, 192.0.2.1)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.guest import Guest
from tests.support.lab import MASTER, OUT_IP, Lab, SlaveSpec, sh

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
