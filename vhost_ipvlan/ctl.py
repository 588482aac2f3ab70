"""The control subcommands of ``vhost-ipvlan``: ``port``, ``slave``, ``stats``.

Rules: arguments are checked here with the configuration file's own parsers
(``config.parse_slave``...), so a typo fails before the daemon is asked (exit 2,
one line); a daemon refusal or an unreachable daemon is one line and exit 1.
Output is a table, or with ``--json`` the API's result as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from . import config as cfg
from .config import SOCKET_MODES
from .control.client import DEFAULT_SOCKET, Client
from .switch.decisions import FLAGS as PORT_FLAGS
from .switch.decisions import MODES


def add_parsers(sub: Any) -> None:
    """Add ``port``, ``slave`` and ``stats`` to the CLI's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--control", type=Path, default=DEFAULT_SOCKET, metavar="PATH",
                        help=f"the daemon's control socket (default {DEFAULT_SOCKET})")
    common.add_argument("--json", action="store_true", help="print the API's JSON result")

    port = sub.add_parser("port", help="list and manage ports (masters)")
    pa = port.add_subparsers(dest="action", metavar="ACTION", required=True)
    pa.add_parser("list", parents=[common], help="list ports")
    for action in ("add", "change"):
        p = pa.add_parser(action, parents=[common], help=f"{action} a port")
        p.add_argument("master")
        p.add_argument("--mode", choices=MODES)
        p.add_argument("--flag", choices=PORT_FLAGS)
    p = pa.add_parser("remove", parents=[common], help="remove a port (it must have no slaves)")
    p.add_argument("master")

    slave = sub.add_parser("slave", help="list and manage slaves (guest NICs)")
    sa = slave.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sa.add_parser("list", parents=[common], help="list slaves")
    p.add_argument("--master")
    for action in ("add", "change"):
        p = sa.add_parser(action, parents=[common], help=f"{action} a slave")
        p.add_argument("name")
        p.add_argument("--master", required=action == "add")
        p.add_argument("--socket", required=action == "add", help="vhost-user socket path")
        p.add_argument("--socket-mode", choices=SOCKET_MODES)
        p.add_argument("--address", action="append", metavar="ADDR[/PREFIX]",
                       help="an address of the slave (repeat; on change, replaces all)")
        p.add_argument("--mac")
        p.add_argument("--qmp", metavar="PATH", help="the guest's QMP socket (multicast filter from its RX filter)")
        p.add_argument("--qmp-device", metavar="ID", help="with --qmp: the NIC's QEMU device id")
        p.add_argument("--learn", action="store_true", default=None,
                       help="learn the guest's addresses from its traffic (mode l2; up to 1 IPv4 + 4 IPv6)")
        p.add_argument("--allow-router", action="store_true", default=None,
                       help="let the guest send Router Advertisements, Redirects and DHCP server messages")
        p.add_argument("--dhcp", action="store_true", default=None,
                       help="the daemon answers the guest's DHCPv4, DHCPv6 and Router Solicitations (the default)")
        p.add_argument("--hostname", help="the host name DHCP gives the guest (default: the slave's name)")
        p.add_argument("--queues", type=int, metavar="N",
                       help="virtio-net queue pairs offered (1-16, default 1; QEMU's queues=N; on change: from "
                            "the guest's next connection)")
        if action == "change":
            p.add_argument("--no-learn", action="store_true", help="stop learning (forgets learned addresses)")
            p.add_argument("--no-allow-router", action="store_true",
                           help="guard again: drop the guest's RAs, Redirects and DHCP server messages")
            p.add_argument("--no-dhcp", action="store_true",
                           help="do not answer the guest's DHCPv4, DHCPv6 and RS: they are switched like any frame")
            p.add_argument("--no-addresses", action="store_true", help="remove every address")
            p.add_argument("--no-mac", action="store_true", help="forget the configured MAC")
            p.add_argument("--no-hostname", action="store_true", help="DHCP gives the slave's name as host name")
            p.add_argument("--no-qmp", action="store_true", help="forget qmp and qmp_device (back to snooping)")
    p = sa.add_parser("remove", parents=[common], help="remove a slave (closes its socket)")
    p.add_argument("name")

    p = sub.add_parser("stats", parents=[common], help="show counters")
    p.add_argument("slave", nargs="?")


def request(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The API method and params for parsed arguments; raises ConfigError for bad values."""
    if args.command == "stats":
        return "stats", ({"slave": args.slave} if args.slave else {})
    method = f"{args.command}.{args.action}"
    params: dict[str, Any] = {}
    if args.command == "port":
        if args.action != "list":
            params["master"] = args.master
        for key in ("mode", "flag"):
            if getattr(args, key, None) is not None:
                params[key] = getattr(args, key)
        if args.action in ("add", "change"):
            cfg.parse_port("params", params)
        return method, params
    if args.action == "list":
        return method, ({"master": args.master} if args.master else {})
    params["name"] = args.name
    if args.action == "remove":
        return method, params
    for key in ("master", "socket", "socket_mode", "mac", "qmp", "qmp_device", "queues", "hostname"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    if args.address is not None:
        params["addresses"] = args.address
    if args.learn:
        params["learn"] = True
    if args.allow_router:
        params["allow_router"] = True
    if args.dhcp:
        params["dhcp"] = True
    if args.action == "change":
        if args.no_addresses:
            params["addresses"] = []
        if args.no_mac:
            params["mac"] = None
        if args.no_hostname:
            params["hostname"] = None
        if args.no_qmp:
            params["qmp"] = params["qmp_device"] = None
        if args.no_learn:
            params["learn"] = False
        if args.no_allow_router:
            params["allow_router"] = False
        if args.no_dhcp:
            params["dhcp"] = False
    probe = {"socket": "/probe", **{k: v for k, v in params.items() if k != "master" and v is not None}}
    if args.action == "change" and "qmp_device" in probe and "qmp" not in probe:
        probe["qmp"] = "/probe.qmp"  # the slave's own qmp: the daemon checks
    cfg.parse_slave("params", probe)  # same checks as the daemon's, before asking it
    return method, params


def run(args: argparse.Namespace) -> int:
    method, params = request(args)
    with Client(args.control) as client:
        result = client.call(method, params)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(render(method, result), end="")
    return 0


def render(method: str, result: Any) -> str:
    if method == "port.list":
        return table(["MASTER", "MODE", "FLAG", "SLAVES"],
                     [[p["master"], p["mode"], p["flag"], ",".join(p["slave"]) or "-"] for p in result])
    if method == "slave.list":
        return table(["NAME", "MASTER", "SOCKET", "ROLE", "ADDRESSES", "MAC", "STATE"],
                     [[s["name"], s["master"], s["socket"], s["socket_mode"], _addresses(s),
                       s.get("mac", "learned"), "up" if s.get("up") else
                       ("connected" if s.get("connected") else "down")] for s in result])
    if method == "stats":
        rows = []
        for master, m in sorted(result.items()):
            rows.append([master, "(master)", "-", str(m["uplink_rx_packets"]), "-", str(m["uplink_tx_packets"]),
                         "-", _drops(m["drops"])])
            for name, s in sorted(m["slaves"].items()):
                rows.append([master, name, "up" if s["up"] else "down", str(s["rx_packets"]), str(s["rx_bytes"]),
                             str(s["tx_packets"]), str(s["tx_bytes"]), _drops(s["drops"])])
        return table(["MASTER", "SLAVE", "STATE", "RX_PKTS", "RX_BYTES", "TX_PKTS", "TX_BYTES", "DROPS"], rows)
    if isinstance(result, dict) and "name" in result:
        return f"slave {result['name']}: ok\n"
    if isinstance(result, dict) and "master" in result:
        return f"port {result['master']}: ok\n"
    return "ok\n"


def _addresses(slave: dict[str, Any]) -> str:
    """Configured addresses, then learned ones marked ``(learned)``; ``learning`` when
    a learning slave has learned none yet."""
    shown = [*slave["addresses"], *(f"{a}(learned)" for a in slave.get("learned", []))]
    if not shown and slave.get("learn"):
        return "learning"
    return ",".join(shown) or "-"


def _drops(drops: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(drops.items())) or "-"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n"
                   for r in [header, *rows])
