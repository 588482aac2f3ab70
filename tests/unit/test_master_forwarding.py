"""``daemon.master``: l3s forwarding kept on, also when netconf notifications were lost."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from vhost_ipvlan.daemon import master
from vhost_ipvlan.daemon.master import Master, MasterMonitor
from vhost_ipvlan.daemon.netlink import LinkState


class FakeHostLink:
    def __init__(self) -> None:
        self.checks = 0

    def check_forwarding(self) -> None:
        self.checks += 1


def test_a_resync_after_lost_notifications_checks_forwarding(monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOBUFS (``sysctl net.ipv4.ip_forward=0`` notifies every interface at once) may
    lose the netconf event that turned an l3s port's forwarding off: the resync that
    follows an overflow must look at forwarding too."""
    loop = asyncio.new_event_loop()
    try:
        link = FakeHostLink()
        port = SimpleNamespace(master="m0", master_mac=b"\x02\x00\x00\x00\x00\x01", max_frame=0)
        dp: Any = SimpleNamespace(port=port, hostlink=link, devices={}, max_frame=0, wire_up=True)
        mon = MasterMonitor(loop)
        mon.masters["m0"] = Master(dp, chain=None, index=7)  # type: ignore[arg-type]
        monkeypatch.setattr(master, "read_link", lambda name: LinkState(name, 7, True, True, 1500, port.master_mac))
        mon.resync()
        assert link.checks == 1
    finally:
        loop.close()
