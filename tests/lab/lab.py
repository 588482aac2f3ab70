"""Helpers of the lab tests: a uniquely named lab inventory, ansible-playbook runs, the guest image.

Every lab a test makes has its own names (``vl<hex>``: masters, outside namespace,
socket directory, domains), so it never touches another lab or another test's
namespaces, and its teardown removes exactly what it made.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = ROOT / "ansible"
BIN = Path(sys.executable).parent
PLAYBOOK = BIN / "ansible-playbook"
RECAP = re.compile(r"^localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def missing_tools() -> str | None:
    """Why the Ansible lab cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root"
    if not PLAYBOOK.exists():
        return "ansible-playbook is not in the venv (scripts/setup installs ansible-core)"
    for tool in ("virsh", "libvirtd", "qemu-system-x86_64", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (scripts/setup installs it)"
    return None


def lab_vars(tag: str | None = None, vagrant: bool = False) -> dict[str, Any]:
    """The variables of a lab like ansible/inventory/lab.yml's, with unique names."""
    n = f"vl{tag or secrets.token_hex(2)}"
    br, pr = f"{n}-br", f"{n}-pr"
    v: dict[str, Any] = {
        "lab_name": n,
        "lab_outside_netns": f"{n}-out",
        "lab_masters": [
            {"name": br, "peer": f"{br}-o", "mode": "l2", "flag": "bridge", "outside": ["192.0.2.1/24"]},
            {"name": pr, "peer": f"{pr}-o", "mode": "l2", "flag": "private", "outside": ["198.51.100.1/24"]},
        ],
        "lab_vms": [
            {"name": f"{n}-vm{i}", "nics": [
                {"mac": f"52:54:00:1a:00:1{i}", "master": br, "addresses": [f"192.0.2.1{i}/24"]},
                {"mac": f"52:54:00:1a:01:1{i}", "master": pr, "addresses": [f"198.51.100.1{i}/24"]},
            ]} for i in (1, 2)
        ],
        "lab_vagrant_vms": [
            {"name": f"va{i}", "nics": [
                {"mac": f"52:54:00:1a:02:2{i}", "master": br, "addresses": [f"192.0.2.2{i}/24"]},
            ]} for i in (1, 2)
        ],
        "vhost_ipvlan_socket_dir": f"/run/{n}",
        "vhost_ipvlan_control": f"/run/{n}/ctl/control.sock",
        # a hook of its own: tests/interop/test_libvirt.py installs and removes qemu.d/vhost-ipvlan
        "vhost_ipvlan_hook_name": f"vhost-ipvlan-{n}",
        # the venv running the tests already has vhost-ipvlan: the role finds it installed
        "vhost_ipvlan_venv": sys.prefix,
    }
    if not vagrant:
        v["lab_vagrant_vms"] = []
    return v


def write_inventory(path: Path, lab: dict[str, Any]) -> Path:
    """An inventory file for ``lab`` (JSON is YAML, which the Vagrantfile reads too)."""
    inv = {"all": {"hosts": {"localhost": {"ansible_connection": "local",
                                           "ansible_python_interpreter": sys.executable}},
                   "vars": lab}}
    path.write_text(json.dumps(inv, indent=1))
    return path


@dataclass
class Run:
    rc: int
    output: str
    seconds: float

    def recap(self) -> dict[str, int]:
        m = RECAP.search(self.output)
        if m is None:
            raise AssertionError(f"no PLAY RECAP in the output:\n{self.output[-4000:]}")
        return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, m.groups()), strict=True))


def playbook(name: str, inventory: Path, timeout: float = 3600) -> Run:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ANSIBLE / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0", PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    t0 = time.monotonic()
    proc = subprocess.run([str(PLAYBOOK), "-i", str(inventory), name], cwd=ANSIBLE, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return Run(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0)


def debian_image() -> Path:
    """The full guest image's directory (built by vm-images/build-debian.sh when its inputs changed)."""
    proc = subprocess.run(["bash", str(ROOT / "vm-images" / "build-debian.sh")], capture_output=True,
                          text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"build-debian.sh failed:\n{proc.stderr[-3000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])
