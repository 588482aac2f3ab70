"""``vhost-ipvlan``: the command line.

Rules: bad input gets one line on stderr naming what is wrong, and exit status 2
(configuration/usage) or 1 (the host or the daemon refused: interface, nftables,
socket, a control request); never a traceback for an expected error.
The control subcommands (``port``, ``slave``, ``stats``) live in ``ctl.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from . import __version__, ctl
from .config import Config, load
from .control import state as state_file
from .control.client import DEFAULT_SOCKET
from .errors import ConfigError, ControlUnavailable, InternalError, RemoteError, UplinkError
from .libvirt import cli as libvirt_cli
from .vhost_user.session import DEFAULT_FEATURES, DEFAULT_PROTOCOL_FEATURES

PROG = "vhost-ipvlan"
DEFAULT_STATE = Path("/var/lib/vhost-ipvlan/state.toml")


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _capabilities() -> dict[str, object]:
    return {
        "type": "net",
        "features": [f"{DEFAULT_FEATURES:#x}"],
        "protocol-features": [f"{DEFAULT_PROTOCOL_FEATURES:#x}"],
    }


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="IPvlan for virtual machines (vhost-user backend)")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    p.add_argument("--print-capabilities", action="store_true",
                   help="print the vhost-user back-end capabilities as JSON and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser("serve", help="run the daemon")
    s.add_argument("--config", "-c", type=Path,
                   help="TOML configuration file: used at start when there is no state file, and on SIGHUP")
    s.add_argument("--state", type=Path, default=DEFAULT_STATE, metavar="PATH",
                   help=f"state file, rewritten on every change and preferred at start (default {DEFAULT_STATE})")
    s.add_argument("--control", type=Path, default=DEFAULT_SOCKET, metavar="PATH",
                   help=f"control socket, mode 0600 (default {DEFAULT_SOCKET})")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument("--metrics", metavar="ADDRESS:PORT",
                   help="serve Prometheus metrics on http://ADDRESS:PORT/metrics (e.g. 127.0.0.1:9100)")
    c = sub.add_parser("check-config", help="validate a configuration file and exit")
    c.add_argument("config", type=Path)
    ctl.add_parsers(sub)
    libvirt_cli.add_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.print_capabilities:
        print(json.dumps(_capabilities()))
        return 0
    if args.command is None:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: a command is required "
              "(serve, check-config, port, slave, stats, install-hook, libvirt)", file=sys.stderr)
        return 2
    try:
        if args.command == "check-config":
            cfg = load(args.config)
            n = sum(len(p.slaves) for p in cfg.ports)
            print(f"{args.config}: ok ({len(cfg.ports)} master(s), {n} slave(s))")
            return 0
        if args.command in ("port", "slave", "stats"):
            return ctl.run(args)
        if args.command in ("install-hook", "libvirt"):
            return libvirt_cli.run(args)
        cfg = _initial(args.state, args.config)
        if args.metrics is not None:
            from .daemon.metrics import parse_address

            parse_address(args.metrics)
        logging.basicConfig(
            level=getattr(logging, args.log_level.upper()),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        from .daemon.server import serve

        serve(cfg, config_path=args.config, state_path=args.state, control_path=args.control, metrics=args.metrics)
        return 0
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except (UplinkError, RemoteError, ControlUnavailable, InternalError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _initial(state: Path, config: Path | None) -> Config:
    """What the daemon starts from: the state file if it exists, else the config file."""
    if state.exists():
        try:
            return state_file.load(state)
        except ConfigError as e:
            msg = str(e)
            raise ConfigError(msg if msg.startswith(str(state)) else f"{state}: {msg}") from e
    if config is None:
        return Config(())
    return load(config)


if __name__ == "__main__":
    sys.exit(main())
