"""Prometheus metrics over ``Daemon.stats()``: a custom collector and a tiny HTTP server.

Rules:
- No second set of counters: a scrape turns ``stats()`` into metric families
  (``StatsCollector``), so the numbers are the ones ``SIGUSR1`` logs. The text is
  regenerated at most every ``MIN_INTERVAL`` seconds; scrapes in between get the
  same snapshot (a flood of scrapes costs one ``stats()`` per interval). Names follow node_exporter's network metrics
  (``node_network_receive_packets_total`` -> ``vhost_ipvlan_slave_receive_packets_total``).
- A slave's *receive* and *transmit* are its guest NIC's: receive = frames put
  into the guest's RX ring, transmit = frames the guest sent. The master's are its
  uplink socket's (read from / sent to the wire).
- The HTTP server runs on the daemon's asyncio loop (no thread): stats are read
  in the loop's thread, between bursts, so they are consistent. It answers
  ``GET`` on any path with the text exposition format; one request per connection.
- Hostile local clients (audit 10): at most ``MAX_CLIENTS`` connections are held;
  a new one beyond that closes the oldest (so idle connections cannot lock scrapers
  out and hold at most ``MAX_CLIENTS`` fds); the request head must arrive within
  ``HEADER_TIMEOUT`` seconds and fit in ``MAX_HEAD`` bytes.
- ``--metrics ADDRESS:PORT`` (``[::1]:9100`` for IPv6); a bad address is a
  ``ConfigError``, a port that cannot be bound an ``UplinkError`` (one line each).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from ..errors import ConfigError, UplinkError

log = logging.getLogger(__name__)
PREFIX = "vhost_ipvlan"

StatsFunction = Callable[[], dict[str, Any]]
MAX_CLIENTS = 16
HEADER_TIMEOUT = 2.0
MAX_HEAD = 8192
MIN_INTERVAL = 0.5  # seconds between two stats() snapshots


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--metrics: {text!r} is not ADDRESS:PORT (e.g. 127.0.0.1:9100 or [::1]:9100)")
    return host, int(port)


class StatsCollector:
    """A prometheus_client collector reading ``stats()`` on every scrape."""

    def __init__(self, stats: StatsFunction) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = f"{PREFIX}_slave"
        m = f"{PREFIX}_master"
        sl = ["master", "slave"]
        fam: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
            "s_rx_p": CounterMetricFamily(f"{s}_receive_packets", "Frames delivered to the guest's RX ring", labels=sl),
            "s_rx_b": CounterMetricFamily(f"{s}_receive_bytes", "Bytes delivered to the guest (Ethernet frames)",
                                          labels=sl),
            "s_tx_p": CounterMetricFamily(f"{s}_transmit_packets", "Frames the guest transmitted", labels=sl),
            "s_tx_b": CounterMetricFamily(f"{s}_transmit_bytes", "Bytes the guest transmitted (Ethernet frames)",
                                          labels=sl),
            "s_drop": CounterMetricFamily(f"{s}_drops", "Frames dropped, by slave and reason",
                                          labels=[*sl, "reason"]),
            "s_up": GaugeMetricFamily(f"{s}_up", "1 if the guest's queues are set up (a front-end is connected)",
                                      labels=sl),
            "s_link": GaugeMetricFamily(f"{s}_carrier", "1 if the slave's link is up (follows its master)",
                                        labels=sl),
            "m_rx_p": CounterMetricFamily(f"{m}_receive_packets", "Frames read from the master", labels=["master"]),
            "m_tx_p": CounterMetricFamily(f"{m}_transmit_packets", "Frames sent on the master", labels=["master"]),
            "m_drop": CounterMetricFamily(f"{m}_drops", "Frames from the master dropped, by reason",
                                          labels=["master", "reason"]),
            "m_up": GaugeMetricFamily(f"{m}_up", "1 if the master is present, up and has carrier", labels=["master"]),
            "m_mtu": GaugeMetricFamily(f"{m}_mtu_bytes", "The master's MTU", labels=["master"]),
        }
        for master, ms in self.stats().items():
            fam["m_rx_p"].add_metric([master], ms.get("uplink_rx_packets", 0))
            fam["m_tx_p"].add_metric([master], ms.get("uplink_tx_packets", 0))
            for reason, n in sorted(ms.get("drops", {}).items()):
                fam["m_drop"].add_metric([master, reason], n)
            fam["m_up"].add_metric([master], 1.0 if ms.get("link", "up") == "up" else 0.0)
            if "mtu" in ms:
                fam["m_mtu"].add_metric([master], ms["mtu"])
            for slave, ss in ms.get("slaves", {}).items():
                lv = [master, slave]
                fam["s_rx_p"].add_metric(lv, ss["rx_packets"])
                fam["s_rx_b"].add_metric(lv, ss["rx_bytes"])
                fam["s_tx_p"].add_metric(lv, ss["tx_packets"])
                fam["s_tx_b"].add_metric(lv, ss["tx_bytes"])
                for reason, n in sorted(ss.get("drops", {}).items()):
                    fam["s_drop"].add_metric([*lv, reason], n)
                fam["s_up"].add_metric(lv, 1.0 if ss["up"] else 0.0)
                fam["s_link"].add_metric(lv, 1.0 if ss.get("link", "up") == "up" else 0.0)
        yield from fam.values()


class MetricsServer:
    """Serves ``/metrics`` on the daemon's loop."""

    def __init__(self, address: str, stats: StatsFunction, loop: asyncio.AbstractEventLoop) -> None:
        host, port = parse_address(address)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatsCollector(stats))
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, _, _, _, sockaddr = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as e:
            raise UplinkError(f"metrics: cannot listen on {address}: {e.strerror or e}") from e
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(16)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise UplinkError(f"metrics: cannot listen on {address}: {e.strerror or e}") from e
        self.sock = sock
        self.address = address
        self.clients: OrderedDict[asyncio.StreamWriter, None] = OrderedDict()  # oldest first
        self.snapshots = 0
        self._body = b""
        self._body_at = -MIN_INTERVAL
        self._server: asyncio.Server | None = None
        self._task = loop.create_task(self._serve())
        log.info("metrics: serving Prometheus metrics on http://%s/metrics", address)

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(self._client, sock=self.sock, limit=MAX_HEAD)

    def body(self) -> bytes:
        """The exposition text, from a snapshot at most ``MIN_INTERVAL`` old."""
        now = time.monotonic()
        if now - self._body_at >= MIN_INTERVAL:
            self._body = generate_latest(self.registry)
            self._body_at = now
            self.snapshots += 1
        return self._body

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while len(self.clients) >= MAX_CLIENTS:
            oldest, _ = self.clients.popitem(last=False)
            oldest.transport.abort()
        self.clients[writer] = None
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEADER_TIMEOUT)
            method = head.split(b" ", 1)[0]
            if method not in (b"GET", b"HEAD"):
                writer.write(b"HTTP/1.0 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            else:
                body = self.body()
                writer.write(
                    b"HTTP/1.0 200 OK\r\nContent-Type: " + CONTENT_TYPE_LATEST.encode()
                    + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
                    + (body if method == b"GET" else b"")
                )
            await asyncio.wait_for(writer.drain(), HEADER_TIMEOUT)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        except Exception:
            log.exception("metrics: error answering a scrape")
        finally:
            self.clients.pop(writer, None)
            writer.close()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        else:
            self._task.cancel()
        with contextlib.suppress(OSError):
            self.sock.close()
