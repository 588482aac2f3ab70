"""One vhost-user connection's state machine, as seen by a virtio-net back-end.

Sans-I/O: ``Session.handle(message)`` updates the state and returns the reply
bytes (or None); mapping memory and closing descriptors are delegated to a
``Host`` given at construction, and ring life-cycle events go to a ``Device``.

Rules (vhost-user.rst, "Ring states", and what QEMU 7.2 and DPDK 22.11 send):
- The device declares its queue pairs (``Device.num_queues``, 1 to ``MAX_QUEUE_PAIRS``,
  read once at construction): vrings 0 .. 2N-1 exist, even = rx, odd = tx (pair
  ``index // 2``); GET_QUEUE_NUM answers N (in pairs, as QEMU and DPDK count). Any
  other index is a ``FrontendError``. VIRTIO_NET_F_MQ and PROTOCOL_F_MQ are offered
  whatever N (as DPDK does): the offer stays the same when N changes between two
  connections, and the front-end (QEMU's ``queues=``) decides how many pairs it uses.
  Every ring is enabled or disabled on its own (SET_VRING_ENABLE per ring; QEMU turns
  the guest's VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET into one per ring of each pair).
  GET_CONFIG is not served (PROTOCOL_F_CONFIG is not offered): QEMU builds the device
  config space itself, ``max_virtqueue_pairs`` from its own ``queues=``.
  A ring has at most ``MAX_RING_SIZE`` (1024) entries, QEMU's maximum: work per
  chain is bounded by the ring size.
- A ring is *started* once it has a size, addresses, memory and a kick (SET_VRING_KICK)
  and is *stopped* by GET_VRING_BASE. *Enabled* is separate (SET_VRING_ENABLE,
  or implicitly when PROTOCOL_FEATURES is not acked): it may arrive before
  SET_FEATURES, and is remembered whatever the ring's state.
- SET_MEM_TABLE replaces the memory and re-translates every ring address;
  a started ring keeps its avail and used indices. Started rings are stopped
  through the device (``vring_stopped``) before the new table is installed and
  started again after; one the new table does not cover stays stopped (the
  message is refused, the device has already been told).
- A ring starts at the used ring's index whatever SET_VRING_BASE said (see
  ``virtqueue``); a disagreement is reported through ``log``, one line per ring.
  SET_MEM_TABLE's re-translation does the same: a ring in service is where it was (when
  it stops, every chain it took is used and published), and a ring the guest broke
  mid-burst (chains taken and not used) takes them again, so that chains are used in
  the order they were made available (VIRTIO_F_IN_ORDER, below).
- The features offered are fixed for the session's lifetime (a reconnecting
  front-end refuses a back-end that offers less than before).
- VIRTIO_F_IN_ORDER is offered: every ring uses its chains in the order they were made
  available, in C as in Python (a TX chain is given back as soon as it is read, RX
  chains are filled in turn, and a frame that does not fit gives its chains back
  untaken). DPDK's virtio-user acks it by default and then reads the used ring in order
  (its in-order paths, as with testpmd's vhost); QEMU 7.2 does not pass it on to the
  guest.
- Kick, call and err descriptors must be eventfds (``Host.eventfd_problem``); anything
  else (a pipe, a socket, a file) is a ``FrontendError`` naming the message.
- Every file descriptor that arrives is either kept (and closed when replaced or
  at ``close()``) or closed before ``handle`` returns.
- Live migration (vhost-user.rst, "Migration"): VHOST_F_LOG_ALL and PROTOCOL_F_LOG_SHMFD
  are offered. SET_LOG_BASE brings the dirty log (one descriptor, mapped through
  ``Host.map_region`` like guest memory, so checked the same way) and is answered with
  a SET_LOG_BASE reply (u64 0), which QEMU 7.2 waits for whatever REPLY_ACK says; it
  may come again (one per queue pair in QEMU 7.2; a resized log), each replacing the
  last. It is refused (``FrontendError``) without LOG_SHMFD acked, without exactly one
  descriptor, when the log does not cover guest memory (``GuestMemory.end``) or a
  ring's logged used ring, or when the descriptor cannot be mapped for its size.
  While LOG_ALL is acked (SET_FEATURES turns it on and off on running rings) and a
  log is mapped, every started ring marks its writes there (``SplitQueue.set_log``):
  the buffers it fills, and the used ring at SET_VRING_ADDR's ``log`` address when
  its flags carry VHOST_VRING_F_LOG. On a started ring SET_VRING_ADDR changes only
  that (QEMU's way of turning the used ring's logging on and off); ring addresses
  that differ take effect when the ring starts again, as ever. SET_MEM_TABLE while
  logging is refused if the log does not cover it; so are SET_VRING_ADDR and
  SET_VRING_NUM giving a logged used ring that the log does not cover.
  ``log_mark`` (the daemon's C accelerator, when built) makes the marks exact atomic
  ORs (``DirtyLog``'s native). SET_LOG_FD's eventfd is kept (and closed) but never
  written: QEMU reads the log when it wants. ``dirty_log=False`` (the daemon's test-only
  VHOST_IPVLAN_TEST_NO_DIRTY_LOG) keeps all of this but marks nothing: a negative
  control for migration tests.
- GET_VRING_BASE stops the ring: the device publishes what the ring has used
  (``Device.vring_stopped``) and the answer is the next avail index the back-end
  would have taken, which equals the used index (every chain taken is returned
  within the burst that took it), so a migration destination resumes exactly there.
- With REPLY_ACK acked, a message flagged NEED_REPLY that has no reply of its own
  is acknowledged with u64 0.
- Any violation raises ``FrontendError``; the caller closes this connection only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from ..errors import FrontendError, GuestError
from ..virtio import net
from ..virtio.dirtylog import DirtyLog, log_bytes
from ..virtio.memory import GuestMemory, Region
from ..virtio.virtqueue import MAX_QUEUE_SIZE, SplitQueue, ring_sizes
from . import codec
from .codec import F_LOG_ALL, F_PROTOCOL_FEATURES, Message, ProtocolFeature, Request

#: the most queue pairs a device may declare (a slave's ``queues``: see ``config.MAX_QUEUES``)
MAX_QUEUE_PAIRS = 16
#: the largest ring a front-end may ask for (QEMU's VIRTQUEUE_MAX_SIZE; the spec allows
#: 32768): a chain may hold the ring size of descriptors, and walking 32768 of them in
#: Python took 0.2-0.4 s of the event loop per drain, every drain
MAX_RING_SIZE = 1024
assert MAX_RING_SIZE <= MAX_QUEUE_SIZE
RX, TX = 0, 1  # a vring's index & 1


def pair_of(index: int) -> int:
    """The queue pair a vring belongs to (vrings 2i and 2i+1: rx and tx of pair i)."""
    return index >> 1

DEFAULT_FEATURES = (
    net.bit(net.F_VERSION_1)
    | net.bit(F_PROTOCOL_FEATURES)
    | net.bit(net.F_MRG_RXBUF)
    | net.bit(net.F_RING_EVENT_IDX)
    | net.bit(net.F_IN_ORDER)
    | net.bit(net.F_RING_INDIRECT_DESC)
    | net.bit(net.F_CSUM)
    | net.bit(net.F_GUEST_CSUM)
    | net.bit(net.F_GUEST_TSO4)
    | net.bit(net.F_GUEST_TSO6)
    | net.bit(net.F_HOST_TSO4)
    | net.bit(net.F_HOST_TSO6)
    | net.bit(net.F_GUEST_ANNOUNCE)
    | net.bit(net.F_MQ)
    | net.bit(F_LOG_ALL)
)
DEFAULT_PROTOCOL_FEATURES = (
    (1 << ProtocolFeature.MQ) | (1 << ProtocolFeature.REPLY_ACK) | (1 << ProtocolFeature.LOG_SHMFD)
)


class Host(Protocol):
    """I/O services the session needs (implemented by the daemon, faked in tests)."""

    def map_region(self, fd: int, size: int, offset: int) -> memoryview:
        """Map ``size`` bytes at ``offset`` of ``fd`` shared and writable."""

    def close_fd(self, fd: int) -> None:
        """Close a descriptor the session owned."""

    def fence(self) -> None:
        """A full memory barrier."""

    def eventfd_problem(self, fd: int) -> str | None:
        """None if ``fd`` is an eventfd (now non-blocking), else what it is instead."""


class Device(Protocol):
    """What a device declares, and learns about its rings."""

    def num_queues(self) -> int:
        """How many queue pairs the device has (1 to ``MAX_QUEUE_PAIRS``)."""

    def vring_started(self, vring: Vring) -> None: ...

    def vring_stopped(self, vring: Vring) -> None:
        """The ring stops (``vring.queue`` is None, ``vring.base`` its next avail index):
        publish what it has used; its last writes go into guest memory now."""

    def vring_changed(self, vring: Vring) -> None:
        """Enable state or call fd changed."""


@dataclass(slots=True)
class Vring:
    index: int
    num: int = 0
    addr: codec.VringAddr | None = None
    base: int = 0
    kicked: bool = False  # SET_VRING_KICK received since the last stop
    kick_fd: int | None = None
    call_fd: int | None = None
    err_fd: int | None = None
    enabled: bool = False
    queue: SplitQueue | None = None  # set while started

    @property
    def started(self) -> bool:
        return self.queue is not None


class Session:
    """State of one front-end connection."""

    def __init__(
        self,
        host: Host,
        device: Device,
        *,
        features: int = DEFAULT_FEATURES,
        protocol_features: int = DEFAULT_PROTOCOL_FEATURES,
        log: Callable[[str], None] | None = None,
        dirty_log: bool = True,
        note: Callable[[str], None] | None = None,
        log_mark: Callable[[memoryview, int, int], int] | None = None,
    ) -> None:
        self.host = host
        self.device = device
        self.offered_features = features
        self.offered_protocol_features = protocol_features
        self.features = 0
        self.protocol_features = 0
        self.features_set = False
        self.owner = False
        self.memory: GuestMemory | None = None
        pairs = device.num_queues()
        if not 1 <= pairs <= MAX_QUEUE_PAIRS:
            raise ValueError(f"a device has 1 to {MAX_QUEUE_PAIRS} queue pairs, not {pairs}")
        self.queue_pairs = pairs
        self.vrings = [Vring(i) for i in range(2 * pairs)]
        self._log = log
        #: False: the dirty log is taken but never written (a test's negative control)
        self.dirty_log = dirty_log
        #: the front-end's dirty log (SET_LOG_BASE), kept until replaced or closed
        self.log: DirtyLog | None = None
        self.log_fd: int | None = None  # SET_LOG_FD's eventfd, kept, never written
        self._note = note  # events worth a line in the daemon's log (migration's)
        #: exact atomic marks for the next log (``DirtyLog``'s native), if any
        self.log_mark = log_mark
        self._was_logging = False
        self._handlers: dict[int, Callable[[Message], bytes | None]] = {
            Request.GET_FEATURES: self._get_features,
            Request.SET_FEATURES: self._set_features,
            Request.SET_OWNER: self._set_owner,
            Request.RESET_OWNER: self._reset_owner,
            Request.SET_MEM_TABLE: self._set_mem_table,
            Request.SET_LOG_BASE: self._set_log_base,
            Request.SET_LOG_FD: self._set_log_fd,
            Request.SET_VRING_NUM: self._set_vring_num,
            Request.SET_VRING_ADDR: self._set_vring_addr,
            Request.SET_VRING_BASE: self._set_vring_base,
            Request.GET_VRING_BASE: self._get_vring_base,
            Request.SET_VRING_KICK: self._set_vring_kick,
            Request.SET_VRING_CALL: self._set_vring_call,
            Request.SET_VRING_ERR: self._set_vring_err,
            Request.GET_PROTOCOL_FEATURES: self._get_protocol_features,
            Request.SET_PROTOCOL_FEATURES: self._set_protocol_features,
            Request.GET_QUEUE_NUM: self._get_queue_num,
            Request.SET_VRING_ENABLE: self._set_vring_enable,
        }

    # -- entry points -------------------------------------------------------------

    def handle(self, msg: Message) -> bytes | None:
        """Apply one message; return the reply to send, if any."""
        handler = self._handlers.get(msg.request)
        try:
            if handler is None:
                raise FrontendError(f"{msg.name} is not supported")
            reply = handler(msg)
        finally:
            for fd in msg.fds:  # handlers take the fds they keep out of the list
                self.host.close_fd(fd)
            msg.fds.clear()
        if reply is None and msg.need_reply and self._acked(ProtocolFeature.REPLY_ACK):
            reply = codec.encode(msg.request, codec.U64.pack(0))
        return reply

    def close(self) -> None:
        """Stop every ring and close every descriptor (the connection is gone)."""
        for vring in self.vrings:
            self._stop(vring)
            for attr in ("kick_fd", "call_fd", "err_fd"):
                self._replace_fd(vring, attr, None)
        self.memory = None
        self.log = None
        if self.log_fd is not None:
            self.host.close_fd(self.log_fd)
            self.log_fd = None

    def has_feature(self, bit: int) -> bool:
        return bool(self.features >> bit & 1)

    @property
    def logging(self) -> bool:
        """Whether writes into guest memory are being marked in the dirty log."""
        return self.log is not None and self.dirty_log and self.has_feature(F_LOG_ALL)

    # -- helpers ------------------------------------------------------------------

    def _acked(self, feature: ProtocolFeature) -> bool:
        return bool(self.protocol_features >> feature & 1)

    def _vring(self, msg: Message, index: int) -> Vring:
        if index >= len(self.vrings):
            pairs = self.queue_pairs
            raise FrontendError(f"{msg.name}: vring {index} does not exist ({pairs} queue pair"
                                f"{'s' if pairs > 1 else ''}: vrings 0-{2 * pairs - 1})")
        return self.vrings[index]

    def _replace_fd(self, vring: Vring, attr: str, fd: int | None) -> None:
        old: int | None = getattr(vring, attr)
        setattr(vring, attr, fd)
        if old is not None and old != fd:
            self.host.close_fd(old)

    def _take_fd(self, msg: Message) -> tuple[Vring, int | None]:
        index, has_fd = codec.vring_fd_index(msg)
        vring = self._vring(msg, index)
        if not has_fd:
            return vring, None
        problem = self.host.eventfd_problem(msg.fds[0])
        if problem is not None:  # the fd stays in msg.fds: handle() closes it
            raise FrontendError(f"{msg.name}: the descriptor is {problem}, not an eventfd")
        return vring, msg.fds.pop()

    def _try_start(self, vring: Vring, *, resync: bool = True) -> None:
        if vring.started or not vring.kicked or vring.addr is None or self.memory is None:
            return
        if vring.num == 0:
            raise FrontendError(f"vring {vring.index} kicked before SET_VRING_NUM")
        try:
            vring.queue = SplitQueue(
                self.memory,
                vring.num,
                vring.addr.desc,
                vring.addr.avail,
                vring.addr.used,
                vring.base,
                event_idx=self.has_feature(net.F_RING_EVENT_IDX),
                fence=self.host.fence,
                resync=resync,
            )
        except GuestError as e:
            raise FrontendError(f"vring {vring.index}: {e}") from e
        if vring.queue.resynced_from is not None and self._log is not None:
            self._log(f"vring {vring.index}: base {vring.queue.resynced_from} disagrees with the used index "
                      f"{vring.queue.used_idx}, resuming at the used ring's index (frames in flight may be "
                      "resent or lost)")
        self._apply_log(vring)
        self.device.vring_started(vring)

    def _stop(self, vring: Vring) -> None:
        if vring.queue is not None:
            vring.base = vring.queue.last_avail
            vring.queue = None
            self.device.vring_stopped(vring)

    def _apply_log(self, vring: Vring) -> None:
        """Give a started ring the log, or take it away (see the rules)."""
        q = vring.queue
        if q is None:
            return
        if not self.logging or vring.addr is None:
            q.set_log(None)
            return
        q.set_log(self.log, vring.addr.log if vring.addr.flags & codec.VRING_F_LOG else -1)

    def _log_changed(self) -> None:
        """LOG_ALL, the log or the negative control changed: every ring follows."""
        for vring in self.vrings:
            self._apply_log(vring)
        if self.logging != self._was_logging:
            self._was_logging = self.logging
            if self._note is not None:
                self._note("dirty logging on (live migration)" if self.logging else "dirty logging off")

    def _require_log(self, prefix: str, log: DirtyLog, memory_end: int,
                     rings: Iterable[tuple[int, int, codec.VringAddr | None]]) -> None:
        """``FrontendError`` (``prefix`` + why) unless ``log`` serves them (``_log_problem``)."""
        problem = self._log_problem(log, memory_end, rings)
        if problem is not None:
            raise FrontendError(prefix + problem)

    def _log_problem(self, log: DirtyLog, memory_end: int,
                     rings: Iterable[tuple[int, int, codec.VringAddr | None]]) -> str | None:
        """Why ``log`` cannot serve guest memory up to ``memory_end`` and the used rings
        of ``rings`` ((index, size, addresses) each) that ask to be logged, or None."""
        if not log.covers(memory_end):
            return (f"a log of {log.size} bytes covers guest addresses below {log.size << 15:#x}, but guest "
                    f"memory ends at {memory_end:#x} ({log_bytes(memory_end)} bytes needed)")
        for index, num, addr in rings:
            if addr is None or not addr.flags & codec.VRING_F_LOG:
                continue
            end = addr.log + ring_sizes(max(num, 1))[2]
            if not log.covers(end):
                return f"a log of {log.size} bytes does not cover vring {index}'s used ring at {addr.log:#x}-{end:#x}"
        return None

    # -- handlers -----------------------------------------------------------------

    def _get_features(self, msg: Message) -> bytes:
        return codec.encode(msg.request, codec.U64.pack(self.offered_features))

    def _set_features(self, msg: Message) -> None:
        features = codec.u64(msg)
        extra = features & ~self.offered_features
        if extra:
            raise FrontendError(f"SET_FEATURES acks features {extra:#x} that were not offered")
        if not features >> net.F_VERSION_1 & 1:
            raise FrontendError("SET_FEATURES without VIRTIO_F_VERSION_1: legacy drivers are not served")
        if features >> F_LOG_ALL & 1 and self.log is not None and self.memory is not None:
            self._require_log("SET_FEATURES: LOG_ALL with ", self.log, self.memory.end, [])
        self.features = features
        self.features_set = True
        if not features >> F_PROTOCOL_FEATURES & 1:
            for vring in self.vrings:
                vring.enabled = True
                self.device.vring_changed(vring)
        self._log_changed()

    def _set_owner(self, msg: Message) -> None:
        self.owner = True

    def _reset_owner(self, msg: Message) -> None:
        # Deprecated; the spec says to ignore it rather than drop state.
        return None

    def _set_mem_table(self, msg: Message) -> None:
        regions = codec.mem_table(msg)
        end = max(r.gpa + r.size for r in regions)
        if self.logging and self.log is not None:
            self._require_log("SET_MEM_TABLE while logging: ", self.log, end, [])
        mapped = []
        for r, fd in zip(regions, msg.fds, strict=True):
            try:
                buf = self.host.map_region(fd, r.size, r.mmap_offset)
            except OSError as e:
                raise FrontendError(f"SET_MEM_TABLE: cannot map region at gpa {r.gpa:#x}: {e}") from e
            mapped.append(Region(r.gpa, r.size, r.uva, buf))
        # Stop every ring through the device first (it drops its queues and kick
        # readers), then re-translate: a ring the new table does not cover stays
        # stopped, and the device knows it.
        started = [v for v in self.vrings if v.started]
        for vring in started:
            self._stop(vring)
        self.memory = GuestMemory(mapped)
        for vring in started:
            self._try_start(vring)

    def _set_log_base(self, msg: Message) -> bytes:
        if not self._acked(ProtocolFeature.LOG_SHMFD):
            raise FrontendError("SET_LOG_BASE without LOG_SHMFD acked: only a shared-memory log is served")
        area = codec.log_base(msg)
        memory_end = self.memory.end if self.memory is not None else 0
        try:
            buf = self.host.map_region(msg.fds[0], area.size, area.mmap_offset)
        except OSError as e:
            raise FrontendError(f"SET_LOG_BASE: cannot map a log of {area.size} bytes at offset "
                                f"{area.mmap_offset:#x}: {e}") from e
        log = DirtyLog(buf, self.log_mark)
        self._require_log("SET_LOG_BASE: ", log, memory_end, ((v.index, v.num, v.addr) for v in self.vrings))
        self.log = log
        if self._note is not None:
            self._note(f"dirty log of {area.size} bytes mapped (covers guest addresses below {area.size << 15:#x})")
        self._log_changed()
        return codec.encode(msg.request, codec.U64.pack(0))

    def _set_log_fd(self, msg: Message) -> None:
        if len(msg.payload) not in (0, codec.U64.size) or len(msg.fds) != 1:
            raise FrontendError(f"{msg.name}: {len(msg.payload)} bytes and {len(msg.fds)} file descriptors "
                                "(expected one eventfd)")
        problem = self.host.eventfd_problem(msg.fds[0])
        if problem is not None:
            raise FrontendError(f"{msg.name}: the descriptor is {problem}, not an eventfd")
        fd = msg.fds.pop()
        if self.log_fd is not None:
            self.host.close_fd(self.log_fd)
        self.log_fd = fd

    def _set_vring_num(self, msg: Message) -> None:
        index, num = codec.vring_state(msg)
        vring = self._vring(msg, index)
        if num == 0 or num > MAX_RING_SIZE or num & (num - 1):
            raise FrontendError(f"SET_VRING_NUM: size {num} is not a power of 2 up to {MAX_RING_SIZE}")
        if self.log is not None:  # a logged used ring grows with the size
            self._require_log("SET_VRING_NUM: ", self.log, 0, [(vring.index, num, vring.addr)])
        vring.num = num

    def _set_vring_addr(self, msg: Message) -> None:
        addr = codec.vring_addr(msg)
        vring = self._vring(msg, addr.index)
        if self.log is not None:
            self._require_log("SET_VRING_ADDR: ", self.log, 0, [(vring.index, vring.num, addr)])
        vring.addr = addr
        self._try_start(vring)
        self._apply_log(vring)

    def _set_vring_base(self, msg: Message) -> None:
        index, num = codec.vring_state(msg)
        vring = self._vring(msg, index)
        if num > 0xFFFF:
            raise FrontendError(f"SET_VRING_BASE: base {num} does not fit a split ring index")
        vring.base = num

    def _get_vring_base(self, msg: Message) -> bytes:
        index, _ = codec.vring_state(msg)
        vring = self._vring(msg, index)
        self._stop(vring)
        vring.kicked = False
        self._replace_fd(vring, "kick_fd", None)
        return codec.encode(msg.request, codec.VRING_STATE.pack(index, vring.base))

    def _set_vring_kick(self, msg: Message) -> None:
        vring, fd = self._take_fd(msg)
        self._stop(vring)
        self._replace_fd(vring, "kick_fd", fd)
        vring.kicked = True
        if not self.has_feature(F_PROTOCOL_FEATURES) and self.features_set:
            vring.enabled = True
        self._try_start(vring)

    def _set_vring_call(self, msg: Message) -> None:
        vring, fd = self._take_fd(msg)
        self._replace_fd(vring, "call_fd", fd)
        self.device.vring_changed(vring)

    def _set_vring_err(self, msg: Message) -> None:
        vring, fd = self._take_fd(msg)
        self._replace_fd(vring, "err_fd", fd)

    def _get_protocol_features(self, msg: Message) -> bytes:
        return codec.encode(msg.request, codec.U64.pack(self.offered_protocol_features))

    def _set_protocol_features(self, msg: Message) -> None:
        features = codec.u64(msg)
        extra = features & ~self.offered_protocol_features
        if extra:
            raise FrontendError(f"SET_PROTOCOL_FEATURES acks {extra:#x} that were not offered")
        self.protocol_features = features

    def _get_queue_num(self, msg: Message) -> bytes:
        return codec.encode(msg.request, codec.U64.pack(self.queue_pairs))

    def _set_vring_enable(self, msg: Message) -> None:
        index, num = codec.vring_state(msg)
        vring = self._vring(msg, index)
        if num > 1:
            raise FrontendError(f"SET_VRING_ENABLE: state {num} is neither 0 nor 1")
        vring.enabled = bool(num)
        self.device.vring_changed(vring)

