"""The Ansible lab for real: ansible/site.yml on this machine (localhost, TCG guests), twice, then teardown.yml.

The first run provisions the lab network, vhost-ipvlan (daemon without systemd
here, libvirt hook) and two Debian guests with a NIC on a bridge master and one on
a private master (their addresses by DHCP from the daemon), and runs the connectivity checks; the second run must change
nothing and pass the checks again; teardown.yml must leave nothing of the lab behind.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.lab import Run, lab_vars, missing_tools, playbook, write_inventory
from vhost_ipvlan.control.client import Client

pytestmark = [pytest.mark.lab, pytest.mark.libvirt, pytest.mark.qemu, pytest.mark.netns, pytest.mark.timeout(3600)]

_why = missing_tools()
if _why:
    pytest.skip(_why, allow_module_level=True)

ROW = re.compile(r"^\s*- '?((?:guest-guest|guest-outside|outside-guest)\s.*?)'?$", re.M)


class Lab:
    def __init__(self, inventory: Path, variables: dict[str, Any]) -> None:
        self.inventory, self.vars = inventory, variables
        self.runs: dict[str, Run] = {}

    def site(self, key: str) -> Run:
        if key == "second" and "first" not in self.runs:
            pytest.skip("the first run did not happen")
        run = self.runs[key] = playbook("site.yml", self.inventory)
        print(f"site.yml ({key} run): {run.seconds:.0f} s, {run.recap() if run.rc == 0 else 'rc=' + str(run.rc)}")
        return run


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("ansible-lab")
    variables = lab_vars()
    lab = Lab(write_inventory(tmp / "inventory.yml", variables), variables)
    try:
        yield lab
    finally:
        run = playbook("teardown.yml", lab.inventory)  # again (idempotent), also after a failure
        if run.rc != 0:
            print(run.output[-4000:])


def report(run: Run) -> list[str]:
    return [" ".join(r.split()) for r in ROW.findall(run.output)]


def assert_checks_pass(run: Run, lab: Lab) -> None:
    assert run.rc == 0, run.output[-6000:]
    rows = report(run)
    # 2 guests x 2 masters: 2 guest->guest per master, 4 guest->outside, 4 outside->guest
    assert len(rows) == 12, "\n".join(rows) or run.output[-4000:]
    assert all(r.endswith(" ok") for r in rows), "\n".join(rows)
    private = [r for r in rows if r.startswith("guest-guest") and "private: isolated" in r]
    bridged = [r for r in rows if r.startswith("guest-guest") and "private" not in r]
    assert len(private) == 2 and all(" no ok" in r for r in private), "\n".join(rows)
    assert len(bridged) == 2 and all(" reach ok" in r for r in bridged), "\n".join(rows)


def test_first_run_provisions_and_checks_pass(lab: Lab) -> None:
    run = lab.site("first")
    assert_checks_pass(run, lab)
    recap = run.recap()
    assert recap["failed"] == 0 and recap["changed"] > 0, recap
    hook = Path(f"/etc/libvirt/hooks/qemu.d/{lab.vars['vhost_ipvlan_hook_name']}")
    assert lab.vars["vhost_ipvlan_control"] in hook.read_text()


def test_guests_took_their_addresses_by_dhcp(lab: Lab) -> None:
    """Nothing about the network on the guests' kernel command line: every slave's guest
    asked the daemon's DHCP and was acknowledged (the checks then reached its addresses)."""
    if "first" not in lab.runs or lab.runs["first"].rc != 0:
        pytest.skip("the first run did not pass")
    for vm in lab.vars["lab_vms"]:
        xml = subprocess.run(["virsh", "-c", "qemu:///system", "dumpxml", vm["name"]], capture_output=True,
                             text=True, check=True).stdout
        assert "vi.net=" not in xml, xml
    with Client(Path(lab.vars["vhost_ipvlan_control"])) as c:
        stats = c.call("stats")
    slaves = {name: s for m in lab.vars["lab_masters"] for name, s in stats[m["name"]]["slaves"].items()}
    assert len(slaves) == sum(len(vm["nics"]) for vm in lab.vars["lab_vms"]), list(slaves)
    assert all(s["dhcp"].get("acked", 0) >= 1 for s in slaves.values()), {n: s["dhcp"] for n, s in slaves.items()}


def test_second_run_changes_nothing(lab: Lab) -> None:
    run = lab.site("second")
    assert_checks_pass(run, lab)
    recap = run.recap()
    changed = re.findall(r"^changed: .*$", run.output, re.M)
    assert recap["changed"] == 0, changed


def test_teardown_removes_the_lab(lab: Lab) -> None:
    run = playbook("teardown.yml", lab.inventory)
    print(f"teardown.yml: {run.seconds:.0f} s")
    assert run.rc == 0, run.output[-4000:]
    v = lab.vars
    for vm in v["lab_vms"]:
        dom = subprocess.run(["virsh", "-c", "qemu:///system", "dominfo", vm["name"]], capture_output=True)
        assert dom.returncode != 0, f"domain {vm['name']} is still defined"
    for m in v["lab_masters"]:
        assert not Path(f"/sys/class/net/{m['name']}").exists(), m["name"]
    assert not Path(f"/run/netns/{v['lab_outside_netns']}").exists()
    assert not Path(v["vhost_ipvlan_socket_dir"]).exists()
    assert not Path(f"/var/lib/libvirt/images/{v['lab_name']}").exists()
    assert not Path(f"/etc/libvirt/hooks/qemu.d/{v['vhost_ipvlan_hook_name']}").exists()
