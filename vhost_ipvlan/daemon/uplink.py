"""The master interface: an AF_PACKET socket with virtio-net headers (a ``seams.UplinkPort``).

Rules:
- PACKET_VNET_HDR: every frame read or written is preceded by the 10-byte
  ``virtio_net_hdr`` (no num_buffers), so checksum and GSO offloads pass through
  between guests and the kernel without Python touching the payload.
- PACKET_IGNORE_OUTGOING: frames the host (or we) send are not read back.
- Frames are scattered into / gathered from the daemon's 12-byte-header buffers
  (``hdr[0:10]``, frame at 12), so nothing is copied to convert headers.
- A failed send (ring full, no buffer space, too big) is a counted drop.
- Receive (with the C accelerator): an RX ring (``RxRing``: PACKET_RX_RING, TPACKET_V2,
  2048-byte slots, 2048 of them, 4 MiB per master, counted in the master's stats),
  read by ``_fastpath.c`` with no system call while it holds frames. A frame longer
  than a slot (GSO/GRO, jumbo) is in the slot cut short with TP_STATUS_COPY and whole
  in the socket's queue (PACKET_COPY_THRESH), in order: C reads it from there. Without
  C (pure Python), with ``VHOST_IPVLAN_RING=0``, or when the kernel refuses the ring
  (logged), the socket is read as before (recvmmsg in C, recvmsg in Python): the
  same frames, lengths and truncations. A pending socket error (ENETDOWN when the
  master went down) is taken off the socket at the start of each ring burst and of
  each ``recv``, as a read of the socket reports it: one ``uplink_read_error``.
  ``close`` unmaps the ring before closing the socket.
- TPACKET_V2, not V3: a V3 block is handed over when full or when its timer
  (tp_retire_blk_tov, >= 1 ms) fires, so a lone frame from the wire waits up to that
  long (bench/rxmech.sh: 0.5-0.9 ms median at 1000 frames/s, V2 32 us), and it has no
  copy for a frame longer than a block (cut short): blocks of 128 KiB for GSO frames.
  V2 hands each frame over at once; the large ones take the copy.
- The socket is opened with protocol 0 and bound to the master with ETH_P_ALL after
  the options (and ring) are set: nothing from another interface is ever queued.
- ``socket_counts``: the frames the socket took and those the kernel dropped there
  because its RX ring or receive buffer was full (the daemon did not keep up), summed
  since it was opened: the kernel's PACKET_STATISTICS restart at every read, so they
  are read in one place only, and once more as it closes (what the kernel counted since
  the last read is kept). ``rx_dropped`` in the master's stats (which adds the counts
  of the master's earlier sockets: ``master.Master``).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import socket
import struct

from ..errors import UplinkError
from ..virtio.net import HDR_LEN
from . import fastpath
from .ifinfo import interface_mac

log = logging.getLogger(__name__)

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
VNET_HDR_LEN = 10
PACKET_RX_RING = 5
PACKET_COPY_THRESH = 7
PACKET_VERSION = 10
PACKET_STATISTICS = 6
TPACKET_V2 = 1
#: ring geometry: a 1500-byte-MTU frame with its headers fits a slot (32 a 64 KiB block)
RING_FRAME_SIZE = 2048
RING_BLOCK_SIZE = 64 << 10
RING_FRAMES = 2048


def recv_vnet(sock: socket.socket, buf: memoryview) -> int:
    """Read one datagram (10-byte ``virtio_net_hdr`` + frame) into ``buf`` as the
    daemon's buffers hold it (header at 0, frame at 12): the total length, 0 if there
    is none, -1 for one that was truncated (larger than the buffer) or a runt."""
    try:
        n, _, flags, _ = sock.recvmsg_into((buf[:VNET_HDR_LEN], buf[HDR_LEN:]))
    except (BlockingIOError, InterruptedError):
        return 0
    if flags & socket.MSG_TRUNC or n < VNET_HDR_LEN:
        return -1
    return n + (HDR_LEN - VNET_HDR_LEN)


def ring_wanted() -> bool:
    """An RX ring is set up when C can read it and ``VHOST_IPVLAN_RING`` is not ``0``."""
    return fastpath.ext is not None and os.environ.get("VHOST_IPVLAN_RING") != "0"


class RxRing:
    """A TPACKET_V2 receive ring on a packet socket (see the rules); ``args`` is what
    ``_fastpath.c`` reads it with: (fd, map, frame size, frame count, cursor)."""

    def __init__(self, sock: socket.socket, frame_size: int = RING_FRAME_SIZE,
                 block_size: int = RING_BLOCK_SIZE, frames: int = RING_FRAMES) -> None:
        """Set the ring up on ``sock`` (before it is bound); OSError if the kernel refuses."""
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        sock.setsockopt(SOL_PACKET, PACKET_COPY_THRESH, 1)
        blocks = frames * frame_size // block_size
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, struct.pack("IIII", block_size, blocks, frame_size, frames))
        self.size = block_size * blocks
        self.map = mmap.mmap(sock.fileno(), self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.cursor = bytearray(4)
        self.args: tuple[int, object, int, int, bytearray] = (sock.fileno(), self.map, frame_size, frames,
                                                              self.cursor)

    def close(self) -> None:
        self.args = (-1, b"", 0, 0, self.cursor)
        self.map.close()


class Uplink:
    """A raw packet socket bound to the master."""

    def __init__(self, master: str, ring: bool | None = None) -> None:
        self.master = master
        try:
            self.ifindex = socket.if_nametoindex(master)
        except OSError:
            raise UplinkError(f"master {master}: no such interface") from None
        self.mac = interface_mac(master)
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.ring: RxRing | None = None
        try:
            sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, force, 8 << 20)  # SO_*BUFFORCE (root)
                except OSError:
                    sock.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
            if ring_wanted() if ring is None else ring:
                self.ring = self._open_ring(sock)
            sock.bind((master, ETH_P_ALL))
            sock.setblocking(False)
        except OSError as e:
            if self.ring is not None:
                self.ring.close()
            sock.close()
            raise UplinkError(f"master {master}: cannot open a packet socket: {e.strerror}") from e
        self.sock = sock
        self.send_errors = 0
        self._taken = self._dropped = 0

    def _open_ring(self, sock: socket.socket) -> RxRing | None:
        try:
            return RxRing(sock, RING_FRAME_SIZE, RING_BLOCK_SIZE, RING_FRAMES)
        except (OSError, ValueError) as e:
            log.warning("master %s: no RX ring (%s); reading the socket instead", self.master, e)
            with contextlib.suppress(OSError):  # a ring set up but not mapped would take every frame
                sock.setsockopt(SOL_PACKET, PACKET_RX_RING, bytes(16))
            with contextlib.suppress(OSError):
                sock.setsockopt(SOL_PACKET, PACKET_VERSION, 0)  # TPACKET_V1, the default
            return None

    @property
    def rx_mechanism(self) -> str:
        """How frames from the wire are read: ``ring``, ``recvmmsg`` (C) or ``recvmsg``."""
        if self.ring is not None:
            return "ring"
        return "recvmmsg" if fastpath.ext is not None else "recvmsg"

    @property
    def ring_bytes(self) -> int:
        """The RX ring's memory (locked kernel pages), 0 without one."""
        return self.ring.size if self.ring is not None else 0

    def socket_counts(self) -> tuple[int, int]:
        """(frames the socket took, of which dropped: its ring or buffer was full), since
        it was opened (see the rules); the last counts once the socket is closed."""
        try:
            packets, drops = struct.unpack("II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        except OSError:
            return self._taken, self._dropped
        self._taken += packets  # the kernel's packets include its drops
        self._dropped += drops
        return self._taken, self._dropped

    def batch_rx(self) -> int | tuple[object, ...]:
        """What ``_fastpath.uplink_burst`` reads: the RX ring's arguments, else the socket."""
        return self.ring.args if self.ring is not None else self.sock.fileno()

    def fileno(self) -> int:
        return self.sock.fileno()

    def batch_fd(self) -> int:
        """The socket: PACKET_VNET_HDR makes each datagram's first 10 bytes the header
        (the C accelerator reads it with recvmmsg, as ``recv`` does, and sends with sendmmsg)."""
        return self.sock.fileno()

    def send(self, buf: memoryview, length: int) -> bool:
        """Send ``buf[:length]`` (12-byte header + frame); False if it was dropped."""
        try:
            self.sock.sendmsg((buf[:VNET_HDR_LEN], buf[HDR_LEN:length]))
        except OSError:
            self.send_errors += 1
            return False
        return True

    def recv(self, buf: memoryview) -> int:
        """Read one frame into ``buf`` (header at 0, frame at 12): total length, 0 if none.

        Returns -1 for a frame that was truncated (larger than the buffer).
        """
        if self.ring is not None and fastpath.ext is not None:
            n: int = fastpath.ext.ring_recv(self.ring.args, buf)
            return n
        return recv_vnet(self.sock, buf)

    def close(self) -> None:
        """Read the socket's last counts (``socket_counts``), unmap the RX ring (if any),
        then close the socket."""
        self.socket_counts()
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        self.sock.close()
