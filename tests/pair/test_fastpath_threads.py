"""The C accelerator on two threads at once, as the daemon's workers (``[daemon] workers``) call it.

Its bursts let the GIL go while no Python object is needed (the copies, the kernel's
``sendmmsg`` to the wire): meanwhile the other thread runs its own bursts and Python.
Each thread must have its own staging buffers, or one port's wire gets the other's
frames, and a burst must not lose or mix frames while it runs without the GIL. Two
in-process ports, each driven by its own thread, guest -> wire and guest -> guest:
every frame each wire or guest gets must be one of its own sender's, whole, and none
missing.
"""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.support.inproc import InprocPort, burst_from_threads
from vhost_ipvlan.daemon import fastpath

pytestmark = pytest.mark.skipif(not fastpath.accelerated(), reason="the C accelerator is not built")

A, A4, OUT = "02:00:00:00:00:0a", "10.0.0.10", "02:00:00:00:99:99"
B, B4 = "02:00:00:00:00:0b", "10.0.0.11"
ROUNDS, BURST = 150, 64


def frames_of(port_id: int, dst: str = OUT, dst_ip: str = "10.0.0.1") -> list[bytes]:
    """``BURST`` frames from guest a, each naming its port and number in a 1400-byte payload."""
    return [bytes(Ether(src=A, dst=dst) / IP(src=A4, dst=dst_ip) / UDP(sport=port_id, dport=i) /
                  (bytes([port_id]) * 1400)) for i in range(BURST)]


def guests() -> list[tuple[str, list[bytes], bytes | None]]:
    return [(name, [ipaddress.ip_address(ip).packed], bytes.fromhex(mac.replace(":", "")))
            for name, ip, mac in (("a", A4, A), ("b", B4, B))]


def marks(frames: list[bytes]) -> list[tuple[int, bytes] | bool]:
    """Each frame's (UDP source port, payload), False if it is not UDP."""
    return [UDP in (pkt := Ether(f)) and (pkt[UDP].sport, bytes(pkt[UDP].payload)) for f in frames]


def test_two_threads_bursting_to_two_wires_keep_their_own_frames() -> None:
    ports = [InprocPort(guests()[:1]) for _ in range(2)]
    try:
        def drain_wires() -> None:  # keep the wires' socket buffers from filling
            for p in ports:
                _ = p.uplink.sent  # reading it takes what went out

        burst_from_threads(ports, [frames_of(1), frames_of(2)], ROUNDS, meanwhile=drain_wires)
        for i in range(2):
            got = marks([d[10:] for d in ports[i].uplink.sent])
            own = (i + 1, bytes([i + 1]) * 1400)
            foreign = sum(1 for g in got if g != own)
            assert foreign == 0, f"port {i + 1}'s wire got {foreign} of {len(got)} frames not its guest's, whole"
            assert len(got) == ROUNDS * BURST
    finally:
        for p in ports:
            p.close()


def test_two_threads_bursting_between_guests_keep_their_own_frames() -> None:
    ports = [InprocPort(guests()) for _ in range(2)]
    try:
        received: list[list[bytes]] = [[], []]

        def take(k: int) -> None:  # b's frames, its buffers given back
            b = ports[k].frontends["b"]
            received[k].extend(frame for _, frame in b.receive())
            b.post_rx_buffers(BURST)

        burst_from_threads(ports, [frames_of(i + 1, B, B4) for i in range(2)], ROUNDS, after_round=take)
        for i in range(2):
            got = marks(received[i])
            own = (i + 1, bytes([i + 1]) * 1400)
            foreign = sum(1 for g in got if g != own)
            assert foreign == 0, f"port {i + 1}'s b got {foreign} of {len(got)} frames not its a's, whole"
            assert len(got) == ROUNDS * BURST
            assert ports[i].device("b").counters()["rx_packets"] == ROUNDS * BURST
    finally:
        for p in ports:
            p.close()
