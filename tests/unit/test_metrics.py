"""The metrics server's own limits (audit 10): scrapes are served from a throttled snapshot."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from vhost_ipvlan.daemon import metrics


def test_a_scrape_flood_costs_one_stats_call_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def stats() -> dict[str, Any]:
        calls.append(1)
        return {"eth0": {"uplink_rx_packets": len(calls), "slaves": {}}}

    now = [1000.0]
    monkeypatch.setattr("vhost_ipvlan.daemon.metrics.time.monotonic", lambda: now[0])
    loop = asyncio.new_event_loop()
    try:
        server = metrics.MetricsServer(f"127.0.0.1:{random.randint(20000, 60000)}", stats, loop)
        try:
            bodies = {server.body() for _ in range(100)}
            assert len(calls) == 1 and len(bodies) == 1
            now[0] += metrics.MIN_INTERVAL
            assert b'receive_packets_total{master="eth0"} 2.0' in server.body() and len(calls) == 2
        finally:
            server.close()
            loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()


def test_a_slave_shows_its_enabled_queue_pairs() -> None:
    slave = {"rx_packets": 1, "rx_bytes": 2, "tx_packets": 3, "tx_bytes": 4, "up": True,
             "queues": {"queues": 4, "queue_pairs": 4, "queue_pairs_enabled": 2, "per_queue": []}}
    families = list(metrics.StatsCollector(lambda: {"eth0": {"slaves": {"vm1": slave}}}).collect())
    [family] = [f for f in families if f.name.endswith("slave_queue_pairs_enabled")]
    assert [(s.labels, s.value) for s in family.samples] == [({"master": "eth0", "slave": "vm1"}, 2)]
