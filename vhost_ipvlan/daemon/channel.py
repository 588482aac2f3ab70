"""A vhost-user connection: framing over a unix stream socket with SCM_RIGHTS.

Rules:
- The socket is non-blocking. It is read whenever it is readable; bytes
  accumulate until a whole message is there, so a slow or hostile peer never
  stalls the loop.
- Replies are written without blocking: what the socket does not take at once
  waits in an outgoing buffer (a writer is registered while it is not empty). A
  front-end that lets more than ``MAX_OUTGOING`` bytes pile up (it sends requests
  and does not read the replies) has its connection closed.
- File descriptors belong to the message whose last byte arrived with them (the
  kernel ends a read at a message that carries descriptors). At most
  ``codec.MAX_FDS`` may wait on an incomplete message; beyond that the connection
  is closed (a front-end cannot park descriptors to exhaust the daemon's).
- A protocol error, a truncated control message, or any unexpected exception
  while handling a message is logged with the slave's name, and closes this
  connection only; every descriptor received is closed.
- Guest memory (or the dirty log) that shrinks under a guarded mapping (``host``) closes the
  connection that owns it ("guest memory shrank under us"), nothing else.
- The lines logged when a connection closes, and the tracebacks of unexpected
  exceptions, are rate-limited per slave (``lograte``): a front-end reconnecting
  in a loop cannot flood the log.
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
from .host import on_memory_shrunk, shrunk
from .lograte import RateLimitedLog

log = logging.getLogger(__name__)
_FDS_SPACE = socket.CMSG_SPACE(codec.MAX_FDS * array.array("i").itemsize)
MAX_OUTGOING = 64 * 1024
_close_log = RateLimitedLog(log)
_live: set[Connection] = set()


def watch_memory(loop: asyncio.AbstractEventLoop) -> None:
    """Close the connections whose memory shrank from ``loop`` (the daemon's main loop,
    before any connection: with worker threads, the one loop that may touch them all)."""
    on_memory_shrunk(loop, _check_memory)


def _check_memory() -> None:
    """The SIGBUS guard replaced a page: close every connection whose memory shrank."""
    for conn in list(_live):
        if conn.memory_shrunk():
            conn.close("guest memory shrank under us (the front-end truncated a memory region's file or the "
                       "dirty log's)")


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
        self._out = bytearray()  # replies the socket has not taken yet
        self._writing = False
        self.closed = False
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._readable)
        _live.add(self)
        on_memory_shrunk(loop, _check_memory)

    def memory_shrunk(self) -> bool:
        mem, dirty = self.session.memory, self.session.log
        if dirty is not None and shrunk(dirty.buf):
            return True
        return mem is not None and any(shrunk(r.buf) for r in mem.regions)

    def _readable(self) -> None:
        try:
            data, ancdata, flags, _ = self.sock.recvmsg(65536, _FDS_SPACE)
        except (BlockingIOError, InterruptedError):
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
            self._fds.append((self._offset + len(data) + len(self._buf), fds))
        if flags & socket.MSG_CTRUNC:
            self.close("protocol error: too many file descriptors in one message")
            return
        if not data:
            self.close("front-end closed the connection")
            return
        self._buf += data
        try:
            self._process()
            self._check_parked_fds()
        except FrontendError as e:
            self.close(f"protocol error: {e}")
        except VhostIpvlanError as e:
            self.close(f"error: {e}")
        except OSError as e:
            self.close(f"socket error: {e}")
        except Exception:
            _close_log.log(f"{self.name} traceback", logging.ERROR, "slave %s: unexpected error handling a message",
                           self.name, exc_info=True)
            self.close("internal error (see the traceback above)")

    def _take_fds(self, end: int) -> list[int]:
        taken: list[int] = []
        while self._fds and self._fds[0][0] <= end:
            taken.extend(self._fds.pop(0)[1])
        return taken

    def _check_parked_fds(self) -> None:
        parked = sum(len(fds) for _, fds in self._fds)
        if parked > codec.MAX_FDS:
            raise FrontendError(
                f"{parked} file descriptors wait on an incomplete message (at most {codec.MAX_FDS})"
            )

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
                    self._send(reply)
        finally:
            del buf[:pos]
            self._offset += pos

    # -- replies ---------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        """Queue ``data`` and write what the socket takes now, never blocking."""
        self._out += data
        self._flush()
        if len(self._out) > MAX_OUTGOING:
            raise FrontendError(
                f"more than {MAX_OUTGOING} bytes of replies unread (the front-end does not read its socket)"
            )

    def _flush(self) -> None:
        while self._out:
            try:
                sent = self.sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                break
            del self._out[:sent]
        want = bool(self._out)
        if want != self._writing:
            if want:
                self.loop.add_writer(self.sock.fileno(), self._writable)
            else:
                self.loop.remove_writer(self.sock.fileno())
            self._writing = want

    def _writable(self) -> None:
        try:
            self._flush()
        except OSError as e:
            self.close(f"write failed: {e}")

    # -- end -------------------------------------------------------------------------

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        _live.discard(self)
        level = logging.INFO if reason.startswith("front-end closed") else logging.WARNING
        _close_log.log(self.name, level, "slave %s: connection closed: %s", self.name, reason)
        fd = self.sock.fileno()
        try:
            self.loop.remove_reader(fd)
        except (ValueError, OSError):
            pass
        if self._writing:
            self._writing = False
            try:
                self.loop.remove_writer(fd)
            except (ValueError, OSError):
                pass
        try:
            self.session.close()
        finally:
            for _, fds in self._fds:
                for fd in fds:
                    self.session.host.close_fd(fd)
            self._fds.clear()
            self._out.clear()
            self.sock.close()
            self._on_close(self)
