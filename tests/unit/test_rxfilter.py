"""Multicast filters from QMP: a ``query-rx-filter`` reply read as a filter, the NIC
chosen, QMP taking precedence over snooping, and the fall back to snooping.

The watch is run against a small fake QMP server (greeting, ``qmp_capabilities``,
``query-rx-filter``, ``NIC_RX_FILTER_CHANGED``) on a unix socket; the real QEMU is in
tests/interop/test_rxfilter_qemu.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.igmp import IGMP
from scapy.layers.inet import IP
from scapy.layers.l2 import Ether

from vhost_ipvlan.daemon import rxfilter
from vhost_ipvlan.daemon.lograte import RateLimitedLog
from vhost_ipvlan.daemon.rxfilter import RxFilterWatch, pick_nic
from vhost_ipvlan.errors import RxFilterError
from vhost_ipvlan.net.addr import parse_mac
from vhost_ipvlan.switch import Port
from vhost_ipvlan.switch.mcast import qmp_rx_filter

MAC = "52:54:00:00:00:11"
JOINED, OTHER = parse_mac("01:00:5e:01:02:03"), parse_mac("01:00:5e:07:07:07")
SNOOPED = parse_mac("01:00:5e:01:01:01")  # 239.1.1.1


def nic(name: str = "net0", mac: str = MAC, table: tuple[str, ...] = ("01:00:5e:01:02:03",), *,
        multicast: str = "normal", promisc: bool = False, overflow: bool = False) -> dict[str, Any]:
    return {"name": name, "main-mac": mac, "promiscuous": promisc, "multicast": multicast,
            "multicast-overflow": overflow, "multicast-table": list(table), "unicast": "normal",
            "vlan": "none", "unicast-table": [], "vlan-table": [], "unicast-overflow": False,
            "broadcast-allowed": False}


# -- the reply as a filter ---------------------------------------------------------------------

def test_normal_mode_is_the_table() -> None:
    assert qmp_rx_filter(nic(table=("01:00:5e:01:02:03", "33:33:ff:00:00:11"))) == frozenset({
        JOINED, parse_mac("33:33:ff:00:00:11")})


@pytest.mark.parametrize("kw", [{"multicast": "all"}, {"promisc": True}, {"overflow": True}])
def test_all_multicast(kw: dict[str, Any]) -> None:
    assert qmp_rx_filter(nic(**kw)) is None


def test_no_multicast() -> None:
    assert qmp_rx_filter(nic(multicast="none")) == frozenset()


@pytest.mark.parametrize(("change", "message"), [
    ({"multicast": "some"}, "multicast"),
    ({"promiscuous": None}, "promiscuous"),
    ({"multicast-table": "01:00:5e:01:02:03"}, "not a list"),
    ({"multicast-table": ["01:00:5e:01:02"]}, "invalid MAC address"),
    ({"multicast-table": [7]}, "non-string"),
])
def test_malformed_reply(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        qmp_rx_filter({**nic(), **change})


def test_pick_nic() -> None:
    a, b = nic("net0", MAC), nic("net1", "52:54:00:00:00:99")
    assert pick_nic([a, b], "net1", None) is b
    assert pick_nic([a, b], None, parse_mac(MAC)) is a
    assert pick_nic([b], None, None) is b
    for args, message in ((("net2", None), "no NIC 'net2'"), ((None, None), "set qmp_device"),
                          ((None, parse_mac("52:54:00:00:00:42")), "MAC 52:54:00:00:00:42")):
        with pytest.raises(RxFilterError, match=message):
            pick_nic([a, b], *args)
    with pytest.raises(RxFilterError, match="not a list"):
        pick_nic({"return": []}, None, None)


# -- the watch against a fake QMP server -------------------------------------------------------

class FakeQmp:
    """Just enough of QEMU's monitor: greeting, capabilities, query-rx-filter, one event."""

    def __init__(self, path: Path, nics: list[dict[str, Any]]) -> None:
        self.path, self.nics = path, nics
        self.queries = 0
        self.server: asyncio.base_events.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._client, str(self.path))

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        self.writers.clear()
        self.path.unlink(missing_ok=True)

    def event(self) -> None:
        for w in self.writers:
            self.event_to(w)

    @staticmethod
    def event_to(writer: asyncio.StreamWriter) -> None:
        writer.write(json.dumps({"event": "NIC_RX_FILTER_CHANGED", "data": {"name": "net0", "path": "/x"},
                                "timestamp": {"seconds": 1, "microseconds": 0}}).encode() + b"\n")

    def answer(self, req: dict[str, Any], writer: asyncio.StreamWriter) -> dict[str, Any] | None:
        """The reply to ``req``; None: close the connection instead."""
        if req["execute"] == "query-rx-filter":
            self.queries += 1
            name = req.get("arguments", {}).get("name")
            ret: Any = [n for n in self.nics if name in (None, n["name"])]
        else:
            ret = {}
        return {"return": ret, **({"id": req["id"]} if "id" in req else {})}

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        writer.write(json.dumps({"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0},
                                                     "package": ""}, "capabilities": []}}).encode() + b"\n")
        buf, decoder = "", json.JSONDecoder()
        while chunk := await reader.read(4096):  # QMP is a JSON stream, not lines
            buf += chunk.decode()
            while buf.strip():
                try:
                    req, end = decoder.raw_decode(buf.lstrip())
                except json.JSONDecodeError:
                    break
                buf = buf.lstrip()[end:]
                reply = self.answer(req, writer)
                if reply is None:
                    writer.close()
                    return
                writer.write(json.dumps(reply).encode() + b"\n")
        writer.close()


async def until(cond: Callable[[], bool], what: str, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


def snooping_slave() -> Any:
    port = Port("mst0", parse_mac("02:00:00:00:00:01"))
    slave = port.add_slave("s1", ["10.0.0.11"], mac=MAC)
    join = Ether(src=MAC, dst="01:00:5e:01:01:01") / IP(src="10.0.0.11", dst="239.1.1.1", ttl=1) / IGMP(
        type=0x16, gaddr="239.1.1.1")
    port.from_guest(slave, memoryview(bytearray(bytes(join))))
    assert slave.mcast.accepts(SNOOPED) and not slave.mcast.accepts(JOINED)
    return slave


def test_qmp_takes_precedence_then_falls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "vhost_ipvlan.daemon.rxfilter")
    slave = snooping_slave()

    async def main() -> None:
        qemu = FakeQmp(tmp_path / "qmp.sock", [nic()])
        await qemu.start()
        watch = RxFilterWatch(slave, qemu.path, None, asyncio.get_running_loop())
        try:
            await until(lambda: watch.source == "qmp", "QMP source")
            f = slave.mcast
            assert f.accepts(JOINED) and not f.accepts(SNOOPED) and not f.accepts(OTHER)
            assert f.describe()["source"] == "qmp"
            # the guest joins another group: QEMU says so with an event, the watch asks again
            qemu.nics[0] = nic(table=("01:00:5e:01:02:03", "01:00:5e:07:07:07"))
            queries = qemu.queries
            qemu.event()
            await until(lambda: f.accepts(OTHER), "the new group")
            assert qemu.queries == queries + 1
            qemu.nics[0] = nic(multicast="all")
            qemu.event()
            await until(lambda: f.accepts(parse_mac("33:33:00:00:12:34")), "allmulti")
            # QEMU goes away: back to what snooping learned
            await qemu.stop()
            await until(lambda: watch.source == "snooping", "snooping again")
            assert f.accepts(SNOOPED) and not f.accepts(JOINED) and f.describe()["source"] == "snooping"
        finally:
            watch.close()
            await asyncio.sleep(0)

    asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == f"slave s1: multicast filter from QMP {tmp_path / 'qmp.sock'} (NIC net0)"
    assert lines[1].startswith(f"slave s1: multicast filter from IGMP/MLD snooping: QMP {tmp_path / 'qmp.sock'}: ")
    assert len(lines) == 2


def test_absent_socket_snoops_and_reconnects(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rxfilter, "BACKOFF", 0.01)
    monkeypatch.setattr(rxfilter, "BACKOFF_MAX", 0.05)
    caplog.set_level(logging.DEBUG, "vhost_ipvlan.daemon.rxfilter")
    slave = snooping_slave()
    path = tmp_path / "qmp.sock"

    async def main() -> None:
        watch = RxFilterWatch(slave, path, "net0", asyncio.get_running_loop())
        try:
            # several attempts fail: snooping decides, and says so once
            await until(lambda: sum("QMP" in r.getMessage() for r in caplog.records) >= 4, "retries")
            assert watch.source == "snooping" and slave.mcast.accepts(SNOOPED)
            qemu = FakeQmp(path, [nic("net1"), nic("net0", table=())])
            await qemu.start()
            await until(lambda: watch.source == "qmp", "QMP once QEMU is there")
            assert not slave.mcast.accepts(SNOOPED) and slave.mcast.accepts(b"\xff" * 6)
            await qemu.stop()
        finally:
            watch.close()
            await asyncio.sleep(0)
        assert slave.mcast.accepts(SNOOPED)

    asyncio.run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert warnings[0].startswith(f"slave s1: multicast filter from IGMP/MLD snooping: QMP {path}: ")
    assert warnings[1] == f"slave s1: multicast filter from QMP {path} (NIC net0)"


def test_wrong_nic_falls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "vhost_ipvlan.daemon.rxfilter")
    slave = snooping_slave()

    async def main() -> None:
        qemu = FakeQmp(tmp_path / "qmp.sock", [nic("net0", "52:54:00:00:00:99")])
        await qemu.start()
        watch = RxFilterWatch(slave, qemu.path, None, asyncio.get_running_loop())
        try:
            await until(lambda: bool(caplog.records), "a log line")
        finally:
            watch.close()
            await qemu.stop()

    asyncio.run(main())
    assert "no NIC with MAC 52:54:00:00:00:11 among the guest's NICs (net0)" in caplog.records[0].getMessage()
    assert slave.mcast.accepts(SNOOPED) and slave.mcast.describe()["source"] == "snooping"


class FlappingQmp(FakeQmp):
    """A QEMU restarting in a loop: each connection answers the first query, says the
    filter changed, and closes instead of answering the query that follows. (It never
    closes while the watch waits for events: ``qemu.qmp`` sets and clears its runstate
    event at once, and ``_session`` starts waiting for it a loop turn after checking the
    state, so a close in between was missed about once in 50 and the watch stayed on QMP.)"""

    def __init__(self, path: Path, nics: list[dict[str, Any]]) -> None:
        super().__init__(path, nics)
        self.asked: dict[asyncio.StreamWriter, int] = {}

    def answer(self, req: dict[str, Any], writer: asyncio.StreamWriter) -> dict[str, Any] | None:
        if req["execute"] != "query-rx-filter":
            return super().answer(req, writer)
        self.asked[writer] = self.asked.get(writer, 0) + 1
        if self.asked[writer] > 1:
            return None
        asyncio.get_running_loop().call_soon(self.event_to, writer)  # after the reply
        return super().answer(req, writer)


def test_flapping_monitor_logs_a_bounded_number_of_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A monitor that connects and closes 60 times logged two lines each time."""
    monkeypatch.setattr(rxfilter, "BACKOFF", 0.001)
    monkeypatch.setattr(rxfilter, "_source_log", RateLimitedLog(rxfilter.log, clock=lambda: 0.0), raising=False)
    caplog.set_level(logging.INFO, "vhost_ipvlan.daemon.rxfilter")
    slave = snooping_slave()

    async def main() -> None:
        qemu = FlappingQmp(tmp_path / "qmp.sock", [nic()])
        await qemu.start()
        watch = RxFilterWatch(slave, qemu.path, None, asyncio.get_running_loop())
        try:
            await until(lambda: len(qemu.asked) > 60 and watch.source == "snooping", "60 connections")
        finally:
            watch.close()
            await qemu.stop()

    asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records]
    assert 1 <= sum("from QMP" in m for m in lines) <= 5 and 1 <= sum("snooping" in m for m in lines) <= 5, lines


class ClosingQmp(FakeQmp):
    """A monitor that closes the connection right after its first answer to query-rx-filter."""

    def answer(self, req: dict[str, Any], writer: asyncio.StreamWriter) -> dict[str, Any] | None:
        reply = super().answer(req, writer)
        if req["execute"] == "query-rx-filter":
            asyncio.get_running_loop().call_soon(writer.close)  # after the reply
        return reply


def test_a_monitor_closing_before_the_watch_waits_is_still_noticed(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """qemu.qmp announces a change of its state to those already waiting only: a monitor
    closed between the watch's look at the state and the start of its wait (here the gap
    is widened to 50 ms) must still bring the filter back to snooping, and the watch
    back to the monitor."""
    from qemu.qmp import QMPClient

    original = QMPClient.runstate_changed

    async def late(self: Any) -> Any:
        await asyncio.sleep(0.05)  # the state changes meanwhile
        return await original(self)

    monkeypatch.setattr(QMPClient, "runstate_changed", late)
    monkeypatch.setattr(rxfilter, "BACKOFF", 0.01)
    monkeypatch.setattr(rxfilter, "STATE_POLL", 0.1, raising=False)
    slave = snooping_slave()

    async def main() -> None:
        qemu = ClosingQmp(tmp_path / "qmp.sock", [nic()])
        await qemu.start()
        watch = RxFilterWatch(slave, qemu.path, None, asyncio.get_running_loop())
        try:
            await until(lambda: qemu.queries >= 3, "the watch reconnected twice", timeout=5)
            await until(lambda: watch.source == "snooping", "snooping", timeout=5)
        finally:
            watch.close()
            await qemu.stop()

    asyncio.run(main())
