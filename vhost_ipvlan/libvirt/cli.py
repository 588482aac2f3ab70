"""The libvirt subcommands of ``vhost-ipvlan``: ``install-hook``, ``libvirt watch``, ``libvirt check``.

Rules: as the rest of the CLI (one line on stderr, exit 2 for usage, 1 when the
host refuses); ``libvirt check`` prints one line per problem and exits 1 if any.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from ..control.client import DEFAULT_SOCKET
from .domain import DEFAULT_SOCKET_DIR
from .hook import HOOKS_DIR

DEFAULT_URI = "qemu:///system"


def add_parsers(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--control", type=Path, default=DEFAULT_SOCKET, metavar="PATH",
                        help=f"the daemon's control socket (default {DEFAULT_SOCKET})")
    common.add_argument("--socket-dir", type=Path, default=DEFAULT_SOCKET_DIR, metavar="DIR",
                        help=f"vhost-user sockets inside DIR are vhost-ipvlan's (default {DEFAULT_SOCKET_DIR})")
    p = sub.add_parser("install-hook", parents=[common], help="install the libvirt qemu hook")
    p.add_argument("--hooks-dir", type=Path, default=HOOKS_DIR, metavar="DIR",
                   help=f"libvirt's hooks directory (default {HOOKS_DIR}); the hook goes to DIR/qemu.d/")
    lv = sub.add_parser("libvirt", help="libvirt integration (watcher, checks)")
    la = lv.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (("watch", "follow libvirt: hotplug, daemon restarts, master link (QMP)"),
                       ("check", "report what would break a domain's vhost-ipvlan NICs")):
        p = la.add_parser(name, parents=[common], help=text)
        p.add_argument("--uri", default=DEFAULT_URI, help=f"libvirt URI (default {DEFAULT_URI})")
        if name == "check":
            p.add_argument("domain")
        else:
            p.add_argument("--interval", type=float, default=1.0, help="daemon poll period, seconds (default 1)")
            p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace) -> int:
    if args.command == "install-hook":
        from ..errors import HookError
        from .hook import install

        try:
            path = install(args.hooks_dir, args.control, args.socket_dir)
        except HookError as e:
            print(f"vhost-ipvlan: error: {e}", file=sys.stderr)
            return 1
        print(f"installed {path}; libvirt reads hooks when it starts: restart libvirtd if this hook is new")
        return 0
    try:
        import libvirt
    except ImportError:
        print("vhost-ipvlan: error: libvirt-python is not installed (pip install 'vhost-ipvlan[libvirt]')",
              file=sys.stderr)
        return 1
    try:
        if args.action == "check":
            from .check import check

            found = check(args.domain, args.uri, args.socket_dir, args.control)
            for line in found:
                print(line)
            if not found:
                print(f"domain {args.domain}: ok")
            return 1 if found else 0
        from .watch import Watcher

        logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        Watcher(args.uri, args.control, args.socket_dir, args.interval).run()
        return 0
    except libvirt.libvirtError as e:
        print(f"vhost-ipvlan: error: libvirt: {e.get_error_message()}", file=sys.stderr)
        return 1
