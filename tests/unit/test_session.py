"""The vhost-user session driven in-process by the fake front-end (no sockets)."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator

import pytest

from tests.support.frontend import FakeFrontend
from vhost_ipvlan.daemon.host import eventfd_problem
from vhost_ipvlan.errors import FrontendError
from vhost_ipvlan.vhost_user import codec
from vhost_ipvlan.vhost_user.codec import Request
from vhost_ipvlan.vhost_user.session import DEFAULT_FEATURES, MAX_QUEUE_PAIRS, RX, TX, Session, Vring
from vhost_ipvlan.virtio import net
from vhost_ipvlan.virtio.virtqueue import SplitQueue


class FakeHost:
    def __init__(self) -> None:
        self.closed: list[int] = []

    def map_region(self, fd: int, size: int, offset: int) -> memoryview:
        return memoryview(mmap.mmap(fd, offset + size))[offset : offset + size]

    def close_fd(self, fd: int) -> None:
        self.closed.append(fd)
        os.close(fd)

    def fence(self) -> None:
        pass

    def eventfd_problem(self, fd: int) -> str | None:
        return eventfd_problem(fd)


class RecordingDevice:
    def __init__(self, queues: int = 1) -> None:
        self.events: list[tuple[str, int]] = []
        self.queues = queues

    def num_queues(self) -> int:
        return self.queues

    def vring_started(self, vring: Vring) -> None:
        self.events.append(("started", vring.index))

    def vring_stopped(self, vring: Vring) -> None:
        self.events.append(("stopped", vring.index))

    def vring_changed(self, vring: Vring) -> None:
        self.events.append(("changed", vring.index))


class Pair:
    def __init__(self, queues: int = 1, enabled: int | None = None) -> None:
        self.host = FakeHost()
        self.device = RecordingDevice(queues)
        self.session = Session(self.host, self.device)
        self.fe = FakeFrontend(queues=queues, enabled=enabled)
        self.fe.transport = self._transport

    def _transport(self, data: bytes, fds: list[int]) -> bytes | None:
        request, flags, _ = codec.decode_header(data)
        msg = codec.Message(request, flags, data[codec.HEADER_SIZE :], [os.dup(fd) for fd in fds])
        reply = self.session.handle(msg)
        return None if reply is None else reply[codec.HEADER_SIZE :]


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair()
    yield p
    p.session.close()
    p.fe.close()


def tx_one_popped(pair: Pair) -> SplitQueue:
    """Set up, transmit one frame and pop it from the TX queue (returned)."""
    pair.fe.setup()
    pair.fe.transmit(bytes(60))
    q = pair.session.vrings[TX].queue
    assert q is not None
    q.pop()
    return q


def test_setup_starts_both_rings(pair: Pair) -> None:
    pair.fe.setup()
    s = pair.session
    assert s.features == DEFAULT_FEATURES & ~net.bit(codec.F_LOG_ALL)  # QEMU acks LOG_ALL only to migrate
    assert all(v.started and v.enabled for v in s.vrings)
    assert ("started", RX) in pair.device.events and ("started", TX) in pair.device.events
    assert s.vrings[RX].call_fd is not None and s.vrings[RX].kick_fd is not None


def test_transmit_is_visible_in_the_tx_queue(pair: Pair) -> None:
    pair.fe.setup()
    pair.fe.transmit(b"\xff" * 6 + b"\x02" * 6 + b"\x08\x00" + b"payload")
    q = pair.session.vrings[TX].queue
    assert q is not None and q.pending() == 1
    buf = memoryview(bytearray(net.MAX_BUFFER))
    n = q.gather(q.pop(), buf)
    assert bytes(buf[net.HDR_LEN : n]).endswith(b"payload")


def test_get_vring_base_stops_and_returns_index(pair: Pair) -> None:
    tx_one_popped(pair)
    reply = pair.fe.send(Request.GET_VRING_BASE, codec.VRING_STATE.pack(TX, 0), reply=True)
    assert reply is not None and codec.VRING_STATE.unpack(reply) == (TX, 1)
    assert not pair.session.vrings[TX].started
    assert ("stopped", TX) in pair.device.events


def test_reply_ack_on_need_reply(pair: Pair) -> None:
    pair.fe.send(Request.SET_PROTOCOL_FEATURES, codec.U64.pack(1 << codec.ProtocolFeature.REPLY_ACK))
    reply = pair.fe.send(Request.SET_OWNER, need_reply=True)
    assert reply == codec.U64.pack(0)


def test_enable_before_features_is_remembered(pair: Pair) -> None:
    pair.fe.send(Request.SET_VRING_ENABLE, codec.VRING_STATE.pack(0, 1))
    assert pair.session.vrings[0].enabled


def test_mem_table_replacement_keeps_ring_indices(pair: Pair) -> None:
    pair.fe.setup()
    pair.fe.transmit(bytes(60))
    q = pair.session.vrings[TX].queue
    assert q is not None
    q.push(q.pop(), 0)
    q.publish()
    region = codec.MEM_REGION.pack(0, 8 << 20, 0x7F00_0000_0000, 0)
    pair.fe.send(Request.SET_MEM_TABLE, codec.MEM_HEADER.pack(1, 0) + region, [pair.fe.fd])
    q2 = pair.session.vrings[TX].queue
    assert q2 is not None and q2 is not q and (q2.last_avail, q2.used_idx) == (1, 1)


def logging_pair_with_three_frames() -> tuple[Pair, list[str]]:
    """A set-up pair whose session logs into the list returned, three frames queued on TX."""
    logged: list[str] = []
    p = Pair()
    p.session = Session(p.host, p.device, log=logged.append)
    p.fe.setup()
    for _ in range(3):
        p.fe.transmit(bytes(60))
    return p, logged


def test_mem_table_replacement_takes_again_what_a_broken_ring_took_and_did_not_use() -> None:
    """A ring broken by the guest mid-burst stops with chains taken and not used (the
    daemon's device drops it without publishing). Re-translated by SET_MEM_TABLE, it
    resumes at the used index, as any start does, and says so: with VIRTIO_F_IN_ORDER a
    driver reads the n-th used entry as its n-th chain, so the next chain used must be
    the first one not used, not the one after those taken."""
    p, logged = logging_pair_with_three_frames()
    try:
        q = p.session.vrings[TX].queue
        assert q is not None
        q.push(q.pop(), 0)
        q.publish()
        second = q.pop()  # taken; the guest's error comes before it is used
        q.pop()
        region = codec.MEM_REGION.pack(0, 8 << 20, 0x7F00_0000_0000, 0)
        p.fe.send(Request.SET_MEM_TABLE, codec.MEM_HEADER.pack(1, 0) + region, [p.fe.fd])
        q2 = p.session.vrings[TX].queue
        assert q2 is not None and (q2.last_avail, q2.used_idx, q2.pending()) == (1, 1, 2)
        assert q2.pop() == second
        assert logged == ["vring 1: base 3 disagrees with the used index 1, resuming at the used ring's "
                          "index (frames in flight may be resent or lost)"]
    finally:
        p.session.close()
        p.fe.close()


def test_restart_with_a_stale_base_resumes_at_the_used_index_and_says_so() -> None:
    """DPDK's virtio-user, reconnecting, sends base 0 for rings that have moved on."""
    p, logged = logging_pair_with_three_frames()
    try:
        q = p.session.vrings[TX].queue
        assert q is not None
        for _ in range(3):
            q.push(q.pop(), 0)
        q.publish()
        p.fe.send(Request.GET_VRING_BASE, codec.VRING_STATE.pack(TX, 0), reply=True)
        p.fe.transmit(bytes(60))  # the driver goes on while the back-end is away
        p.fe.send(Request.SET_VRING_BASE, codec.VRING_STATE.pack(TX, 0))
        p.fe.send(Request.SET_VRING_KICK, codec.U64.pack(TX), [p.fe.kick[TX]])
        q2 = p.session.vrings[TX].queue
        assert q2 is not None and (q2.last_avail, q2.pending()) == (3, 1)
        assert logged == ["vring 1: base 0 disagrees with the used index 3, resuming at the used ring's "
                          "index (frames in flight may be resent or lost)"]
    finally:
        p.session.close()
        p.fe.close()


@pytest.mark.parametrize(
    ("request_", "payload", "nfds", "match"),
    [
        (99, b"", 0, "not supported"),
        (Request.SET_FEATURES, codec.U64.pack(1 << 32 | 1 << 40), 0, "not offered"),
        (Request.SET_FEATURES, codec.U64.pack(0), 0, "VERSION_1"),
        (Request.SET_VRING_NUM, codec.VRING_STATE.pack(5, 256), 0, "does not exist"),
        (Request.SET_VRING_NUM, codec.VRING_STATE.pack(0, 100), 0, "power of 2"),
        # the spec's 32768 let one chain cost 0.2-0.4 s of the loop per drain
        (Request.SET_VRING_NUM, codec.VRING_STATE.pack(0, 2048), 0, "power of 2 up to 1024"),
        (Request.SET_VRING_BASE, codec.VRING_STATE.pack(0, 1 << 20), 0, "does not fit"),
        (Request.SET_VRING_KICK, codec.U64.pack(0), 0, "NOFD"),
        (Request.SET_VRING_CALL, codec.U64.pack(0x100), 1, "NOFD"),
        (Request.SET_MEM_TABLE, codec.MEM_HEADER.pack(2, 0) + bytes(64), 1, "file descriptors"),
        (Request.SET_MEM_TABLE, codec.MEM_HEADER.pack(0, 0), 0, "regions"),
        # a region ending exactly at 2^64 (the C accelerator cannot represent its end)
        (Request.SET_MEM_TABLE, codec.MEM_HEADER.pack(1, 0) + codec.MEM_REGION.pack(2**64 - 4096, 4096, 0, 0),
         1, "below 2\\^64"),
        (Request.SET_MEM_TABLE, codec.MEM_HEADER.pack(1, 0) + codec.MEM_REGION.pack(0, 4096, 2**64 - 4096, 0),
         1, "below 2\\^64"),
        # sparse files: 120 TiB of the daemon's address space in one message (two: all of it)
        (Request.SET_MEM_TABLE, codec.MEM_HEADER.pack(2, 0) + codec.MEM_REGION.pack(0, 9 << 40, 0, 0)
         + codec.MEM_REGION.pack(9 << 40, 9 << 40, 9 << 40, 0), 2, "16 TiB"),
        (Request.SET_MEM_TABLE, codec.MEM_HEADER.pack(1, 0) + codec.MEM_REGION.pack(0, 4096, 0, 1 << 60),
         1, "16 TiB"),
        (Request.SET_VRING_ADDR, bytes(10), 0, "expected 40"),
        (Request.SET_VRING_ENABLE, codec.VRING_STATE.pack(0, 7), 0, "neither"),
        (Request.SET_PROTOCOL_FEATURES, codec.U64.pack(1 << 60), 0, "not offered"),
    ],
)
def test_bad_messages_are_frontend_errors_and_fds_closed(
    pair: Pair, request_: int, payload: bytes, nfds: int, match: str
) -> None:
    fds = [os.eventfd(0) for _ in range(nfds)]
    try:
        with pytest.raises(FrontendError, match=match):
            pair.fe.send(request_, payload, fds)
        assert len(pair.host.closed) == nfds  # the duplicates handed over were all closed
    finally:
        for fd in fds:
            os.close(fd)


def test_bad_ring_address_is_refused(pair: Pair) -> None:
    pair.fe.setup()
    addr = codec.VRING_ADDR.pack(TX, 0, 0x1234, 0x1234, 0x1234, 0)
    pair.fe.send(Request.GET_VRING_BASE, codec.VRING_STATE.pack(TX, 0), reply=True)
    pair.fe.send(Request.SET_VRING_ADDR, addr)
    with pytest.raises(FrontendError, match="outside"):
        pair.fe.send(Request.SET_VRING_KICK, codec.U64.pack(TX), [pair.fe.kick[TX]])


def test_close_releases_every_fd(pair: Pair) -> None:
    pair.fe.setup()
    pair.session.close()
    # kick + call for both rings were kept and must now be closed (memfd closed right after mmap)
    assert len([fd for fd in pair.host.closed]) >= 5
    assert all(v.kick_fd is None and v.call_fd is None for v in pair.session.vrings)


def test_decode_header_checks_version_and_size() -> None:
    with pytest.raises(FrontendError, match="version"):
        codec.decode_header(codec.HEADER.pack(1, 2, 0))
    with pytest.raises(FrontendError, match="payload"):
        codec.decode_header(codec.HEADER.pack(1, 1, 1 << 20))


def test_bad_mem_table_stops_rings_through_the_device(pair: Pair) -> None:
    """A table that does not cover the rings leaves them stopped, and the device told (r8)."""
    pair.fe.setup()
    pair.device.events.clear()
    region = codec.MEM_REGION.pack(0, 8 << 20, 0x1000_0000_0000, 0)  # the rings' UVAs are not in it
    with pytest.raises(FrontendError, match="vring 0"):
        pair.fe.send(Request.SET_MEM_TABLE, codec.MEM_HEADER.pack(1, 0) + region, [pair.fe.fd])
    assert ("stopped", RX) in pair.device.events and ("stopped", TX) in pair.device.events
    assert not any(v.started for v in pair.session.vrings)
    assert ("started", RX) not in pair.device.events


def test_mem_table_replacement_restarts_rings_through_the_device(pair: Pair) -> None:
    pair.fe.setup()
    pair.device.events.clear()
    region = codec.MEM_REGION.pack(0, 8 << 20, 0x7F00_0000_0000, 0)
    pair.fe.send(Request.SET_MEM_TABLE, codec.MEM_HEADER.pack(1, 0) + region, [pair.fe.fd])
    events = pair.device.events
    assert events.index(("stopped", RX)) < events.index(("started", RX))
    assert events.index(("stopped", TX)) < events.index(("started", TX))


@pytest.mark.parametrize("request_", [Request.SET_VRING_KICK, Request.SET_VRING_CALL, Request.SET_VRING_ERR])
def test_only_eventfds_are_taken_for_kick_call_err(pair: Pair, request_: Request) -> None:
    """A pipe as kick fd made the loop spin; as call fd it blocked the loop (r6, r13)."""
    r, w = os.pipe()
    try:
        with pytest.raises(FrontendError, match=f"{request_.name}: the descriptor is 'pipe:.*not an eventfd"):
            pair.fe.send(request_, codec.U64.pack(RX), [r])
        assert len(pair.host.closed) == 1  # the duplicate handed over was closed
        assert pair.session.vrings[RX].kick_fd is None and pair.session.vrings[RX].call_fd is None
    finally:
        os.close(r)
        os.close(w)


def test_call_fd_is_made_non_blocking(pair: Pair) -> None:
    fd = os.eventfd(0)  # blocking, as a front-end may hand it over
    try:
        pair.fe.send(Request.SET_VRING_CALL, codec.U64.pack(RX), [fd])
        kept = pair.session.vrings[RX].call_fd
        assert kept is not None and not os.get_blocking(kept)
    finally:
        os.close(fd)


# -- multiqueue ------------------------------------------------------------------------


@pytest.fixture
def two_pairs() -> Iterator[Pair]:
    p = Pair(queues=2, enabled=1)
    yield p
    p.session.close()
    p.fe.close()


@pytest.mark.parametrize("queues", [1, 2, MAX_QUEUE_PAIRS])
def test_get_queue_num_answers_the_device_pairs(queues: int) -> None:
    p = Pair(queues=1)
    p.device.queues = queues
    p.session = Session(p.host, p.device)
    try:
        assert p.fe.get_u64(Request.GET_QUEUE_NUM) == queues
        assert len(p.session.vrings) == 2 * queues
    finally:
        p.session.close()
        p.fe.close()


def test_mq_is_offered_whatever_the_pairs(pair: Pair) -> None:
    assert pair.fe.get_u64(Request.GET_FEATURES) >> net.F_MQ & 1
    assert pair.fe.get_u64(Request.GET_PROTOCOL_FEATURES) >> codec.ProtocolFeature.MQ & 1


@pytest.mark.parametrize("queues", [0, MAX_QUEUE_PAIRS + 1])
def test_a_device_outside_the_pair_bounds_is_a_bug(queues: int) -> None:
    with pytest.raises(ValueError, match="queue pairs"):
        Session(FakeHost(), RecordingDevice(queues))


def test_two_pairs_start_every_ring_and_enable_only_what_the_guest_uses(two_pairs: Pair) -> None:
    two_pairs.fe.setup()
    s = two_pairs.session
    assert [v.index for v in s.vrings] == [0, 1, 2, 3]
    assert all(v.started for v in s.vrings)
    assert [v.enabled for v in s.vrings] == [True, True, False, False]
    assert {("started", i) for i in range(4)} <= set(two_pairs.device.events)


def test_set_vring_enable_is_per_ring_and_per_pair(two_pairs: Pair) -> None:
    two_pairs.fe.setup()
    s = two_pairs.session
    two_pairs.fe.enable_pair(1)
    assert [v.enabled for v in s.vrings] == [True] * 4
    two_pairs.device.events.clear()
    two_pairs.fe.send(Request.SET_VRING_ENABLE, codec.VRING_STATE.pack(2, 0))  # pair 1's rx only
    assert [v.enabled for v in s.vrings] == [True, True, False, True]
    assert two_pairs.device.events == [("changed", 2)]
    two_pairs.fe.enable_pair(0, False)
    assert [v.enabled for v in s.vrings] == [False, False, False, True]
    assert all(v.started for v in s.vrings)  # enabled and started are separate


def test_pair_one_stops_alone(two_pairs: Pair) -> None:
    two_pairs.fe.setup()
    reply = two_pairs.fe.send(Request.GET_VRING_BASE, codec.VRING_STATE.pack(3, 0), reply=True)
    assert reply is not None and codec.VRING_STATE.unpack(reply) == (3, 0)
    assert [v.started for v in two_pairs.session.vrings] == [True, True, True, False]


@pytest.mark.parametrize(("queues", "index"), [(1, 2), (2, 4), (2, 255)])
@pytest.mark.parametrize("request_", [Request.SET_VRING_NUM, Request.SET_VRING_BASE, Request.SET_VRING_ENABLE,
                                      Request.GET_VRING_BASE])
def test_ring_index_beyond_the_pairs_is_refused(queues: int, index: int, request_: Request) -> None:
    p = Pair(queues=queues)
    try:
        with pytest.raises(FrontendError, match=f"vring {index} does not exist .*vrings 0-{2 * queues - 1}"):
            p.fe.send(request_, codec.VRING_STATE.pack(index, 1))
    finally:
        p.session.close()
        p.fe.close()


@pytest.mark.parametrize("request_", [Request.SET_VRING_KICK, Request.SET_VRING_CALL])
def test_ring_fd_beyond_the_pairs_is_refused_and_closed(two_pairs: Pair, request_: Request) -> None:
    fd = os.eventfd(0)
    try:
        with pytest.raises(FrontendError, match="vring 4 does not exist"):
            two_pairs.fe.send(request_, codec.U64.pack(4), [fd])
        assert len(two_pairs.host.closed) == 1
    finally:
        os.close(fd)
