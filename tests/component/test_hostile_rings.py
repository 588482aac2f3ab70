"""Hostile rings against the real daemon: bounded work, the right drop reasons in ``stats``.

Fake front-ends as guests (``tests/support/frontend.py``'s hostile knobs); the
in-process pair tests (``tests/pair/test_fastpath.py``) count the work itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.support import frontend
from tests.support.lab import FrontendLab, SlaveSpec, receive
from tests.support.wait import wait_until

pytestmark = [pytest.mark.netns]

MAC_A, MAC_B, MAC_C = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
A_IP, B_IP, C_IP = "192.0.2.10", "192.0.2.11", "192.0.2.12"


@pytest.fixture(params=["accelerated", "pure-python"])
def lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[FrontendLab]:
    slaves = [SlaveSpec("a", [f"{A_IP}/24"], MAC_A), SlaveSpec("b", [f"{B_IP}/24"], MAC_B),
              SlaveSpec("c", [f"{C_IP}/24"], MAC_C)]
    with FrontendLab(tmp_path, slaves, ipv6=False, pure_python=request.param == "pure-python") as lab:
        yield lab


def test_runts_and_zero_capacity_rx_chains_are_counted_drops(lab: FrontendLab) -> None:
    """a sends chains shorter than the virtio_net_hdr; b posts receive chains of one
    256-entry indirect table of zero-length descriptors (audit r1/r2 within the queue
    size). ``stats`` shows ``runt`` on a (tx_bytes not negative) and ``rx_bad_buffer``
    on b; the daemon and c are unaffected."""
    a, b, c = lab.frontend("a"), lab.frontend("b"), lab.frontend("c")
    frontend.transmit_runts(a, [0, 5, 11])
    frontend.make_rx_zero_capacity(b, frontend.QSIZE)
    a.transmit(bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=A_IP, dst=B_IP) / UDP(dport=7)))
    wait_until(lambda: lab.slave_stats("b")["drops"].get("rx_bad_buffer"), 5, what="rx_bad_buffer on b")
    sa = lab.slave_stats("a")
    assert sa["drops"] == {"runt": 3}
    assert (sa["tx_packets"], sa["tx_bytes"]) == (1, 42)
    assert lab.slave_stats("b")["drops"] == {"rx_bad_buffer": 1}
    c.transmit(bytes(Ether(src=MAC_C, dst=MAC_A) / IP(src=C_IP, dst=A_IP) / UDP(dport=8)))
    receive(a, lambda p: UDP in p and p[UDP].dport == 8, "c -> a")
    assert not lab.daemon_exited()
