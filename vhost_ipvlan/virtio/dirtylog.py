"""The front-end's dirty-page log (vhost-user.rst, "Migration"): one bit per 4 KiB page.

During live migration the front-end hands the back-end a shared bitmap
(``SET_LOG_BASE`` with ``LOG_SHMFD``) and, while ``VHOST_F_LOG_ALL`` is acked, the
back-end marks every page of guest memory it writes: bit ``page % 8`` of byte
``page // 8``, ``page = gpa // 4096``. The front-end reads and clears the bitmap
concurrently (QEMU: an atomic exchange per 64-bit word) and copies the pages it found
dirty again.

Rules:
- A page is marked *after* the bytes were written (the front-end may read and clear
  the bit at any moment: marked first, a write in between would be lost).
- Bits are set with an atomic OR when the daemon gives one (``native``: the C
  accelerator's ``log_mark``, ``__atomic_fetch_or`` per page, exact), as ``_fastpath.c``
  marks the buffers it fills itself. Without it (pure Python), there is no atomic OR
  on shared memory, and the log may be shared with other back-ends of the same VM
  (QEMU 7.2 gives every vhost device one log), so a read-modify-write of a byte could
  erase a bit another process set in between. ``mark`` then stores ``0xFF``: the whole
  byte, the 8 pages (32 KiB, aligned) around the page written. A plain store never
  loses a bit anybody set (its own or another writer's) and x86 keeps stores in order,
  so it lands after the data; the price is up to 7 neighbouring pages copied once more
  (Linux's mergeable RX buffers come from 32 KiB page fragments, so mostly none).
- A range beyond the end of the log is not marked and is counted in ``missed``
  (the session checks that the log covers guest memory and every logged used ring,
  so this means a front-end shrank the log below them).
- No I/O: the buffer is whatever the session mapped.
"""

from __future__ import annotations

from collections.abc import Callable

PAGE_SHIFT = 12  # VHOST_LOG_PAGE: 4 KiB
BYTE_SHIFT = PAGE_SHIFT + 3  # the bytes of guest memory one byte of the log covers: 32 KiB
_ONES = b"\xff" * 64


def log_bytes(end: int) -> int:
    """How many bytes of log cover guest-physical addresses ``[0, end)``."""
    return ((end - 1) >> BYTE_SHIFT) + 1 if end > 0 else 0


class DirtyLog:
    """A mapped dirty log (``buf``: the front-end's bitmap)."""

    __slots__ = ("_native", "buf", "missed", "size")

    def __init__(self, buf: memoryview, native: Callable[[memoryview, int, int], int] | None = None) -> None:
        self.buf = buf
        self.size = len(buf)
        #: ``native(buf, gpa, length)``: exact atomic marks, 1 if some lay beyond the log
        self._native = native
        #: ranges (or their tails) that lay beyond the log, not marked
        self.missed = 0

    def covers(self, end: int) -> bool:
        """Whether guest-physical addresses below ``end`` all have a bit."""
        return log_bytes(end) <= self.size

    def mark(self, gpa: int, length: int) -> None:
        """Mark the pages of ``[gpa, gpa + length)`` written (see the rules)."""
        if length <= 0:
            return
        if self._native is not None:
            self.missed += self._native(self.buf, gpa, length)
            return
        lo = gpa >> BYTE_SHIFT
        hi = (gpa + length - 1) >> BYTE_SHIFT
        if hi >= self.size:
            self.missed += 1
            if lo >= self.size:
                return
            hi = self.size - 1
        if lo == hi:
            self.buf[lo] = 0xFF
            return
        buf = self.buf
        while lo <= hi:
            n = min(hi + 1 - lo, len(_ONES))
            buf[lo : lo + n] = _ONES[:n]
            lo += n
