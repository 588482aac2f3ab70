"""The Debian package, end to end (issue 13): build, lintian, install, a guest through it, purge.

From a copy of the tree: ``dpkg-buildpackage -us -uc -b``, ``lintian`` (no warning or
error; the info tags left are overridden with a reason in debian/), then
``apt-get install ./vhost-ipvlan_*.deb`` on this machine. The installed
``/usr/bin/vhost-ipvlan`` runs as the lab runs it, without systemd: in the test's own
network namespace, with the installed ``/etc/vhost-ipvlan.toml`` (no port), the port and
the slave added through its control socket by the installed CLI; a tiny QEMU guest then
pings the outside host through it. The package is purged afterwards, also when a step
failed, and directories its postinst made in /run are removed again if empty.

The venv does not see Debian's python3 packages nor the installed package: the daemon
and the CLI run with Debian's python3, the environment less the venv's variables.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.guest import Guest
from tests.support.lab import MASTER, OUT_IP, Lab
from tests.support.package import copy_tree, system_env

pytestmark = [
    pytest.mark.package, pytest.mark.qemu, pytest.mark.netns,
    pytest.mark.skipif(shutil.which("dpkg-buildpackage") is None, reason="dpkg-dev is not installed (scripts/setup)"),
]

PACKAGE = "vhost-ipvlan"
BIN = Path("/usr/bin/vhost-ipvlan")
CONFIG = Path("/etc/vhost-ipvlan.toml")
STATE = Path("/var/lib/vhost-ipvlan")
QEMU_JSON = Path("/usr/share/qemu/vhost-user/50-vhost-ipvlan.json")
MAN = Path("/usr/share/man/man1/vhost-ipvlan.1.gz")
HOOK = Path("/usr/share/vhost-ipvlan/vhost-ipvlan-hook")
UNITS = [Path("/lib/systemd/system/vhost-ipvlan.service"),
         Path("/lib/systemd/system/vhost-ipvlan-libvirt-watch.service")]
RUN_DIRS = [Path("/run/vhost-ipvlan/ctl"), Path("/run/vhost-ipvlan/qemu"), Path("/run/vhost-ipvlan")]  # deepest first
VM_IP, VM_MAC = "192.0.2.10", "52:54:00:00:00:10"
APT = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=300"]


def run(*argv: str | Path, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """A command with Debian's tools and python3 (no venv), as root, non-interactive."""
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=system_env(DEBIAN_FRONTEND="noninteractive"))


def checked(*argv: str | Path, timeout: float = 300, cwd: Path | None = None) -> str:
    proc = run(*argv, timeout=timeout, cwd=cwd)
    command = " ".join(map(str, argv))
    assert proc.returncode == 0, f"{command}: exit {proc.returncode}\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}"
    return proc.stdout


def installed() -> bool:
    proc = run("dpkg-query", "-W", "-f=${Status}", PACKAGE, timeout=60)
    return proc.returncode == 0 and "installed" in proc.stdout.split()


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("deb")
    src = copy_tree(tmp / "src")
    checked("dpkg-buildpackage", "-us", "-uc", "-b", cwd=src, timeout=600)
    (found,) = tmp.glob(f"{PACKAGE}_*.deb")
    return found


@pytest.fixture(scope="module")
def package(deb: Path) -> Iterator[Path]:
    """The .deb, installed with apt (its dependencies from Debian); purged afterwards, always."""
    made = [d for d in RUN_DIRS if not d.exists()]
    try:
        if installed():  # left by an interrupted run: test this build, not that one
            checked(*APT, "purge", PACKAGE)
        checked(*APT, "install", f"./{deb.name}", cwd=deb.parent, timeout=600)
        STATE.mkdir(mode=0o700, exist_ok=True)  # as systemd's StateDirectory= makes it
        (STATE / "state.toml").write_text("")
        yield deb
    finally:
        purge = run(*APT, "purge", PACKAGE)
        for d in made:  # what the postinst's systemd-tmpfiles made, if nobody uses it now
            try:
                d.rmdir()
            except OSError:
                pass
    assert purge.returncode == 0, purge.stdout + purge.stderr
    assert not installed() and not BIN.exists() and not CONFIG.exists(), "purge left the package behind"
    assert not (STATE / "state.toml").exists(), "purge left the state file behind"


def test_lintian_has_no_warning_or_error(deb: Path) -> None:
    proc = run("lintian", "--fail-on", "error,warning", "--info", "--pedantic", deb.name, cwd=deb.parent)
    tags = [ln for ln in proc.stdout.splitlines() if ln[:2] in ("E:", "W:", "I:", "P:")]
    assert proc.returncode == 0 and not tags, proc.stdout + proc.stderr


def test_installed_files(package: Path) -> None:
    listed = set(checked("dpkg", "-L", PACKAGE, timeout=60).split())
    for path in (BIN, CONFIG, QEMU_JSON, MAN, HOOK, *UNITS, Path("/usr/lib/tmpfiles.d/vhost-ipvlan.conf")):
        assert str(path) in listed and path.exists(), path
    assert not [p for p in listed if p.startswith("/etc/libvirt")], "the libvirt hook must be inactive until linked"
    assert str(CONFIG) in checked("dpkg-query", "--control-show", PACKAGE, "conffiles").split()
    assert r"check\-config" in gzip.decompress(MAN.read_bytes()).decode()
    assert checked(BIN, "check-config", CONFIG).startswith(f"{CONFIG}: ok")
    caps = json.loads(checked(BIN, "--print-capabilities"))
    backend = json.loads(QEMU_JSON.read_text())
    assert backend["type"] == caps["type"] == "net" and backend["binary"] == str(BIN)
    assert os.access(backend["binary"], os.X_OK)
    # the accelerator and the SIGBUS guard were built, for Debian's python3
    checked("python3", "-c", "from vhost_ipvlan.daemon import fastpath, host\n"
            "assert fastpath.accelerated() and host.guarded()")
    checked("systemd-analyze", "verify", *UNITS)
    st = Path("/run/vhost-ipvlan").stat()  # tmpfiles.d, applied by the postinst
    assert st.st_mode & 0o7777 == 0o750 and st.st_uid == 0


def unit_sandbox() -> list[str]:
    """The installed unit's CapabilityBoundingSet= and NoNewPrivileges=, as a setpriv command
    line (what systemd would apply; the rest of the sandbox needs systemd)."""
    settings = dict(ln.split("=", 1) for ln in UNITS[0].read_text().splitlines() if "=" in ln and ln[0] != "#")
    assert settings["NoNewPrivileges"] == "yes"
    caps = ",".join(f"+{c.removeprefix('CAP_').lower()}" for c in settings["CapabilityBoundingSet"].split())
    return ["setpriv", "--no-new-privs", "--inh-caps=-all", f"--bounding-set=-all,{caps}"]


def test_guest_pings_through_the_installed_daemon(package: Path, tmp_path: Path) -> None:
    """The installed command, with only the unit's capabilities, no new privileges: a guest pings out."""
    with Lab(tmp_path, [], ipv6=False, command=[*unit_sandbox(), str(BIN)], config_file=CONFIG) as lab:
        assert "data path: C accelerator + Python" in lab.log_text()
        control = ["--control", str(lab.control)]
        checked(BIN, "port", "add", MASTER, *control, timeout=60)
        checked(BIN, "slave", "add", "vm1", "--master", MASTER, "--socket", lab.sock("vm1"),
                "--address", f"{VM_IP}/24", "--mac", VM_MAC, *control, timeout=60)
        with Guest("vm1", tmp_path, vhost_socket=lab.sock("vm1"), mac=VM_MAC, ip4=f"{VM_IP}/24") as vm:
            vm.wait_ready(180)
            rc, out = vm.run(f"ping -c 3 -W 5 {OUT_IP}", timeout=60)
            assert rc == 0 and "3 packets received" in out, out + lab.log_text()[-3000:]
            stats = json.loads(checked(BIN, "stats", "vm1", "--json", *control, timeout=60))
            vm1 = stats[MASTER]["slaves"]["vm1"]
            assert vm1["tx_packets"] >= 3 and vm1["rx_packets"] >= 3, vm1  # the pings, through the daemon
        assert "Traceback" not in lab.log_text(), lab.log_text()  # Debian's pyroute2 0.7 and prometheus-client
