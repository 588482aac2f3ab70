"""Split ring and virtio-net RX/TX mechanics over a bytearray standing in for guest RAM."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.frontend import DriverQueue
from vhost_ipvlan.errors import GuestError
from vhost_ipvlan.virtio import net
from vhost_ipvlan.virtio.dirtylog import DirtyLog, log_bytes
from vhost_ipvlan.virtio.memory import GuestMemory, Region
from vhost_ipvlan.virtio.virtqueue import (
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    VRING_USED_F_NO_NOTIFY,
    SplitQueue,
)

UVA = 0x10000000
SIZE = 1 << 20
DATA = 0x40000


def make(num: int = 16, event_idx: bool = False) -> tuple[bytearray, DriverQueue, SplitQueue]:
    ram = bytearray(SIZE)
    mem = GuestMemory([Region(0, SIZE, UVA, memoryview(ram))])
    dq = DriverQueue(ram, 0, num)
    q = SplitQueue(mem, num, UVA + dq.desc, UVA + dq.avail, UVA + dq.used, 0, event_idx=event_idx)
    return ram, dq, q


def test_memory_bounds_are_checked() -> None:
    ram = bytearray(4096)
    mem = GuestMemory([Region(0x1000, 4096, UVA, memoryview(ram))])
    assert len(mem.gpa_view(0x1000, 4096)) == 4096
    assert len(mem.gpa_view(0x1FFF, 1)) == 1
    for gpa, length in ((0x0, 16), (0x1FFF, 2), (0x2000, 1), (0x1000, -1), (0xFFF, 2)):
        with pytest.raises(GuestError):
            mem.gpa_view(gpa, length)
    with pytest.raises(GuestError):
        mem.uva_view(UVA + 4000, 200)


def test_memory_several_regions() -> None:
    a, b = bytearray(4096), bytearray(4096)
    mem = GuestMemory([Region(0, 4096, UVA, memoryview(a)), Region(0x100000, 4096, UVA + 0x100000, memoryview(b))])
    mem.gpa_view(0x100010, 4)[:] = b"abcd"
    assert b[16:20] == b"abcd"
    with pytest.raises(GuestError):
        mem.gpa_view(0xFFE, 4)  # straddles the end of region 0


def test_gather_single_and_chained() -> None:
    ram, dq, q = make()
    ram[DATA : DATA + 5] = b"hello"
    ram[DATA + 100 : DATA + 106] = b" world"
    dq.set_desc(0, DATA, 5, VRING_DESC_F_NEXT, 3)
    dq.set_desc(3, DATA + 100, 6, 0)
    dq.make_available(0)
    assert q.pending() == 1
    out = memoryview(bytearray(64))
    head = q.pop()
    assert q.gather(head, out) == 11
    assert bytes(out[:11]) == b"hello world"
    q.push(head, 0)
    q.publish()
    assert dq.pop_used() == (0, 0)


def test_gather_indirect() -> None:
    ram, dq, q = make()
    table = DATA + 0x1000
    struct.pack_into("<QIHH", ram, table, DATA, 3, VRING_DESC_F_NEXT, 1)
    struct.pack_into("<QIHH", ram, table + 16, DATA + 8, 2, 0, 0)
    ram[DATA : DATA + 3] = b"abc"
    ram[DATA + 8 : DATA + 10] = b"de"
    dq.set_desc(5, table, 32, VRING_DESC_F_INDIRECT)
    dq.make_available(5)
    out = memoryview(bytearray(16))
    assert q.gather(q.pop(), out) == 5
    assert bytes(out[:5]) == b"abcde"


@pytest.mark.parametrize(
    "setup",
    [
        "loop",
        "next_out_of_range",
        "head_out_of_range",
        "outside_memory",
        "nested_indirect",
        "indirect_with_next",
        "indirect_bad_len",
        "too_long",
    ],
)
def test_hostile_chains_raise_guest_error(setup: str) -> None:
    ram, dq, q = make()
    head = 0
    if setup == "loop":
        dq.set_desc(0, DATA, 4, VRING_DESC_F_NEXT, 1)
        dq.set_desc(1, DATA, 4, VRING_DESC_F_NEXT, 0)
    elif setup == "next_out_of_range":
        dq.set_desc(0, DATA, 4, VRING_DESC_F_NEXT, 16)
    elif setup == "head_out_of_range":
        head = 99
    elif setup == "outside_memory":
        dq.set_desc(0, SIZE - 2, 4, 0)
    elif setup == "nested_indirect":
        struct.pack_into("<QIHH", ram, DATA, DATA, 16, VRING_DESC_F_INDIRECT, 0)
        dq.set_desc(0, DATA, 16, VRING_DESC_F_INDIRECT)
    elif setup == "indirect_with_next":
        dq.set_desc(0, DATA, 16, VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT, 1)
    elif setup == "indirect_bad_len":
        dq.set_desc(0, DATA, 17, VRING_DESC_F_INDIRECT)
    elif setup == "too_long":
        dq.set_desc(0, DATA, 100, 0)
    struct.pack_into("<H", ram, dq.avail + 4, head)
    struct.pack_into("<H", ram, dq.avail + 2, 1)
    with pytest.raises(GuestError):
        h = q.pop()
        q.gather(h, memoryview(bytearray(64)))


def test_avail_index_too_far_ahead() -> None:
    ram, dq, q = make(num=16)
    struct.pack_into("<H", ram, dq.avail + 2, 17)
    with pytest.raises(GuestError):
        q.pending()


def test_has_pending_follows_the_avail_index_unchecked() -> None:
    ram, dq, q = make(num=16)
    assert not q.has_pending()
    dq.set_desc(0, DATA, 4, 0)
    dq.make_available(0)
    assert q.has_pending()
    q.push(q.pop(), 0)
    assert not q.has_pending()
    struct.pack_into("<H", ram, dq.avail + 2, 40)  # too far ahead: pending() raises, this does not
    assert q.has_pending()


def test_resumes_at_used_index() -> None:
    ram, dq, _ = make()
    struct.pack_into("<H", ram, dq.used + 2, 7)
    mem = GuestMemory([Region(0, SIZE, UVA, memoryview(ram))])
    q = SplitQueue(mem, 16, UVA + dq.desc, UVA + dq.avail, UVA + dq.used, 7, event_idx=False)
    assert q.used_idx == 7 and q.last_avail == 7


def test_base_disagreeing_with_the_used_index_is_replaced_by_it() -> None:
    """DPDK's virtio-user reconnects with base 0 to rings that moved on: resume at used.idx."""
    ram, dq, _ = make()
    struct.pack_into("<H", ram, dq.used + 2, 17280 & 0xFFFF)
    struct.pack_into("<H", ram, dq.avail + 2, (17280 + 16) & 0xFFFF)  # a full ring waiting
    mem = GuestMemory([Region(0, SIZE, UVA, memoryview(ram))])
    q = SplitQueue(mem, 16, UVA + dq.desc, UVA + dq.avail, UVA + dq.used, 0, event_idx=False)
    assert (q.resynced_from, q.last_avail, q.used_idx) == (0, 17280, 17280)
    assert q.pending() == 16
    same = SplitQueue(mem, 16, UVA + dq.desc, UVA + dq.avail, UVA + dq.used, 17280, event_idx=False)
    assert same.resynced_from is None and same.last_avail == 17280
    kept = SplitQueue(mem, 16, UVA + dq.desc, UVA + dq.avail, UVA + dq.used, 17281, event_idx=False,
                      resync=False)
    assert kept.resynced_from is None and kept.last_avail == 17281


def post_rx(dq: DriverQueue, count: int, size: int) -> None:
    for i in range(count):
        dq.set_desc(i, DATA + i * 4096, size, VRING_DESC_F_WRITE)
        dq.make_available(i)


def test_rx_single_buffer() -> None:
    ram, dq, q = make()
    post_rx(dq, 1, 2048)
    frame = bytearray(net.HDR_LEN) + b"x" * 100
    assert net.rx_deliver(q, memoryview(frame), False) == net.RX_OK
    q.publish()
    head, length = dq.pop_used() or (None, None)
    assert (head, length) == (0, 112)
    assert struct.unpack_from("<H", ram, DATA + 10)[0] == 1
    assert ram[DATA + 12 : DATA + 112] == b"x" * 100


def test_rx_too_big_without_mergeable_keeps_the_buffer() -> None:
    _, dq, q = make()
    post_rx(dq, 2, 64)
    frame = memoryview(bytearray(net.HDR_LEN + 100))
    assert net.rx_deliver(q, frame, False) == net.RX_TOO_BIG
    assert q.pending() == 2


def test_rx_mergeable_spans_buffers() -> None:
    ram, dq, q = make()
    post_rx(dq, 4, 64)
    payload = bytes(range(200))
    frame = memoryview(bytearray(net.HDR_LEN) + payload)
    assert net.rx_deliver(q, frame, True) == net.RX_OK
    q.publish()
    used = [dq.pop_used() for _ in range(4)]
    assert [u[1] for u in used if u] == [64, 64, 64, 20]
    assert struct.unpack_from("<H", ram, DATA + 10)[0] == 4
    got = b"".join(bytes(ram[DATA + h * 4096 : DATA + h * 4096 + n]) for h, n in (u for u in used if u))
    assert got[net.HDR_LEN :] == payload


def test_rx_ring_full_takes_nothing() -> None:
    _, dq, q = make()
    post_rx(dq, 2, 64)
    frame = memoryview(bytearray(net.HDR_LEN + 500))
    assert net.rx_deliver(q, frame, True) == net.RX_RING_FULL
    assert q.pending() == 2
    _, _, empty = make()
    assert net.rx_deliver(empty, frame, True) == net.RX_RING_FULL


def test_event_idx_interrupt_suppression() -> None:
    ram, dq, q = make(event_idx=True)
    post_rx(dq, 4, 256)
    frame = memoryview(bytearray(net.HDR_LEN + 10))
    struct.pack_into("<H", ram, dq.avail + 4 + 2 * 16, 2)  # used_event: interrupt once used passes 2
    net.rx_deliver(q, frame, True)
    assert not q.publish()  # used 0 -> 1: no interrupt wanted
    net.rx_deliver(q, frame, True)
    net.rx_deliver(q, frame, True)
    assert q.publish()  # 1 -> 3 crosses 2
    assert not q.publish()  # nothing new


def test_want_kick_writes_avail_event() -> None:
    ram, dq, q = make(event_idx=True)
    post_rx(dq, 3, 64)
    for _ in range(3):
        q.pop()
    assert not q.want_kick()
    assert struct.unpack_from("<H", ram, dq.used + 4 + 8 * 16)[0] == 3


def used_flags(ram: bytearray, dq: DriverQueue) -> int:
    flags: int = struct.unpack_from("<H", ram, dq.used)[0]
    return flags


def test_suppress_kicks_sets_no_notify_until_want_kick() -> None:
    """Without EVENT_IDX the device asks for no kicks with used.flags NO_NOTIFY (what a
    driver reads before kicking); want_kick clears it and says whether chains wait."""
    ram, dq, q = make()
    assert used_flags(ram, dq) == 0
    q.suppress_kicks()
    assert used_flags(ram, dq) == VRING_USED_F_NO_NOTIFY
    post_rx(dq, 1, 64)  # the driver adds a chain without kicking
    assert q.want_kick()
    assert used_flags(ram, dq) == 0
    q.pop()
    assert not q.want_kick()


def test_suppress_kicks_with_event_idx_leaves_avail_event_behind() -> None:
    """With EVENT_IDX the flag is not used (the driver ignores it): avail_event stays
    where want_kick last put it, so the driver kicks once per 65536 chains."""
    ram, dq, q = make(event_idx=True)
    post_rx(dq, 3, 64)
    for _ in range(3):
        q.pop()
    assert not q.want_kick()
    q.suppress_kicks()
    assert used_flags(ram, dq) == 0
    assert struct.unpack_from("<H", ram, dq.used + 4 + 8 * 16)[0] == 3


def test_a_no_notify_left_by_an_earlier_back_end_is_cleared_by_want_kick() -> None:
    """A ring handed over with NO_NOTIFY still set (a back-end that polled it, killed):
    the first want_kick clears it, else the guest would never kick; allow_kicks clears it
    without looking at the ring (a ring being stopped, for its next back-end)."""
    ram = bytearray(SIZE)
    dq = DriverQueue(ram, 0, 16)
    struct.pack_into("<H", ram, dq.used, VRING_USED_F_NO_NOTIFY)
    mem = GuestMemory([Region(0, SIZE, UVA, memoryview(ram))])
    q = SplitQueue(mem, 16, UVA + dq.desc, UVA + dq.avail, UVA + dq.used, 0, event_idx=False)
    assert used_flags(ram, dq) == VRING_USED_F_NO_NOTIFY  # nothing written before the log is set
    assert not q.want_kick()
    assert used_flags(ram, dq) == 0
    q.suppress_kicks()
    assert q.allow_kicks() and used_flags(ram, dq) == 0
    assert not q.allow_kicks()


def test_used_flags_writes_are_marked_in_the_dirty_log() -> None:
    """Live migration: suppress_kicks and allow_kicks write the used ring: its page is marked."""
    _, dq, q = make()
    log = bytearray(log_bytes(SIZE))
    q.set_log(DirtyLog(memoryview(log), None), dq.used)
    q.suppress_kicks()
    assert log[dq.used // 4096 // 8] >> (dq.used // 4096 % 8) & 1
    log[:] = bytes(len(log))
    q.allow_kicks()
    assert log[dq.used // 4096 // 8] >> (dq.used // 4096 % 8) & 1


def test_offload_ok() -> None:
    csum, gso = net.offload_mask(net.bit(net.F_GUEST_CSUM) | net.bit(net.F_GUEST_TSO4))
    assert net.offload_ok(0, net.GSO_NONE, csum, gso, False)
    assert net.offload_ok(net.HDR_F_NEEDS_CSUM, net.GSO_TCPV4, csum, gso, False)
    assert not net.offload_ok(0, net.GSO_TCPV6, csum, gso, False)
    assert not net.offload_ok(0, net.GSO_TCPV4 | net.GSO_ECN, csum, gso, False)
    none_csum, none_gso = net.offload_mask(0)
    assert not net.offload_ok(net.HDR_F_NEEDS_CSUM, 0, none_csum, none_gso, False)
    assert not net.offload_ok(0, 200, csum, gso, True)


@settings(max_examples=300, deadline=None)
@given(table=st.binary(min_size=16 * 8, max_size=16 * 8), avail=st.binary(min_size=20, max_size=20),
       writable=st.booleans())
def test_random_rings_never_escape(table: bytes, avail: bytes, writable: bool) -> None:
    """Whatever the guest writes in its rings, we either work or raise GuestError."""
    ram = bytearray(1 << 16)
    mem = GuestMemory([Region(0, len(ram), UVA, memoryview(ram))])
    ram[0 : len(table)] = table
    ram[0x1000 : 0x1000 + len(avail)] = avail
    q = SplitQueue(mem, 8, UVA, UVA + 0x1000, UVA + 0x2000, 0, event_idx=True)
    out = memoryview(bytearray(512))
    try:
        for _ in range(q.pending()):
            head = q.pop()
            if writable:
                q.capacity(head)
                q.fill(out)
            else:
                q.gather(head, out)
            q.push(head, 0)
        q.publish()
    except GuestError:
        pass


# -- bounded work per chain and per frame (hostile-input audit 3) ------------------------


def zero_length_table(ram: bytearray, at: int, entries: int, flags: int, size: int = 0) -> None:
    """An indirect table of ``entries`` descriptors of ``size`` bytes each, linked by NEXT."""
    for i in range(entries):
        last = i == entries - 1
        struct.pack_into("<QIHH", ram, at + 16 * i, DATA, size, flags | (0 if last else VRING_DESC_F_NEXT),
                         0 if last else i + 1)


def test_indirect_table_is_bounded_by_the_queue_size() -> None:
    """The spec bounds a chain by the queue size: a 17-entry table on a 16-entry queue
    is refused, whatever MAX_QUEUE_SIZE allows; 16 entries are fine."""
    ram, dq, q = make(num=16)
    table = DATA + 0x1000
    zero_length_table(ram, table, 17, 0)
    zero_length_table(ram, table + 0x1000, 16, 0)
    dq.set_desc(0, table, 16 * 17, VRING_DESC_F_INDIRECT)
    dq.set_desc(1, table + 0x1000, 16 * 16, VRING_DESC_F_INDIRECT)
    dq.make_available(0)
    dq.make_available(1)
    with pytest.raises(GuestError, match="indirect table of 272 bytes for a 16-entry queue"):
        q.gather(q.pop(), memoryview(bytearray(64)))
    assert q.gather(q.pop(), memoryview(bytearray(64))) == 0


def test_walked_counts_every_descriptor() -> None:
    """Zero-length descriptors and the indirect one count as work."""
    ram, dq, q = make(num=16)
    ram[DATA : DATA + 4] = b"abcd"
    dq.set_desc(0, DATA, 4, 0)  # one plain descriptor
    zero_length_table(ram, DATA + 0x1000, 16, 0)
    dq.set_desc(1, DATA + 0x1000, 16 * 16, VRING_DESC_F_INDIRECT)
    dq.set_desc(2, DATA, 0, VRING_DESC_F_NEXT, 3)
    dq.set_desc(3, DATA, 4, 0)
    for head in (0, 1, 2):
        dq.make_available(head)
    out = memoryview(bytearray(64))
    walked = []
    for _ in range(3):
        before = q.walked
        q.gather(q.pop(), out)
        walked.append(q.walked - before)
    assert walked == [1, 17, 2]


def post_indirect_rx(ram: bytearray, dq: DriverQueue, count: int, entries: int, size: int) -> None:
    """``count`` RX chains sharing one indirect table of ``entries`` writable descriptors."""
    table = DATA + 0x10000
    zero_length_table(ram, table, entries, VRING_DESC_F_WRITE, size)
    for i in range(count):
        dq.set_desc(i, table, 16 * entries, VRING_DESC_F_INDIRECT)
        dq.make_available(i)


@pytest.mark.parametrize("mergeable", [True, False])
def test_rx_zero_capacity_chain_drops_the_frame_at_once(mergeable: bool) -> None:
    """Audit r2: chains without writable room made one 60-byte frame walk every
    pending chain to its end. The first such chain ends it: RX_BAD_BUFFER, the
    chain given back, at most one chain walked."""
    ram, dq, q = make(num=16)
    post_indirect_rx(ram, dq, 16, 16, 0)
    frame = memoryview(bytearray(net.HDR_LEN + 60))
    assert net.rx_deliver(q, frame, mergeable) == net.RX_BAD_BUFFER
    assert q.walked <= 16 + 1
    assert q.pending() == 16 and q.used_idx == 0


def test_rx_buffers_smaller_than_the_header_are_bad() -> None:
    """Every mergeable buffer must hold a virtio_net_hdr (spec 5.1.6.3.1): the second
    chain, of 8 bytes, ends the search; the first one (64 bytes) is given back."""
    _, dq, q = make(num=16)
    dq.set_desc(0, DATA, 64, VRING_DESC_F_WRITE)
    for i in range(1, 16):
        dq.set_desc(i, DATA + i * 4096, 8, VRING_DESC_F_WRITE)
    for i in range(16):
        dq.make_available(i)
    frame = memoryview(bytearray(net.HDR_LEN + 500))
    assert net.rx_deliver(q, frame, True) == net.RX_BAD_BUFFER
    assert q.walked == 2 and q.pending() == 16


def test_rx_fragmented_buffers_are_bounded_by_the_queue_size() -> None:
    """Chains of 64 one-byte descriptors: a 2000-byte frame would take 32 of them
    (2080 descriptors); it stops once the chains looked at reach ``num`` descriptors."""
    ram, dq, q = make(num=64)
    post_indirect_rx(ram, dq, 64, 64, 1)
    frame = memoryview(bytearray(net.HDR_LEN + 2000))
    assert net.rx_deliver(q, frame, True) == net.RX_BAD_BUFFER
    assert q.walked <= 2 * (64 + 1)
    assert q.pending() == 64 and q.used_idx == 0


def test_rx_mergeable_of_a_maximal_frame_in_2k_buffers() -> None:
    """The bound leaves real drivers alone: a 64 KiB frame in 2 KiB single-descriptor
    buffers (33 of them) on a 64-entry queue is delivered."""
    ram = bytearray(4 << 20)
    mem = GuestMemory([Region(0, len(ram), UVA, memoryview(ram))])
    dq = DriverQueue(ram, 0, 64)
    q = SplitQueue(mem, 64, UVA + dq.desc, UVA + dq.avail, UVA + dq.used, 0, event_idx=False)
    for i in range(64):
        dq.set_desc(i, 0x100000 + i * 2048, 2048, VRING_DESC_F_WRITE)
        dq.make_available(i)
    frame = memoryview(bytearray(net.MAX_BUFFER))
    assert net.rx_deliver(q, frame, True) == net.RX_OK
    assert (q.used_idx, int.from_bytes(ram[0x100000 + 10 : 0x100000 + 12], "little")) == (33, 33)


def test_a_bad_first_chain_is_walked_once_per_avail_index() -> None:
    """A chain without room for a header stays first in the ring (it is never taken):
    later frames are dropped without walking it again, until the driver adds chains."""
    ram, dq, q = make(num=16)
    post_indirect_rx(ram, dq, 8, 16, 0)
    frame = memoryview(bytearray(net.HDR_LEN + 60))
    for _ in range(3):
        assert net.rx_deliver(q, frame, True) == net.RX_BAD_BUFFER
    assert q.walked == 17
    dq.set_desc(8, DATA, 2048, VRING_DESC_F_WRITE)
    dq.make_available(8)
    assert net.rx_deliver(q, frame, True) == net.RX_BAD_BUFFER  # looked at again: still bad
    assert q.walked == 34 and q.pending() == 9


@pytest.mark.parametrize(("mergeable", "chains", "result"), [
    (True, 16, net.RX_BAD_BUFFER),  # the walk reached num descriptors
    (True, 1, net.RX_RING_FULL),  # every pending chain counted, not enough room
    (False, 16, net.RX_TOO_BIG),  # one chain, too small
])
def test_a_frame_that_did_not_fit_is_not_walked_again_for_the_next_frames(
        mergeable: bool, chains: int, result: int) -> None:
    """Chains of 12 bytes spread over ``num`` descriptors (each an indirect table: one
    12-byte descriptor, the rest empty): every frame walked ``num`` descriptors again
    and failed the same way (a 32768-entry ring: 3.7 s for one burst of 256 frames).
    Now the first failure is remembered with the room found: bigger frames fail at
    once; a frame that fits that room is still delivered."""
    ram, dq, q = make(num=16)
    table = DATA + 0x10000
    zero_length_table(ram, table, 16, VRING_DESC_F_WRITE)
    struct.pack_into("<I", ram, table + 8, net.HDR_LEN)  # the first descriptor holds 12 bytes
    for i in range(chains):
        dq.set_desc(i, table, 16 * 16, VRING_DESC_F_INDIRECT)
        dq.make_available(i)
    frame = memoryview(bytearray(net.HDR_LEN + 60))
    assert net.rx_deliver(q, frame, mergeable) == result
    once = q.walked
    for _ in range(10):
        assert net.rx_deliver(q, frame, mergeable) == result
    assert q.walked == once and q.pending() == chains and q.used_idx == 0
    assert net.rx_deliver(q, memoryview(bytearray(net.HDR_LEN)), mergeable) == net.RX_OK  # it fits: walked
    assert q.used_idx == 1
