"""A small vhost-user *front-end* (the driver side) for tests.

It plays QEMU's part with a memfd as guest RAM: negotiates features, hands over
the memory table and both rings, transmits frames and reads received ones. It can
talk to the real daemon over a unix socket or drive a ``Session`` in-process.
Deliberately simple and slow; it also lets tests send hostile input: replace
``kick``/``call`` descriptors before ``setup`` (say, with a pipe), choose how its
memfd is sealed (``sealing``), truncate ``fd`` under the back-end, or ``send`` any
message with any descriptors (``send_raw`` writes bytes and descriptors as given,
without framing). With ``queues=N`` it sets up N queue pairs (vrings 2i rx, 2i+1 tx,
``rxqs``/``txqs``; ``rxq``/``txq`` are the first pair's) and enables the first
``enabled`` of them, as QEMU does for a guest that uses that many. For live
migration it acks LOG_SHMFD (not LOG_ALL) as QEMU 7.2 does, and ``start_dirty_log``
hands over a dirty log the way QEMU's migration does (``dirty_pages`` reads it);
``vring_base`` asks GET_VRING_BASE.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from vhost_ipvlan.vhost_user import codec
from vhost_ipvlan.vhost_user.codec import ProtocolFeature, Request
from vhost_ipvlan.virtio import net
from vhost_ipvlan.virtio.virtqueue import VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY

UVA_BASE = 0x7F00_0000_0000
_FENCE = threading.Lock()
MEM_SIZE = 8 << 20
QSIZE = 256
BUF_SIZE = 2048
_DESC = struct.Struct("<QIHH")


@dataclass
class DriverQueue:
    """Driver view of one split ring laid out in guest memory at ``base``."""

    mem: mmap.mmap | bytearray
    base: int
    num: int = QSIZE

    avail_idx: int = 0
    last_used: int = 0
    free: list[int] = field(default_factory=list)
    #: the heads in the order made available, and in the order the device used them
    #: (VIRTIO_F_IN_ORDER: the same order)
    made: list[int] = field(default_factory=list)
    used_order: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.free = list(range(self.num))

    @property
    def desc(self) -> int:
        return self.base

    @property
    def avail(self) -> int:
        return self.base + 16 * self.num

    @property
    def used(self) -> int:
        return (self.avail + 6 + 2 * self.num + 4095) & ~4095

    @property
    def end(self) -> int:
        return (self.used + 6 + 8 * self.num + 4095) & ~4095

    def set_desc(self, i: int, addr: int, length: int, flags: int, nxt: int = 0) -> None:
        _DESC.pack_into(self.mem, self.desc + 16 * i, addr, length, flags, nxt)

    def make_available(self, head: int) -> None:
        struct.pack_into("<H", self.mem, self.avail + 4 + 2 * (self.avail_idx % self.num), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.made.append(head)
        self.publish_avail()

    def publish_avail(self) -> None:
        """Store ``avail_idx`` as the ring's avail index in one 16-bit store, as a driver
        does: ``struct.pack_into("<H")`` stores byte by byte, and a back-end reading between
        the two stores sees an index that ran up to 65535 entries ahead (it breaks the
        queue: seen with bench/workers.py's front-ends at a few Mpps)."""
        memoryview(self.mem)[self.avail + 2 : self.avail + 4].cast("H")[0] = self.avail_idx

    def used_flags(self) -> int:
        """``used.flags``: VRING_USED_F_NO_NOTIFY while the device asks for no kicks."""
        value: int = struct.unpack_from("<H", self.mem, self.used)[0]
        return value

    def avail_event(self) -> int:
        """``avail_event`` (EVENT_IDX): the driver kicks when its avail index passes it."""
        value: int = memoryview(self.mem)[self.used + 4 + 8 * self.num : self.used + 6 + 8 * self.num].cast("H")[0]
        return value

    def asks_for_kick(self, event_idx: bool) -> bool:
        """Whether the device asks for a kick for the next chain made available (with
        EVENT_IDX: ``avail_event`` is the current avail index; without: no NO_NOTIFY)."""
        return self.avail_event() == self.avail_idx if event_idx else not self.used_flags() & VRING_USED_F_NO_NOTIFY

    def used_idx(self) -> int:
        """The used index, read in one 16-bit load (not byte by byte: see ``publish_avail``)."""
        value: int = memoryview(self.mem)[self.used + 2 : self.used + 4].cast("H")[0]
        return value

    def pop_used(self) -> tuple[int, int] | None:
        if self.last_used == self.used_idx():
            return None
        head, length = struct.unpack_from("<II", self.mem, self.used + 4 + 8 * (self.last_used % self.num))
        self.last_used = (self.last_used + 1) & 0xFFFF
        self.used_order.append(head)
        return head, length

    def used_in_order(self) -> bool:
        """Whether every chain used so far was used in the order it was made available."""
        return self.used_order == self.made[: len(self.used_order)]


class FakeFrontend:
    """Drives one vhost-user back-end connection like a (very simple) QEMU."""

    def __init__(self, features: int | None = None, *, mergeable: bool = True, event_idx: bool = True,
                 sealing: str = "none", queues: int = 1, enabled: int | None = None) -> None:
        # sealing: "none" (a memfd that cannot be sealed, as DPDK's), "allow" (sealable,
        # no seals yet) or "shrink" (sealed against shrinking, as QEMU's memfd backend)
        flags = os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if sealing != "none" else 0)
        self.fd = os.memfd_create("fake-guest", flags)
        os.ftruncate(self.fd, MEM_SIZE)
        if sealing == "shrink":
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
        self.mem = mmap.mmap(self.fd, MEM_SIZE)
        assert 1 <= queues <= 3, "the frame buffers of more pairs would reach HOSTILE_AREA"
        self.queues = queues
        self.enabled = queues if enabled is None else enabled
        self.vqs: list[DriverQueue] = []  # by vring index: rx, tx of pair 0, then pair 1 ...
        for _ in range(2 * queues):
            self.vqs.append(DriverQueue(self.mem, self.vqs[-1].end if self.vqs else 0))
        self.rxqs, self.txqs = self.vqs[0::2], self.vqs[1::2]
        self.rxq, self.txq = self.rxqs[0], self.txqs[0]
        self.buffers = (self.vqs[-1].end + 4095) & ~4095
        self.kick = [os.eventfd(0, os.EFD_NONBLOCK) for _ in self.vqs]
        self.call = [os.eventfd(0, os.EFD_NONBLOCK) for _ in self.vqs]
        self.want = features
        self.mergeable = mergeable
        self.event_idx = event_idx  # False: without VIRTIO_RING_F_EVENT_IDX, as DPDK's split rings
        self.features = 0
        self.protocol_features = 0
        self.log_fd = -1
        self.log: mmap.mmap | None = None
        self.sock: socket.socket | None = None
        self.transport: Callable[[bytes, list[int]], bytes | None] | None = None

    # -- transport -----------------------------------------------------------------

    def connect(self, path: str, timeout: float = 10) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)

    def accept(self, listener: socket.socket, timeout: float = 10) -> None:
        """Take the back-end's connection on a socket we listen on (its client role)."""
        listener.settimeout(timeout)
        self.sock, _ = listener.accept()
        self.sock.settimeout(timeout)

    def send(self, request: int, payload: bytes = b"", fds: list[int] | None = None,
             *, reply: bool = False, need_reply: bool = False) -> bytes | None:
        data = codec.encode_request(request, payload, need_reply=need_reply)
        if self.transport is not None:
            return self.transport(data, list(fds or []))
        assert self.sock is not None
        if fds:
            socket.send_fds(self.sock, [data], fds)
        else:
            self.sock.sendall(data)
        if not (reply or need_reply):
            return None
        hdr = self._recv_exact(codec.HEADER_SIZE)
        _, _, size = codec.HEADER.unpack(hdr)
        return self._recv_exact(size)

    def send_raw(self, data: bytes, fds: list[int] | None = None) -> None:
        """Write ``data`` as is (no framing) with ``fds`` in one sendmsg."""
        assert self.sock is not None
        socket.send_fds(self.sock, [data], fds or [])

    def _recv_exact(self, n: int) -> bytes:
        assert self.sock is not None
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("back-end closed the connection")
            out += chunk
        return out

    def get_u64(self, request: int) -> int:
        reply = self.send(request, reply=True)
        assert reply is not None
        value: int = codec.U64.unpack(reply)[0]
        return value

    # -- set-up ----------------------------------------------------------------------

    def setup(self) -> None:
        """The message sequence QEMU 7.2 sends, compressed."""
        offered = self.get_u64(Request.GET_FEATURES)
        proto = self.get_u64(Request.GET_PROTOCOL_FEATURES)
        wanted = 1 << ProtocolFeature.MQ | 1 << ProtocolFeature.REPLY_ACK | 1 << ProtocolFeature.LOG_SHMFD
        self.protocol_features = proto & wanted
        self.send(Request.SET_PROTOCOL_FEATURES, codec.U64.pack(self.protocol_features))
        self.queue_num = self.get_u64(Request.GET_QUEUE_NUM)
        assert self.queue_num >= self.queues, f"the back-end offers {self.queue_num} queue pairs"
        self.send(Request.SET_OWNER)
        want = self.want if self.want is not None else offered & ~net.bit(codec.F_LOG_ALL)
        if not self.mergeable:
            want &= ~net.bit(net.F_MRG_RXBUF)
        if not self.event_idx:
            want &= ~net.bit(net.F_RING_EVENT_IDX)
        self.features = want & offered
        for i in range(len(self.vqs)):
            self.send(Request.SET_VRING_CALL, codec.U64.pack(i), [self.call[i]])
        for _ in range(self.queues):  # QEMU: once per vhost_dev, i.e. per queue pair
            self.send(Request.SET_FEATURES, codec.U64.pack(self.features))
        region = codec.MEM_REGION.pack(0, MEM_SIZE, UVA_BASE, 0)
        self.send(Request.SET_MEM_TABLE, codec.MEM_HEADER.pack(1, 0) + region, [self.fd], need_reply=True)
        for i in range(len(self.vqs)):
            self.send_ring(i)
        for pair in range(self.queues):
            self.enable_pair(pair, pair < self.enabled)
        for pair in range(self.queues):
            self.post_rx_buffers(QSIZE, pair)

    # -- live migration --------------------------------------------------------------

    def log_size(self) -> int:
        """QEMU's size of the dirty log for this guest memory (vhost_get_log_size: whole
        64-bit words, one bit per 4 KiB page)."""
        return ((MEM_SIZE - 1) // (4096 * 64) + 1) * 8

    def set_log_base(self, size: int | None = None, fds: list[int] | None = None, offset: int = 0, *,
                     sealed: bool = True) -> bytes | None:
        """SET_LOG_BASE with a new memfd of ``size`` bytes, sealed as QEMU's vhost-log (or
        one that cannot be sealed), or the descriptors given; returns the reply's payload."""
        size = self.log_size() if size is None else size
        if fds is None:
            self.close_log()
            self.log_fd = os.memfd_create("vhost-log", os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if sealed else 0))
            os.ftruncate(self.log_fd, size)
            if sealed:
                fcntl.fcntl(self.log_fd, fcntl.F_ADD_SEALS,
                            fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            self.log = mmap.mmap(self.log_fd, size)
            fds = [self.log_fd]
        return self.send(Request.SET_LOG_BASE, codec.LOG.pack(size, offset), fds, reply=True)

    def set_logging(self, on: bool) -> None:
        """What QEMU's vhost_dev_set_log sends: SET_FEATURES with or without LOG_ALL,
        then every ring's addresses with or without VHOST_VRING_F_LOG and the used ring's
        guest address (each waiting for REPLY_ACK when it turns logging on)."""
        features = self.features | (net.bit(codec.F_LOG_ALL) if on else 0)
        for _ in range(self.queues):
            self.send(Request.SET_FEATURES, codec.U64.pack(features), need_reply=on)
        for i, q in enumerate(self.vqs):
            addr = codec.VRING_ADDR.pack(i, codec.VRING_F_LOG if on else 0, UVA_BASE + q.desc, UVA_BASE + q.used,
                                         UVA_BASE + q.avail, q.used if on else 0)
            self.send(Request.SET_VRING_ADDR, addr, need_reply=on)

    def start_dirty_log(self, *, sealed: bool = True) -> None:
        """Migration starts: a log (SET_LOG_BASE, once per queue pair as QEMU 7.2), then logging on."""
        self.set_log_base(sealed=sealed)
        assert self.log is not None and self.log_fd >= 0
        for _ in range(1, self.queues):
            self.set_log_base(len(self.log), [self.log_fd])
        self.set_logging(True)

    def dirty_pages(self) -> set[int]:
        """The guest pages marked in the log."""
        assert self.log is not None
        log = bytes(self.log)
        return {8 * i + b for i, byte in enumerate(log) if byte for b in range(8) if byte >> b & 1}

    def clear_log(self) -> None:
        assert self.log is not None
        self.log[:] = bytes(len(self.log))

    def vring_base(self, index: int) -> int:
        """GET_VRING_BASE: the ring stops; the next avail index the back-end would take."""
        reply = self.send(Request.GET_VRING_BASE, codec.VRING_STATE.pack(index, 0), reply=True)
        assert reply is not None
        got, base = codec.VRING_STATE.unpack(reply)
        assert got == index
        return int(base)

    def close_log(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None
        if self.log_fd >= 0:
            os.close(self.log_fd)
            self.log_fd = -1

    def send_ring(self, i: int, base: int = 0) -> None:
        """Ring ``i``'s set-up, starting at ``base`` (as a migration destination does)."""
        q = self.vqs[i]
        self.send(Request.SET_VRING_NUM, codec.VRING_STATE.pack(i, q.num))
        self.send(Request.SET_VRING_BASE, codec.VRING_STATE.pack(i, base))
        addr = codec.VRING_ADDR.pack(i, 0, UVA_BASE + q.desc, UVA_BASE + q.used, UVA_BASE + q.avail, 0)
        self.send(Request.SET_VRING_ADDR, addr)
        self.send(Request.SET_VRING_KICK, codec.U64.pack(i), [self.kick[i]])

    def sync(self) -> None:
        """Return once the back-end has handled every message sent so far: a request
        with a reply (GET_FEATURES, which QEMU too sends at any time) behind them on the
        socket. Messages without a reply (SET_VRING_ENABLE ...) are otherwise applied
        whenever the back-end gets to them."""
        self.get_u64(Request.GET_FEATURES)

    def enable_pair(self, pair: int, on: bool = True) -> None:
        """SET_VRING_ENABLE on both rings of ``pair`` (what QEMU sends for VQ_PAIRS_SET)."""
        for i in (2 * pair, 2 * pair + 1):
            self.send(Request.SET_VRING_ENABLE, codec.VRING_STATE.pack(i, int(on)))

    # -- data ------------------------------------------------------------------------

    def _buf_addr(self, vring: int, i: int) -> int:
        return self.buffers + (vring * QSIZE + i) * BUF_SIZE

    def post_rx_buffers(self, count: int, pair: int = 0) -> None:
        rxq = self.rxqs[pair]
        for _ in range(min(count, len(rxq.free))):
            i = rxq.free.pop()
            rxq.set_desc(i, self._buf_addr(2 * pair, i), BUF_SIZE, VRING_DESC_F_WRITE)
            rxq.make_available(i)
        os.eventfd_write(self.kick[2 * pair], 1)

    def asks_for_kick(self, pair: int = 0) -> bool:
        """Whether the device asks for a kick on TX ring ``pair`` (``DriverQueue.asks_for_kick``
        as negotiated: ``avail_event`` with EVENT_IDX, ``used.flags`` without)."""
        return self.txqs[pair].asks_for_kick(bool(self.features & net.bit(net.F_RING_EVENT_IDX)))

    def transmit(self, frame: bytes, hdr: bytes = bytes(net.HDR_LEN), *, split: bool = False, pair: int = 0,
                 polite: bool = False) -> bool:
        """Queue one frame on a TX ring and kick (optionally header in its own descriptor).
        ``polite``: kick only if the device asks for kicks (with EVENT_IDX: ``avail_event``
        passed; without: used.flags without NO_NOTIFY), as a driver does. Returns whether it
        kicked."""
        self.reclaim_tx(pair)
        txq = self.txqs[pair]
        data = hdr + frame
        i = txq.free.pop()
        addr = self._buf_addr(2 * pair + 1, i)
        self.mem[addr : addr + len(data)] = data
        if split:
            j = txq.free.pop()
            txq.set_desc(i, addr, len(hdr), VRING_DESC_F_NEXT, j)
            txq.set_desc(j, addr + len(hdr), len(frame), 0)
        else:
            txq.set_desc(i, addr, len(data), 0)
        old = txq.avail_idx
        txq.make_available(i)
        if polite:
            with _FENCE:  # a full barrier (a locked instruction) between avail.idx and used.flags
                pass
            if self.features & net.bit(net.F_RING_EVENT_IDX):
                if (txq.avail_idx - txq.avail_event() - 1) & 0xFFFF >= (txq.avail_idx - old) & 0xFFFF:
                    return False  # vring_need_event: avail_event not passed
            elif txq.used_flags() & VRING_USED_F_NO_NOTIFY:
                return False
        os.eventfd_write(self.kick[2 * pair + 1], 1)
        return True

    def reclaim_tx(self, pair: int = 0) -> None:
        txq = self.txqs[pair]
        while (used := txq.pop_used()) is not None:
            head = used[0]
            flags, nxt = struct.unpack_from("<HH", self.mem, txq.desc + 16 * head + 12)
            txq.free.append(head)
            if flags & VRING_DESC_F_NEXT:
                txq.free.append(nxt)

    def receive(self, pair: int = 0) -> list[tuple[bytes, bytes]]:
        """Every frame received so far on ``pair``'s RX ring, as (virtio_net_hdr, frame);
        re-posts buffers."""
        rxq = self.rxqs[pair]
        out: list[tuple[bytes, bytes]] = []
        while (used := rxq.pop_used()) is not None:
            head, length = used
            addr = self._buf_addr(2 * pair, head)
            data = bytes(self.mem[addr : addr + length])
            rxq.free.append(head)
            nbuf = struct.unpack_from("<H", data, 10)[0]
            for _ in range(nbuf - 1):
                more = rxq.pop_used()
                assert more is not None, "num_buffers larger than the used entries"
                addr = self._buf_addr(2 * pair, more[0])
                data += bytes(self.mem[addr : addr + more[1]])
                rxq.free.append(more[0])
            out.append((data[: net.HDR_LEN], data[net.HDR_LEN :]))
        if out:
            self.post_rx_buffers(len(out), pair)
        return out

    def receive_all(self) -> list[list[tuple[bytes, bytes]]]:
        """``receive`` of every pair, by pair."""
        return [self.receive(pair) for pair in range(self.queues)]

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        for fd in (*self.kick, *self.call):
            try:
                os.close(fd)
            except OSError:
                pass
        self.mem.close()
        self.close_log()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# -- hostile knobs (datapath work bounds) ------------------------------------------------
# A guest that plays by none of the rules: each function below lays out hostile
# rings through a ``FakeFrontend``'s memory. The area used lies past the frame
# buffers (which end at about 1.1 MiB, 3.1 MiB with three queue pairs), so normal traffic
# can go on alongside.

HOSTILE_AREA = 4 << 20
_INDIRECT = 4  # VRING_DESC_F_INDIRECT


def write_zero_length_table(fe: FakeFrontend, entries: int, *, writable: bool, at: int = HOSTILE_AREA) -> int:
    """An indirect table of ``entries`` zero-length descriptors linked by NEXT; its guest address."""
    flags = VRING_DESC_F_WRITE if writable else 0
    table = bytearray(16 * entries)
    for i in range(entries):
        last = i == entries - 1
        _DESC.pack_into(table, 16 * i, fe.buffers, 0, flags | (0 if last else VRING_DESC_F_NEXT), 0 if last else i + 1)
    fe.mem[at : at + len(table)] = bytes(table)
    return at


def transmit_indirect_zero_length(fe: FakeFrontend, chains: int, entries: int) -> None:
    """Make ``chains`` TX chains available, each an indirect table (one shared) of
    ``entries`` zero-length descriptors: no data, all descriptor work (audit r1)."""
    table = write_zero_length_table(fe, entries, writable=False)
    for _ in range(chains):
        i = fe.txq.free.pop()
        fe.txq.set_desc(i, table, 16 * entries, _INDIRECT)
        fe.txq.make_available(i)
    os.eventfd_write(fe.kick[1], 1)


def transmit_runts(fe: FakeFrontend, lengths: list[int]) -> None:
    """TX chains of one descriptor each, shorter than the virtio_net_hdr (0 included)."""
    fe.reclaim_tx()
    for n in lengths:
        i = fe.txq.free.pop()
        addr = fe._buf_addr(1, i)
        fe.mem[addr : addr + n] = b"\xee" * n
        fe.txq.set_desc(i, addr, n, 0)
        fe.txq.make_available(i)
    os.eventfd_write(fe.kick[1], 1)


def make_rx_zero_capacity(fe: FakeFrontend, entries: int) -> None:
    """Turn every RX chain the guest has made available (and not had back) into an
    indirect table of ``entries`` zero-length writable descriptors (audit r2)."""
    table = write_zero_length_table(fe, entries, writable=True)
    posted = set(range(fe.rxq.num)) - set(fe.rxq.free)
    for i in posted:
        fe.rxq.set_desc(i, table, 16 * entries, _INDIRECT)


def make_rx_small_buffers(fe: FakeFrontend, size: int) -> None:
    """Shrink every posted RX buffer to ``size`` bytes (one writable descriptor each)."""
    posted = set(range(fe.rxq.num)) - set(fe.rxq.free)
    for i in posted:
        fe.rxq.set_desc(i, fe._buf_addr(0, i), size, VRING_DESC_F_WRITE)
