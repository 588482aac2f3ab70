"""The ``[daemon]`` table (socket owner, group, permissions) and the metrics exposition."""

from __future__ import annotations

import grp
import pwd
from typing import Any

import pytest

from vhost_ipvlan.config import default_socket_group, parse
from vhost_ipvlan.daemon.metrics import exposition, parse_address
from vhost_ipvlan.errors import ConfigError


def test_daemon_defaults() -> None:
    d = parse({}).daemon
    assert d.socket_owner == -1 and d.socket_permissions == 0o660
    kvm = [g.gr_gid for g in grp.getgrall() if g.gr_name == "kvm"]
    assert d.socket_group == default_socket_group() == (kvm[0] if kvm else 0)


def test_daemon_table_names_numbers_and_octal() -> None:
    d = parse({"daemon": {"socket_owner": "root", "socket_group": "root", "socket_permissions": 0o640}}).daemon
    assert (d.socket_owner, d.socket_group, d.socket_permissions) == (0, 0, 0o640)
    d = parse({"daemon": {"socket_owner": 123, "socket_group": "456", "socket_permissions": "0600"}}).daemon
    assert (d.socket_owner, d.socket_group, d.socket_permissions) == (123, 456, 0o600)
    assert parse({"daemon": {"socket_owner": "nobody"}}).daemon.socket_owner == pwd.getpwnam("nobody").pw_uid


@pytest.mark.parametrize("table, message", [
    ({"socket_owner": "no-such-user-x"}, "daemon.socket_owner: no user named 'no-such-user-x' on this host"),
    ({"socket_group": "no-such-group-x"}, "daemon.socket_group: no group named 'no-such-group-x' on this host"),
    ({"socket_permissions": "rw"}, "daemon.socket_permissions: 'rw' is not a permission mode like 0o660 or \"0660\""),
    ({"socket_permissions": 0o1777}, "daemon.socket_permissions: 1023 is not a permission mode"),
    ({"socket_permissions": 0o060}, "daemon.socket_permissions: 0o60 must give the owner read and write (0o600)"),
    ({"socket_mode": "0660"}, "daemon.socket_mode: unknown key"),
])
def test_daemon_table_errors_are_one_line(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse({"daemon": table})
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_parse_metrics_address() -> None:
    assert parse_address("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert parse_address("[::1]:9100") == ("::1", 9100)
    for bad in ("9100", "host:", ":9100", "host:0", "host:70000", "host:x"):
        with pytest.raises(ConfigError):
            parse_address(bad)


def test_exposition_reads_stats() -> None:
    stats = {"eth0": {
        "uplink_rx_packets": 5, "uplink_tx_packets": 6, "drops": {"runt": 1}, "link": "down", "mtu": 9000,
        "slaves": {"vm1": {"up": True, "link": "down", "rx_packets": 1, "rx_bytes": 60, "tx_packets": 2,
                           "tx_bytes": 120, "drops": {"master_down": 2}}},
    }}
    text = exposition(stats).decode()
    for line in (
        'vhost_ipvlan_slave_receive_packets_total{master="eth0",slave="vm1"} 1.0',
        'vhost_ipvlan_slave_receive_bytes_total{master="eth0",slave="vm1"} 60.0',
        'vhost_ipvlan_slave_transmit_packets_total{master="eth0",slave="vm1"} 2.0',
        'vhost_ipvlan_slave_transmit_bytes_total{master="eth0",slave="vm1"} 120.0',
        'vhost_ipvlan_slave_drops_total{master="eth0",reason="master_down",slave="vm1"} 2.0',
        'vhost_ipvlan_slave_up{master="eth0",slave="vm1"} 1.0',
        'vhost_ipvlan_slave_carrier{master="eth0",slave="vm1"} 0.0',
        'vhost_ipvlan_master_receive_packets_total{master="eth0"} 5.0',
        'vhost_ipvlan_master_transmit_packets_total{master="eth0"} 6.0',
        'vhost_ipvlan_master_drops_total{master="eth0",reason="runt"} 1.0',
        'vhost_ipvlan_master_up{master="eth0"} 0.0',
        'vhost_ipvlan_master_mtu_bytes{master="eth0"} 9000.0',
    ):
        assert line in text.splitlines(), line
