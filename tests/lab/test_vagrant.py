"""The Vagrantfile (vagrant-libvirt): ``vagrant validate`` always; ``vagrant up`` of two TCG
guests on vhost-ipvlan only when VHOST_IPVLAN_VAGRANT=1 (it takes minutes).

``vagrant up`` runs against a lab of its own (ansible/host.yml with unique names):
the guests take their vhost-ipvlan NIC's address by DHCP from the daemon, ping each
other and the outside namespace through that NIC, and the outside namespace pings them;
``vagrant destroy`` removes their slaves.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.lab import ROOT, lab_vars, missing_tools, playbook, write_inventory
from vhost_ipvlan.control.client import Client

if shutil.which("vagrant") is None:
    pytest.skip("vagrant not installed (scripts/setup installs vagrant and vagrant-libvirt)", allow_module_level=True)


def vagrant(*argv: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["vagrant", *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def vagrant_env(inventory: Path | None, dotfile: Path) -> dict[str, str]:
    env = dict(os.environ, VAGRANT_DOTFILE_PATH=str(dotfile), VAGRANT_NO_COLOR="1", VAGRANT_CHECKPOINT_DISABLE="1")
    if inventory is not None:
        env["VHOST_IPVLAN_LAB_INVENTORY"] = str(inventory)
    return env


def test_validate(tmp_path: Path) -> None:
    proc = vagrant("validate", env=vagrant_env(None, tmp_path / ".vagrant"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout


def test_validate_with_a_generated_inventory(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv.yml", lab_vars(vagrant=True))
    proc = vagrant("validate", env=vagrant_env(inv, tmp_path / ".vagrant"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_validate_names_a_missing_inventory_key(tmp_path: Path) -> None:
    variables = lab_vars()
    del variables["lab_vagrant_vms"]
    inv = write_inventory(tmp_path / "inv.yml", variables)
    proc = vagrant("validate", env=vagrant_env(inv, tmp_path / ".vagrant"))
    assert proc.returncode != 0
    assert "lab_vagrant_vms" in proc.stdout + proc.stderr


class Up:
    def __init__(self, variables: dict[str, Any], env: dict[str, str], seconds: float) -> None:
        self.vars, self.env, self.seconds = variables, env, seconds

    def slaves(self) -> set[str]:
        with Client(Path(self.vars["vhost_ipvlan_control"])) as c:
            return {s["name"] for s in c.call("slave.list")}

    def ssh(self, machine: str, cmd: str) -> subprocess.CompletedProcess[str]:
        return vagrant("ssh", machine, "-c", cmd, env=self.env, timeout=180)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    if os.environ.get("VHOST_IPVLAN_VAGRANT") != "1":
        pytest.skip("vagrant up is opt-in: VHOST_IPVLAN_VAGRANT=1")
    why = missing_tools()
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("vagrant")
    variables = lab_vars(vagrant=True)
    variables["lab_vms"] = []
    inv = write_inventory(tmp / "inventory.yml", variables)
    env = vagrant_env(inv, tmp / ".vagrant")
    try:
        run = playbook("host.yml", inv)
        assert run.rc == 0, run.output[-4000:]
        t0 = time.monotonic()
        proc = vagrant("up", "--provider", "libvirt", env=env, timeout=3000)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
        u = Up(variables, env, time.monotonic() - t0)
        print(f"vagrant up: {u.seconds:.0f} s")
        yield u
    finally:
        destroy = vagrant("destroy", "-f", env=env, timeout=600)
        if destroy.returncode != 0:
            print(destroy.stdout[-3000:], destroy.stderr[-3000:])
        td = playbook("teardown.yml", inv)
        if td.rc != 0:
            print(td.output[-4000:])


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.libvirt
@pytest.mark.qemu
@pytest.mark.netns
@pytest.mark.timeout(3600)
class TestUp:
    def test_triggers_created_the_slaves(self, up: Up) -> None:
        prefix = up.vars["lab_name"]
        assert {f"{prefix}-va1-5254001a0221", f"{prefix}-va2-5254001a0222"} <= up.slaves()

    def test_address_and_host_name_by_dhcp(self, up: Up) -> None:
        # nothing on the kernel command line: the vhost-ipvlan NIC's address is a DHCP lease
        # from the daemon ("dynamic"), the host name the machine's (slave add --hostname)
        proc = up.ssh("va1", "cat /proc/cmdline; ip -4 -o addr show; hostname")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "vi.net=" not in proc.stdout, proc.stdout
        lease = [ln for ln in proc.stdout.splitlines() if " inet 192.0.2.21/24 " in ln]
        assert lease and "dynamic" in lease[0], proc.stdout
        assert proc.stdout.splitlines()[-1].strip() == "va1", proc.stdout

    def test_guest_to_guest_and_outside(self, up: Up) -> None:
        proc = up.ssh("va1", "ping -c 3 -W 5 192.0.2.22 && ping -c 3 -W 5 192.0.2.1")
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def test_outside_to_guest(self, up: Up) -> None:
        proc = subprocess.run(["ip", "netns", "exec", up.vars["lab_outside_netns"], "ping", "-c", "3", "-W", "5",
                               "192.0.2.21"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def test_destroy_removes_the_slaves(self, up: Up) -> None:
        proc = vagrant("destroy", "-f", env=up.env, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert not {s for s in up.slaves() if "-va" in s}
