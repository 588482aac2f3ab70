"""The files the Debian package installs from contrib/ agree with the code (fast; the
package itself is built and installed by tests/package/test_debian_package.py)."""

from __future__ import annotations

import json
from pathlib import Path

from vhost_ipvlan import cli
from vhost_ipvlan.config import load
from vhost_ipvlan.control.client import DEFAULT_SOCKET
from vhost_ipvlan.libvirt.domain import DEFAULT_SOCKET_DIR
from vhost_ipvlan.libvirt.hook import script

ROOT = Path(__file__).resolve().parents[2]
CONTRIB = ROOT / "contrib"


def test_default_config_is_valid_and_empty() -> None:
    cfg = load(CONTRIB / "vhost-ipvlan.toml")
    assert cfg.ports == ()


def test_qemu_backend_description_matches_print_capabilities() -> None:
    backend = json.loads((CONTRIB / "qemu" / "50-vhost-ipvlan.json").read_text())
    assert set(backend) == {"description", "type", "binary"}
    assert backend["type"] == cli._capabilities()["type"] == "net"
    assert backend["binary"] == "/usr/bin/vhost-ipvlan"


def test_packaged_hook_runs_what_install_hook_writes() -> None:
    """The packaged hook (inactive until linked) execs the same command as the one
    ``vhost-ipvlan install-hook`` writes, with Debian's python3 and the default paths."""
    packaged = (CONTRIB / "libvirt" / "vhost-ipvlan-hook").read_text().splitlines()
    written = script(DEFAULT_SOCKET, DEFAULT_SOCKET_DIR, python="/usr/bin/python3").splitlines()
    assert packaged[0] == written[0] == "#!/bin/sh"
    assert packaged[-1] == written[-1]
    assert (CONTRIB / "libvirt" / "vhost-ipvlan-hook").stat().st_mode & 0o111


def test_debian_takes_the_units_and_tmpfiles_from_contrib() -> None:
    """One copy of each: debian/ links to contrib/."""
    for name, target in (("vhost-ipvlan.service", "systemd/vhost-ipvlan.service"),
                         ("vhost-ipvlan.vhost-ipvlan-libvirt-watch.service",
                          "systemd/vhost-ipvlan-libvirt-watch.service"),
                         ("vhost-ipvlan.tmpfiles", "tmpfiles.d/vhost-ipvlan.conf")):
        link = ROOT / "debian" / name
        assert link.is_symlink() and link.resolve() == (CONTRIB / target).resolve(), name


def test_the_unit_makes_its_read_write_paths_before_any_sandboxed_command() -> None:
    """systemd sets up each command's mount namespace when it starts it, and a
    ReadWritePaths= entry that does not exist (no "-") fails it (226/NAMESPACE): the
    tmpfiles line ("+", outside the sandbox) must run before every sandboxed Exec line,
    or a first start after a by-hand install (README) or with /run/vhost-ipvlan removed
    fails before it could create the directory."""
    lines = [line.split("=", 1) for line in (CONTRIB / "systemd" / "vhost-ipvlan.service").read_text().splitlines()
             if line and not line.startswith("#") and "=" in line]
    rw = [v for k, v in lines if k == "ReadWritePaths"]
    assert rw == ["/run/vhost-ipvlan"]
    execs = [(k, v) for k, v in lines if k == "ExecStartPre"] + [(k, v) for k, v in lines if k == "ExecStart"]
    tmpfiles = [i for i, (_, v) in enumerate(execs) if "systemd-tmpfiles --create" in v]
    assert tmpfiles and execs[tmpfiles[0]][1].startswith("+"), execs
    assert all(v.startswith(("+", "!")) for _, v in execs[: tmpfiles[0]]), execs


def test_the_unit_neither_reloads_nor_prechecks_the_config_file() -> None:
    """``systemctl reload`` would send SIGHUP, which applies the file's difference and so
    removes the libvirt hook's slaves; a ``check-config`` of /etc before the start would
    keep a daemon that starts from its state file from restarting after a crash."""
    lines = [ln.strip() for ln in (CONTRIB / "systemd" / "vhost-ipvlan.service").read_text().splitlines()
             if not ln.lstrip().startswith("#")]
    assert not [ln for ln in lines if ln.startswith("ExecReload=")]
    assert not [ln for ln in lines if ln.startswith("ExecStartPre=") and "check-config" in ln]
