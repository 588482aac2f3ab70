"""The C accelerator on two threads at once, as the daemon's workers (``[daemon] workers``) call it.

Its bursts let the GIL go while the kernel sends a burst's frames to the wire
(``sendmmsg``): meanwhile the other thread stages its own frames. Each thread must
have its own staging buffers, or one port's wire gets the other's frames. Two
in-process ports, each driven by its own thread: every frame each wire gets must
be one of its own guest's, whole, and none missing.
"""

from __future__ import annotations

import ipaddress
import threading

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.support.inproc import InprocPort
from vhost_ipvlan.daemon import fastpath

pytestmark = pytest.mark.skipif(not fastpath.accelerated(), reason="the C accelerator is not built")

A, A4, OUT = "02:00:00:00:00:0a", "10.0.0.10", "02:00:00:00:99:99"
ROUNDS, BURST = 150, 64


def frames_of(port_id: int) -> list[bytes]:
    """``BURST`` frames for the wire, each naming its port and number in a 1400-byte payload."""
    return [bytes(Ether(src=A, dst=OUT) / IP(src=A4, dst="10.0.0.1") / UDP(sport=port_id, dport=i) /
                  (bytes([port_id]) * 1400)) for i in range(BURST)]


def drive(port: InprocPort, frames: list[bytes], start: threading.Barrier, errors: list[BaseException]) -> None:
    try:
        fe, dev = port.frontends["a"], port.device("a")
        start.wait()
        for _ in range(ROUNDS):
            for f in frames:
                fe.transmit(f)
            dev.drain_tx()  # a burst of BURST frames is within a drain's budget
            fe.reclaim_tx()
    except BaseException as e:  # reported by the test
        errors.append(e)


def test_two_threads_bursting_to_two_wires_keep_their_own_frames() -> None:
    ports = [InprocPort([("a", [ipaddress.ip_address(A4).packed], bytes.fromhex(A.replace(":", "")))])
             for _ in range(2)]
    try:
        sent: list[list[bytes]] = [[], []]
        frames = [frames_of(1), frames_of(2)]
        start = threading.Barrier(2)
        errors: list[BaseException] = []
        threads = [threading.Thread(target=drive, args=(ports[i], frames[i], start, errors)) for i in range(2)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):  # keep the wires' socket buffers from filling
            for i in range(2):
                sent[i] = ports[i].uplink.sent
            threads[0].join(0.01)
        for t in threads:
            t.join()
        assert not errors, errors
        for i in range(2):
            got = [UDP in (pkt := Ether(d[10:])) and (pkt[UDP].sport, bytes(pkt[UDP].payload))
                   for d in ports[i].uplink.sent]
            own = (i + 1, bytes([i + 1]) * 1400)
            foreign = sum(1 for g in got if g != own)
            assert foreign == 0, f"port {i + 1}'s wire got {foreign} of {len(got)} frames not its guest's, whole"
            assert len(got) == ROUNDS * BURST
    finally:
        for p in ports:
            p.close()
