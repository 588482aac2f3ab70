"""Harness (e): libvirt domain XML into the hook (``libvirt.hook.run``) and ``domain.problems``.

The input is the domain XML (UTF-8, undecodable bytes replaced, as a text stdin
would give them). The hook runs ``prepare`` then ``release`` against the real
control server of harness (d), in process (a fake ``Client`` whose ``call`` goes
through ``ControlServer.handle_line`` with (d)'s invariants); ``problems`` runs on
the same XML.

Invariants: the hook returns 0 or 1 and raises nothing; a failed ``prepare``
leaves no slave behind (a port it added stays: documented) and prints exactly one line; after
``release`` none of the domain's slaves is left; every slave is named and owned
after the domain's UUID (``slave_name``, ``owner_of``) and names are distinct; ``problems`` and
``slave_requests`` raise nothing but ``DomainError``; problems are one line each.
"""

from __future__ import annotations

import contextlib
import io
import itertools
from pathlib import Path
from types import TracebackType
from typing import Any

from vhost_ipvlan.control import protocol
from vhost_ipvlan.control.server import ControlServer
from vhost_ipvlan.errors import DomainError, RemoteError
from vhost_ipvlan.libvirt import hook
from vhost_ipvlan.libvirt.domain import owner_of, parse, problems, slave_name, slave_requests

from .common import check
from .h_control import fake_io, handle, make_server

SOCKDIR = Path("/run/vhost-ipvlan")


class InprocClient:
    """``control.client.Client`` without the socket: the server is called directly."""

    def __init__(self, server: ControlServer) -> None:
        self.server = server
        self.ids = itertools.count(1)

    def __enter__(self) -> InprocClient:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        pass

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        answer = handle(self.server, protocol.request(next(self.ids), method, params))
        if "error" in answer:
            raise RemoteError(str(answer["error"]["code"]), str(answer["error"]["message"]))
        return answer["result"]


def _hook(server: ControlServer, op: str, xml: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = hook.run(["fuzz", op, "begin", "-"], io.StringIO(xml), lambda: InprocClient(server), SOCKDIR)  # type: ignore[arg-type, return-value]
    return rc, err.getvalue()


def test_one_input(data: bytes) -> None:
    xml = data.decode("utf-8", "replace")
    for line in problems(xml, SOCKDIR):
        check("\n" not in line, f"problem is not one line: {line!r}")
    try:
        requests = slave_requests(xml, SOCKDIR)
    except DomainError as e:
        check("\n" not in str(e), f"DomainError is not one line: {e!r}")
        requests = []
    names = [r.name for r in requests]
    check(len(set(names)) == len(names), f"two slaves with one name: {names}")
    if requests:
        uuid = parse(xml).uuid
        check(uuid is not None, "slave requests from a domain without a UUID")
        for r in requests:
            check(r.name == slave_name(uuid, r.mac) and r.owner == owner_of(uuid),  # type: ignore[arg-type]
                  f"{r.name} (owner {r.owner}) is not the domain's")
    with fake_io():
        _hooks(xml, names)


def _hooks(xml: str, names: list[str]) -> None:
    server = make_server()
    before = {s.name for _, s in server.topology.config.slaves()}
    rc, err = _hook(server, "prepare", xml)
    check(rc in (0, 1), f"prepare exit status {rc}")
    if rc == 1:
        check(err.count("\n") == 1, f"prepare failed with {err!r}")
        after = {s.name for _, s in server.topology.config.slaves()}
        check(after == before, f"a failed prepare left slaves {after - before} behind")  # (a port it added stays)
    else:
        have = {s.name for _, s in server.topology.config.slaves()}
        check(set(names) <= have, f"prepare succeeded but slaves {set(names) - have} are missing")
    rc, err = _hook(server, "release", xml)
    check(rc == 0, f"release exit status {rc}: {err!r}")
    left = {s.name for _, s in server.topology.config.slaves()} & set(names)
    check(not left, f"release left slaves {left}")
