"""The master interface: an AF_PACKET socket with virtio-net headers (a ``seams.UplinkPort``).

Rules:
- PACKET_VNET_HDR: every frame read or written is preceded by the 10-byte
  ``virtio_net_hdr`` (no num_buffers), so checksum and GSO offloads pass through
  between guests and the kernel without Python touching the payload.
- PACKET_IGNORE_OUTGOING: frames the host (or we) send are not read back.
- Frames are scattered into / gathered from the daemon's 12-byte-header buffers
  (``hdr[0:10]``, frame at 12), so nothing is copied to convert headers.
- A failed send (ring full, no buffer space, too big) is a counted drop.
"""

from __future__ import annotations

import socket

from ..errors import UplinkError
from ..virtio.net import HDR_LEN
from .ifinfo import interface_mac

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
VNET_HDR_LEN = 10


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


class Uplink:
    """A raw packet socket bound to the master."""

    def __init__(self, master: str) -> None:
        self.master = master
        try:
            self.ifindex = socket.if_nametoindex(master)
        except OSError:
            raise UplinkError(f"master {master}: no such interface") from None
        self.mac = interface_mac(master)
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, force, 8 << 20)  # SO_*BUFFORCE (root)
                except OSError:
                    sock.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
            sock.bind((master, ETH_P_ALL))
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise UplinkError(f"master {master}: cannot open a packet socket: {e.strerror}") from e
        self.sock = sock
        self.send_errors = 0

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
        return recv_vnet(self.sock, buf)

    def close(self) -> None:
        self.sock.close()
