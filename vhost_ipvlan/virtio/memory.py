"""Guest memory: bounds-checked translation of guest addresses to buffer views.

The front-end describes guest RAM as regions ``(gpa, size, uva, buffer)``. Two
address spaces are in use and must never be mixed up:

- descriptor addresses in the rings are *guest physical* (GPA): ``gpa_view``;
- ring addresses given by SET_VRING_ADDR are in the front-end's *process* address
  space (UVA): ``uva_view``.

Rules:
- A translation succeeds only if the whole ``[addr, addr + length)`` lies inside one
  region; anything else raises ``GuestError`` (memoryview slicing would silently
  truncate, so every bound is checked here, explicitly).
- The buffers are whatever the I/O layer mapped (``mmap`` in the daemon, a
  ``bytearray`` in tests); this module never maps or unmaps anything.
- The C accelerator (``_fastpath.c``, ``queue_open``) reads ``_by_gpa`` by name
  (through a ``SplitQueue``'s ``mem``): a tuple of at most 16 ``(start, end,
  buffer)`` tuples, ints and a writable C-contiguous buffer of exactly
  ``end - start`` bytes; it repeats ``gpa_view``'s bounds checks. Renaming or
  retyping it is a change to ``_fastpath.c`` too
  (``tests/unit/test_fastpath_contract.py`` checks the name).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import GuestError


@dataclass(frozen=True, slots=True)
class Region:
    """One contiguous piece of guest RAM and the buffer that holds it."""

    gpa: int
    size: int
    uva: int
    buf: memoryview  # exactly ``size`` bytes long


class GuestMemory:
    """The guest's RAM as a list of regions, translated with bounds checks."""

    __slots__ = ("_by_gpa", "_last", "regions")

    def __init__(self, regions: Sequence[Region]) -> None:
        for r in regions:
            if len(r.buf) != r.size:
                raise ValueError(f"region at gpa {r.gpa:#x}: buffer is {len(r.buf)} bytes, not {r.size}")
        self.regions = tuple(regions)
        self._by_gpa = tuple((r.gpa, r.gpa + r.size, r.buf) for r in self.regions)
        self._last = self._by_gpa[0] if self._by_gpa else (0, 0, memoryview(b""))

    @property
    def end(self) -> int:
        """The guest-physical address just past the highest region (0: none)."""
        return max((end for _, end, _ in self._by_gpa), default=0)

    def gpa_view(self, gpa: int, length: int) -> memoryview:
        """A view of ``length`` bytes of guest RAM at guest-physical ``gpa``."""
        start, end, buf = self._last
        if start <= gpa and gpa + length <= end and length >= 0:
            off = gpa - start
            return buf[off : off + length]
        for entry in self._by_gpa:
            start, end, buf = entry
            if start <= gpa < end:
                if length < 0 or gpa + length > end:
                    break
                self._last = entry
                off = gpa - start
                return buf[off : off + length]
        raise GuestError(f"guest address {gpa:#x}+{length} is outside guest memory")

    def uva_view(self, uva: int, length: int) -> memoryview:
        """A view of ``length`` bytes at front-end virtual address ``uva``."""
        for r in self.regions:
            if r.uva <= uva < r.uva + r.size:
                if length < 0 or uva + length > r.uva + r.size:
                    break
                off = uva - r.uva
                return r.buf[off : off + length]
        raise GuestError(f"front-end address {uva:#x}+{length} is outside the memory table")
