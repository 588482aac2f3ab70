"""``_fastpath.c``'s RX ring reader against any ring content (no kernel, no root).

The ring is the kernel's memory, but the reader still checks every offset and length
it reads from a frame header (``ring_next``): whatever a slot holds, a frame is handed
over whole and unchanged, or as truncated (-1), never read or written outside its slot;
each slot taken is given back (TP_STATUS_KERNEL) and the cursor moves on.
"""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vhost_ipvlan.daemon import fastpath
from vhost_ipvlan.virtio import net

pytestmark = pytest.mark.skipif(not fastpath.accelerated(), reason="the C accelerator is not built")

FRAME, FRAMES = 2048, 4
TP_STATUS_USER, TP_STATUS_COPY = 1, 2
HDRLEN = 52  # TPACKET2_HDRLEN: the aligned tpacket2_hdr and a sockaddr_ll

slot = st.tuples(st.integers(0, 7), st.integers(0, 70000), st.integers(0, 70000), st.integers(0, 0xFFFF),
                 st.binary(min_size=0, max_size=64))


def tpacket2(status: int, length: int, snaplen: int, mac: int) -> bytes:
    """A tpacket2_hdr: status, len, snaplen, mac, net, sec, nsec, vlan tci, tpid, padding."""
    return struct.pack("=IIIHHIIHH4x", status, length, snaplen, mac, 0, 0, 0, 0, 0)


def fake_ring(slots: list[tuple[int, int, int, int, bytes]]) -> bytearray:
    """A ring whose first slots hold these headers (status, len, snaplen, mac), each slot's
    rest filled with its bytes (repeated)."""
    ring = bytearray(FRAME * FRAMES)
    for i, (status, length, snaplen, mac, fill) in enumerate(slots):
        base = i * FRAME
        ring[base + 32 : base + FRAME] = ((fill or b"\x5a") * FRAME)[: FRAME - 32]
        ring[base : base + 32] = tpacket2(status, length, snaplen, mac)
    return ring


@settings(max_examples=200, deadline=None)
@given(st.lists(slot, min_size=1, max_size=FRAMES))
def test_any_slot_is_a_whole_frame_or_truncated(slots: list[tuple[int, int, int, int, bytes]]) -> None:
    assert fastpath.ext is not None
    ring = fake_ring(slots)
    before = bytes(ring)
    cursor = bytearray(4)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        a.setblocking(False)
        b.send(bytes(10) + b"\x02" * 60)  # for a slot that says TP_STATUS_COPY
        buf = memoryview(bytearray(net.MAX_BUFFER))
        args = (a.fileno(), ring, FRAME, FRAMES, cursor)
        for i, (status, length, snaplen, mac, _) in enumerate(slots):
            base = i * FRAME
            n = fastpath.ext.ring_recv(args, buf)
            if not status & TP_STATUS_USER:
                assert n == 0 and struct.unpack("=I", cursor)[0] == i
                return
            assert struct.unpack("=I", ring[base : base + 4])[0] == 0  # given back
            assert struct.unpack("=I", cursor)[0] == (i + 1) % FRAMES
            if status & TP_STATUS_COPY:
                assert n in (72, -1)
                continue
            fits = snaplen >= length and HDRLEN + 12 <= mac <= FRAME and snaplen <= FRAME - mac
            if not fits:
                assert n == -1
                continue
            assert n == snaplen + 12
            frame = before[base + mac : base + mac + snaplen]
            assert bytes(buf[12:n]) == frame and bytes(buf[:10]) == before[base + mac - 10 : base + mac]
        assert ring[len(slots) * FRAME :] == before[len(slots) * FRAME :]  # nothing beyond the slots used
    finally:
        a.close()
        b.close()


@settings(max_examples=100, deadline=None)
@given(st.lists(slot, min_size=1, max_size=FRAMES), st.integers(1, FRAMES + 1))
def test_uplink_burst_hands_python_what_ring_recv_reads(slots: list[tuple[int, int, int, int, bytes]],
                                                        budget: int) -> None:
    """With nothing C may deliver (an empty table), ``uplink_burst`` on a ring gives
    ``slow`` every frame, in order, exactly as ``ring_recv`` reads them, within the
    budget, and leaves the cursor where ``ring_recv`` would."""
    assert fastpath.ext is not None
    ring = fake_ring([(s & ~TP_STATUS_COPY, n, snap, mac, fill) for s, n, snap, mac, fill in slots])
    twin = bytearray(ring)
    buf = memoryview(bytearray(net.MAX_BUFFER))
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        expected: list[tuple[int, bytes]] = []
        twin_cursor = bytearray(4)
        for _ in range(budget):
            n = fastpath.ext.ring_recv((a.fileno(), twin, FRAME, FRAMES, twin_cursor), buf)
            if n == 0:
                break
            expected.append((n, bytes(buf[: max(n, 0)])))
        handed: list[tuple[int, bytes]] = []

        def slow(n: int) -> int:
            handed.append((n, bytes(buf[: max(n, 0)])))
            return 0

        cursor = bytearray(4)
        status, detail, delivered = fastpath.ext.uplink_burst(
            (a.fileno(), ring, FRAME, FRAMES, cursor), buf, {}, b"\x02" * 6, set(), budget, set(), slow)
        assert (delivered, detail) == (0, 0)
        assert status == (fastpath.ext.BUDGET if len(handed) == budget else fastpath.ext.EMPTY)
        assert [(n, f[:10] + f[12:]) for n, f in handed] == [(n, f[:10] + f[12:]) for n, f in expected]
        assert cursor == twin_cursor and ring == twin
    finally:
        a.close()
        b.close()
