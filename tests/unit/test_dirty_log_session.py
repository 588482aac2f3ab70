"""The dirty log in the session (SET_LOG_BASE, SET_LOG_FD, LOG_ALL on and off) and
``virtio.dirtylog``, driven by the fake front-end in-process; the memory is mapped by
the daemon's own ``OsHost``, so the log is checked as guest memory is."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.frontend import MEM_SIZE, DriverQueue, FakeFrontend
from tests.unit.test_session import RecordingDevice
from vhost_ipvlan.daemon import fastpath
from vhost_ipvlan.daemon.host import OsHost
from vhost_ipvlan.errors import FrontendError
from vhost_ipvlan.vhost_user import codec
from vhost_ipvlan.vhost_user.codec import ProtocolFeature, Request
from vhost_ipvlan.vhost_user.session import DEFAULT_FEATURES, DEFAULT_PROTOCOL_FEATURES, RX, TX, Session
from vhost_ipvlan.virtio import net
from vhost_ipvlan.virtio.dirtylog import DirtyLog, log_bytes
from vhost_ipvlan.virtio.memory import GuestMemory, Region
from vhost_ipvlan.virtio.virtqueue import (
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    SplitQueue,
)

UVA = 0x10000000


class Pair:
    def __init__(self) -> None:
        self.session = Session(OsHost(), RecordingDevice())
        self.fe = FakeFrontend(sealing="shrink")
        self.fe.transport = self._transport

    def _transport(self, data: bytes, fds: list[int]) -> bytes | None:
        request, flags, _ = codec.decode_header(data)
        msg = codec.Message(request, flags, data[codec.HEADER_SIZE :], [os.dup(fd) for fd in fds])
        reply = self.session.handle(msg)
        return None if reply is None else reply[codec.HEADER_SIZE :]


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair()
    p.fe.setup()
    yield p
    p.session.close()
    p.fe.close()


def test_migration_features_are_offered() -> None:
    assert DEFAULT_FEATURES >> codec.F_LOG_ALL & 1
    assert DEFAULT_PROTOCOL_FEATURES >> ProtocolFeature.LOG_SHMFD & 1


def test_set_log_base_is_answered_with_set_log_base(pair: Pair) -> None:
    """QEMU 7.2 reads a reply and checks only that its request is SET_LOG_BASE."""
    data = codec.encode_request(Request.SET_LOG_BASE, codec.LOG.pack(pair.fe.log_size(), 0))
    fd = os.memfd_create("log")
    os.ftruncate(fd, pair.fe.log_size())
    reply = pair.session.handle(codec.Message(Request.SET_LOG_BASE, 1, data[codec.HEADER_SIZE :], [fd]))
    assert reply is not None
    assert codec.HEADER.unpack_from(reply) == (Request.SET_LOG_BASE, codec.FLAG_VERSION | codec.FLAG_REPLY, 8)
    assert reply[codec.HEADER_SIZE :] == codec.U64.pack(0)
    assert pair.session.log is not None and pair.session.log.size == MEM_SIZE // (4096 * 8)


def test_logging_follows_log_all_and_the_ring_flag(pair: Pair) -> None:
    s, fe = pair.session, pair.fe
    rx, tx = s.vrings[RX].queue, s.vrings[TX].queue
    assert rx is not None and tx is not None
    fe.set_log_base()
    assert not s.logging and rx.log is None  # a log, but LOG_ALL not acked yet
    fe.set_logging(True)
    assert s.logging and rx.log is s.log and tx.log is s.log
    assert (rx.log_used, tx.log_used) == (fe.rxq.used, fe.txq.used)
    assert rx._logbuf is not None
    fe.set_logging(False)
    assert not s.logging and rx.log is None and rx._logbuf is None and rx.log_used == -1
    s.dirty_log = False  # the negative control: the same messages, nothing marked
    fe.set_logging(True)
    assert rx.log is None


def test_a_ring_started_while_logging_logs(pair: Pair) -> None:
    """After GET_VRING_BASE (the source stops) and a new kick, the ring logs again."""
    fe = pair.fe
    fe.start_dirty_log()
    base = fe.vring_base(RX)
    assert pair.session.vrings[RX].queue is None
    fe.send(Request.SET_VRING_ADDR, codec.VRING_ADDR.pack(RX, codec.VRING_F_LOG, 0x7F00_0000_0000 + fe.rxq.desc,
                                                          0x7F00_0000_0000 + fe.rxq.used,
                                                          0x7F00_0000_0000 + fe.rxq.avail, fe.rxq.used))
    fe.send(Request.SET_VRING_BASE, codec.VRING_STATE.pack(RX, base))
    fe.send(Request.SET_VRING_KICK, codec.U64.pack(RX), [fe.kick[RX]])
    q = pair.session.vrings[RX].queue
    assert q is not None and q.log is pair.session.log and q.log_used == fe.rxq.used


def test_a_new_log_replaces_the_last(pair: Pair) -> None:
    pair.fe.start_dirty_log()
    first = pair.session.log
    pair.fe.set_log_base(pair.fe.log_size() + 4096)  # QEMU resizes the log when memory grows
    assert pair.session.log is not first
    q = pair.session.vrings[RX].queue
    assert q is not None and q.log is pair.session.log


def test_set_log_fd_keeps_an_eventfd(pair: Pair) -> None:
    efd = os.eventfd(0)
    try:
        pair.fe.send(Request.SET_LOG_FD, b"", [efd])
        assert pair.session.log_fd is not None
        pair.session.close()
        assert pair.session.log_fd is None
    finally:
        os.close(efd)


# -- bad input: one clear error, this connection only (FrontendError), nothing half-applied ---------


def refused(pair: Pair, payload: bytes, fds: list[int]) -> str:
    before = pair.session.log
    with pytest.raises(FrontendError) as e:
        pair.session.handle(codec.Message(Request.SET_LOG_BASE, codec.FLAG_VERSION, payload, fds))
    assert pair.session.log is before
    return str(e.value)


def memfd(size: int) -> int:
    fd = os.memfd_create("log")
    os.ftruncate(fd, size)
    return fd


def test_a_log_without_its_descriptor_is_refused(pair: Pair) -> None:
    msg = refused(pair, codec.LOG.pack(pair.fe.log_size(), 0), [])
    assert msg == "SET_LOG_BASE: 0 file descriptors, expected the log's one"


def test_a_log_shorter_than_its_descriptor_says_is_refused(pair: Pair) -> None:
    msg = refused(pair, codec.LOG.pack(pair.fe.log_size(), 0), [memfd(16)])
    assert msg.startswith(f"SET_LOG_BASE: cannot map a log of {pair.fe.log_size()} bytes at offset 0x0: ")


def test_a_log_too_small_for_guest_memory_is_refused(pair: Pair) -> None:
    msg = refused(pair, codec.LOG.pack(8, 0), [memfd(8)])
    assert msg == (f"SET_LOG_BASE: a log of 8 bytes covers guest addresses below 0x40000, but guest memory ends "
                   f"at {MEM_SIZE:#x} ({MEM_SIZE // 32768} bytes needed)")


@pytest.mark.parametrize(("payload", "fds", "expected"), [
    (codec.LOG.pack(0, 0), 1, "SET_LOG_BASE: a log of 0 bytes (1 to 0x20000000)"),
    (codec.LOG.pack(1 << 40, 0), 1, "SET_LOG_BASE: a log of 1099511627776 bytes (1 to 0x20000000)"),
    (codec.LOG.pack(256, (1 << 64) - 128), 1, "SET_LOG_BASE: the log at offset 0xffffffffffffff80 does not end "
                                              "below 2^64"),
    (codec.U64.pack(256), 1, "SET_LOG_BASE: payload of 8 bytes, expected 16"),
    (codec.LOG.pack(256, 0), 2, "SET_LOG_BASE: 2 file descriptors, expected the log's one"),
], ids=["empty", "huge", "offset", "short-payload", "two-fds"])
def test_malformed_set_log_base_is_refused(pair: Pair, payload: bytes, fds: int, expected: str) -> None:
    assert refused(pair, payload, [memfd(256) for _ in range(fds)]) == expected


def test_a_log_far_into_a_sparse_file_is_refused_before_mapping(pair: Pair) -> None:
    """The daemon maps a log from offset 0 of its file (``Host.map_region``): a small log
    at a huge offset of a sparse memfd would take terabytes of the daemon's address space,
    which MAX_MAPPED refuses for guest memory; the log's mapping is bounded the same way."""
    offset = codec.MAX_MAPPED
    msg = refused(pair, codec.LOG.pack(256, offset), [memfd(offset + 256)])
    assert msg == (f"SET_LOG_BASE: the log at offset {offset:#x} ends beyond {codec.MAX_LOG:#x} bytes "
                   "(mmap_offset + size, what the daemon maps)")


def test_a_log_on_a_disk_file_is_refused_as_guest_memory_is(pair: Pair, tmp_path: object) -> None:
    fd = os.open("/var/tmp", os.O_TMPFILE | os.O_RDWR)
    os.ftruncate(fd, pair.fe.log_size())
    msg = refused(pair, codec.LOG.pack(pair.fe.log_size(), 0), [fd])
    assert "not tmpfs/memfd or hugetlbfs" in msg or "cannot map" in msg


def test_a_log_without_log_shmfd_is_refused() -> None:
    p = Pair()
    try:
        p.fe.setup()
        p.session.protocol_features &= ~(1 << ProtocolFeature.LOG_SHMFD)
        assert refused(p, codec.LOG.pack(p.fe.log_size(), 0), [memfd(p.fe.log_size())]) == (
            "SET_LOG_BASE without LOG_SHMFD acked: only a shared-memory log is served")
    finally:
        p.session.close()
        p.fe.close()


def test_a_logged_used_ring_beyond_the_log_is_refused(pair: Pair) -> None:
    pair.fe.start_dirty_log()
    addr = codec.VRING_ADDR.pack(RX, codec.VRING_F_LOG, 0x7F00_0000_0000 + pair.fe.rxq.desc,
                                 0x7F00_0000_0000 + pair.fe.rxq.used, 0x7F00_0000_0000 + pair.fe.rxq.avail,
                                 MEM_SIZE + (1 << 30))
    with pytest.raises(FrontendError, match="SET_VRING_ADDR: a log of 256 bytes does not cover vring 0's used ring"):
        pair.fe.send(Request.SET_VRING_ADDR, addr)


def test_a_ring_size_growing_its_logged_used_ring_beyond_the_log_is_refused(pair: Pair) -> None:
    """SET_VRING_NUM after SET_VRING_ADDR: the used ring it logs grows with the size, and
    a used ring past the log's end would lose its marks (counted in ``missed`` only)."""
    pair.fe.start_dirty_log()
    log_addr = (256 << 15) - 4096  # the last page the 256-byte log covers
    addr = codec.VRING_ADDR.pack(RX, codec.VRING_F_LOG, 0x7F00_0000_0000 + pair.fe.rxq.desc,
                                 0x7F00_0000_0000 + pair.fe.rxq.used, 0x7F00_0000_0000 + pair.fe.rxq.avail, log_addr)
    pair.fe.send(Request.SET_VRING_ADDR, addr)  # 256 entries: 2054 bytes, inside the log
    with pytest.raises(FrontendError, match="SET_VRING_NUM: a log of 256 bytes does not cover vring 0's used ring"):
        pair.fe.send(Request.SET_VRING_NUM, codec.VRING_STATE.pack(RX, 1024))
    assert pair.session.vrings[RX].num == 256


def test_more_memory_than_the_log_covers_is_refused_while_logging(pair: Pair) -> None:
    pair.fe.start_dirty_log()
    region = codec.MEM_REGION.pack(0, MEM_SIZE, 0x7F00_0000_0000, 0) + codec.MEM_REGION.pack(
        1 << 32, MEM_SIZE, 0x7E00_0000_0000, 0)
    with pytest.raises(FrontendError, match=r"SET_MEM_TABLE while logging: a log of 256 bytes covers guest "
                                            r"addresses below 0x800000, but guest memory ends at 0x100800000"):
        pair.fe.send(Request.SET_MEM_TABLE, codec.MEM_HEADER.pack(2, 0) + region, [pair.fe.fd, pair.fe.fd])


def test_a_set_log_fd_that_is_not_an_eventfd_is_refused(pair: Pair) -> None:
    r, w = os.pipe()
    os.close(w)
    with pytest.raises(FrontendError, match="SET_LOG_FD: the descriptor is 'pipe:"):
        pair.fe.send(Request.SET_LOG_FD, b"", [r])
    os.close(r)


# -- the log itself -------------------------------------------------------------------------------


def bits(log: bytearray) -> set[int]:
    return {8 * i + b for i, byte in enumerate(log) for b in range(8) if byte >> b & 1}


def test_mark_sets_whole_bytes_around_the_pages_written() -> None:
    """Python stores 0xFF (never loses another writer's bit): the 8 pages around."""
    buf = bytearray(4)
    log = DirtyLog(memoryview(buf))
    log.mark(5 * 4096 + 100, 1)
    assert bits(buf) == set(range(8))
    log.mark(8 * 4096 - 1, 2)  # across a byte's edge
    assert bits(buf) == set(range(16))
    log.mark(0, 0)
    assert log.missed == 0


def test_mark_of_a_long_range_and_beyond_the_log() -> None:
    buf = bytearray(100)
    log = DirtyLog(memoryview(buf))
    log.mark(3 * 32768, 90 * 32768)
    assert buf == bytes(3) + b"\xff" * 90 + bytes(7)
    log.mark(99 * 32768, 5 * 32768)
    assert buf[99] == 0xFF and log.missed == 1
    log.mark(200 * 32768, 1)
    assert log.missed == 2


def test_the_accelerators_log_mark_sets_exact_bits() -> None:
    ext = fastpath.ext
    if ext is None:
        pytest.skip("the C accelerator is not built")
    buf = bytearray(4)
    log = DirtyLog(memoryview(buf), ext.log_mark)
    log.mark(5 * 4096 + 100, 1)
    assert bits(buf) == {5}
    log.mark(8 * 4096 - 1, 2)  # across a byte's edge
    assert bits(buf) == {5, 7, 8}
    log.mark(30 * 4096, 3 * 4096)  # runs past the end
    assert bits(buf) == {5, 7, 8, 30, 31} and log.missed == 1
    log.mark((1 << 64) - 2, 8)  # wraps around
    assert log.missed == 2
    log.mark(0, 0)
    assert bits(buf) == {5, 7, 8, 30, 31} and log.missed == 2


def test_log_bytes_is_qemus_formula_at_most() -> None:
    """QEMU sizes the log in 64-bit words: never smaller than what we require."""
    for end in (1, 4096, 32768, 32769, MEM_SIZE, 3 << 30, (4 << 30) + 4096):
        qemu = ((end - 1) // (4096 * 64) + 1) * 8
        assert log_bytes(end) <= qemu
        assert DirtyLog(memoryview(bytearray(qemu))).covers(end)
    assert log_bytes(0) == 0


def test_a_guest_without_log_all_writes_nothing_into_the_log(pair: Pair) -> None:
    """The log mapped, LOG_ALL never acked: RX writes leave it untouched."""
    pair.fe.set_log_base()
    q = pair.session.vrings[RX].queue
    assert q is not None
    assert net.rx_deliver(q, memoryview(bytearray(100)), True) == net.RX_OK
    q.publish()
    assert pair.fe.dirty_pages() == set()


# -- the ring's writes, whatever the chains look like ------------------------------------------------


@pytest.mark.parametrize("exact", [False, True], ids=["whole-bytes", "log_mark"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_page_a_receive_ring_writes_is_marked(exact: bool, data: st.DataObject) -> None:
    """RX chains of 1-4 writable descriptors, direct or indirect, anywhere in memory
    (across page and log-byte edges), frames of any size, mergeable or not, EVENT_IDX
    on (``want_kick`` writes ``avail_event``): after the frames, ``publish`` and
    ``want_kick``, every page whose bytes changed is marked. With the accelerator's
    exact ``log_mark``, which shows Python names the right addresses page by page."""
    native = fastpath.log_mark() if exact else None
    if exact and native is None:
        pytest.skip("the C accelerator is not built")
    size, num = 1 << 20, 16
    ram = bytearray(size)
    mem = GuestMemory([Region(0, size, UVA, memoryview(ram))])
    dq = DriverQueue(ram, 0, num)
    q = SplitQueue(mem, num, UVA + dq.desc, UVA + dq.avail, UVA + dq.used, 0, event_idx=True)
    log = bytearray(log_bytes(size))
    q.set_log(DirtyLog(memoryview(log), native), dq.used)
    table_at = 0x80000
    for head in range(num):
        segs = data.draw(st.lists(st.tuples(st.integers(0x10000, 0x7F000), st.integers(1, 3000)), min_size=1,
                                  max_size=4))
        if data.draw(st.booleans()):  # indirect
            table = table_at + 0x100 * head
            for i, (addr, length) in enumerate(segs):
                last = i == len(segs) - 1
                struct.pack_into("<QIHH", ram, table + 16 * i, addr, length,
                                 VRING_DESC_F_WRITE | (0 if last else VRING_DESC_F_NEXT), 0 if last else i + 1)
            dq.set_desc(head, table, 16 * len(segs), VRING_DESC_F_INDIRECT)
        else:  # one writable descriptor in the ring's own table
            addr, length = segs[0]
            dq.set_desc(head, addr, length, VRING_DESC_F_WRITE)
        dq.make_available(head)
    mergeable = data.draw(st.booleans())
    before = bytes(ram)
    for frame_len in data.draw(st.lists(st.integers(net.HDR_LEN + 14, 6000), min_size=1, max_size=8)):
        net.rx_deliver(q, memoryview(bytearray(frame_len)), mergeable)
    q.publish()
    q.want_kick()
    changed = {i // 4096 for i in range(0, size, 4096) if ram[i : i + 4096] != before[i : i + 4096]}
    marked = {8 * i + b for i, byte in enumerate(log) for b in range(8) if byte >> b & 1}
    assert changed <= marked
    assert dq.used // 4096 in marked
