"""Stock IPv6 clients in a real guest: the tiny guest (no IPv6 address on its command line)
hears the daemon's Router Advertisement (its kernel: accept_ra; ``rdisc6`` from ndisc6
prints it: M and O set, router lifetime, MTU, on-link prefix without SLAAC, RDNSS, DNSSL),
then ISC ``dhclient -6`` gets the slave's address, DNS servers and search list from the
daemon's DHCPv6 server, and the guest reaches the outside from that address; in l2, l3
and l3s. A client whose lease file holds another guest's address (it CONFIRMs it at start)
is told NotOnLink and ends up with its own. l2 with a router on the wire: its RAs reach
the guest, the daemon sends none, DHCPv6 is still the daemon's.

    vm1 (slave 2001:db8::10/64) -- vhost-ipvlan -- vim0 (ns host, 2001:db8::2/64)
                                                   <== veth ==> vio0 (ns out, 2001:db8::1/64)
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.guest import REPO_ROOT, Guest
from tests.support.lab import MASTER, OUT_IP6, Lab, SlaveSpec
from tests.support.wait import wait_until
from vhost_ipvlan.net.addr import eui64_link_local, format_ip, parse_mac

pytestmark = [pytest.mark.qemu, pytest.mark.netns]

VM_IP6, VM_MAC, HOST_IP6 = "2001:db8::10", "52:54:00:00:00:10", "2001:db8::2"
OTHER_IP6 = "2001:db8::11"  # the other slave's

# dhclient runs the script with $reason and the lease in its environment (a stateless
# -S reply comes as RENEW6 without an address)
SCRIPT = r"""#!/bin/sh
case "$reason" in
BOUND6|REBOOT6|RENEW6|REBIND6)
    if [ -z "$new_ip6_address" ]; then env | grep -E '^(reason|new_)' >/tmp/inform6.env; exit 0; fi
    env | grep -E '^(reason|new_)' >/tmp/dhcp6.env
    ip -6 addr add "$new_ip6_address/$new_ip6_prefixlen" dev "$interface" nodad ;;
esac
exit 0
"""
CONF = "request dhcp6.name-servers, dhcp6.domain-search;\n"


@pytest.fixture(params=["l2", "l3", "l3s"])
def lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Lab]:
    with Lab(tmp_path, [SlaveSpec("vm1", [f"{VM_IP6}/64"], VM_MAC), SlaveSpec("vm2", [f"{OTHER_IP6}/64"])],
             mode=request.param, master_ipv6=True, master_addresses=(f"{HOST_IP6}/64",),
             config_head='[daemon]\ndns = ["2001:db8::53"]\ndns_search = ["lab.example"]\n') as lab:
        yield lab


def router_ll(lab: Lab) -> str:
    return format_ip(eui64_link_local(parse_mac(lab.master_mac)))


def rdisc6_fields(text: str) -> dict[str, str]:
    """rdisc6's "Name : value" lines, whitespace collapsed (the first of each name)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if ": " in line:
            name, _, value = line.partition(":")
            out.setdefault(name.strip(), " ".join(value.split()))
    return out


def wait_link_local(vm: Guest) -> None:
    """The guest's kernel has configured eth0's link-local address (after its link came up)."""
    wait_until(lambda: "fe80::" in vm.check("ip -6 addr show dev eth0 scope link"), 30,
               what="the guest's link-local address")


def dhclient(vm: Guest, lease_file: str = "/tmp/d6.leases") -> dict[str, str]:
    vm.check("cat > /tmp/s6.sh <<'EOF'\n" + SCRIPT + "EOF\nchmod +x /tmp/s6.sh\n"
             f"printf '{CONF}' > /tmp/d6.conf")
    vm.check(f"timeout 60 dhclient -6 -1 -v -cf /tmp/d6.conf -lf {lease_file} -pf /tmp/d6.pid "
             "-sf /tmp/s6.sh eth0", timeout=90)
    return dict(line.split("=", 1) for line in vm.check("cat /tmp/dhcp6.env").splitlines() if "=" in line)


def test_ra_then_dhclient_configures_the_guest(lab: Lab, tmp_path: Path) -> None:
    with Guest("vm1", tmp_path, vhost_socket=lab.sock("vm1"), mac=VM_MAC) as vm:
        vm.wait_ready(180)
        wait_link_local(vm)
        text = vm.check("rdisc6 -1 -w 3000 eth0", timeout=60)
        ra = rdisc6_fields(text)
        assert (ra["Stateful address conf."], ra["Stateful other conf."]) == ("Yes", "Yes"), text
        assert ra["Router lifetime"].split()[0] == ("0" if lab.mode == "l2" else "1800"), text
        assert (ra["Prefix"], ra["On-link"], ra["Autonomous address conf."]) == ("2001:db8::/64", "Yes", "No")
        assert (ra["Recursive DNS server"], ra["DNS search list"]) == ("2001:db8::53", "lab.example")
        assert ra["MTU"].split()[0] == "1500" and ra["Source link-layer address"].lower() == lab.master_mac
        assert f"from {router_ll(lab)}" in text
        # the guest's kernel took the RA too: the prefix on-link, and (l3/l3s) the daemon as its router
        routes = vm.check("ip -6 route show dev eth0")
        assert "2001:db8::/64" in routes
        assert (f"default via {router_ll(lab)}" in routes) == (lab.mode != "l2"), routes
        env = dhclient(vm)
        assert env["reason"] == "BOUND6" and env["new_ip6_address"] == VM_IP6, env
        assert env["new_dhcp6_name_servers"] == "2001:db8::53" and "lab.example" in env["new_dhcp6_domain_search"]
        assert env["new_max_life"] == "86400"
        # stateless (INFORMATION-REQUEST): DNS only
        vm.check("timeout 60 dhclient -6 -S -1 -v -cf /tmp/d6.conf -lf /tmp/s6.leases -pf /tmp/s6.pid "
                 "-sf /tmp/s6.sh eth0", timeout=90)
        inform = dict(line.split("=", 1) for line in vm.check("cat /tmp/inform6.env").splitlines() if "=" in line)
        assert inform["new_dhcp6_name_servers"] == "2001:db8::53" and "new_ip6_address" not in inform, inform
        vm.check(f"ping -c 2 -W 5 {OUT_IP6}", timeout=60)  # the address works
        assert lab.out_run("ping", "-c", "1", "-W", "5", VM_IP6).returncode == 0
        stats = lab.slave_stats("vm1")["dhcp6"]
        assert stats.get("assigned", 0) >= 1 and stats.get("informed", 0) >= 1 and stats.get("ra_sent", 0) >= 1, stats


def test_l2_with_a_router_on_the_wire(tmp_path: Path) -> None:
    """The outside sends RAs (``tests/support/ra.py``, with a default route): the daemon
    stops advertising, the guest's kernel takes the router's RA (its default route via
    the router's link-local), and dhclient -6 still gets the slave's address from the
    daemon; the guest reaches the outside through the router's RA."""
    with Lab(tmp_path, [SlaveSpec("vm1", [f"{VM_IP6}/64"], VM_MAC)], master_ipv6=True,
             master_addresses=(f"{HOST_IP6}/64",)) as lab:
        assert lab.stats()[MASTER]["advertises"]
        router = subprocess.Popen(
            ["ip", "netns", "exec", lab.out, sys.executable, "-m", "tests.support.ra", "vio0", "2001:db8::/64",
             "--default"], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=(tmp_path / "ra.log").open("wb"))
        try:
            wait_until(lambda: not lab.stats()[MASTER]["advertises"], 30, what="the daemon seeing the router's RA")
            out_ll = lab.out_run("ip", "-6", "-o", "addr", "show", "dev", "vio0", "scope", "link").stdout.split()[3]
            with Guest("vm1", tmp_path, vhost_socket=lab.sock("vm1"), mac=VM_MAC) as vm:
                vm.wait_ready(180)
                wait_link_local(vm)
                wait_until(lambda: f"default via {out_ll.split('/')[0]}" in vm.check("ip -6 route show dev eth0"),
                           30, what="the router's default route in the guest")
                assert router_ll(lab) not in vm.check("ip -6 route show dev eth0")
                assert dhclient(vm)["new_ip6_address"] == VM_IP6
                # from the daemon's address (the router's prefix also made a SLAAC one: not the slave's)
                vm.check(f"ping -c 2 -W 5 -I {VM_IP6} {OUT_IP6}", timeout=60)
                stats = lab.slave_stats("vm1")["dhcp6"]
                assert stats.get("assigned", 0) >= 1 and "ra_sent" not in stats, stats
        finally:
            router.terminate()
            router.wait(10)


def test_a_client_holding_another_guests_address_is_refused(lab: Lab, tmp_path: Path) -> None:
    """dhclient gets its lease; then, stopped, its lease file is made to hold vm2's address:
    started again it CONFIRMs that address (INIT-REBOOT), is told NotOnLink (RFC 8415
    §18.3.3), solicits and gets its own."""
    with Guest("vm1", tmp_path, vhost_socket=lab.sock("vm1"), mac=VM_MAC) as vm:
        vm.wait_ready(180)
        wait_link_local(vm)
        assert dhclient(vm)["new_ip6_address"] == VM_IP6
        vm.check(f"kill $(cat /tmp/d6.pid); ip -6 addr del {VM_IP6}/128 dev eth0; rm /tmp/dhcp6.env; "
                 f"sed -i 's/iaaddr {VM_IP6} /iaaddr {OTHER_IP6} /' /tmp/d6.leases")
        env = dhclient(vm)
        assert env["new_ip6_address"] == VM_IP6, env
        assert OTHER_IP6 not in vm.check("ip -6 addr show dev eth0")
        stats = lab.slave_stats("vm1")["dhcp6"]
        assert stats.get("refused", 0) >= 1 and stats.get("assigned", 0) >= 2, stats
