"""The metrics exporter: its text is prometheus_client's, byte for byte; its own limits (audit 10):
scrapes are served from a throttled snapshot."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

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


class _Reference:
    """The collector the exporter had before it wrote the text itself (prometheus_client families)."""

    def __init__(self, stats: dict[str, Any]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        fams: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for key, fam in metrics.FAMILIES.items():
            labels = ["master", "slave"] if key.startswith("s_") else ["master"]
            if key.endswith("drop"):
                labels.append("reason")
            if key.endswith(("dhcp", "dhcp6")):
                labels.append("outcome")
            kind = CounterMetricFamily if fam.type == "counter" else GaugeMetricFamily
            fams[key] = kind(fam.name.removesuffix("_total"), fam.help, labels=labels)
        for master, ms in self.stats.items():
            fams["m_rx_p"].add_metric([master], ms.get("uplink_rx_packets", 0))
            fams["m_tx_p"].add_metric([master], ms.get("uplink_tx_packets", 0))
            for reason, n in sorted(ms.get("drops", {}).items()):
                fams["m_drop"].add_metric([master, reason], n)
            if "rx_dropped" in ms:
                fams["m_rx_full"].add_metric([master], ms["rx_dropped"])
            fams["m_up"].add_metric([master], 1.0 if ms.get("link", "up") == "up" else 0.0)
            if "mtu" in ms:
                fams["m_mtu"].add_metric([master], ms["mtu"])
            for slave, ss in ms.get("slaves", {}).items():
                lv = [master, slave]
                for key, field in (("s_rx_p", "rx_packets"), ("s_rx_b", "rx_bytes"), ("s_tx_p", "tx_packets"),
                                   ("s_tx_b", "tx_bytes")):
                    fams[key].add_metric(lv, ss[field])
                for reason, n in sorted(ss.get("drops", {}).items()):
                    fams["s_drop"].add_metric([*lv, reason], n)
                fams["s_up"].add_metric(lv, 1.0 if ss["up"] else 0.0)
                fams["s_link"].add_metric(lv, 1.0 if ss.get("link", "up") == "up" else 0.0)
                if "queues" in ss:
                    fams["s_qp"].add_metric(lv, ss["queues"]["queue_pairs_enabled"])
                if "announcements" in ss:
                    fams["s_ann"].add_metric(lv, ss["announcements"])
                for family in ("dhcp", "dhcp6"):
                    for outcome, n in sorted(ss.get(family, {}).items()):
                        fams[f"s_{family}"].add_metric([*lv, outcome], n)
        yield from fams.values()


def _slave(i: int, drops: dict[str, int], *, up: bool = True, link: str = "up", pairs: int = 1) -> dict[str, Any]:
    return {"up": up, "link": link, "rx_packets": i, "rx_bytes": 60 * i, "tx_packets": 7 * i,
            "tx_bytes": 2**40 + i, "drops": drops, "multicast": {}, "learned": [], "announcements": 2 * i,
            "queues": {"queues": 4, "queue_pairs": 4, "queue_pairs_enabled": pairs, "per_queue": []}}


# Two ports as Daemon.stats() has them: drop reasons on masters and slaves, a master
# down, one without MTU (gone), counters past a million (Go's exponent form), an idle slave.
STATS: dict[str, Any] = {
    "eth0": {"uplink_rx_packets": 5, "uplink_tx_packets": 1_234_567, "link": "up", "mtu": 1500,
             "drops": {"runt": 1, "master_down": 3, "mtu_exceeded": 10**9},
             "host_link": {"name": "vh0", "rx_packets": 1, "tx_packets": 2}, "address_conflicts": 0,
             "rx_dropped": 17,
             "slaves": {"vm1": {**_slave(1, {"src_ip_spoof": 2, "rx_ring_full": 999_999}),
                                "dhcp": {"offered": 2, "acked": 1, "naked": 1},
                                "dhcp6": {"advertised": 1, "assigned": 1, "ra_sent": 3}},
                        "vm2": _slave(1_000_000, {}, up=False),
                        "vm3": _slave(0, {}, pairs=3)}},
    "bond0": {"uplink_rx_packets": 0, "uplink_tx_packets": 0, "link": "down", "drops": {},
              "slaves": {"a-b.c": _slave(3, {"master_down": 4}, link="down")}},
    "eth9": {"uplink_rx_packets": 0, "uplink_tx_packets": 0, "slaves": {}},
}


@pytest.mark.parametrize("stats", [STATS, {}, {"eth0": {"slaves": {'odd"\\\nname': _slave(1, {"x": 1})}}}],
                         ids=["ports", "empty", "escaped"])
def test_exposition_is_what_prometheus_client_writes(stats: dict[str, Any]) -> None:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Reference(stats))
    reference = generate_latest(reg)
    ours = metrics.exposition(stats)
    assert ours == reference
    parsed = list(text_string_to_metric_families(ours.decode()))
    assert parsed == list(text_string_to_metric_families(reference.decode()))
    assert [f.name + ("_total" if f.type == "counter" else "") for f in parsed] == [
        f.name for f in metrics.FAMILIES.values()]


def test_exposition_values_and_labels() -> None:
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(metrics.exposition(STATS).decode()) for s in f.samples}
    p = "vhost_ipvlan_"
    assert samples[(p + "slave_drops_total", (("master", "eth0"), ("reason", "rx_ring_full"), ("slave", "vm1")))] \
        == 999_999
    assert samples[(p + "slave_receive_packets_total", (("master", "eth0"), ("slave", "vm2")))] == 1_000_000
    assert samples[(p + "slave_transmit_bytes_total", (("master", "eth0"), ("slave", "vm3")))] == 2**40
    assert samples[(p + "master_drops_total", (("master", "eth0"), ("reason", "mtu_exceeded")))] == 10**9
    assert samples[(p + "slave_up", (("master", "eth0"), ("slave", "vm2")))] == 0
    assert samples[(p + "slave_carrier", (("master", "bond0"), ("slave", "a-b.c")))] == 0
    assert samples[(p + "slave_queue_pairs_enabled", (("master", "eth0"), ("slave", "vm3")))] == 3
    assert samples[(p + "slave_dhcp_messages_total", (("master", "eth0"), ("outcome", "offered"), ("slave", "vm1")))] \
        == 2
    assert samples[(p + "slave_announcements_total", (("master", "eth0"), ("slave", "vm1")))] == 2
    assert samples[(p + "slave_dhcp6_messages_total", (("master", "eth0"), ("outcome", "ra_sent"), ("slave", "vm1")))] \
        == 3
    assert samples[(p + "master_up", (("master", "bond0"),))] == 0
    assert samples[(p + "master_up", (("master", "eth9"),))] == 1
    assert (p + "master_mtu_bytes", (("master", "bond0"),)) not in samples
    assert len([k for k in samples if k[0] == p + "slave_drops_total"]) == 3  # only the reasons counted
