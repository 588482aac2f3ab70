"""The default directory layout (audit 5): code, tmpfiles.d and the ansible role agree, and the
daemon-listened socket directory and the control socket's directory are writable by root only."""

from __future__ import annotations

from pathlib import Path

import pytest

from vhost_ipvlan.control import client
from vhost_ipvlan.libvirt.domain import DEFAULT_SOCKET_DIR, QEMU_SUBDIR

ROOT = Path(__file__).resolve().parents[2]


def tmpfiles() -> dict[Path, tuple[int, str, str]]:
    out = {}
    for line in (ROOT / "contrib" / "tmpfiles.d" / "vhost-ipvlan.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            kind, path, mode, user, group, _ = line.split()
            assert kind == "d"
            out[Path(path)] = (int(mode, 8), user, group)
    return out


def test_tmpfiles_gives_each_kind_of_socket_its_directory() -> None:
    dirs = tmpfiles()
    assert dirs[DEFAULT_SOCKET_DIR] == (0o750, "root", "kvm")  # QEMU connects: nobody else writes
    assert dirs[client.DEFAULT_SOCKET.parent] == (0o700, "root", "root")
    assert dirs[DEFAULT_SOCKET_DIR / QEMU_SUBDIR] == (0o1770, "root", "kvm")  # QEMU listens: sticky
    unit = (ROOT / "contrib" / "systemd" / "vhost-ipvlan.service").read_text()
    assert "tmpfiles.d/vhost-ipvlan.conf" in unit and "\nRuntimeDirectory=" not in unit


def service_settings(unit: str) -> dict[str, str]:
    """The [Service] section's settings of a unit file (the last of each)."""
    out, section = {}, ""
    for line in unit.splitlines():
        if line.startswith("["):
            section = line.strip()
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


@pytest.mark.parametrize("unit", ["contrib/systemd/vhost-ipvlan.service",
                                  "ansible/roles/vhost_ipvlan/templates/vhost-ipvlan.service.j2"])
def test_the_daemon_is_not_the_first_oom_victim(unit: str) -> None:
    """A hostile front-end can make the daemon touch guest pages that count against it: the
    OOM killer must not take the network of every guest first (nor be unable to take it)."""
    assert service_settings((ROOT / unit).read_text()).get("OOMScoreAdjust") == "-500"


def test_ansible_role_puts_the_control_socket_in_its_own_directory() -> None:
    defaults = (ROOT / "ansible" / "roles" / "vhost_ipvlan" / "defaults" / "main.yml").read_text()
    assert 'vhost_ipvlan_control: "{{ vhost_ipvlan_socket_dir }}/ctl/control.sock"' in defaults
    tasks = (ROOT / "ansible" / "roles" / "vhost_ipvlan" / "tasks" / "main.yml").read_text()
    assert 'mode: "0770"' not in tasks and '{path: "{{ vhost_ipvlan_socket_dir }}", mode: "0750", group: kvm}' in tasks


def test_the_old_default_control_path_finds_the_new_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    new, old = tmp_path / "ctl" / "control.sock", tmp_path / "control.sock"
    monkeypatch.setattr(client, "DEFAULT_SOCKET", new)
    monkeypatch.setattr(client, "LEGACY_SOCKET", old)
    assert client.resolve(old) == old  # no daemon at the new place: unchanged
    new.parent.mkdir()
    new.touch()
    assert client.resolve(old) == new  # a hook installed before the move still reaches the daemon
    assert client.resolve(tmp_path / "other.sock") == tmp_path / "other.sock"


@pytest.mark.parametrize("unit", ["contrib/systemd/vhost-ipvlan.service",
                                  "ansible/roles/vhost_ipvlan/templates/vhost-ipvlan.service.j2"])
def test_the_unit_gives_room_for_a_thousand_guests(unit: str) -> None:
    """systemd's default soft limit (1024 descriptors) is not enough for 64 guests (issue 12)."""
    from vhost_ipvlan.daemon import fdbudget

    limit = int(service_settings((ROOT / unit).read_text())["LimitNOFILE"])
    assert fdbudget.slaves_within(limit, ports=4) >= 1000
