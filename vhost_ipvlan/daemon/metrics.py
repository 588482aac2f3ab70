"""Prometheus metrics over ``Daemon.stats()``: the text exposition, written directly, and a tiny HTTP server.

Rules:
- No second set of counters: a scrape turns ``stats()`` into the text format
  (``exposition``), so the numbers are the ones ``SIGUSR1`` logs. It writes the
  lines itself, the bytes prometheus_client's ``generate_latest`` would make of the
  same families (a test compares them) at a tenth of the cost. The text is
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

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


@dataclass(frozen=True)
class Family:
    """One metric family: its exposition name (a counter's ends in ``_total``), type and help."""

    name: str
    type: str
    help: str

    def head(self) -> str:
        return f"# HELP {self.name} {self.help}\n# TYPE {self.name} {self.type}\n"


S, M = f"{PREFIX}_slave", f"{PREFIX}_master"
# In exposition order; the keys name the sample lists ``exposition`` fills.
FAMILIES: dict[str, Family] = {
    "s_rx_p": Family(f"{S}_receive_packets_total", "counter", "Frames delivered to the guest's RX ring"),
    "s_rx_b": Family(f"{S}_receive_bytes_total", "counter", "Bytes delivered to the guest (Ethernet frames)"),
    "s_tx_p": Family(f"{S}_transmit_packets_total", "counter", "Frames the guest transmitted"),
    "s_tx_b": Family(f"{S}_transmit_bytes_total", "counter", "Bytes the guest transmitted (Ethernet frames)"),
    "s_drop": Family(f"{S}_drops_total", "counter", "Frames dropped, by slave and reason"),
    "s_up": Family(f"{S}_up", "gauge", "1 if the guest's queues are set up (a front-end is connected)"),
    "s_link": Family(f"{S}_carrier", "gauge", "1 if the slave's link is up (follows its master)"),
    "s_qp": Family(f"{S}_queue_pairs_enabled", "gauge", "Queue pairs whose receive ring takes frames"),
    "s_dhcp": Family(f"{S}_dhcp_messages_total", "counter",
                     "DHCPv4 client messages the daemon answered, by slave and outcome"),
    "s_ann": Family(f"{S}_announcements_total", "counter",
                    "Gratuitous ARPs and unsolicited NAs sent for the guest when it resumed here (live migration)"),
    "s_dhcp6": Family(f"{S}_dhcp6_messages_total", "counter",
                      "DHCPv6 client messages the daemon answered, and Router Advertisements sent (ra_sent), "
                      "by slave and outcome"),
    "m_rx_p": Family(f"{M}_receive_packets_total", "counter", "Frames read from the master"),
    "m_tx_p": Family(f"{M}_transmit_packets_total", "counter", "Frames sent on the master"),
    "m_drop": Family(f"{M}_drops_total", "counter", "Frames from the master dropped, by reason"),
    "m_rx_full": Family(f"{M}_receive_dropped_total", "counter",
                        "Frames from the master the kernel dropped at the daemon's socket: its RX ring or "
                        "buffer was full"),
    "m_up": Family(f"{M}_up", "gauge", "1 if the master is present, up and has carrier"),
    "m_mtu": Family(f"{M}_mtu_bytes", "gauge", "The master's MTU"),
}
ONE, ZERO = "1.0", "0.0"
_go_float: Callable[[float], str] = floatToGoString  # prometheus_client's, untyped


def _label(value: str) -> str:
    """A label value escaped for the text format (backslash, newline, double quote)."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(n: float) -> str:
    """A sample value as Prometheus writes it (Go's float formatting): ``12.0``, ``1.234567e+06``."""
    if type(n) is int and 0 <= n < 1_000_000:  # the usual case: the same text, cheaper
        return f"{n}.0"
    return _go_float(n)


def exposition(stats: dict[str, Any]) -> bytes:
    """``stats()`` in the Prometheus text format (0.0.4), written directly.

    The same bytes prometheus_client's ``generate_latest`` makes of these families
    (tests/unit/test_metrics.py), at a fraction of its cost (6,000 samples at 1,000
    slaves): labels in name order, only non-zero drop reasons (as ``stats()`` has them).
    """
    lines: dict[str, list[str]] = {key: [] for key in FAMILIES}
    s_rx_p, s_rx_b, s_tx_p, s_tx_b = lines["s_rx_p"], lines["s_rx_b"], lines["s_tx_p"], lines["s_tx_b"]
    s_drop, s_up, s_link = lines["s_drop"], lines["s_up"], lines["s_link"]
    for master, ms in stats.items():
        m = f'master="{_label(master)}"'
        lines["m_rx_p"].append(f"{{{m}}} {_number(ms.get('uplink_rx_packets', 0))}")
        lines["m_tx_p"].append(f"{{{m}}} {_number(ms.get('uplink_tx_packets', 0))}")
        for reason, n in sorted(ms.get("drops", {}).items()):
            lines["m_drop"].append(f'{{{m},reason="{_label(reason)}"}} {_number(n)}')
        if "rx_dropped" in ms:
            lines["m_rx_full"].append(f"{{{m}}} {_number(ms['rx_dropped'])}")
        lines["m_up"].append(f"{{{m}}} {ONE if ms.get('link', 'up') == 'up' else ZERO}")
        if "mtu" in ms:
            lines["m_mtu"].append(f"{{{m}}} {_number(ms['mtu'])}")
        for slave, ss in ms.get("slaves", {}).items():
            sl = f'slave="{_label(slave)}"'
            lv = f"{{{m},{sl}}} "
            s_rx_p.append(lv + _number(ss["rx_packets"]))
            s_rx_b.append(lv + _number(ss["rx_bytes"]))
            s_tx_p.append(lv + _number(ss["tx_packets"]))
            s_tx_b.append(lv + _number(ss["tx_bytes"]))
            for reason, n in sorted(ss.get("drops", {}).items()):
                s_drop.append(f'{{{m},reason="{_label(reason)}",{sl}}} {_number(n)}')
            s_up.append(lv + (ONE if ss["up"] else ZERO))
            s_link.append(lv + (ONE if ss.get("link", "up") == "up" else ZERO))
            if "queues" in ss:
                lines["s_qp"].append(lv + _number(ss["queues"]["queue_pairs_enabled"]))
            for outcome, n in sorted(ss.get("dhcp", {}).items()):
                lines["s_dhcp"].append(f'{{{m},outcome="{_label(outcome)}",{sl}}} {_number(n)}')
            if "announcements" in ss:
                lines["s_ann"].append(lv + _number(ss["announcements"]))
            for outcome, n in sorted(ss.get("dhcp6", {}).items()):
                lines["s_dhcp6"].append(f'{{{m},outcome="{_label(outcome)}",{sl}}} {_number(n)}')
    out: list[str] = []
    for key, fam in FAMILIES.items():
        out.append(fam.head())
        if lines[key]:
            out.append(fam.name + f"\n{fam.name}".join(lines[key]) + "\n")
    return "".join(out).encode()


class MetricsServer:
    """Serves ``/metrics`` on the daemon's loop."""

    def __init__(self, address: str, stats: StatsFunction, loop: asyncio.AbstractEventLoop) -> None:
        host, port = parse_address(address)
        self.stats = stats
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
            self._body = exposition(self.stats())
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
