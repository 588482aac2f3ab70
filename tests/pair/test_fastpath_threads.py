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
import threading

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.support.inproc import InprocPort
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


def drive(port: InprocPort, frames: list[bytes], start: threading.Barrier, errors: list[BaseException],
          received: list[bytes] | None = None) -> None:
    """a transmits ``frames`` ROUNDS times, a drain per round; b's frames go to ``received``."""
    try:
        fe, dev = port.frontends["a"], port.device("a")
        start.wait()
        for _ in range(ROUNDS):
            for f in frames:
                fe.transmit(f)
            dev.drain_tx()  # a burst of BURST frames is within a drain's budget
            fe.reclaim_tx()
            if received is not None:
                b = port.frontends["b"]
                received.extend(frame for _, frame in b.receive())
                b.post_rx_buffers(BURST)
    except BaseException as e:  # reported by the test
        errors.append(e)


def marks(frames: list[bytes]) -> list[tuple[int, bytes] | bool]:
    """Each frame's (UDP source port, payload), False if it is not UDP."""
    return [UDP in (pkt := Ether(f)) and (pkt[UDP].sport, bytes(pkt[UDP].payload)) for f in frames]


def test_two_threads_bursting_to_two_wires_keep_their_own_frames() -> None:
    ports = [InprocPort(guests()[:1]) for _ in range(2)]
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
        frames = [frames_of(i + 1, B, B4) for i in range(2)]
        received: list[list[bytes]] = [[], []]
        start = threading.Barrier(2)
        errors: list[BaseException] = []
        threads = [threading.Thread(target=drive, args=(ports[i], frames[i], start, errors, received[i]))
                   for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
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
