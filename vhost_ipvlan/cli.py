"""``vhost-ipvlan``: the command line.

Rules: bad input gets one line on stderr naming what is wrong, and exit status 2
(configuration/usage) or 1 (the host refused: interface, nftables, socket);
never a traceback for an expected error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .config import load
from .errors import ConfigError, UplinkError
from .vhost_user.session import DEFAULT_FEATURES, DEFAULT_PROTOCOL_FEATURES

PROG = "vhost-ipvlan"


def _capabilities() -> dict[str, object]:
    return {
        "type": "net",
        "features": [f"{DEFAULT_FEATURES:#x}"],
        "protocol-features": [f"{DEFAULT_PROTOCOL_FEATURES:#x}"],
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="IPvlan for virtual machines (vhost-user backend)")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    p.add_argument("--print-capabilities", action="store_true",
                   help="print the vhost-user back-end capabilities as JSON and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser("serve", help="run the daemon")
    s.add_argument("--config", "-c", type=Path, required=True, help="TOML configuration file")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument("--metrics", metavar="ADDRESS:PORT",
                   help="serve Prometheus metrics on http://ADDRESS:PORT/metrics (e.g. 127.0.0.1:9100)")
    c = sub.add_parser("check-config", help="validate a configuration file and exit")
    c.add_argument("config", type=Path)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.print_capabilities:
        print(json.dumps(_capabilities()))
        return 0
    if args.command is None:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: a command is required (serve, check-config)", file=sys.stderr)
        return 2
    try:
        if args.command == "check-config":
            cfg = load(args.config)
            n = sum(len(p.slaves) for p in cfg.ports)
            print(f"{args.config}: ok ({len(cfg.ports)} master(s), {n} slave(s))")
            return 0
        cfg = load(args.config)
        if args.metrics is not None:
            from .daemon.metrics import parse_address

            parse_address(args.metrics)
        logging.basicConfig(
            level=getattr(logging, args.log_level.upper()),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        from .daemon.server import serve

        serve(cfg, args.metrics)
        return 0
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except UplinkError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
