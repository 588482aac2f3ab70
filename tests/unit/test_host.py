"""The daemon's OS services: guest memory that cannot kill us, eventfds that never block."""

from __future__ import annotations

import fcntl
import mmap
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from vhost_ipvlan.daemon import host
from vhost_ipvlan.daemon.host import OsHost, eventfd_drain, eventfd_problem, eventfd_signal, shrunk

SIZE = 1 << 20


@pytest.fixture
def fds() -> Iterator[list[int]]:
    opened: list[int] = []
    yield opened
    for fd in opened:
        os.close(fd)


def memfd(fds: list[int], flags: int = 0, seals: int = 0) -> int:
    fd = os.memfd_create("guest", os.MFD_CLOEXEC | flags)
    fds.append(fd)
    os.ftruncate(fd, SIZE)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def test_sealed_memfd_is_mapped_as_is(fds: list[int]) -> None:
    fd = memfd(fds, os.MFD_ALLOW_SEALING, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    view = OsHost().map_region(fd, SIZE - 4096, 4096)
    assert isinstance(view.obj, mmap.mmap) and len(view) == SIZE - 4096


def test_sealable_memfd_gets_sealed_against_shrinking(fds: list[int]) -> None:
    fd = memfd(fds, os.MFD_ALLOW_SEALING)
    view = OsHost().map_region(fd, SIZE, 0)
    assert isinstance(view.obj, mmap.mmap)
    with pytest.raises(PermissionError):
        os.ftruncate(fd, 4096)  # the front-end cannot shrink it any more
    os.ftruncate(fd, 2 * SIZE)  # growing is still allowed


@pytest.mark.skipif(not host.guarded(), reason="the SIGBUS guard module is not built")
def test_unsealable_memory_that_shrinks_is_replaced_and_flagged(fds: list[int]) -> None:
    """r7: a front-end truncated its memory and the next ring access killed the daemon."""
    fd = memfd(fds)  # no MFD_ALLOW_SEALING: as DPDK's
    view = OsHost().map_region(fd, SIZE - 8192, 8192)
    view[0] = 1
    assert not shrunk(view)
    os.ftruncate(fd, 4096)
    assert view[100_000] == 0  # SIGBUS without the guard; a zero page now
    view[200_000] = 7  # writes land on a private zero page
    assert view[200_000] == 7 and view[0] == 0
    assert shrunk(view)


@pytest.mark.skipif(not host.guarded(), reason="the SIGBUS guard module is not built")
def test_touching_many_pages_of_shrunk_memory_adds_no_mappings(fds: list[int]) -> None:
    """Pages were replaced one at a time, each splitting the mapping: a ring walk over
    every other page of a truncated file (32768 descriptors) reached vm.max_map_count,
    the replacement mmap failed and the SIGBUS killed the daemon."""
    fd = memfd(fds)
    size = 8 << 20
    os.ftruncate(fd, size)
    view = OsHost().map_region(fd, size, 0)

    def mappings() -> int:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)

    before = mappings()
    os.ftruncate(fd, 0)
    for page in range(0, size, 2 * mmap.PAGESIZE):  # every other page: nothing merges
        assert view[page] == 0
    assert shrunk(view) and mappings() <= before + 2


def test_file_shorter_than_the_region_is_refused(fds: list[int]) -> None:
    for fd in (memfd(fds), memfd(fds, os.MFD_ALLOW_SEALING)):
        with pytest.raises(OSError, match=r"shorter|length"):
            OsHost().map_region(fd, SIZE, 4096)


def test_a_region_ending_beyond_what_can_be_mapped_is_refused(fds: list[int]) -> None:
    """mmap_offset is the front-end's: 2^63 made mmap raise OverflowError, which the
    connection logged as an unexpected error with its traceback (per attempt)."""
    for fd in (memfd(fds, os.MFD_ALLOW_SEALING), memfd(fds)):
        for offset in (1 << 63, 1 << 70):
            with pytest.raises(OSError, match="beyond what can be mapped"):
                OsHost().map_region(fd, 4096, offset)


def test_without_the_guard_unsealable_memory_is_refused(fds: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "_guard", None)
    monkeypatch.delenv(host.ALLOW_UNGUARDED, raising=False)
    fd = memfd(fds)
    with pytest.raises(OSError, match=r"not sealed against shrinking .* VHOST_IPVLAN_UNGUARDED_MEMORY=1"):
        OsHost().map_region(fd, SIZE, 0)
    monkeypatch.setenv(host.ALLOW_UNGUARDED, "1")
    assert len(OsHost().map_region(fd, SIZE, 0)) == SIZE


@pytest.fixture
def disk_file() -> Iterator[int]:
    """An fd of a SIZE-byte regular file on a disk file system (not tmpfs)."""
    for where in ("/var/tmp", os.path.dirname(os.path.abspath(__file__))):
        fd = os.open(where, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        if host.fstatfs_type(fd) not in host.MEMORY_FS:
            break
        os.close(fd)
    else:
        pytest.skip("no disk file system at hand: /var/tmp and the tests are on tmpfs")
    os.ftruncate(fd, SIZE)
    yield fd
    os.close(fd)


def test_fstatfs_type_names_the_memory_file_systems(fds: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    fd = memfd(fds)
    assert host.fstatfs_type(fd) == host.TMPFS_MAGIC
    monkeypatch.setattr(host, "_guard", None)  # the ctypes fallback agrees
    assert host.fstatfs_type(fd) == host.TMPFS_MAGIC
    with pytest.raises(OSError):
        host.fstatfs_type(-1)


@pytest.mark.parametrize("module", ["guard", "ctypes"])
def test_memory_on_a_disk_file_system_is_refused_unless_allowed(
        disk_file: int, fds: list[int], module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page fault on a front-end's file on FUSE/NFS/disk can block the event loop
    (a FUSE server that never answers: every guest stalls); only tmpfs/memfd and
    hugetlbfs memory is mapped."""
    if module == "ctypes":
        monkeypatch.setattr(host, "_guard", None)
        monkeypatch.setenv(host.ALLOW_UNGUARDED, "1")
    monkeypatch.delenv(host.ALLOW_ANY_MEMORY_FS, raising=False)
    with pytest.raises(OSError, match=r"^the memory is a file on \S+ \(f_type 0x[0-9a-f]+\), not tmpfs/memfd or "
                                      r"hugetlbfs: .* refused \(set VHOST_IPVLAN_ANY_MEMORY_FS=1 to accept it\)$"):
        OsHost().map_region(disk_file, SIZE, 0)
    assert len(OsHost().map_region(memfd(fds), SIZE, 0)) == SIZE  # a memfd is fine
    monkeypatch.setenv(host.ALLOW_ANY_MEMORY_FS, "1")
    view = OsHost().map_region(disk_file, SIZE - 4096, 4096)
    assert len(view) == SIZE - 4096
    view.release()


def test_memory_that_is_not_a_regular_file_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(host.ALLOW_ANY_MEMORY_FS, "1")
    fd = os.open("/dev/zero", os.O_RDWR | os.O_CLOEXEC)
    try:
        with pytest.raises(OSError, match="not a regular file"):
            OsHost().map_region(fd, 4096, 0)
    finally:
        os.close(fd)


@pytest.mark.skipif(not host.guarded(), reason="the SIGBUS guard module is not built")
def test_sigbus_elsewhere_still_kills_the_process() -> None:
    """The guard chains to the previous handler for addresses outside guest memory."""
    code = (
        "import mmap, os\n"
        "from vhost_ipvlan.daemon.host import OsHost\n"
        "g = os.memfd_create('guest'); os.ftruncate(g, 1 << 20); v = OsHost().map_region(g, 1 << 20, 0)\n"
        "fd = os.memfd_create('other'); os.ftruncate(fd, 1 << 20)\n"
        "m = mmap.mmap(fd, 1 << 20); os.ftruncate(fd, 0)\n"
        "print(m[500000])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGBUS, proc.stderr

HUGE_PAGES_UNAVAILABLE = 77
_HUGETLB_SHRINK = """
import mmap, os, sys
from vhost_ipvlan import _guard
from vhost_ipvlan.daemon.host import OsHost, shrunk
try:
    fd = os.memfd_create("guest", os.MFD_HUGETLB)
    os.ftruncate(fd, 2 << 20)
    mmap.mmap(fd, 2 << 20).close()
except OSError:
    sys.exit(HUGE_PAGES_UNAVAILABLE)
view = OsHost().map_region(fd, (1 << 20) - 4096, 4096)  # ends mid huge page: a front-end's choice
view[0] = 1
os.ftruncate(fd, 0)
assert view[len(view) - 1] == 0 and shrunk(view)  # SIGBUS (death) before: the half huge page was not replaced
del view
assert _guard.active() == 0
assert not [line for line in open("/proc/self/maps") if "memfd:guest" in line], "the mapping leaked"
print("ok")
""".replace("HUGE_PAGES_UNAVAILABLE", str(HUGE_PAGES_UNAVAILABLE))


_HUGETLB_SEALED = """
import gc, mmap, os, sys
from vhost_ipvlan.daemon.host import OsHost
try:
    fd = os.memfd_create("guest", os.MFD_HUGETLB | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 2 << 20)
    mmap.mmap(fd, 2 << 20).close()
except OSError:
    sys.exit(HUGE_PAGES_UNAVAILABLE)
for _ in range(3):  # as many SET_MEM_TABLEs
    view = OsHost().map_region(fd, 1 << 20, 4096)  # sealed now; ends mid huge page
    view[0] = 1
    del view
    gc.collect()
left = [line for line in open("/proc/self/maps") if "memfd:guest" in line]
assert not left, left
print("ok")
""".replace("HUGE_PAGES_UNAVAILABLE", str(HUGE_PAGES_UNAVAILABLE))


_HUGETLB_PUNCHED = """
import ctypes, fcntl, mmap, os, sys
from vhost_ipvlan.daemon.host import OsHost, shrunk
H = 2 << 20
def free():
    return int([line for line in open("/proc/meminfo") if line.startswith("HugePages_Free")][0].split()[1])
def take(n):  # the front-end keeps every free huge page for itself
    fd = os.memfd_create("hog", os.MFD_HUGETLB)
    os.ftruncate(fd, n * H)
    m = mmap.mmap(fd, n * H)
    for i in range(n):
        m[i * H] = 1
    return m
try:
    fd = os.memfd_create("guest", os.MFD_HUGETLB | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, H)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)  # as QEMU
    mmap.mmap(fd, H).close()
except OSError:
    sys.exit(HUGE_PAGES_UNAVAILABLE)
view = OsHost().map_region(fd, H, 0)
view[0] = 1
hogs = [take(free())]
assert ctypes.CDLL(None).fallocate(fd, 3, ctypes.c_long(0), ctypes.c_long(H)) == 0  # KEEP_SIZE | PUNCH_HOLE
hogs.append(take(free()))
assert view[100] == 0 and shrunk(view)  # SIGBUS before: no huge page left to fault in
print("ok")
""".replace("HUGE_PAGES_UNAVAILABLE", str(HUGE_PAGES_UNAVAILABLE))


@pytest.mark.skipif(not host.guarded(), reason="the SIGBUS guard module is not built")
def test_sealed_hugetlbfs_memory_with_a_hole_punched_is_guarded() -> None:
    """F_SEAL_SHRINK does not stop a hole punched in a hugetlb memfd; with the freed
    huge page taken, the daemon's next access to that page died of SIGBUS."""
    proc = subprocess.run([sys.executable, "-c", _HUGETLB_PUNCHED], capture_output=True, timeout=60)
    if proc.returncode == HUGE_PAGES_UNAVAILABLE:
        pytest.skip("no huge pages (vm.nr_hugepages)")
    assert proc.returncode == 0 and proc.stdout == b"ok\n", proc.stderr


def test_sealed_hugetlbfs_region_ending_mid_huge_page_is_unmapped() -> None:
    """QEMU seals its hugetlb memfds: a region ending mid huge page was mapped by
    mmap.mmap, whose munmap of the partial huge page failed: every SET_MEM_TABLE
    left a mapping (and the guest's huge pages) behind, up to vm.max_map_count."""
    proc = subprocess.run([sys.executable, "-c", _HUGETLB_SEALED], capture_output=True, timeout=60)
    if proc.returncode == HUGE_PAGES_UNAVAILABLE:
        pytest.skip("no huge pages (vm.nr_hugepages)")
    assert proc.returncode == 0 and proc.stdout == b"ok\n", proc.stderr


@pytest.mark.skipif(not host.guarded(), reason="the SIGBUS guard module is not built")
def test_hugetlbfs_region_ending_mid_huge_page_is_guarded_and_unmapped() -> None:
    """A region on hugetlbfs whose end is not huge-page aligned: the guard replaced a
    partial huge page (refused by the kernel: the daemon died of the SIGBUS) and
    munmap failed (the mapping and its huge pages leaked at every SET_MEM_TABLE)."""
    proc = subprocess.run([sys.executable, "-c", _HUGETLB_SHRINK], capture_output=True, timeout=60)
    if proc.returncode == HUGE_PAGES_UNAVAILABLE:
        pytest.skip("no huge pages (vm.nr_hugepages)")
    assert proc.returncode == 0 and proc.stdout == b"ok\n", proc.stderr


FULL = 0xFFFF_FFFF_FFFF_FFFE  # the largest value an eventfd counter holds


def test_eventfd_problem_names_what_is_not_an_eventfd() -> None:
    r, w = os.pipe()
    fd = os.eventfd(0)
    try:
        assert (eventfd_problem(r) or "").startswith("'pipe:[")
        assert eventfd_problem(fd) is None and not os.get_blocking(fd)
    finally:
        for x in (r, w, fd):
            os.close(x)


def test_a_semaphore_eventfd_is_refused() -> None:
    """EFD_SEMAPHORE: a read takes 1, so a kick whose counter the front-end set to
    2^64-2 stayed readable: 45k handler calls in 0.3 s (the r13 busy loop, with an
    eventfd)."""
    fd = os.eventfd(0, os.EFD_SEMAPHORE)
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            if "eventfd-semaphore" not in f.read():
                pytest.skip("this kernel does not show eventfd-semaphore in fdinfo")
        problem = eventfd_problem(fd)
        assert problem is not None and "semaphore" in problem
    finally:
        os.close(fd)
    plain = os.eventfd(0)
    try:
        assert eventfd_problem(plain) is None
    finally:
        os.close(plain)


def test_signalling_a_full_counter_does_not_block() -> None:
    """A front-end may fill the counter and clear O_NONBLOCK on the shared description (r6)."""
    fd = os.eventfd(0)
    os.eventfd_write(fd, FULL)
    os.set_blocking(fd, True)
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(eventfd_signal(fd)), daemon=True)
    t.start()
    t.join(10)
    try:
        assert not t.is_alive(), "eventfd_signal blocked on a full counter"
        assert result == [False]
    finally:
        if t.is_alive():
            os.eventfd_read(fd)  # release the blocked writer
            t.join()
        os.close(fd)


def test_draining_an_empty_blocking_eventfd_does_not_block() -> None:
    fd = os.eventfd(0)
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(eventfd_drain(fd)), daemon=True)
    t.start()
    t.join(10)
    try:
        assert not t.is_alive(), "eventfd_drain blocked on an empty counter"
        assert result == [True]
        assert not eventfd_drain(-1)  # an error other than "nothing to read" is reported
    finally:
        if t.is_alive():
            os.eventfd_write(fd, 1)
            t.join()
        os.close(fd)
