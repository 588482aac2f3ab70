"""The libvirt core: domain XML -> slave requests and problems; the hook against a fake daemon."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from vhost_ipvlan.errors import ControlUnavailable, DomainError, RemoteError
from vhost_ipvlan.libvirt import hook
from vhost_ipvlan.libvirt.check import allowed, msix_bug, socket_problems
from vhost_ipvlan.libvirt.domain import NS, owner_of, problems, slave_name, slave_requests

SOCKDIR = Path("/run/vhost-ipvlan")
UUID1 = "6f1c3d2e-8a4b-4c5d-9e0f-112233445566"
UUID2 = "0a0b0c0d-0e0f-4011-8213-141516171819"


def name(mac: str, uuid: str = UUID1) -> str:
    return f"vm-{uuid.replace('-', '')}-{mac.replace(':', '')}"
OVERRIDE = ("<qemu:override><qemu:device alias='net0'><qemu:frontend>"
            "<qemu:property name='vectors' type='unsigned' value='0'/></qemu:frontend></qemu:device></qemu:override>")


def nic(mac: str | None = "52:54:00:00:00:10", path: str = "/run/vhost-ipvlan/vm1.sock", mode: str = "client",
        alias: str = "") -> str:
    m = f"<mac address='{mac}'/>" if mac else ""
    a = f"<alias name='{alias}'/>" if alias else ""
    return (f"<interface type='vhostuser'>{m}<source type='unix' path='{path}' mode='{mode}'/>"
            f"<model type='virtio'/>{a}</interface>")


def meta(*ifaces: str) -> str:
    return f"<metadata><vi:vhost-ipvlan xmlns:vi='{NS}'>{''.join(ifaces)}</vi:vhost-ipvlan></metadata>"


def vi(mac: str = "52:54:00:00:00:10", master: str = "eth0", addrs: tuple[str, ...] = ("192.0.2.10/24",),
       extra: str = "") -> str:
    a = "".join(f"<vi:address>{x}</vi:address>" for x in addrs)
    return f"<vi:interface mac='{mac}' master='{master}'{extra}>{a}</vi:interface>"


def domain(*parts: str, name: str = "vm1", type_: str = "qemu", shared: bool = True, override: bool = True,
           devices: str = "", uuid: str = UUID1) -> str:
    mb = "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>" if shared else ""
    return (f"<domain type='{type_}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><name>{name}</name>"
            f"<uuid>{uuid}</uuid>"
            f"{''.join(p for p in parts if p.startswith('<metadata'))}{mb}"
            f"<devices>{devices}{''.join(p for p in parts if p.startswith('<interface'))}"
            "<interface type='network'><mac address='52:54:00:99:99:99'/></interface></devices>"
            f"{OVERRIDE if override else ''}</domain>")


# -- slave_requests ------------------------------------------------------------------------------

def test_one_nic_daemon_listens() -> None:
    [r] = slave_requests(domain(nic(), meta(vi(extra=" mode='l2' flag='bridge'"))), SOCKDIR)
    assert r.params() == {"master": "eth0", "name": name("525400000010"), "socket": "/run/vhost-ipvlan/vm1.sock",
                          "socket_mode": "server", "addresses": ["192.0.2.10/24"], "mac": "52:54:00:00:00:10",
                          "owner": f"libvirt:{UUID1}", "queues": 1, "dhcp": True, "hostname": "vm1"}
    assert r.port_params() == {"master": "eth0", "mode": "l2", "flag": "bridge"}


def test_qemu_listens_means_daemon_connects() -> None:
    [r] = slave_requests(domain(nic(mode="server", alias="net0"), meta(vi())), SOCKDIR)
    assert r.socket_mode == "client"
    assert r.alias == "net0"


def test_mac_is_case_insensitive_and_metadata_may_sit_directly_under_metadata() -> None:
    xml = domain(nic(mac="52:54:00:AB:00:10"),
                 f"<metadata><vi:interface xmlns:vi='{NS}' mac='52:54:00:ab:00:10' master='eth1'/></metadata>")
    [r] = slave_requests(xml, SOCKDIR)
    assert (r.mac, r.master, r.addresses) == ("52:54:00:ab:00:10", "eth1", ())


def test_interfaces_elsewhere_are_ignored() -> None:
    assert slave_requests(domain(nic(path="/var/run/ovs/vm1.sock")), SOCKDIR) == []
    assert slave_requests(domain(nic(path="/run/vhost-ipvlan")), SOCKDIR) == []


def test_two_nics_and_a_predeclared_one() -> None:
    xml = domain(nic(), nic(mac="52:54:00:00:00:20", path="/run/vhost-ipvlan/vm1b.sock"),
                 meta(vi(), vi(mac="52:54:00:00:00:20", addrs=("2001:db8::20/64",)),
                      vi(mac="52:54:00:00:00:30", extra=" socket='/run/vhost-ipvlan/vm1c.sock'",
                         addrs=("198.51.100.3/24",))))
    rs = slave_requests(xml, SOCKDIR)
    assert [r.name for r in rs] == [name("525400000010"), name("525400000020"), name("525400000030")]
    assert rs[2].socket == "/run/vhost-ipvlan/vm1c.sock" and rs[2].socket_mode == "server"


@pytest.mark.parametrize(("xml", "needle"), [
    (domain(nic()), "no <vi:interface mac='52:54:00:00:00:10'> in <metadata>"),
    (domain(nic(), meta(vi(master=""))), "has no master attribute"),
    (domain(nic(mac=None), meta(vi())), "has no <mac address>"),
    (domain(nic(), meta(vi(addrs=("192.0.2.300/24",)))), "address[0]"),
    (domain(nic(), meta(vi(extra=" mode='l4'"))), "mode 'l4' is not one of"),
    (domain(nic(), meta(vi(mac="01:00:5e:00:00:01"))), "multicast"),
    (domain(meta(vi(extra=" socket='/tmp/x.sock'"))), "is not inside /run/vhost-ipvlan"),
    ("<domain><name>x", "domain XML:"),
    ("<network/>", "not <domain>"),
])
def test_refusals(xml: str, needle: str) -> None:
    with pytest.raises(DomainError, match=None) as e:
        slave_requests(xml, SOCKDIR)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_slave_names_are_injective_and_owned_by_the_domain_uuid() -> None:
    assert slave_name(UUID1.upper(), "52:54:00:AA:00:01") == name("525400aa0001")
    assert len(slave_name(UUID1, "52:54:00:aa:00:01")) == 48
    # r9: "web 1" and "web_1" once got the same slave; names now follow the UUID
    [a] = slave_requests(domain(nic(), meta(vi()), name="web 1"), SOCKDIR)
    [b] = slave_requests(domain(nic(), meta(vi()), name="web_1", uuid=UUID2), SOCKDIR)
    assert a.name != b.name and (a.owner, b.owner) == (owner_of(UUID1), owner_of(UUID2))


@pytest.mark.parametrize(("path", "mode", "needle"), [
    ("/run/vhost-ipvlan/../x/y.sock", "client", "must be a file directly in /run/vhost-ipvlan"),  # r9
    ("/run/vhost-ipvlan/ctl/control.sock", "client", "must be a file directly in /run/vhost-ipvlan"),
    ("/run/vhost-ipvlan/qemu/vm1.sock", "client", "must be a file directly in /run/vhost-ipvlan "),
    ("/run/vhost-ipvlan/sub/vm1.sock", "server", "directly in /run/vhost-ipvlan/qemu or /run/vhost-ipvlan"),
    ("/run/vhost-ipvlan/.vm1.sock", "client", "must not start with '.'"),
    ("/run/vhost-ipvlan/vm&#127;.sock", "client", r"contains a control character ('\x7f')"),
    ("/run/vhost-ipvlan/vm&#10;1.sock", "client", r"contains a control character ('\n')"),
    ("/run/vhost-ipvlan/vm&#9;1.sock", "server", r"contains a control character ('\t')"),
])
def test_socket_paths_are_plain_names_in_the_socket_directory(path: str, mode: str, needle: str) -> None:
    xml = domain(nic(path=path, mode=mode), meta(vi()))
    with pytest.raises(DomainError) as e:
        slave_requests(xml, SOCKDIR)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert any(needle in p for p in problems(xml, SOCKDIR))
    predeclared = domain(meta(vi(extra=f" socket='{path}' socket-mode='{'client' if mode == 'server' else 'server'}'")))
    with pytest.raises(DomainError, match="socket"):
        slave_requests(predeclared, SOCKDIR)


def test_qemu_listens_sockets_may_sit_in_the_qemu_subdirectory_if_it_is_no_symlink(tmp_path: Path) -> None:
    (tmp_path / "qemu").mkdir()
    [r] = slave_requests(domain(nic(path=f"{tmp_path}/qemu/vm1.sock", mode="server"), meta(vi())), tmp_path)
    assert r.socket_mode == "client"
    (tmp_path / "qemu").rmdir()
    (tmp_path / "qemu").symlink_to("/etc")
    with pytest.raises(DomainError, match="resolves to /etc"):
        slave_requests(domain(nic(path=f"{tmp_path}/qemu/vm1.sock", mode="server"), meta(vi())), tmp_path)


@pytest.mark.parametrize(("xml", "needle"), [
    (domain(nic(), meta(vi(master='eth0&quot; ; flush ruleset #'))),
     "master: 'eth0\" ; flush ruleset #' is not a valid"),
    (domain(nic(), meta(vi(master="a" * 16))), "is not a valid interface name"),
    (domain(nic(), meta(vi()), name="vm&#127;"), "the name contains a control character"),
    (domain(nic(), meta(vi()), uuid="nope"), "no valid <uuid>"),
])
def test_hostile_names_are_refused_in_one_line(xml: str, needle: str) -> None:
    with pytest.raises(DomainError) as e:
        slave_requests(xml, SOCKDIR)
    assert needle in str(e.value) and "\n" not in str(e.value)


# -- problems ------------------------------------------------------------------------------------

def test_a_good_domain_has_no_problems() -> None:
    assert problems(domain(nic(), meta(vi())), SOCKDIR) == []


def test_problems_one_line_each() -> None:
    xml = domain(nic(), nic(mac="52:54:00:00:00:20", path="/srv/other.sock"), shared=False, override=False)
    found = problems(xml, SOCKDIR)
    assert any("no shared memory" in p for p in found)
    assert any("/srv/other.sock is not inside" in p for p in found)
    assert any("no <vi:interface mac='52:54:00:00:00:10'>" in p for p in found)
    assert any("vectors" in p and "alias='net0'" in p for p in found)
    assert all("\n" not in p for p in found)
    assert not any("vectors" in p for p in problems(xml.replace("type='qemu'", "type='kvm'"), SOCKDIR))
    assert not any("vectors" in p for p in problems(xml, SOCKDIR, msix_bug=False))


def test_numa_shared_memory_counts() -> None:
    xml = domain(nic(), meta(vi()), shared=False).replace(
        "<devices>", "<cpu><numa><cell id='0' cpus='0' memory='262144' memAccess='shared'/></numa></cpu><devices>")
    assert not any("shared memory" in p for p in problems(xml, SOCKDIR))


def test_msix_bug_is_qemu_7_2() -> None:
    assert msix_bug(7002000) and msix_bug(7002005)
    assert not msix_bug(8002000) and not msix_bug(7001000)


# -- permissions ---------------------------------------------------------------------------------

def test_allowed_by_owner_group_other() -> None:
    st = os.stat_result((stat.S_IFSOCK | 0o660, 0, 0, 0, 10, 20, 0, 0, 0, 0))
    assert allowed(st, 10, set(), 6)
    assert allowed(st, 11, {20}, 2)
    assert not allowed(st, 11, {21}, 2)
    assert allowed(st, 0, set(), 7)


def test_socket_problems() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as top:  # /tmp: every user may enter it
        Path(top).chmod(0o755)
        check_socket_problems(Path(top) / "s")


def check_socket_problems(d: Path) -> None:
    d.mkdir(mode=0o700)
    uid, gids = 64055, {64055}
    assert "cannot enter" in socket_problems(d / "a.sock", False, uid, gids)[0]
    d.chmod(0o755)
    assert socket_problems(d / "a.sock", False, uid, gids) == []  # not there yet: the hook creates it
    assert "cannot create files" in socket_problems(d / "a.sock", True, uid, gids)[0]
    (d / "f").write_text("")
    assert "not a socket" in socket_problems(d / "f", False, uid, gids)[0]
    d.chmod(0o775)  # audit 5: a group-writable directory for the daemon's sockets
    assert "is mode 0775 (group/other-writable): others can replace" in socket_problems(d / "a.sock", False, uid,
                                                                                         gids)[0]
    d.chmod(0o777)
    assert "without the sticky bit" in socket_problems(d / "a.sock", True, uid, gids)[0]
    d.chmod(0o1777)
    assert socket_problems(d / "a.sock", True, uid, gids) == []


# -- the hook ------------------------------------------------------------------------------------

class FakeDaemon:
    """Enough of the control API for the hook: ports, slaves, addresses in use."""

    def __init__(self, masters: tuple[str, ...] = ("eth0",), down: bool = False) -> None:
        self.masters, self.down = masters, down
        self.ports: dict[str, dict[str, Any]] = {}
        self.slaves: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []

    def __call__(self) -> FakeDaemon:
        if self.down:
            raise ControlUnavailable("cannot connect to the daemon at /x: No such file or directory")
        return self

    def __enter__(self) -> FakeDaemon:
        return self

    def __exit__(self, *a: object) -> None:
        pass

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        p = params or {}
        self.calls.append(method)
        if method == "port.list":
            return [{"mode": "l2", "flag": "bridge", **v} for v in self.ports.values()]
        if method == "slave.list":
            return list(self.slaves.values())
        if method == "port.add":
            if p["master"] not in self.masters:
                raise RemoteError("no_such_interface", f"params.master: no interface {p['master']}")
            self.ports[p["master"]] = {"master": p["master"], "mode": p.get("mode", "l2"),
                                       "flag": p.get("flag", "bridge")}
            return self.ports[p["master"]]
        if method in ("slave.add", "slave.change"):
            if method == "slave.add" and p["name"] in self.slaves:
                raise RemoteError("name_in_use", f"params.name: {p['name']} exists")
            for other in self.slaves.values():
                if other["name"] != p["name"] and set(other["addresses"]) & set(p["addresses"]):
                    raise RemoteError("address_in_use", f"params.addresses[0]: {p['addresses'][0]} is already "
                                      f"used by slave '{other['name']}' on master {p['master']}")
            self.slaves[p["name"]] = p
            return p
        if method == "slave.remove":
            if self.slaves.pop(p["name"], None) is None:
                raise RemoteError("not_found", f"params.name: no slave {p['name']}")
            return {}
        raise AssertionError(method)


def run_hook(d: FakeDaemon, op: str, xml: str) -> tuple[int, str]:
    err = io.StringIO()
    old, sys.stderr = sys.stderr, err
    try:
        rc = hook.run(["vm1", op, "begin", "-"], io.StringIO(xml), d, SOCKDIR)  # type: ignore[arg-type]
    finally:
        sys.stderr = old
    return rc, err.getvalue()


TWO = domain(nic(), nic(mac="52:54:00:00:00:20", path="/run/vhost-ipvlan/b.sock"),
             meta(vi(), vi(mac="52:54:00:00:00:20", addrs=("192.0.2.20/24",))))


def test_prepare_creates_port_and_slaves_release_removes_them() -> None:
    d = FakeDaemon()
    assert run_hook(d, "prepare", TWO) == (0, "")
    assert set(d.slaves) == {name("525400000010"), name("525400000020")} and "eth0" in d.ports
    assert run_hook(d, "prepare", TWO) == (0, "")  # left over: changed, not refused
    assert run_hook(d, "release", TWO) == (0, "")
    assert d.slaves == {}
    assert run_hook(d, "release", TWO) == (0, "")  # already gone: fine


def test_refused_slave_fails_prepare_and_undoes() -> None:
    d = FakeDaemon()
    d.slaves["other"] = {"name": "other", "addresses": ["192.0.2.20/24"]}
    rc, err = run_hook(d, "prepare", TWO)
    assert rc == 1
    assert err == ("vhost-ipvlan: error: domain vm1: params.addresses[0]: 192.0.2.20/24 is already used by "
                   "slave 'other' on master eth0\n")
    assert set(d.slaves) == {"other"}  # the first NIC's slave was removed again


def test_another_domains_slave_is_neither_changed_nor_removed() -> None:
    d = FakeDaemon()
    theirs: dict[str, Any] = {"name": name("525400000010"), "addresses": ["192.0.2.99/24"], "owner": owner_of(UUID2)}
    d.slaves[theirs["name"]] = dict(theirs)
    rc, err = run_hook(d, "prepare", TWO)
    assert rc == 1 and err.count("\n") == 1
    assert f"slave {theirs['name']} exists and belongs to libvirt:{UUID2}, not to this domain" in err
    assert d.slaves == {theirs["name"]: theirs}  # untouched; nothing of ours left
    assert run_hook(d, "release", TWO) == (0, "")
    assert d.slaves == {theirs["name"]: theirs}
    del d.slaves[theirs["name"]]["owner"]  # pre-created by hand (no owner): adopted
    assert run_hook(d, "prepare", TWO) == (0, "")
    assert d.slaves[theirs["name"]]["owner"] == owner_of(UUID1)


def test_unknown_master_and_daemon_down() -> None:
    rc, err = run_hook(FakeDaemon(masters=()), "prepare", TWO)
    assert rc == 1 and "no interface eth0" in err and err.count("\n") == 1
    rc, err = run_hook(FakeDaemon(down=True), "prepare", TWO)
    assert rc == 1 and "cannot connect to the daemon" in err
    assert run_hook(FakeDaemon(down=True), "release", TWO)[0] == 0


def test_port_mode_mismatch_is_refused() -> None:
    d = FakeDaemon()
    d.ports["eth0"] = {"master": "eth0", "mode": "l3", "flag": "bridge"}
    rc, err = run_hook(d, "prepare", domain(nic(), meta(vi(extra=" mode='l2'"))))
    assert rc == 1 and "is in mode l3" in err


def test_bad_xml_fails_prepare_only_and_other_ops_do_nothing() -> None:
    d = FakeDaemon()
    rc, err = run_hook(d, "prepare", domain(nic()))
    assert rc == 1 and "no <vi:interface" in err
    assert run_hook(d, "release", domain(nic()))[0] == 0
    assert run_hook(d, "started", "not xml")[0] == 0
    assert run_hook(d, "prepare", domain())[0] == 0 and d.calls == []


def test_install_writes_an_executable_hook(tmp_path: Path) -> None:
    path = hook.install(tmp_path, Path("/tmp/c.sock"), Path("/run/x"))
    assert path == tmp_path / "qemu.d" / "vhost-ipvlan"
    assert path.stat().st_mode & 0o777 == 0o755
    proc = subprocess.run([str(path), "vm1", "prepare", "begin", "-"], input="<domain><name>vm1</name></domain>",
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (0, "")
    proc = subprocess.run([str(path), "vm1", "prepare", "begin", "-"], input=domain(nic(path="/run/x/a.sock")),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith("vhost-ipvlan: error: domain vm1: interface 52:54:00:00:00:10: no <vi:interface")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown)")
def test_install_refuses_a_pythonpath_others_could_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The hook bakes in the installer's PYTHONPATH and libvirt runs it as root: a relative
    entry, or one a user could write to, ran that user's code as root at the next start."""
    from vhost_ipvlan import cli

    tmp_path.chmod(0o755)
    good = tmp_path / "good"
    good.mkdir(mode=0o755)
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    (sticky / "lib").mkdir(mode=0o755)  # root's, in a sticky directory: nobody else can swap it
    grp = tmp_path / "grp"
    grp.mkdir()
    grp.chmod(0o775)
    user = tmp_path / "user"
    (user / "lib").mkdir(parents=True, mode=0o755)
    os.chown(user, 4321, 4321)
    (tmp_path / "link").symlink_to(user / "lib")
    hooks = tmp_path / "hooks"
    cases = {
        "src": "PYTHONPATH entry 'src' is relative",
        f"{good}::{good}": "PYTHONPATH entry '' is relative",
        f"{good}:{grp}": f"PYTHONPATH entry '{grp}': '{grp}' is writable by group or others (mode 775)",
        str(user / "lib"): f"'{user}' is owned by uid 4321, not root",
        str(tmp_path / "link"): f"'{user}' is owned by uid 4321, not root",
        str(tmp_path / "missing"): f"'{tmp_path / 'missing'}': No such file or directory",
    }
    for pythonpath, message in cases.items():
        monkeypatch.setenv("PYTHONPATH", pythonpath)
        assert cli.main(["install-hook", "--hooks-dir", str(hooks)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("vhost-ipvlan: error: ") and message in err and err.count("\n") == 1, err
        assert err.rstrip().endswith("not installed (fix it or unset PYTHONPATH)"), err
        assert not (hooks / "qemu.d" / "vhost-ipvlan").exists()
    monkeypatch.setenv("PYTHONPATH", f"{good}:{sticky / 'lib'}")
    assert cli.main(["install-hook", "--hooks-dir", str(hooks)]) == 0
    assert f"export PYTHONPATH={good}:{sticky / 'lib'}\n" in (hooks / "qemu.d" / "vhost-ipvlan").read_text()


def test_learn_attribute_asks_for_a_learning_slave() -> None:
    [r] = slave_requests(domain(nic(), meta(vi(addrs=(), extra=" learn='yes'"))), SOCKDIR)
    assert r.learn is True and r.params()["learn"] is True and r.params()["addresses"] == []
    [r] = slave_requests(domain(nic(), meta(vi(extra=" learn='no'"))), SOCKDIR)
    assert "learn" not in r.params()
    with pytest.raises(DomainError, match="learn 'maybe' is not yes or no"):
        slave_requests(domain(nic(), meta(vi(extra=" learn='maybe'"))), SOCKDIR)


def test_problems_stay_one_line_whatever_the_xml_holds() -> None:
    """fuzz (domain): a newline in a path outside the socket directory reached a problem line."""
    xml = domain(nic(path="/&#10;x/vm1.sock"), nic(mac="52:54:00:00:00:20", path="/run/vhost-ipvlan/b&#10;.sock"),
                 name="vm&#10;1")
    found = problems(xml, SOCKDIR)
    assert found and all("\n" not in p for p in found)
    assert any("socket /\\nx/vm1.sock is not inside" in p for p in found)
    assert any("domain 'vm\\n1': the name contains a control character" in p for p in found)


def test_problems_and_errors_stay_one_line_whatever_the_xml_holds() -> None:
    # found by fuzz/h_domain.py: a socket path with an encoded newline made a two-line problem
    lines = problems(domain(nic(path="/&#10;host-ipvlan/vm1.sock"), meta(vi()), name="vm&#127;1"), SOCKDIR)
    assert lines and all("\n" not in line and "\x7f" not in line for line in lines), lines
    assert any("/\\nhost-ipvlan/vm1.sock" in line for line in lines), lines
    with pytest.raises(DomainError) as e:
        slave_requests(domain(nic(), meta(vi()), name="vm&#10;1&#127;"), SOCKDIR)
    assert "\n" not in str(e.value) and "\x7f" not in str(e.value)


# -- multiqueue: <driver queues='N'/> ------------------------------------------------------------

def mq_nic(queues: str) -> str:
    return nic().replace("<model type='virtio'/>", f"<model type='virtio'/><driver queues='{queues}'/>")


def test_driver_queues_become_the_slave_queues() -> None:
    [r] = slave_requests(domain(mq_nic("4"), meta(vi())), SOCKDIR)
    assert r.queues == 4 and r.params()["queues"] == 4


def test_a_pre_declared_nic_takes_queues_from_the_metadata() -> None:
    [r] = slave_requests(domain(meta(vi(extra=" socket='/run/vhost-ipvlan/later.sock' queues='2'"))), SOCKDIR)
    assert r.params()["queues"] == 2


@pytest.mark.parametrize(("queues", "match"), [("0", "from 1 to 16"), ("17", "from 1 to 16"), ("two", "not a number")])
def test_bad_driver_queues_are_one_line_naming_the_interface(queues: str, match: str) -> None:
    with pytest.raises(DomainError, match=f"interface 52:54:00:00:00:10: <driver queues>.*{match}"):
        slave_requests(domain(mq_nic(queues), meta(vi())), SOCKDIR)


def run_filter(d: FakeDaemon, op: str, xml: str) -> tuple[int, str, str]:
    """A filter operation (``migrate``/``restore``): exit status, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        rc = hook.run(["vm1", op, "begin", "-"], io.StringIO(xml), d, SOCKDIR)  # type: ignore[arg-type]
    finally:
        sys.stdout, sys.stderr = old
    return rc, out.getvalue(), err.getvalue()


def test_migrate_creates_the_slaves_on_the_destination_and_prints_the_xml_back() -> None:
    d = FakeDaemon()
    assert run_filter(d, "migrate", TWO) == (0, TWO, "")
    assert set(d.slaves) == {name("52:54:00:00:00:10"), name("52:54:00:00:00:20")}
    assert d.slaves[name("52:54:00:00:00:10")]["addresses"] == ["192.0.2.10/24"]
    assert run_hook(d, "prepare", TWO) == (0, "")  # prepare follows migrate: the same slaves, changed in place
    assert set(d.slaves) == {name("52:54:00:00:00:10"), name("52:54:00:00:00:20")}


def test_a_refused_migrate_cancels_the_migration_and_leaves_nothing() -> None:
    d = FakeDaemon()
    d.slaves["other"] = {"name": "other", "addresses": ["192.0.2.20/24"], "owner": UUID2}
    rc, out, err = run_filter(d, "migrate", TWO)
    assert rc == 1 and out == ""  # libvirt cancels the incoming migration; the source keeps running
    assert "192.0.2.20/24 is already used" in err and err.count("\n") == 1
    assert set(d.slaves) == {"other"}


def test_migrate_without_our_interfaces_changes_nothing_and_restore_is_passed_through() -> None:
    d = FakeDaemon()
    plain = domain()
    assert run_filter(d, "migrate", plain) == (0, plain, "")
    assert run_filter(d, "restore", TWO) == (0, TWO, "")
    assert d.calls == []
