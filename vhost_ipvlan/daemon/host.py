"""OS services handed to the sans-I/O vhost-user session: mmap, close, fence.

Rules:
- Guest memory is mapped MAP_SHARED from file offset 0 over ``offset + size`` (the
  front-end's mmap_offset need not be page aligned), and the view starts at
  ``offset``. A mapping lives as long as a view of it does (the session drops the
  old table on SET_MEM_TABLE and at disconnect); the fd is closed by the session.
- Guest memory must be a regular file on tmpfs/shmem (memfds, /dev/shm) or
  hugetlbfs (``fstatfs`` f_type TMPFS_MAGIC or HUGETLBFS_MAGIC): a page fault on a
  file on FUSE, NFS or a disk blocks the event loop for as long as that file system
  wants (a hostile front-end's FUSE server: forever, every guest stalled). Anything
  else is refused, on one line naming the file system, unless
  ``VHOST_IPVLAN_ANY_MEMORY_FS=1`` is set. The type comes from ``_guard.fstatfs_type``
  or, without the module, from libc's ``fstatfs`` through ctypes.
- The front-end keeps its descriptors: if it shrinks a mapped file, touching a
  page past the new end raises SIGBUS, which would kill the daemon. So a region
  is mapped only if its file cannot shrink under us:
  * a memfd sealed with F_SEAL_SHRINK (QEMU's memory-backend-memfd) is mapped as is;
  * a memfd that allows sealing gets F_SEAL_SHRINK added here;
  * but never on hugetlbfs: a front-end may punch a hole in a sealed hugetlb memfd
    (F_SEAL_SHRINK allows it) and take the freed huge page, and the next access
    finds no huge page to fault in: SIGBUS all the same. Hugetlbfs memory always
    goes through the guard;
  * anything else (DPDK's memfds, hugetlbfs or other files) is mapped through the
    SIGBUS guard (``_guard.c``): a page that disappears is replaced by a zero page
    and the mapping flagged; ``on_memory_shrunk`` then tells the event loop, which
    closes that connection ("guest memory shrank under us");
  * without the guard module such memory is refused, on one line, unless
    ``VHOST_IPVLAN_UNGUARDED_MEMORY=1`` is set (then a shrinking file kills the
    daemon, as before).
  A file shorter than the region's end is refused in every case. On hugetlbfs
  whole huge pages are mapped (here and in the guard): a partial one cannot be
  unmapped, and the mapping would outlive the connection.
- Kick, call and err descriptors must be eventfds (``/proc/self/fd/N`` reads
  ``anon_inode:[eventfd]``), not in semaphore mode (fdinfo ``eventfd-semaphore: 1``:
  one read takes 1 from the counter, so a kick with a huge counter would stay
  readable and spin the loop, as a pipe did), and are made non-blocking: signalling
  or draining one never blocks the loop (a full counter is EAGAIN: the signal is
  counted as lost).
- ``fence`` is a full memory barrier: CPython has no fence primitive, but taking
  and releasing an uncontended lock executes a lock-prefixed instruction on x86.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import logging
import mmap
import os
import stat
import sys
import threading
from collections.abc import Callable
from types import ModuleType

EVENTFD_LINK = "anon_inode:[eventfd]"  # what /proc/self/fd/N reads for an eventfd
ALLOW_UNGUARDED = "VHOST_IPVLAN_UNGUARDED_MEMORY"
ALLOW_ANY_MEMORY_FS = "VHOST_IPVLAN_ANY_MEMORY_FS"
TMPFS_MAGIC = 0x01021994  # tmpfs and shmem: memfds, /dev/shm
HUGETLBFS_MAGIC = 0x958458F6
MEMORY_FS = {TMPFS_MAGIC: "tmpfs", HUGETLBFS_MAGIC: "hugetlbfs"}
_FS_NAMES = {  # for the refusal's message only (linux/magic.h)
    0xEF53: "ext2/3/4", 0x58465342: "xfs", 0x9123683E: "btrfs", 0x6969: "nfs", 0x65735546: "fuse",
    0x794C7630: "overlayfs", 0x01021997: "9p", 0x00C36400: "ceph", 0xFF534D42: "cifs", 0xFE534D42: "smb2",
    0x858458F6: "ramfs", 0x62656572: "sysfs", 0x9FA0: "proc", 0x6A656A63: "virtiofs", 0x2FC12FC1: "zfs",
}
log = logging.getLogger(__name__)

_guard: ModuleType | None
try:
    from .. import _guard  # type: ignore[attr-defined, no-redef]
except ImportError:
    _guard = None


def guarded() -> bool:
    """Whether the SIGBUS guard module is available."""
    return _guard is not None


def shrink_sealed(fd: int) -> bool:
    """True if ``fd``'s file cannot shrink: it carries F_SEAL_SHRINK, or it is a
    memfd that allows sealing and gets the seal now."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        return False  # not a memfd (or shmem file): no seals at all
    if seals & fcntl.F_SEAL_SHRINK:
        return True
    if seals & fcntl.F_SEAL_SEAL:
        return False  # created without MFD_ALLOW_SEALING, or sealing was sealed
    try:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    except OSError:
        return False
    return True


def fstatfs_type(fd: int) -> int:
    """The file system magic (``statfs.f_type``, 32 bits) of ``fd``'s file; OSError if
    it cannot be had."""
    native = getattr(_guard, "fstatfs_type", None)  # an older build of the module lacks it
    if native is not None:
        return int(native(fd))
    return _libc_fstatfs_type(fd)


def _libc_fstatfs_type(fd: int) -> int:
    """``fstatfs`` through ctypes: f_type is the first word of struct statfs (a
    ``long``; 120 bytes in all on x86-64, the buffer is larger)."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(512)
    if libc.fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def memory_fs_problem(fd: int) -> str | None:
    """None if ``fd`` is a regular file on tmpfs/shmem or hugetlbfs (or any file
    system is allowed), else why the guest memory is refused (one line)."""
    try:
        mode = os.fstat(fd).st_mode
        magic = fstatfs_type(fd)
    except OSError as e:
        return f"the memory's file cannot be examined ({e.strerror})"
    if not stat.S_ISREG(mode):
        return f"the memory is not a regular file (mode {stat.filemode(mode)}): refused"
    if magic in MEMORY_FS or os.environ.get(ALLOW_ANY_MEMORY_FS) == "1":
        return None
    name = _FS_NAMES.get(magic, "an unknown file system")
    return (f"the memory is a file on {name} (f_type {magic:#x}), not tmpfs/memfd or hugetlbfs: a page fault "
            f"on it could block the daemon: refused (set {ALLOW_ANY_MEMORY_FS}=1 to accept it)")


def shrunk(buf: memoryview) -> bool:
    """True if the guard replaced a page of the mapping ``buf`` views (its file shrank)."""
    return bool(getattr(buf.obj, "poisoned", False))


_shrink_fd: int | None = None
_shrink_loop: asyncio.AbstractEventLoop | None = None


def on_memory_shrunk(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Have ``callback()`` called on ``loop`` after the guard replaced a page of a
    guarded mapping (one loop at a time: the first one asked keeps it until it is
    closed, then the next one asked takes over; the daemon asks for its main loop
    first, so that with worker threads the callback runs where it may touch every
    worker's connections: ``daemon.workers``)."""
    global _shrink_fd, _shrink_loop
    if _guard is None or loop is _shrink_loop or (_shrink_loop is not None and not _shrink_loop.is_closed()):
        return
    if _shrink_fd is None:
        _shrink_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        _guard.set_notify(_shrink_fd)
    loop.add_reader(_shrink_fd, _memory_shrunk, _shrink_fd, callback)
    _shrink_loop = loop


def _memory_shrunk(fd: int, callback: Callable[[], None]) -> None:
    eventfd_drain(fd)
    callback()


class OsHost:
    """Real memory mapping and descriptor handling for a ``Session``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def map_region(self, fd: int, size: int, offset: int) -> memoryview:
        """Map ``[offset, offset + size)`` of ``fd`` (see the rules above); OSError
        with a one-line reason if the memory is refused."""
        length = offset + size
        if length > sys.maxsize:  # mmap would raise OverflowError: a traceback, not a refusal
            raise OSError(f"the region's end at {length:#x} (mmap_offset + size) is beyond what can be mapped")
        problem = memory_fs_problem(fd)
        if problem is not None:
            raise OSError(problem)
        if not _hugetlbfs(fd) and shrink_sealed(fd):  # sealed first, then the size checked
            try:
                mm = mmap.mmap(fd, _whole_pages(fd, length), flags=mmap.MAP_SHARED,
                               prot=mmap.PROT_READ | mmap.PROT_WRITE)
            except ValueError as e:  # e.g. the file is shorter than the region claims
                raise OSError(str(e)) from e
            log.debug("mapped %d bytes of a memfd sealed against shrinking", length)
            return memoryview(mm)[offset:length]
        file_size = os.fstat(fd).st_size
        if file_size < length:
            raise OSError(f"the file is {file_size} bytes, shorter than the region's end at {length}")
        if _guard is not None:
            log.debug("mapped %d bytes of an unsealed file under the SIGBUS guard", length)
            return memoryview(_guard.map(fd, length))[offset:length]
        if os.environ.get(ALLOW_UNGUARDED) != "1":
            raise OSError("the memory is not sealed against shrinking (F_SEAL_SHRINK) and the SIGBUS guard "
                          f"(vhost_ipvlan._guard) is not built: refused (set {ALLOW_UNGUARDED}=1 to accept it)")
        mm = mmap.mmap(fd, _whole_pages(fd, length), flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        return memoryview(mm)[offset:length]

    def close_fd(self, fd: int) -> None:
        try:
            os.close(fd)
        except OSError:
            pass

    def fence(self) -> None:
        with self._lock:
            pass

    def eventfd_problem(self, fd: int) -> str | None:
        return eventfd_problem(fd)


def eventfd_problem(fd: int) -> str | None:
    """None if ``fd`` is an eventfd (made non-blocking here), else what it is instead."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError as e:
        return f"unusable ({e.strerror})"
    if target != EVENTFD_LINK:
        return repr(target)  # e.g. 'pipe:[1234]', 'socket:[5678]', '/dev/null'
    if _semaphore(fd):
        return "an eventfd in semaphore mode (a read takes 1 from its counter: it would stay readable)"
    try:
        os.set_blocking(fd, False)
    except OSError as e:
        return f"an eventfd that cannot be made non-blocking ({e.strerror})"
    return None


def _hugetlbfs(fd: int) -> bool:
    """Whether ``fd``'s file is on hugetlbfs (by its magic: a block bigger than a page
    also means NFS, where the override lets memory be)."""
    try:
        return fstatfs_type(fd) == HUGETLBFS_MAGIC
    except OSError:
        return False


def _whole_pages(fd: int, length: int) -> int:
    """``length`` rounded up to the file system's block (hugetlbfs: the huge page), if
    the file is that long. The kernel maps whole huge pages anyway, but munmap of a
    partial one fails: mmap's close left the mapping behind (and the guest's huge
    pages with it) at every SET_MEM_TABLE."""
    try:
        block = os.fstatvfs(fd).f_bsize
        size = os.fstat(fd).st_size
    except OSError:
        return length
    if block <= 0 or block & (block - 1):
        return length
    whole = (length + block - 1) & ~(block - 1)
    return whole if whole <= size else length


def _semaphore(fd: int) -> bool:
    """Whether the eventfd ``fd`` was made with EFD_SEMAPHORE (kernels that say so in
    fdinfo; older ones cannot be asked and pass)."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", encoding="ascii", errors="replace") as f:
            return any(line.split() == ["eventfd-semaphore:", "1"] for line in f)
    except OSError:
        return False


def eventfd_signal(fd: int) -> bool:
    """Add 1 to an eventfd without ever blocking; False if the descriptor is gone or
    its counter is full (EAGAIN). The front-end shares the open file description
    and may clear O_NONBLOCK: it is checked (and set again) before each write."""
    try:
        if os.get_blocking(fd):
            os.set_blocking(fd, False)
        os.eventfd_write(fd, 1)
    except OSError:
        return False
    return True


def eventfd_drain(fd: int) -> bool:
    """Reset an eventfd's counter without blocking; False on an error other than
    "nothing to read" (the caller then stops watching the descriptor)."""
    try:
        if os.get_blocking(fd):
            os.set_blocking(fd, False)
        os.eventfd_read(fd)
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:
        return False
    return True
