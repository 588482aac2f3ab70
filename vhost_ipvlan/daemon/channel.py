"""A vhost-user connection: framing over a unix stream socket with SCM_RIGHTS.

Rules:
- The socket is read without blocking, whenever it is readable; bytes accumulate
  until a whole message is there, so a slow or hostile peer never stalls the loop.
- File descriptors belong to the message whose last byte arrived with them (the
  kernel ends a read at a message that carries descriptors).
- A protocol error, a truncated control message, or any unexpected exception
  while handling a message is logged with the slave's name, and closes this
  connection only; every descriptor received is closed.
"""

from __future__ import annotations

import array
import asyncio
import logging
import socket
from collections.abc import Callable

from ..errors import FrontendError, VhostIpvlanError
from ..vhost_user import codec
from ..vhost_user.session import Session

log = logging.getLogger("vhost_ipvlan.channel")
_FDS_SPACE = socket.CMSG_SPACE(codec.MAX_FDS * array.array("i").itemsize)


class Connection:
    """One front-end connection feeding one ``Session``."""

    def __init__(
        self,
        sock: socket.socket,
        session: Session,
        loop: asyncio.AbstractEventLoop,
        name: str,
        on_close: Callable[[Connection], None],
    ) -> None:
        self.sock = sock
        self.session = session
        self.loop = loop
        self.name = name
        self._on_close = on_close
        self._buf = bytearray()
        self._offset = 0  # stream offset of _buf[0]
        self._fds: list[tuple[int, list[int]]] = []  # (stream offset after the read, fds)
        self.closed = False
        sock.settimeout(5.0)  # for replies; reads happen only when readable
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            data, ancdata, flags, _ = self.sock.recvmsg(65536, _FDS_SPACE)
        except (BlockingIOError, InterruptedError, TimeoutError):
            return
        except OSError as e:
            self.close(f"read failed: {e}")
            return
        fds: list[int] = []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                arr = array.array("i")
                arr.frombytes(payload[: len(payload) - len(payload) % arr.itemsize])
                fds.extend(arr)
        if fds:
            self._fds.append((self._offset + len(self._buf) + len(data), fds))
        if flags & socket.MSG_CTRUNC:
            self.close("protocol error: too many file descriptors in one message")
            return
        if not data:
            self.close("front-end closed the connection")
            return
        self._buf += data
        try:
            self._process()
        except FrontendError as e:
            self.close(f"protocol error: {e}")
        except VhostIpvlanError as e:
            self.close(f"error: {e}")
        except OSError as e:
            self.close(f"socket error: {e}")
        except Exception:
            log.exception("slave %s: unexpected error handling a message", self.name)
            self.close("internal error (see the traceback above)")

    def _take_fds(self, end: int) -> list[int]:
        taken: list[int] = []
        while self._fds and self._fds[0][0] <= end:
            taken.extend(self._fds.pop(0)[1])
        return taken

    def _process(self) -> None:
        buf = self._buf
        pos = 0
        try:
            while not self.closed and len(buf) - pos >= codec.HEADER_SIZE:
                request, flags, size = codec.decode_header(memoryview(buf)[pos : pos + codec.HEADER_SIZE])
                end = pos + codec.HEADER_SIZE + size
                if len(buf) < end:
                    break
                msg = codec.Message(request, flags, bytes(buf[pos + codec.HEADER_SIZE : end]))
                msg.fds = self._take_fds(self._offset + end)
                pos = end
                log.debug("slave %s: <- %s flags=%#x size=%d fds=%d", self.name, msg.name, flags, size,
                          len(msg.fds))
                reply = self.session.handle(msg)
                if reply is not None:
                    self.sock.sendall(reply)
        finally:
            del buf[:pos]
            self._offset += pos

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        level = logging.INFO if reason.startswith("front-end closed") else logging.WARNING
        log.log(level, "slave %s: connection closed: %s", self.name, reason)
        try:
            self.loop.remove_reader(self.sock.fileno())
        except (ValueError, OSError):
            pass
        try:
            self.session.close()
        finally:
            for _, fds in self._fds:
                for fd in fds:
                    self.session.host.close_fd(fd)
            self._fds.clear()
            self.sock.close()
            self._on_close(self)
