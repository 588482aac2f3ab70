"""A hostile guest for the in-process data path: ``FakeFrontend`` with knobs a real driver never turns.

Used by ``bench/hostile.py`` (the bounded-cost benchmark of the hostile-input audit).
The port is the real one (``PortDatapath``/``NetDevice``/switch, a real ``Session``
over memfd memory, as ``tests/support/inproc.py``); what changes is what the guest
writes into its own memory:

- descriptor tables of any length and content (``write_chain``: chained
  descriptors of a given length each, zero-length included), anywhere in the
  scratch area above the fake front-end's own buffers (``scratch``);
- avail entries naming any head, as often as it likes (``offer``: the same head
  may be named by every entry), and the avail index moved by any amount
  (``set_avail_idx``);
- no RX buffers at all unless it posts them itself (``post_rx=False``);
- more memory regions in its SET_MEM_TABLE (``extra_regions``, set before ``setup``).

The wire is ``WireUplink``: frames queued on it are read by the port as if they came
from the master; frames sent to it are counted, not kept. Rules: no timing here, the
benchmark times; nothing here raises on what the daemon does with the input.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from tests.support import inproc
from tests.support.frontend import BUF_SIZE, MEM_SIZE, QSIZE, DriverQueue, FakeFrontend
from tests.support.inproc import MASTER_MAC, NEXT_HOP_MAC
from vhost_ipvlan.daemon.device import NetDevice
from vhost_ipvlan.vhost_user import codec
from vhost_ipvlan.vhost_user.codec import Request
from vhost_ipvlan.virtio.virtqueue import VRING_DESC_F_NEXT

_DESC = struct.Struct("<QIHH")

__all__ = ["MASTER_MAC", "NEXT_HOP_MAC", "GuestSpec", "HostileFrontend", "HostilePort", "WireUplink"]


class HostileFrontend(FakeFrontend):
    """A fake guest that writes whatever it likes into its rings (see the module docstring)."""

    def __init__(self, *args: Any, post_rx: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.post_rx = post_rx
        #: more regions (gpa, size, uva, mmap offset) of the same memfd for SET_MEM_TABLE
        self.extra_regions: list[tuple[int, int, int, int]] = []
        base = self.buffers + len(self.vqs) * QSIZE * BUF_SIZE
        self._scratch = (base + 4095) & ~4095

    # -- memory -----------------------------------------------------------------------

    def send(self, request: int, payload: bytes = b"", fds: list[int] | None = None,
             *, reply: bool = False, need_reply: bool = False) -> bytes | None:
        if request == Request.SET_MEM_TABLE and self.extra_regions:
            count = codec.MEM_HEADER.unpack_from(payload)[0] + len(self.extra_regions)
            payload = codec.MEM_HEADER.pack(count, 0) + payload[codec.MEM_HEADER.size :] + b"".join(
                codec.MEM_REGION.pack(*r) for r in self.extra_regions)
            fds = list(fds or []) + [self.fd] * len(self.extra_regions)
        return super().send(request, payload, fds, reply=reply, need_reply=need_reply)

    def post_rx_buffers(self, count: int, pair: int = 0) -> None:
        if self.post_rx:
            super().post_rx_buffers(count, pair)

    def receive(self, pair: int = 0) -> list[tuple[bytes, bytes]]:
        """As ``FakeFrontend.receive``, then every free RX buffer posted again (it re-posts one
        per frame, fewer than a merged frame used)."""
        out = super().receive(pair)
        if self.post_rx and self.rxqs[pair].free:
            self.post_rx_buffers(len(self.rxqs[pair].free), pair)
        return out

    def scratch(self, size: int) -> int:
        """A fresh guest-physical area of ``size`` bytes (page aligned) in the guest's RAM."""
        gpa = self._scratch
        end = (gpa + size + 4095) & ~4095
        if end > MEM_SIZE:
            raise MemoryError(f"hostile guest: {size} bytes do not fit in {MEM_SIZE >> 20} MiB of guest RAM")
        self._scratch = end
        return gpa

    def write(self, gpa: int, data: bytes) -> None:
        self.mem[gpa : gpa + len(data)] = data

    def write_chain(self, gpa: int, lengths: Sequence[int], data_gpa: int, flags: int = 0) -> int:
        """A table at ``gpa`` of ``len(lengths)`` descriptors chained 0 -> 1 -> ..., descriptor i
        covering ``lengths[i]`` bytes of consecutive data from ``data_gpa`` (zero-length ones
        point at it too), each with ``flags`` (plus NEXT but the last). Returns the table's bytes."""
        out = bytearray(16 * len(lengths))
        addr = data_gpa
        last = len(lengths) - 1
        for i, length in enumerate(lengths):
            _DESC.pack_into(out, 16 * i, addr, length, flags | (VRING_DESC_F_NEXT if i < last else 0), i + 1)
            addr += length
        self.write(gpa, bytes(out))
        return len(out)

    def set_heads(self, q: DriverQueue, heads: Iterable[int], addr: int, length: int, flags: int,
                  nxt: int = 0) -> None:
        """Make each of ``heads`` in the ring's own table one descriptor (addr, length, flags, next)."""
        for i in heads:
            q.set_desc(i, addr, length, flags, nxt)

    # -- avail index games ---------------------------------------------------------------

    def offer(self, q: DriverQueue, heads: Iterable[int]) -> int:
        """Name ``heads`` in the next avail entries (repeats allowed) and publish; how many."""
        n = 0
        for head in heads:
            q.make_available(head)
            n += 1
        return n

    def set_avail_idx(self, q: DriverQueue, idx: int) -> None:
        """Publish any avail index, whatever the entries behind it."""
        q.avail_idx = idx & 0xFFFF
        struct.pack_into("<H", q.mem, q.avail + 2, q.avail_idx)

    def outstanding(self, q: DriverQueue) -> int:
        """Entries offered that the device has not returned as used yet (the driver's view)."""
        return (q.avail_idx - q.used_idx()) & 0xFFFF

    def top_up(self, q: DriverQueue, heads: Sequence[int]) -> int:
        """Offer entries (cycling through ``heads``) until ``q.num`` are outstanding; how many."""
        want = q.num - self.outstanding(q)
        if want <= 0:
            return 0
        start = q.avail_idx
        return self.offer(q, [heads[(start + k) % len(heads)] for k in range(want)])

    def forget_used(self, q: DriverQueue) -> int:
        """Skip every used entry (a guest that never looks at them); how many there were."""
        n = (q.used_idx() - q.last_used) & 0xFFFF
        q.last_used = q.used_idx()
        return n


class WireUplink:
    """The master: ``queue`` frames (12-byte header + Ethernet) for the port to read;
    frames sent to it are counted, not kept."""

    master = "hostile-wire"
    ifindex = 0

    def __init__(self) -> None:
        self.queue: deque[bytes] = deque()
        self.sent = 0
        self.sent_bytes = 0
        self.read = 0

    def fileno(self) -> int:
        return -1

    def batch_fd(self) -> int:
        return -1  # Python sends every frame

    def batch_rx(self) -> int:
        return self.batch_fd()

    def send(self, buf: memoryview, length: int) -> bool:
        self.sent += 1
        self.sent_bytes += length
        return True

    def recv(self, buf: memoryview) -> int:
        if not self.queue:
            return 0
        data = self.queue.popleft()
        buf[: len(data)] = data
        self.read += 1
        return len(data)

    def close(self) -> None:
        pass


GuestSpec = tuple[str, list[bytes], bytes, bool]
"""(name, packed addresses, MAC, posts RX buffers)"""


class HostilePort:
    """``InprocPort`` (the very same set-up, whatever it becomes) with ``HostileFrontend``
    guests and a ``WireUplink`` as the master."""

    def __init__(self, guests: Sequence[GuestSpec], *, mode: str = "l2", flag: str = "bridge",
                 regions: dict[str, list[tuple[int, int, int, int]]] | None = None) -> None:
        regions = regions or {}
        posts = iter([post_rx for *_, post_rx in guests])
        names_in_order = iter([name for name, *_ in guests])

        def frontend(*args: Any, **kwargs: Any) -> HostileFrontend:
            fe = HostileFrontend(*args, post_rx=next(posts), **kwargs)
            fe.extra_regions = list(regions.get(next(names_in_order), ()))
            return fe

        names = vars(inproc)  # InprocPort makes its guests with the module's FakeFrontend: ours
        saved = names["FakeFrontend"]
        names["FakeFrontend"] = frontend
        try:
            self._inproc = inproc.InprocPort([(name, addrs, mac) for name, addrs, mac, _ in guests],
                                             mode=mode, flag=flag)
        finally:
            names["FakeFrontend"] = saved
        self.port = self._inproc.port
        self.dp = self._inproc.dp
        self.uplink = WireUplink()
        self.dp.uplink = self.uplink
        self.frontends: dict[str, HostileFrontend] = {}
        for name, fe in self._inproc.frontends.items():
            assert isinstance(fe, HostileFrontend)
            self.frontends[name] = fe

    def device(self, name: str) -> NetDevice:
        return self.dp.devices[name]

    def uplink_burst(self) -> None:
        """One read of the master's socket (up to a burst of frames), as the event loop calls it."""
        self.dp._uplink_readable()

    def close(self) -> None:
        self._inproc.close()
