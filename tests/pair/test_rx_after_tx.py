"""A guest's pending TX chains are taken before frames are published into its RX ring.

A run-to-completion driver (DPDK testpmd's io/5tswap loops, l2fwd) transmits what
it receives at once and drops what finds its TX ring full. Publishing RX to a guest
whose TX ring is still full of chains it has made available would make it drop
every answer (issue 10: a 256-entry ring's ping-pong died after 288 frames).
In-process (no event loop: no kick is ever handled), both with the C accelerator
and in pure Python.
"""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.support.frontend import QSIZE
from tests.support.inproc import InprocPort, pure_python

A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
A4, B4 = "10.0.0.10", "10.0.0.11"


def port() -> InprocPort:
    return InprocPort([
        ("a", [ipaddress.ip_address(A4).packed], bytes.fromhex(A.replace(":", ""))),
        ("b", [ipaddress.ip_address(B4).packed], bytes.fromhex(B.replace(":", ""))),
    ])


def run() -> tuple[int, int, int]:
    """b fills its TX ring (never kicked), then a sends b one frame; what happened."""
    p = port()
    try:
        a, b = p.frontends["a"], p.frontends["b"]
        answer = bytes(Ether(src=B, dst=A) / IP(src=B4, dst=A4) / UDP() / b"answer")
        for _ in range(QSIZE):
            b.transmit(answer)
        a.transmit(bytes(Ether(src=A, dst=B) / IP(src=A4, dst=B4) / UDP() / b"question"))
        p.device("a").drain_tx()
        return len(b.receive()), b.txq.used_idx(), len(a.receive())
    finally:
        p.close()


@pytest.mark.parametrize("pure", [False, True], ids=["accelerated", "pure"])
def test_receiver_tx_is_taken_before_its_rx_is_published(pure: bool) -> None:
    if pure:
        with pure_python():
            got = run()
    else:
        got = run()
    # b received a's frame, every chain b had made available was taken (and its
    # frames delivered to a) by then: b has a whole TX ring to answer with
    assert got == (1, QSIZE, QSIZE)
