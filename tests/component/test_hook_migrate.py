"""The libvirt hook across a live migration, with two real daemons (two hosts) and the
installed hook script run as libvirt runs it (argv, the domain XML on stdin).

libvirt refuses to migrate a domain to the host it runs on (the host UUID), so
``virsh migrate`` needs two machines (or two libvirtd with their own host UUIDs);
these tests run, on each side, the hook calls libvirt makes (hooks.rst, "QEMU guest
migration"): on the destination ``migrate begin -`` (a filter: the XML comes back on
stdout), ``prepare``, ``start``, ``started``; after a failure there ``stopped`` and
``release``; on the source, after success only, ``stopped`` and ``release``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.lab import MASTER, Lab
from vhost_ipvlan.control.client import Client
from vhost_ipvlan.libvirt import hook
from vhost_ipvlan.libvirt.domain import NS, slave_name

pytestmark = [pytest.mark.netns]

UUID = "5d1a8c0e-3b7f-4e2a-9c61-0f1e2d3c4b5a"
MAC = "52:54:00:2c:00:20"
SLAVE = slave_name(UUID, MAC)


def domain_xml(sockdir: Path) -> str:
    """A domain as ``virsh dumpxml --migratable`` gives it: the vhostuser NIC, our metadata."""
    return f"""<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>mig1</name>
  <uuid>{UUID}</uuid>
  <metadata>
    <vi:vhost-ipvlan xmlns:vi='{NS}'>
      <vi:interface mac='{MAC}' master='{MASTER}'>
        <vi:address>192.0.2.20/24</vi:address>
        <vi:address>2001:db8::20/64</vi:address>
      </vi:interface>
    </vi:vhost-ipvlan>
  </metadata>
  <memory unit='KiB'>262144</memory>
  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>
  <vcpu placement='static'>1</vcpu>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <interface type='vhostuser'>
      <mac address='{MAC}'/>
      <source type='unix' path='{sockdir}/mig1.sock' mode='client'/>
      <model type='virtio'/>
      <alias name='net0'/>
    </interface>
  </devices>
  <qemu:override><qemu:device alias='net0'><qemu:frontend>
    <qemu:property name='vectors' type='unsigned' value='0'/>
  </qemu:frontend></qemu:device></qemu:override>
</domain>
"""


class Host:
    """One host: a lab (its daemon, a port on ``vim0``, no slaves) and the hook installed for it."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        hooks = lab.tmp / "hooks" / "qemu.d"
        hooks.mkdir(parents=True)
        self.hook = hooks / hook.HOOK_NAME
        self.hook.write_text(hook.script(lab.control, lab.tmp, pythonpath=str(Path(hook.__file__).parents[2])))
        self.hook.chmod(0o755)

    def run(self, op: str, sub: str, xml: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.hook), "mig1", op, sub, "-"], input=xml, capture_output=True, text=True,
                              timeout=60)

    def slaves(self) -> dict[str, dict[str, object]]:
        with Client(self.lab.control) as c:
            return {s["name"]: s for s in c.call("slave.list")}


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[Host, Host]]:
    for side in ("src", "dst"):
        (tmp_path / side).mkdir()
    with Lab(tmp_path / "src", []) as src, Lab(tmp_path / "dst", []) as dst:
        yield Host(src), Host(dst)


def started_on(h: Host, xml: str) -> None:
    """What libvirt runs when the domain starts on ``h`` (virsh start)."""
    for op, sub in (("prepare", "begin"), ("start", "begin"), ("started", "begin")):
        proc = h.run(op, sub, xml)
        assert proc.returncode == 0, proc.stderr


def test_a_migration_moves_the_slave(hosts: tuple[Host, Host], tmp_path: Path) -> None:
    src, dst = hosts
    xml = domain_xml(tmp_path / "src").replace(str(tmp_path / "src"), str(tmp_path / "dst"))
    src_xml = domain_xml(tmp_path / "src")
    started_on(src, src_xml)
    assert set(src.slaves()) == {SLAVE}
    proc = dst.run("migrate", "begin", xml)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, xml, "")  # the filter gives the XML back
    s = dst.slaves()[SLAVE]
    assert s["addresses"] == ["192.0.2.20/24", "2001:db8::20/64"] and s["mac"] == MAC
    assert s["owner"] == f"libvirt:{UUID}"
    assert s["socket"] == str(tmp_path / "dst" / "mig1.sock") and (tmp_path / "dst" / "mig1.sock").exists()
    started_on(dst, xml)  # prepare/start after migrate: the same slave, kept
    assert set(dst.slaves()) == {SLAVE}
    assert set(src.slaves()) == {SLAVE}  # both exist while the guest moves
    for op in ("stopped", "release"):  # the source, once the guest runs on the destination
        assert src.run(op, "end", src_xml).returncode == 0
    assert src.slaves() == {} and set(dst.slaves()) == {SLAVE}


def test_a_failed_migration_leaves_the_source_with_its_slave(hosts: tuple[Host, Host], tmp_path: Path) -> None:
    src, dst = hosts
    src_xml = domain_xml(tmp_path / "src")
    xml = src_xml.replace(str(tmp_path / "src"), str(tmp_path / "dst"))
    started_on(src, src_xml)
    assert dst.run("migrate", "begin", xml).returncode == 0
    assert dst.run("prepare", "begin", xml).returncode == 0
    for op in ("stopped", "release"):  # the destination QEMU failed: libvirt cleans up there only
        assert dst.run(op, "end", xml).returncode == 0
    assert dst.slaves() == {}
    assert set(src.slaves()) == {SLAVE} and src.slaves()[SLAVE]["owner"] == f"libvirt:{UUID}"


def test_a_destination_that_refuses_cancels_the_migration(hosts: tuple[Host, Host], tmp_path: Path) -> None:
    """The destination's daemon cannot create the slave (its address is another slave's
    there): ``migrate`` fails with one line, prints no XML, and creates nothing."""
    dst = hosts[1]
    xml = domain_xml(tmp_path / "dst")
    with Client(dst.lab.control) as c:
        c.call("slave.add", {"master": MASTER, "name": "squatter", "socket": str(tmp_path / "dst" / "sq.sock"),
                             "addresses": ["192.0.2.20/24"]})
    proc = dst.run("migrate", "begin", xml)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "192.0.2.20" in proc.stderr and proc.stderr.count("\n") == 1
    assert set(dst.slaves()) == {"squatter"}
