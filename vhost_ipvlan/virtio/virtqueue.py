"""Split virtqueue, device side (virtio 1.x, "Split Virtqueues").

The driver (guest) owns the descriptor table and the avail ring; the device (us)
owns the used ring. Every value read from guest memory is untrusted: it is read
once, checked, and only then used.

Rules:
- Descriptor indices must be < queue size; a chain may not be longer than its
  table (a loop guard); INDIRECT only on a chain's first descriptor, never nested,
  never together with NEXT, table length a non-zero multiple of 16 holding at most
  the queue size of descriptors (the spec bounds a chain by the queue size; a
  larger table is a ``GuestError``). So one chain costs at most ``num + 1``
  descriptor reads, zero-length descriptors included.
- ``walked`` counts descriptor work: every descriptor of every chain walked by
  ``gather``/``capacity`` (the indirect one included), and the one descriptor of a
  chain taken whole by ``put`` (or by the C accelerator, which keeps it up to
  date). Callers bound their work with it (per burst, per frame), never by
  frames alone.
- Every descriptor buffer is translated through ``GuestMemory.gpa_view`` (bounds
  checked). A violation raises ``GuestError``: the caller marks the queue broken.
- ``avail.idx`` may run ahead of ``last_avail`` by at most the queue size.
- A ring starts at the used ring's index. A base that disagrees with it (DPDK's
  virtio-user sends 0 when it reconnects to a restarted back-end, its rings
  untouched) is replaced by it, as DPDK's vhost library does: chains taken but
  not returned before are taken again (TX frames resent, RX buffers reused).
  ``resynced_from`` keeps the base given, for the caller to log. The session
  resyncs every start, SET_MEM_TABLE's re-translation included; ``resync=False``
  keeps the base given.
- Used elements are written first, ``used.idx`` is published afterwards, once per
  burst (x86 keeps store order; CPython writes in program order).
- Ring indices shared with the driver (avail.idx, avail.ring, used.idx, the event
  fields) are read and written as whole 16-bit words through ``memoryview.cast("H")``
  (one aligned 2-byte load or store). ``struct`` must not be used for them: it
  moves bytes one at a time, and a driver updating the index in between makes us
  see a torn value 256 away from the truth (seen with DPDK at full rate: chains
  popped before they were available, a double free in the driver).
- Little-endian hosts only (virtio 1.x rings are little-endian; "H" is native).
- Notification suppression: with VIRTIO_F_EVENT_IDX, interrupts follow
  ``used_event`` and kicks are requested through ``avail_event``; without it,
  ``avail.flags & NO_INTERRUPT`` is honoured. A ring the device needs no kicks
  for (an RX ring: frames are never queued for its buffers) says so
  (``suppress_kicks``): ``used.flags`` NO_NOTIFY without EVENT_IDX; with it
  ``avail_event`` is left where it is, so the driver kicks once per 65536 chains.
  A TX ring says so too while its chains are being taken (device.py's ``_drain``,
  vhost-net's ``vhost_disable_notify``), and asks again (``want_kick``) once empty.
  ``allow_kicks`` clears the flag (for the next back-end of a ring being stopped), and
  so does ``want_kick``, which also clears one an earlier back-end left (one that
  polled the ring: the guest would never kick otherwise). Before trusting an
  empty ring after asking for kicks, the caller must re-check behind a full barrier (``fence``):
  the store of ``avail_event`` and the load of ``avail.idx`` may otherwise be
  reordered, and the kick lost.
- The C accelerator (``_fastpath.c``, ``queue_open``/``queue_close``) works on a
  ``SplitQueue``'s own state and reads these attributes by name: ``num``,
  ``last_avail``, ``used_idx`` and ``walked`` (ints; it writes the last three
  back), ``_desc``, ``_avail`` and ``_used`` (writable C-contiguous buffers at
  least ``ring_sizes(num)`` long), and ``mem`` (a ``GuestMemory``: see
  ``memory.py``). A worker's ``WorkerCore`` (``daemon/workers.py``), which publishes
  rings itself (the twins of ``publish`` and ``want_kick``), also reads ``_published``
  (and writes it back), ``event_idx`` and ``log_used``. It also repeats ``MAX_QUEUE_SIZE`` (32768), the ring layout and
  the single-descriptor forms of ``pop``/``gather``/``push``/``put``. Renaming or
  retyping one of these is a change to ``_fastpath.c`` too
  (``tests/unit/test_fastpath_contract.py`` checks the names).
- Dirty logging (live migration, ``dirtylog.py``): while the session gives a queue a
  ``log`` (``set_log``), every write into guest memory is marked there after it is
  made: the bytes ``fill`` and ``put`` write (by the descriptors' guest addresses),
  and the used ring (``log_used``: its guest address from SET_VRING_ADDR, -1 when the
  front-end did not ask for it) whenever ``publish`` writes ``used.idx`` (the used
  elements pushed since are in the same ring), ``want_kick`` writes ``avail_event``
  or one of them writes ``used.flags``. The C accelerator reads ``_logbuf`` (the log's buffer, or None)
  and marks the RX buffers it fills itself; the used elements it pushes are marked
  by the ``publish`` that follows.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from ..errors import GuestError
from .dirtylog import DirtyLog
from .memory import GuestMemory

VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
VRING_AVAIL_F_NO_INTERRUPT = 1
VRING_USED_F_NO_NOTIFY = 1
MAX_QUEUE_SIZE = 32768

_DESC = struct.Struct("<QIHH")
_USED_ELEM = struct.Struct("<II")


def _no_fence() -> None:
    return None


def ring_sizes(num: int) -> tuple[int, int, int]:
    """Byte sizes of (descriptor table, avail ring, used ring), event fields included."""
    return 16 * num, 6 + 2 * num, 6 + 8 * num


class SplitQueue:
    """The device side of one split virtqueue over guest memory."""

    __slots__ = (
        "_avail",
        "_avail16",
        "_desc",
        "_fence",
        "_logbuf",
        "_published",
        "_seg_gpa",
        "_segs",
        "_used",
        "_used16",
        "bad_head",
        "bad_result",
        "bad_room",
        "event_idx",
        "last_avail",
        "log",
        "log_used",
        "mem",
        "num",
        "resynced_from",
        "used_idx",
        "walked",
    )

    def __init__(
        self,
        mem: GuestMemory,
        num: int,
        desc_uva: int,
        avail_uva: int,
        used_uva: int,
        last_avail: int,
        *,
        event_idx: bool,
        fence: Callable[[], None] = _no_fence,
        resync: bool = True,
    ) -> None:
        if num <= 0 or num > MAX_QUEUE_SIZE or num & (num - 1):
            raise GuestError(f"queue size {num} is not a power of 2 in 1..{MAX_QUEUE_SIZE}")
        desc_len, avail_len, used_len = ring_sizes(num)
        self.mem = mem
        self.num = num
        self._desc = mem.uva_view(desc_uva, desc_len)
        self._avail = mem.uva_view(avail_uva, avail_len)
        self._used = mem.uva_view(used_uva, used_len)
        self._avail16 = self._avail.cast("H")
        self._used16 = self._used.cast("H")
        self.event_idx = event_idx
        self._fence = fence
        self.last_avail = last_avail & 0xFFFF
        # On (re)connect the front-end sets the base from the used index; resume there.
        self.used_idx: int = self._used16[1]
        self._published = self.used_idx
        #: the base given, when it disagreed with the used index and was replaced by it
        self.resynced_from: int | None = None
        if resync and self.last_avail != self.used_idx:
            self.resynced_from = self.last_avail
            self.last_avail = self.used_idx
        self._segs: list[memoryview] = []
        self._seg_gpa: list[int] = []  # the guest addresses of ``_segs`` while logging
        #: the dirty log while the front-end asks for one (see the rules), else None
        self.log: DirtyLog | None = None
        self._logbuf: memoryview | None = None
        #: the used ring's guest address for the log, or -1
        self.log_used = -1
        #: descriptors walked so far (see the rules); only ever grows
        self.walked = 0
        #: ``position()`` when a frame did not fit the chains there (net.rx_deliver), else
        #: -1; with the room those chains offered (-1: none) and the result given
        self.bad_head = -1
        self.bad_room = -1
        self.bad_result = 0

    def set_log(self, log: DirtyLog | None, used_gpa: int = -1) -> None:
        """Mark writes in ``log`` from now on (None: stop); ``used_gpa``: the used
        ring's guest address, or -1 when its writes are not to be logged."""
        self.log = log
        self._logbuf = None if log is None else log.buf
        self.log_used = -1 if log is None else used_gpa

    # -- avail side ---------------------------------------------------------------

    def position(self) -> int:
        """Where both sides stand: avail.idx and ``last_avail`` as one number."""
        idx: int = self._avail16[1]
        return idx << 16 | self.last_avail

    def pending(self) -> int:
        """How many chains the driver has made available and we have not taken."""
        n: int = (self._avail16[1] - self.last_avail) & 0xFFFF
        if n > self.num:
            raise GuestError(f"avail index runs {n} entries ahead of a {self.num}-entry ring")
        return n

    def has_pending(self) -> bool:
        """Whether the driver's avail index moved past ours (unchecked: ``pending()`` checks)."""
        return bool(self._avail16[1] != self.last_avail)

    def pop(self) -> int:
        """Take the next available chain head (call only when ``pending()`` > 0)."""
        head: int = self._avail16[2 + self.last_avail % self.num]
        if head >= self.num:
            raise GuestError(f"avail ring names descriptor {head} of a {self.num}-entry table")
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        return head

    def unpop(self, count: int) -> None:
        """Give back the last ``count`` chains taken (nothing was written to them)."""
        self.last_avail = (self.last_avail - count) & 0xFFFF

    def _walk(self, head: int, writable: bool) -> int:
        """Collect the chain's readable or writable buffers into ``_segs``; total bytes."""
        segs = self._segs
        segs.clear()
        gpas = self._seg_gpa
        logging = writable and self.log is not None
        if logging:
            gpas.clear()
        desc = self._desc
        table = self.num
        mem = self.mem
        i = head
        count = 0
        total = 0
        indirect = False
        while True:
            addr, length, flags, nxt = _DESC.unpack_from(desc, 16 * i)
            if flags & VRING_DESC_F_INDIRECT:
                if indirect or count or flags & VRING_DESC_F_NEXT:
                    raise GuestError("indirect descriptor nested, chained or not at the head")
                if length == 0 or length % 16 or length // 16 > self.num:
                    raise GuestError(f"indirect table of {length} bytes for a {self.num}-entry queue")
                desc = mem.gpa_view(addr, length)
                table = length // 16
                indirect = True
                self.walked += 1
                i = 0
                continue
            count += 1
            if count > table:
                raise GuestError("descriptor chain loops or is longer than its table")
            if length and (flags & VRING_DESC_F_WRITE) == (VRING_DESC_F_WRITE if writable else 0):
                segs.append(mem.gpa_view(addr, length))
                total += length
                if logging:
                    gpas.append(addr)
            if not flags & VRING_DESC_F_NEXT:
                self.walked += count
                return total
            i = nxt
            if i >= table:
                raise GuestError(f"descriptor chain points at {i} in a {table}-entry table")

    def gather(self, head: int, dst: memoryview) -> int:
        """Copy the chain's device-readable bytes into ``dst``; return how many.

        Raises ``GuestError`` if the chain is malformed or longer than ``dst``.
        """
        addr: int
        length: int
        addr, length, flags, _ = _DESC.unpack_from(self._desc, 16 * head)
        if not flags and length <= len(dst):  # one readable descriptor: the common case
            dst[:length] = self.mem.gpa_view(addr, length)
            self.walked += 1
            return length
        total = self._walk(head, False)
        if total > len(dst):
            raise GuestError(f"transmit chain of {total} bytes exceeds {len(dst)}")
        pos = 0
        for seg in self._segs:
            n = len(seg)
            dst[pos : pos + n] = seg
            pos += n
        return total

    def capacity(self, head: int) -> int:
        """Total length of the chain's device-writable buffers (left in ``_segs``)."""
        return self._walk(head, True)

    def fill(self, src: memoryview) -> int:
        """Write ``src`` into the buffers found by the last ``capacity()``; bytes written."""
        pos = 0
        end = len(src)
        for seg in self._segs:
            if pos >= end:
                break
            n = min(len(seg), end - pos)
            seg[:n] = src[pos : pos + n]
            pos += n
        if self.log is not None:
            self._log_segments(pos)
        return pos

    def _log_segments(self, written: int) -> None:
        """Mark the first ``written`` bytes of the last ``capacity()``'s buffers."""
        log = self.log
        assert log is not None
        for gpa, seg in zip(self._seg_gpa, self._segs, strict=False):
            if written <= 0:
                break
            n = min(len(seg), written)
            log.mark(gpa, n)
            written -= n

    def put(self, src: memoryview) -> int:
        """Write ``src`` into the next chain if it is one writable descriptor big enough.

        Returns the chain's head (already pushed as used), or -1 when the next chain
        is anything else (or there is none): then nothing was taken and the caller
        goes the general way (``capacity``/``fill``).
        """
        if self._avail16[1] == self.last_avail:
            return -1
        head: int = self._avail16[2 + self.last_avail % self.num]
        if head >= self.num:
            return -1
        addr, length, flags, _ = _DESC.unpack_from(self._desc, 16 * head)
        need = len(src)
        if flags != VRING_DESC_F_WRITE or length < need:
            return -1
        self.mem.gpa_view(addr, need)[:] = src
        if self.log is not None:
            self.log.mark(addr, need)
        self.walked += 1
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        _USED_ELEM.pack_into(self._used, 4 + 8 * (self.used_idx % self.num), head, need)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        return head

    def first_segment(self) -> memoryview:
        """The first writable buffer found by the last ``capacity()`` (for header fix-ups)."""
        return self._segs[0]

    # -- used side ------------------------------------------------------------------

    def push(self, head: int, length: int) -> None:
        """Return a chain to the driver with ``length`` bytes written (not yet published)."""
        _USED_ELEM.pack_into(self._used, 4 + 8 * (self.used_idx % self.num), head, length)
        self.used_idx = (self.used_idx + 1) & 0xFFFF

    def publish(self) -> bool:
        """Publish pushed elements; return True if the driver wants an interrupt."""
        new: int = self.used_idx
        old: int = self._published
        if new == old:
            return False
        self._used16[1] = new
        self._published = new
        if self.log_used >= 0:
            self._log_used(0, len(self._used))
        if self.event_idx:
            self._fence()
            event: int = self._avail16[2 + self.num]
            return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)
        flags: int = self._avail16[0]
        return not flags & VRING_AVAIL_F_NO_INTERRUPT

    def _log_used(self, offset: int, length: int) -> None:
        log = self.log
        assert log is not None
        log.mark(self.log_used + offset, length)

    def want_kick(self) -> bool:
        """Ask the driver to kick for the next chain; True if chains are already waiting."""
        if self.event_idx:
            self._used16[2 + 4 * self.num] = self.last_avail
            if self.log_used >= 0:
                self._log_used(4 + 8 * self.num, 2)
            self._fence()
        elif self.allow_kicks():
            self._fence()
        return self.pending() > 0

    def allow_kicks(self) -> bool:
        """Clear ``used.flags`` NO_NOTIFY if it is set; whether it was."""
        if not self._used16[0]:
            return False
        self._set_used_flags(0)
        return True

    def suppress_kicks(self) -> None:
        """Ask the driver not to kick (until ``want_kick`` or ``allow_kicks``)."""
        if not self.event_idx and not self._used16[0]:
            self._set_used_flags(VRING_USED_F_NO_NOTIFY)

    def _set_used_flags(self, flags: int) -> None:
        self._used16[0] = flags
        if self.log_used >= 0:
            self._log_used(0, 2)
