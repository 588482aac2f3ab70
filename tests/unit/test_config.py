"""Configuration parsing: the documented shape, and one-line errors naming the key."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from vhost_ipvlan.config import DEFAULT_MODE, load, parse, parse_port, to_data
from vhost_ipvlan.errors import ConfigError

GOOD = """
[[port]]
master = "veth0"
mode = "l2"
flag = "bridge"
[[port.slave]]
name = "vm1"
socket = "/run/vhost-ipvlan/vm1.sock"
socket_mode = "server"
addresses = ["192.0.2.10/24", "2001:db8::10/64"]
[[port.slave]]
name = "vm2"
socket = "/run/vhost-ipvlan/vm2.sock"
socket_mode = "client"
addresses = ["192.0.2.11"]
mac = "52:54:00:00:00:02"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_good_config(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, GOOD))
    (port,) = cfg.ports
    assert (port.master, port.mode, port.flag) == ("veth0", "l2", "bridge")
    vm1, vm2 = port.slaves
    assert vm1.socket_mode == "server" and vm2.socket_mode == "client"
    assert [str(a) for a in vm1.addresses] == ["192.0.2.10/24", "2001:db8::10/64"]
    assert vm2.mac == bytes.fromhex("525400000002") and vm1.mac is None


def test_defaults() -> None:
    cfg = parse({"port": [{"master": "eth0", "slave": [{"name": "a", "socket": "/tmp/a.sock"}]}]})
    assert cfg.ports[0].mode == "l2" and cfg.ports[0].flag == "bridge"
    assert cfg.ports[0].slaves[0].socket_mode == "server"
    # the control API's port.add parses the same way
    assert parse_port("params", {"master": "eth0"}).mode == DEFAULT_MODE == "l2"


def test_default_mode_is_a_documented_departure() -> None:
    """The kernel's default is l3 (docs/kernel-behaviour.md §2); ours is l2, listed with its reason."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert "| A `[[port]]` without `mode` is `l2`" in readme
    assert "(default l2; the kernel's is l3" in readme


@pytest.mark.parametrize("mode", ["l2", "l3", "l3s"])
@pytest.mark.parametrize("flag", ["bridge", "private", "vepa"])
def test_every_mode_takes_every_flag(mode: str, flag: str) -> None:
    cfg = parse({"port": [{"master": "eth0", "mode": mode, "flag": flag}]})
    assert (cfg.ports[0].mode, cfg.ports[0].flag) == (mode, flag)


def test_qmp_keys_round_trip() -> None:
    cfg = parse({"port": [{"master": "eth0", "slave": [
        {"name": "a", "socket": "/tmp/a.sock", "qmp": "/run/qemu/a.qmp", "qmp_device": "net0"},
        {"name": "b", "socket": "/tmp/b.sock"}]}]})
    a, b = cfg.ports[0].slaves
    assert (a.qmp, a.qmp_device) == (Path("/run/qemu/a.qmp"), "net0") and (b.qmp, b.qmp_device) == (None, None)
    assert parse(to_data(cfg)) == cfg
    assert "qmp" not in to_data(cfg)["port"][0]["slave"][1]


BAD = [
    ('[[port]]\nmaster="v"\nfoo=1', "port[0].foo: unknown key"),
    ('[[port]]\nmode="l2"', "port[0].master: missing"),
    ('[[port]]\nmaster="v"\nmode="l4"', "port[0].mode: 'l4' is not one of l2, l3, l3s"),
    ('[[port]]\nmaster="v"\nflag="passthru"', "port[0].flag: 'passthru' is not one of bridge, private, vepa"),
    ('[[port]]\nmaster="v"\n[[port.slave]]\nname="a"\nsocket="/a"\naddresses=["192.0.2.300/24"]',
     "port[0].slave[0].addresses[0]: '192.0.2.300/24' is not an IPv4 or IPv6 address"),
    ('[[port]]\nmaster="v"\n[[port.slave]]\nname="a"\nsocket="/a"\naddresses=["224.0.0.1"]',
     "cannot be a slave address"),
    ('[[port]]\nmaster="v"\n[[port.slave]]\nname="a"\nsocket="/a"\naddresses=["192.0.2.1"]\n'
     '[[port.slave]]\nname="b"\nsocket="/b"\naddresses=["192.0.2.1/24"]',
     "port[0].slave[1].addresses[0]: 192.0.2.1 is already used by slave 'a' on master v"),
    ('[[port]]\nmaster="v"\n[[port.slave]]\nname="a"\nsocket="a.sock"', "must be an absolute path"),
    ('[[port]]\nmaster="v"\n[[port.slave]]\nname="a b"\nsocket="/a"', "port[0].slave[0].name"),
    ('[[port]]\nmaster="v"\n[[port.slave]]\nname="a"\nsocket="/a"\nsocket_mode="both"',
     "port[0].slave[0].socket_mode: 'both' is not one of server, client"),
    ('[[port]]\nmaster="v"\n[[port.slave]]\nname="a"\nsocket="/a"\nmac="01:00:00:00:00:01"', "multicast"),
    ('[[port]]\nmaster="v"\n[[port.slave]]\nname="a"\nsocket="/a"\n[[port.slave]]\nname="a"\nsocket="/b"',
     "port[0].slave[1].name: 'a' is already used"),
    ('[[port]]\nmaster="v"\n[[port]]\nmaster="v"', "port[1].master: 'v' is already port[0]"),
    ('[[port]]\nmaster="v"\n[[port.slave]]\nname="a"\nsocket="/a"\naddresses="192.0.2.1"',
     "expected a list"),
    ('[[port]]\nmaster=5', "port[0].master: expected a string, got int 5"),
    ("port = [", "not valid TOML"),
    ('[[port]]\nmaster="v"\n[[port.slave]]\nname="a"\nsocket="/a"\nqmp="q.sock"',
     "port[0].slave[0].qmp: 'q.sock' must be an absolute path"),
    ('[[port]]\nmaster="v"\n[[port.slave]]\nname="a"\nsocket="/a"\nqmp_device="net0"',
     "port[0].slave[0].qmp_device: needs qmp"),
    ('[[port]]\nmaster="v"\n[[port.slave]]\nname="a"\nsocket="/a"\nqmp="/q"\nqmp_device="0 x"',
     "port[0].slave[0].qmp_device: '0 x' is not a QEMU device id"),
    ('[[port]]\nmaster="v"\n[[port.slave]]\nname="a"\nsocket="/a"\nqmp="/a"',
     "port[0].slave[0].qmp: /a is the slave's vhost-user socket"),
    # audit 6, 10-12: control characters in paths; names that would break an nft script or iproute2
    ('[[port]]\nmaster="v"\n[[port.slave]]\nname="a"\nsocket="/run/x/vm\\u007f.sock"',
     "port[0].slave[0].socket: '/run/x/vm\\x7f.sock' contains a control character ('\\x7f')"),
    ('[[port]]\nmaster="v"\n[[port.slave]]\nname="a"\nsocket="/run/x/vm\\n.sock"',
     "contains a control character ('\\n')"),
    ('[[port]]\nmaster="v"\n[[port.slave]]\nname="a"\nsocket="/a"\nqmp="/q\\u0085"', "control character"),
    ('[[port]]\nmaster="e\\"; flush ruleset #"', "port[0].master: 'e\"; flush ruleset #' is not a valid interface"),
    ('[[port]]\nmaster="e\\";x#"', "port[0].master: 'e\";x#' is not a valid interface name"),
    ('[[port]]\nmaster="eth 0"', "is not a valid interface name"),
    ('[[port]]\nmaster="eth0:1"', "is not a valid interface name"),
    ('[[port]]\nmaster="a/b"', "is not a valid interface name"),
    ('[[port]]\nmaster="abcdefghijklmnop"', "is not a valid interface name"),
    ('[[port]]\nmaster=".."', "is not a valid interface name"),
    ('[[port]]\nmaster="v"\n[[port.slave]]\nname="a"\nsocket="/a"\nowner="x y"', "port[0].slave[0].owner"),
    ('[[port]]\nmaster="v"\n[[port.slave]]\nname="a"\nsocket="/a"\nqueues=0',
     "port[0].slave[0].queues: expected an integer from 1 to 16 (queue pairs), got 0"),
    ('[[port]]\nmaster="v"\n[[port.slave]]\nname="a"\nsocket="/a"\nqueues=17', "from 1 to 16"),
    ('[[port]]\nmaster="v"\n[[port.slave]]\nname="a"\nsocket="/a"\nqueues="2"', "from 1 to 16"),
    ('[[port]]\nmaster="v"\n[[port.slave]]\nname="a"\nsocket="/a"\nqueues=true', "from 1 to 16"),
]


def test_queues_default_to_one_and_round_trip() -> None:
    cfg = parse({"port": [{"master": "eth0", "slave": [{"name": "a", "socket": "/a.sock"},
                                                       {"name": "b", "socket": "/b.sock", "queues": 16}]}]})
    assert [s.queues for s in cfg.ports[0].slaves] == [1, 16]
    assert "queues" not in to_data(cfg)["port"][0]["slave"][0]
    assert parse(to_data(cfg)) == cfg


def test_the_slave_index_counts_the_pairs_beyond_each_first() -> None:
    from vhost_ipvlan.config import SlaveIndex

    cfg = parse({"port": [{"master": "eth0", "slave": [{"name": "a", "socket": "/a.sock", "queues": 4},
                                                       {"name": "b", "socket": "/b.sock", "queues": 2}]}]})
    index = SlaveIndex(cfg.ports)
    assert index.extra_pairs == 4
    a, b = cfg.ports[0].slaves
    index.add("eth0", replace(a, queues=1))  # a change in place
    assert index.extra_pairs == 1
    index.remove("eth0", b)
    assert index.extra_pairs == 0


def test_owner_round_trips() -> None:
    cfg = parse({"port": [{"master": "eth0", "slave": [
        {"name": "a", "socket": "/tmp/a.sock", "owner": "libvirt:6f1c3d2e-8a4b-4c5d-9e0f-112233445566"}]}]})
    assert cfg.ports[0].slaves[0].owner == "libvirt:6f1c3d2e-8a4b-4c5d-9e0f-112233445566"
    assert parse(to_data(cfg)) == cfg


def test_peer_pinning_keys_take_names_or_numbers_and_round_trip() -> None:
    import pwd

    cfg = parse({"port": [{"master": "eth0", "slave": [
        {"name": "a", "socket": "/tmp/a.sock", "peer_uid": "nobody", "peer_gid": 123}]}]})
    a = cfg.ports[0].slaves[0]
    assert (a.peer_uid, a.peer_gid) == (pwd.getpwnam("nobody").pw_uid, 123)
    assert parse(to_data(cfg)) == cfg
    with pytest.raises(ConfigError, match=r"port\[0\]\.slave\[0\]\.peer_uid: no user named 'no-such-user'"):
        parse({"port": [{"master": "eth0", "slave": [{"name": "a", "socket": "/a", "peer_uid": "no-such-user"}]}]})


def test_kernel_interface_names_are_accepted() -> None:
    for name in ("eth0", "enp0s31f6", "br-lan.10", "wg_0", "veth@x", "a+b", "x" * 15):
        assert parse({"port": [{"master": name}]}).ports[0].master == name


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_config_one_line_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_cli_reports_config_error_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, '[[port]]\nmaster="v"\nmode="l3s"\nflag="passthru"')
    for cmd in (["check-config", str(path)], ["serve", "--config", str(path)]):
        proc = subprocess.run([sys.executable, "-m", "vhost_ipvlan.cli", *cmd], capture_output=True, text=True)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [
            "vhost-ipvlan: error: port[0].flag: 'passthru' is not one of bridge, private, vepa"
        ]


def test_cli_check_config_ok(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "vhost_ipvlan.cli", "check-config", str(write(tmp_path, GOOD))],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "1 master(s), 2 slave(s)" in proc.stdout


def test_cli_print_capabilities() -> None:
    proc = subprocess.run([sys.executable, "-m", "vhost_ipvlan.cli", "--print-capabilities"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and '"type": "net"' in proc.stdout


def test_slave_cli_qmp_flags() -> None:
    from vhost_ipvlan.cli import build_parser
    from vhost_ipvlan.ctl import request

    def req(*argv: str) -> tuple[str, dict[str, object]]:
        return request(build_parser().parse_args(["slave", *argv]))

    assert req("add", "a", "--master", "eth0", "--socket", "/a.sock", "--qmp", "/q.sock", "--qmp-device", "net0") == (
        "slave.add", {"name": "a", "master": "eth0", "socket": "/a.sock", "qmp": "/q.sock", "qmp_device": "net0"})
    assert req("change", "a", "--qmp-device", "net1") == ("slave.change", {"name": "a", "qmp_device": "net1"})
    assert req("change", "a", "--no-qmp") == ("slave.change", {"name": "a", "qmp": None, "qmp_device": None})
    with pytest.raises(ConfigError, match="qmp_device: needs qmp"):
        req("add", "a", "--master", "eth0", "--socket", "/a.sock", "--qmp-device", "net0")
    assert req("change", "a", "--queues", "4") == ("slave.change", {"name": "a", "queues": 4})
    with pytest.raises(ConfigError, match=r"params\.queues: expected an integer from 1 to 16"):
        req("change", "a", "--queues", "32")


HOSTILE = ['"', "\\", "'", "#", "=", "[x]", "\x7f", "\n", "\r", "\t", "\x00", "\x1b[31m", "\x85", "\u2028", "é",
           '\\u0041', '"""', "\\\n"]


@pytest.mark.parametrize("text", HOSTILE)
def test_state_writer_escapes_every_string_so_the_file_loads_back(text: str) -> None:
    """audit 6 (r9): a DEL in a socket path made a state file the daemon could not start from."""
    import tomllib
    from dataclasses import replace

    from vhost_ipvlan.control import state

    base = parse({"port": [{"master": "eth0", "slave": [{"name": "a", "socket": "/tmp/a.sock"}]}]})
    slave = replace(base.ports[0].slaves[0], socket=Path(f"/tmp/{text}.sock"), qmp=Path(f"/q/{text}"))
    cfg = replace(base, ports=(replace(base.ports[0], slaves=(slave,)),))
    data = tomllib.loads(state.dumps(cfg))
    assert data["port"][0]["slave"][0]["socket"] == f"/tmp/{text}.sock"
    assert data["port"][0]["slave"][0]["qmp"] == f"/q/{text}"
    try:
        parsed = parse(data)
    except ConfigError as e:  # control characters are refused when read back: one line
        assert "control character" in str(e) and "\n" not in str(e)
    else:
        assert parsed == cfg
