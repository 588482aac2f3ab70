"""libvirt end to end: the qemu hook, the watcher (hotplug) and ``libvirt check``, with real libvirtd.

Two TCG domains (the tiny guest: kernel + initrd, memfd shared memory, the
``vectors=0`` override) with ``<interface type='vhostuser'>`` and our metadata:
vm1 in the daemon-listens role (libvirt ``mode='client'``), vm2 in the
QEMU-listens role. The hook (installed into libvirt's real hooks directory)
creates their slaves on start and removes them on destroy; the watcher creates
a pre-declared NIC's slave so that ``virsh attach-device`` can be used, follows
the master's link with QMP ``set_link`` and sends ``announce-self`` after a daemon
restart (through libvirt).
The guests' command channel is a ``<serial type='unix'>`` (``Guest``'s protocol).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.guest import Guest, GuestError, tiny_image
from tests.support.lab import OUT_IP, Lab
from tests.support.wait import wait_until
from vhost_ipvlan.control.client import Client
from vhost_ipvlan.libvirt import hook
from vhost_ipvlan.libvirt.domain import NS, QEMU_SUBDIR, slave_name

libvirt = pytest.importorskip("libvirt")
if shutil.which("libvirtd") is None or shutil.which("virsh") is None:
    pytest.skip("libvirtd/virsh not installed (scripts/setup installs them)", allow_module_level=True)

pytestmark = [pytest.mark.libvirt, pytest.mark.qemu, pytest.mark.netns]

URI = "qemu:///system"
HOOKS = Path("/etc/libvirt/hooks")
VM1_MAC, VM2_MAC, NIC2_MAC = "52:54:00:1b:00:10", "52:54:00:1b:00:11", "52:54:00:1b:00:12"
VM1_IP, VM2_IP, NIC2_IP, OUT2_IP = "192.0.2.10", "192.0.2.11", "198.51.100.12", "198.51.100.1"


def virsh(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["virsh", "-c", URI, *argv], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"virsh {' '.join(argv)}: {proc.stderr.strip()}")
    return proc


def slave_of(domain: str, mac: str) -> str:
    """The hook's slave for a defined domain's NIC (named by the domain's UUID)."""
    return slave_name(virsh("domuuid", domain).stdout.strip(), mac)


def pid_of(pidfile: str) -> int | None:
    try:
        pid = int(Path(pidfile).read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def restart_libvirtd() -> None:
    """(Re)start libvirtd so it discovers our hook (it lists hooks when it starts)."""
    if pid_of("/run/virtlogd.pid") is None:
        subprocess.run(["virtlogd", "-d"], check=True)
    pid = pid_of("/run/libvirtd.pid")
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: pid_of("/run/libvirtd.pid") != pid and not Path(f"/proc/{pid}").exists(), 60,
                   what="libvirtd to stop")
    subprocess.run(["libvirtd", "-d"], check=True)
    wait_until(lambda: virsh("version", check=False).returncode == 0, 60, what="libvirtd to answer")


def metadata(*ifaces: str, p: str = "vi:") -> str:
    """Our metadata element; ``p=""`` for ``setMetadata`` (libvirt adds the namespace itself)."""
    xmlns = f" xmlns:vi='{NS}'" if p else ""
    return f"<{p}vhost-ipvlan{xmlns}>{''.join(ifaces)}</{p}vhost-ipvlan>"


def meta_iface(mac: str, addr: str, extra: str = "", p: str = "vi:") -> str:
    return f"<{p}interface mac='{mac}' master='vim0'{extra}><{p}address>{addr}</{p}address></{p}interface>"


def nic_xml(mac: str, sock: Path, qemu_role: str, queues: int = 1) -> str:
    reconnect = "<reconnect enabled='yes' timeout='1'/>" if qemu_role == "client" else ""
    driver = f"<driver queues='{queues}'/>" if queues > 1 else ""
    return (f"<interface type='vhostuser'><mac address='{mac}'/>"
            f"<source type='unix' path='{sock}' mode='{qemu_role}'>{reconnect}</source>"
            f"<model type='virtio'/>{driver}</interface>")


def domain_xml(g: Guest, kernel: Path, initrd: Path, nic: str, meta: str) -> str:
    vectors = "".join(
        f"<qemu:device alias='net{i}'><qemu:frontend><qemu:property name='vectors' type='unsigned' value='0'/>"
        "</qemu:frontend></qemu:device>" for i in range(2))
    return f"""<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{g.name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <features><acpi/></features>
  <metadata>{meta}</metadata>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{kernel}</kernel><initrd>{initrd}</initrd>
    <cmdline>{g.kernel_cmdline()}</cmdline></os>
  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <controller type='usb' model='none'/>
    <serial type='file'><source path='{g.console_log}'/><target port='0'/></serial>
    <serial type='unix'><source mode='bind' path='{g.cmd_socket}'/><target port='1'/></serial>
    {nic}
    <memballoon model='none'/>
  </devices>
  <qemu:override>{vectors}</qemu:override>
</domain>"""


class DomainGuest(Guest):
    """A ``Guest`` whose QEMU is run by libvirt: alive while the domain is active."""

    def __init__(self, name: str, workdir: Path, **kw: Any) -> None:
        # pci=nomsi: libvirt 9.0 applies <qemu:override> (vectors=0) only at start, not to a
        # hot-plugged NIC, and QEMU 7.2 under TCG crashes when that NIC's MSI-X is enabled
        super().__init__(name, workdir, vhost_socket=None, extra_cmdline="pci=nomsi", **kw)
        self.qemu_log = Path(f"/var/log/libvirt/qemu/{name}.log")
        self.conn: Any = None

    def _check_alive(self) -> None:
        if self.conn is None or not self.conn.lookupByName(self.name).isActive():
            raise GuestError(f"domain {self.name} is not running\n{self._diagnostics()}")

    def stop(self, timeout: float = 10) -> None:
        if self._chan is not None:
            self._chan.close()
            self._chan = None


class World:
    def __init__(self, lab: Lab, sockdir: Path, vm1: DomainGuest, vm2: DomainGuest, conn: Any,
                 watcher: subprocess.Popen[bytes], watch_log: Path) -> None:
        self.lab, self.sockdir, self.vm1, self.vm2, self.conn = lab, sockdir, vm1, vm2, conn
        self.watcher, self.watch_log = watcher, watch_log

    def slaves(self) -> set[str]:
        with Client(self.lab.control) as c:
            return {s["name"] for s in c.call("slave.list")}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("libvirt")
    tag = secrets.token_hex(3)
    # Directories QEMU (libvirt-qemu:kvm) can reach: the vhost-user sockets (0750 root:kvm: QEMU
    # connects there; qemu/ 1770 root:kvm: QEMU binds there in the QEMU-listens role), and the
    # guests' files (kernel, serial).
    sockdir = Path(f"/run/vi-lv-{tag}")
    work = Path(f"/tmp/vi-lv-{tag}")
    sockdir.mkdir()
    sockdir.chmod(0o750)
    shutil.chown(sockdir, group="kvm")
    (sockdir / QEMU_SUBDIR).mkdir()
    (sockdir / QEMU_SUBDIR).chmod(0o1770)  # QEMU creates the sockets of the QEMU-listens role here
    shutil.chown(sockdir / QEMU_SUBDIR, group="kvm")
    work.mkdir()
    work.chmod(0o777)
    names = [f"vi-lv-{tag}-1", f"vi-lv-{tag}-2"]
    hook_path = HOOKS / "qemu.d" / hook.HOOK_NAME
    watcher: subprocess.Popen[bytes] | None = None
    conn: Any = None
    w: World | None = None
    try:
        image = tiny_image()
        kernel, initrd = work / "vmlinuz", work / "initrd.img"
        shutil.copy(image.kernel, kernel)
        shutil.copy(image.initrd, initrd)
        with Lab(tmp, []) as lab:
            hook.install(HOOKS, lab.control, sockdir)
            restart_libvirtd()
            conn = libvirt.open(URI)
            watch_log = tmp / "watch.log"
            watcher = subprocess.Popen(
                [sys.executable, "-m", "vhost_ipvlan.cli", "libvirt", "watch", "--control", str(lab.control),
                 "--socket-dir", str(sockdir), "--log-level", "debug"],
                stdout=subprocess.DEVNULL, stderr=watch_log.open("wb"))
            vm1 = DomainGuest(names[0], work, mac=VM1_MAC, ip4=f"{VM1_IP}/24")
            vm2 = DomainGuest(names[1], work, mac=VM2_MAC, ip4=f"{VM2_IP}/24")
            # vm2's NIC has two queue pairs (<driver queues='2'/>: the hook gives the slave queues = 2)
            for vm, mac, ip, role, queues in ((vm1, VM1_MAC, VM1_IP, "client", 1),
                                              (vm2, VM2_MAC, VM2_IP, "server", 2)):
                vm.conn = conn
                where = sockdir / QEMU_SUBDIR if role == "server" else sockdir
                xml = domain_xml(vm, kernel, initrd, nic_xml(mac, where / f"{vm.name}-0.sock", role, queues),
                                 metadata(meta_iface(mac, f"{ip}/24")))
                (work / f"{vm.name}.xml").write_text(xml)
                virsh("define", str(work / f"{vm.name}.xml"))
            try:
                for vm in (vm1, vm2):
                    virsh("start", vm.name, timeout=180)
                for vm in (vm1, vm2):
                    vm.wait_ready(240)
                w = World(lab, sockdir, vm1, vm2, conn, watcher, watch_log)
                yield w
            finally:
                if sys.exc_info()[0] is not None:
                    print(lab.log_text()[-6000:])
                    print(watch_log.read_text()[-4000:])
    finally:
        for name in names:
            virsh("destroy", name, check=False)
            virsh("undefine", name, check=False)
        if watcher is not None:
            watcher.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                watcher.wait(10)
            if watcher.poll() is None:
                watcher.kill()
        for c in {id(x): x for x in (conn, w.conn if w is not None else None) if x is not None}.values():
            with contextlib.suppress(libvirt.libvirtError):  # a restarted libvirtd closed the first
                c.close()
        hook_path.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(sockdir, ignore_errors=True)


def test_hook_created_the_slaves(world: World) -> None:
    assert {slave_of(world.vm1.name, VM1_MAC), slave_of(world.vm2.name, VM2_MAC)} <= world.slaves()


def test_driver_queues_reach_the_daemon(world: World) -> None:
    """vm2's <driver queues='2'/>: the hook adds its slave with queues = 2, libvirt runs QEMU
    with queues=2 and mq=on, and QEMU sets up both pairs (a 1-vCPU guest enables one)."""
    with Client(world.lab.control) as c:
        slaves = {s["name"]: s for s in c.call("slave.list")}
        assert slaves[slave_of(world.vm2.name, VM2_MAC)]["queues"] == 2
        assert slaves[slave_of(world.vm1.name, VM1_MAC)]["queues"] == 1
        stats = c.call("stats")["vim0"]["slaves"]
    q = stats[slave_of(world.vm2.name, VM2_MAC)]["queues"]
    assert q["queue_pairs"] == 2 and q["queue_pairs_enabled"] == 1, q
    features = world.vm2.check("cat /sys/bus/virtio/devices/virtio*/features | head -n 1")
    assert features[22] == "1", f"the guest did not negotiate VIRTIO_NET_F_MQ: {features}"
    # one vCPU: the guest uses one pair (its sysfs shows the pairs in use)
    assert world.vm2.check("ls /sys/class/net/eth0/queues").split() == ["rx-0", "tx-0"]


@pytest.mark.parametrize("vm", ["vm1", "vm2"])
def test_guest_pings_outside(world: World, vm: str) -> None:
    rc, out = getattr(world, vm).run(f"ping -c 3 -W 5 {OUT_IP}", timeout=60)
    assert rc == 0, out


def test_guests_ping_each_other(world: World) -> None:
    rc, out = world.vm1.run(f"ping -c 3 -W 5 {VM2_IP}", timeout=60)
    assert rc == 0, out


def test_check_is_clean(world: World) -> None:
    proc = subprocess.run([sys.executable, "-m", "vhost_ipvlan.cli", "libvirt", "check", world.vm1.name,
                           "--control", str(world.lab.control), "--socket-dir", str(world.sockdir)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_check_reports_problems(world: World, tmp_path: Path) -> None:
    name = f"{world.vm1.name}-bad"
    g = DomainGuest(name, world.vm1.workdir, mac="52:54:00:1b:00:98")
    xml = domain_xml(g, world.vm1.workdir / "vmlinuz", world.vm1.workdir / "initrd.img",
                     nic_xml(g.mac, world.sockdir / f"{name}.sock", "client"), "")
    xml = xml.replace("<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>", "")
    xml = xml.replace("value='0'", "value='4'")
    (tmp_path / "bad.xml").write_text(xml)
    virsh("define", str(tmp_path / "bad.xml"))
    try:
        proc = subprocess.run([sys.executable, "-m", "vhost_ipvlan.cli", "libvirt", "check", name,
                               "--control", str(world.lab.control), "--socket-dir", str(world.sockdir)],
                              capture_output=True, text=True, timeout=60)
    finally:
        virsh("undefine", name, check=False)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert len(lines) == 3, proc.stdout
    assert "no shared memory" in lines[0]
    assert "no <vi:interface mac='52:54:00:1b:00:98'>" in proc.stdout
    assert "vectors" in proc.stdout


def test_refused_slave_fails_start(world: World, tmp_path: Path) -> None:
    """An address already in use: the hook refuses, ``virsh start`` fails with our line."""
    name = f"{world.vm1.name}-dup"
    g = DomainGuest(name, world.vm1.workdir, mac="52:54:00:1b:00:99", ip4=f"{VM1_IP}/24")
    kernel, initrd = world.vm1.workdir / "vmlinuz", world.vm1.workdir / "initrd.img"
    xml = domain_xml(g, kernel, initrd, nic_xml(g.mac, world.sockdir / f"{name}.sock", "client"),
                     metadata(meta_iface(g.mac, f"{VM1_IP}/24")))
    (tmp_path / "dup.xml").write_text(xml)
    virsh("define", str(tmp_path / "dup.xml"))
    try:
        proc = virsh("start", name, check=False)
        assert proc.returncode != 0
        assert "is already used by slave" in proc.stderr, proc.stderr
        assert slave_of(name, g.mac) not in world.slaves()
    finally:
        virsh("undefine", name, check=False)


def test_hotplug_second_nic(world: World) -> None:
    vm, sock = world.vm1, world.sockdir / f"{world.vm1.name}-1.sock"
    name = slave_of(vm.name, NIC2_MAC)
    meta = metadata(meta_iface(VM1_MAC, f"{VM1_IP}/24", p=""),
                    meta_iface(NIC2_MAC, f"{NIC2_IP}/24", f" socket='{sock}'", p=""), p="")
    dom = world.conn.lookupByName(vm.name)
    # 1. declare the NIC: the watcher creates its slave (the socket listens) ...
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, meta, "vi", NS, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    wait_until(lambda: name in world.slaves(), 60, what=f"the watcher to add {name}")
    # 2. ... then attach it: QEMU connects at once.
    nic = world.vm1.workdir / "nic2.xml"
    nic.write_text(nic_xml(NIC2_MAC, sock, "client"))
    virsh("attach-device", vm.name, str(nic), "--live", timeout=180)
    world.lab.out_run("ip", "addr", "add", f"{OUT2_IP}/24", "dev", "vio0")
    dev = wait_until(lambda: vm.run(f"grep -l {NIC2_MAC} /sys/class/net/*/address")[1].strip() or None, 60,
                     what="the hot-plugged NIC in the guest")
    ifname = dev.split("/")[4]
    vm.check(f"ip link set {ifname} up && ip addr add {NIC2_IP}/24 dev {ifname}")
    proc = world.lab.out_run("ping", "-c", "3", "-W", "5", NIC2_IP, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # detach: the watcher removes the slave once the NIC and its declaration are gone
    virsh("detach-device", vm.name, str(nic), "--live", timeout=120)
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, metadata(meta_iface(VM1_MAC, f"{VM1_IP}/24", p=""), p=""),
                    "vi", NS, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    wait_until(lambda: name not in world.slaves(), 60, what=f"the watcher to remove {name}")


def carrier(vm: DomainGuest) -> str:
    return vm.run("cat /sys/class/net/eth0/carrier")[1].strip()


def link_follows_master(world: World) -> None:
    host = world.lab.host
    subprocess.run(["ip", "-n", host, "link", "set", "vim0", "down"], check=True)
    try:
        wait_until(lambda: carrier(world.vm1) == "0" and carrier(world.vm2) == "0", 60,
                   what="the guests' carrier to go down")
    finally:
        subprocess.run(["ip", "-n", host, "link", "set", "vim0", "up"], check=True)
    wait_until(lambda: carrier(world.vm1) == "1" and carrier(world.vm2) == "1", 60,
               what="the guests' carrier to come back")
    rc, out = world.vm1.run(f"ping -c 3 -W 5 {OUT_IP}", timeout=60)
    assert rc == 0, out


def test_master_down_sets_guest_link_down_and_up(world: World) -> None:
    """The watcher follows the master's link with QMP set_link (through libvirt)."""
    link_follows_master(world)


def test_daemon_restart_announces(world: World) -> None:
    """After a daemon restart the watcher asks QEMU to announce-self for each NIC, once it is up."""
    before = world.watch_log.read_text().count("announce-self")
    world.lab.stop_daemon()
    world.lab.start_daemon()
    wait_until(lambda: world.watch_log.read_text().count("announce-self") >= before + 2, 60,
               what="announce-self for both guests")
    assert "failed" not in world.watch_log.read_text().split("daemon restarted", 1)[1]
    for vm, dst in ((world.vm1, VM2_IP), (world.vm2, OUT_IP)):
        rc, out = vm.run(f"ping -c 3 -W 5 {dst}", timeout=60)
        assert rc == 0, out


def test_watcher_hands_the_guests_rx_filter_to_the_daemon(world: World) -> None:
    """libvirt owns the monitor: the watcher reads query-rx-filter on NIC_RX_FILTER_CHANGED
    (libvirt's qemu-monitor-event API) and gives it to the daemon (slave.rx_filter)."""
    vm, slave = world.vm1, slave_of(world.vm1.name, VM1_MAC)

    def mcast() -> dict[str, Any]:
        with Client(world.lab.control) as c:
            result: dict[str, Any] = c.call("stats", {"slave": slave})["vim0"]["slaves"][slave]["multicast"]
        return result

    def rx_packets() -> int:
        return int(vm.check("cat /sys/class/net/eth0/statistics/rx_packets"))

    def burst() -> int:  # 40 frames to 239.7.7.7 (01:00:5e:07:07:07) from outside: how many got in
        before = rx_packets()
        world.lab.out_run("ping", "-c", "40", "-i", "0.05", "-W", "1", "-I", "vio0", "239.7.7.7", timeout=60)
        return rx_packets() - before

    world.lab.out_run("ip", "route", "replace", "224.0.0.0/4", "dev", "vio0")
    wait_until(lambda: mcast()["source"] == "qmp", 90, 0.5, what=f"{slave}'s filter from its RX filter")
    assert "01:00:5e:07:07:07" not in mcast()["rx_filter"] and burst() < 20
    events = world.watch_log.read_text().count("NIC_RX_FILTER_CHANGED")
    vm.check("ip maddr add 01:00:5e:07:07:07 dev eth0")  # no IGMP: only the RX filter tells
    wait_until(lambda: "01:00:5e:07:07:07" in mcast()["rx_filter"], 25, 0.5, what="the guest's new MAC")
    assert world.watch_log.read_text().count("NIC_RX_FILTER_CHANGED") > events  # the event, not a rescan
    assert burst() >= 40
    vm.check("ip maddr del 01:00:5e:07:07:07 dev eth0")
    wait_until(lambda: "01:00:5e:07:07:07" not in mcast()["rx_filter"], 25, 0.5, what="the MAC gone")
    assert burst() < 20


def test_watcher_survives_a_libvirtd_restart(world: World) -> None:
    """libvirtd restarts under the watcher: it reconnects, subscribes again (an RX filter
    event still reaches it) and its QMP through libvirt works (set_link follows the master)."""
    before = world.watch_log.read_text().count("reconnected to")
    restart_libvirtd()
    world.conn = libvirt.open(URI)
    world.vm1.conn = world.vm2.conn = world.conn
    wait_until(lambda: world.watch_log.read_text().count("reconnected to") > before, 90, 0.5,
               what="the watcher to reconnect to libvirtd")
    slave = slave_of(world.vm1.name, VM1_MAC)
    events = world.watch_log.read_text().count("NIC_RX_FILTER_CHANGED")
    world.vm1.check("ip maddr add 01:00:5e:07:07:08 dev eth0")
    try:
        wait_until(lambda: world.watch_log.read_text().count("NIC_RX_FILTER_CHANGED") > events, 25, 0.5,
                   what="an RX filter event through the new connection")
        with Client(world.lab.control) as c:
            wait_until(lambda: "01:00:5e:07:07:08" in c.call("stats", {"slave": slave})["vim0"]["slaves"][slave]
                       ["multicast"]["rx_filter"], 25, 0.5, what="the daemon to get the new filter")
    finally:
        world.vm1.check("ip maddr del 01:00:5e:07:07:08 dev eth0")
    link_follows_master(world)


def test_zz_destroy_removes_slaves(world: World) -> None:
    for vm, mac in ((world.vm1, VM1_MAC), (world.vm2, VM2_MAC)):
        slave = slave_of(vm.name, mac)
        virsh("destroy", vm.name)
        virsh("undefine", vm.name)
        assert slave not in world.slaves()
