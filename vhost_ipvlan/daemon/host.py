"""OS services handed to the sans-I/O vhost-user session: mmap, close, fence.

Rules:
- Guest memory is mapped MAP_SHARED from file offset 0 over ``offset + size`` (the
  front-end's mmap_offset need not be page aligned), and the view starts at
  ``offset``. A mapping lives as long as a view of it does (the session drops the
  old table on SET_MEM_TABLE and at disconnect); the fd is closed by the session.
- ``fence`` is a full memory barrier: CPython has no fence primitive, but taking
  and releasing an uncontended lock executes a lock-prefixed instruction on x86.
"""

from __future__ import annotations

import mmap
import os
import threading


class OsHost:
    """Real memory mapping and descriptor handling for a ``Session``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def map_region(self, fd: int, size: int, offset: int) -> memoryview:
        try:
            mm = mmap.mmap(fd, offset + size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except ValueError as e:  # e.g. the file is shorter than the region claims
            raise OSError(str(e)) from e
        return memoryview(mm)[offset : offset + size]

    def close_fd(self, fd: int) -> None:
        try:
            os.close(fd)
        except OSError:
            pass

    def fence(self) -> None:
        with self._lock:
            pass


def eventfd_signal(fd: int) -> bool:
    """Write 1 to an eventfd; False if the descriptor is gone or the counter full."""
    try:
        os.eventfd_write(fd, 1)
    except OSError:
        return False
    return True


def eventfd_drain(fd: int) -> None:
    """Reset a (non-blocking) eventfd's counter."""
    try:
        os.eventfd_read(fd)
    except OSError:
        pass
