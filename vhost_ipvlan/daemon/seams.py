"""The data path's seams: what ``PortDatapath`` needs from the world around it.

``PortDatapath`` (``datapath.py``) executes the switch's verdicts; the objects it
moves frames through are given to it, typed by these Protocols, so that one can
be swapped without touching the switch or the data path (as ``session.Host`` and
``session.Device`` do for the vhost-user session):

- ``UplinkPort``: the wire, through the master (``uplink.Uplink``: AF_PACKET);
- ``HostPort``: the host's own stack (``hostlink.HostLink``: a tap device);
- ``NextHops``: l3's next-hop lookups (``routing.Router``: the host's tables);
- ``Loop``: the part of the asyncio event loop the data path calls.

The test fakes (``tests/support/inproc.py``, ``tests/support/hostile.py``) are
checked against them by mypy.

Rules:
- Frames are passed as the daemon's buffers: a 12-byte ``virtio_net_hdr``
  (``virtio.net.HDR_LEN``, ``num_buffers`` unused) then the Ethernet frame; the
  header's offload fields pass through (checksum, GSO), so an uplink either hands
  them to the kernel or refuses to offer them (``session.DEFAULT_FEATURES``).
- Per frame nothing is raised but ``OSError`` from ``recv`` (a read error, which
  the data path counts); ``send`` returns False for a frame it dropped.
- ``fileno`` is the descriptor the event loop watches for ``recv``; -1 once closed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ..drops import DropReason


class UplinkPort(Protocol):
    """The master's side of a port: frames to and from the wire."""

    @property
    def master(self) -> str:
        """The master's name (for log lines)."""
        ...

    @property
    def ifindex(self) -> int:
        """The master's interface index."""
        ...

    def fileno(self) -> int: ...

    def recv(self, buf: memoryview) -> int:
        """Read one frame into ``buf`` (``virtio.net.MAX_BUFFER`` bytes): its total
        length (header + frame), 0 if there is none, -1 for one that was truncated
        (counted, skipped). The header may describe a coalesced (GRO) frame."""
        ...

    def send(self, buf: memoryview, length: int) -> bool:
        """Send ``buf[:length]`` to the wire; False if it was dropped. A frame whose
        header has a ``gso_type`` may be longer than the master's MTU (the data path
        lets it through, ``PortDatapath._wire_ok``): segment it (AF_PACKET leaves
        that to the kernel) or drop it."""
        ...

    def batch_fd(self) -> int:
        """A descriptor the C accelerator may ``sendmmsg`` frames to and ``recvmmsg``
        frames from, one datagram each: the 10-byte ``virtio_net_hdr`` (no
        num_buffers) then the Ethernet frame, exactly what ``send`` sends and ``recv``
        reads; -1 for none (Python does all the I/O)."""
        ...

    def batch_rx(self) -> int | tuple[object, ...]:
        """What the C accelerator reads the wire from (``_fastpath.uplink_burst``): an
        RX ring's arguments (``uplink.RxRing``), else ``batch_fd()``."""
        ...

    def close(self) -> None: ...


class HostPort(Protocol):
    """The host's side of a port: frames to and from the host's own stack, and the
    routes that send the host's traffic for the guests' addresses to it."""

    @property
    def name(self) -> str: ...

    @property
    def rx_packets(self) -> int: ...

    @property
    def tx_packets(self) -> int: ...

    def fileno(self) -> int: ...

    def recv(self, buf: memoryview) -> int:
        """Read one frame from the host into ``buf``: its total length, 0 if none."""
        ...

    def send(self, buf: memoryview, length: int) -> bool:
        """Give ``buf[:length]`` to the host's stack; False if it was dropped."""
        ...

    def sync(self) -> None:
        """Route the port's guest addresses (configured and learned) through this link."""
        ...

    def enable_forwarding(self) -> None:
        """l3s: the host forwards between this link and the master."""
        ...

    def needs_forwarding(self, family: int, index: int, master_index: int) -> bool:
        """Whether forwarding turned off on interface ``index`` (-1: IPv6's ``all``) is
        forwarding this link needs (l3s)."""
        ...

    def check_forwarding(self) -> None:
        """Turn on again the forwarding this link needs, if someone turned it off."""
        ...

    def close(self) -> None: ...


class NextHops(Protocol):
    """l3 egress: the MAC of the next hop for a destination address."""

    def next_hop_mac(self, dst: bytes, guest: str = "") -> bytes | DropReason:
        """The next hop's MAC for ``dst`` (packed IPv4/IPv6), ``routing.LOCAL``
        for the host's own, or the ``DropReason`` it is dropped for. Never waits."""
        ...

    def hold(self, dst: bytes, guest: str, frame: memoryview) -> DropReason | None:
        """Keep a copy of ``frame`` (a ``NEIGH_UNRESOLVED`` answer) until ``dst`` resolves,
        then hand it back with the answer; ``None``, or why it is dropped now."""
        ...

    def invalidate(self, master_index: int | None = None) -> None:
        """Forget what is known (the master changed; its new index if it has one)."""
        ...

    def close(self) -> None: ...


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Loop(Protocol):
    """What ``PortDatapath`` and ``NetDevice`` call on the event loop."""

    def add_reader(self, fd: int, callback: Callable[..., object], *args: Any) -> None: ...

    def remove_reader(self, fd: int) -> bool: ...

    def call_soon(self, callback: Callable[..., object], *args: Any) -> object: ...

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Cancellable: ...
