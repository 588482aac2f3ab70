"""A slave's vhost-user socket, in either role, with one front-end at a time.

Rules:
- ``server`` role (the default): the daemon listens on the socket path (QEMU
  ``-chardev socket`` without ``server``, libvirt ``mode='client'``). A stale
  socket file is replaced; anything else at the path is an error. While one
  front-end is connected, further connections are refused (closed) and logged
  (rate-limited per slave).
  The socket gets its mode, owner and group before it appears at its path
  (``unixsock.listen``: never chmod/chown by path); a socket directory that other
  users can write is warned about. When ``accept`` fails for want of resources
  (EMFILE, ENFILE, ENOBUFS, ENOMEM) the connection stays queued and the socket
  readable: the endpoint stops reading it for ``ACCEPT_RETRY`` seconds, where the
  loop would otherwise call it again at once, for ever, and starve every guest.
- ``peer_uid``/``peer_gid`` (optional, per slave) pin the slave to a front-end
  process: a connection (either role) whose peer credentials (SO_PEERCRED) differ is
  closed and logged (rate-limited per slave, as refusals are). Without them, any process that may open the socket (group
  ``kvm``) can be an idle slave (README, "Security").
- ``client`` role: the daemon connects to a socket the front-end listens on
  (libvirt ``mode='server'``), and retries every ``RETRY`` seconds until it
  succeeds, and again after every disconnect. The connect never blocks: a
  listener whose backlog is full (a front-end that does not accept) is a retry.
  It connects only to a socket file at the path itself, never through a symlink
  (opened ``O_PATH|O_NOFOLLOW``, checked, then connected through that descriptor):
  QEMU-listens sockets live in a directory group ``kvm`` can write, where a
  symlink to another VM's listening socket (or the daemon's own, or any service's)
  would hand this slave to whoever listens there.
- ``VHOST_IPVLAN_TEST_NO_DIRTY_LOG=1`` in the environment when the daemon starts
  (``NO_DIRTY_LOG``, read once) is for tests only: every session still offers live
  migration and takes the dirty log, but marks nothing in it (``Session``'s
  ``dirty_log=False``), so a migration test can show it detects a missing mark.
  A guest migrated so loses the back-end's writes: never set it in production.
- After a disconnect the device's rings are gone and the slave is down until the
  next front-end sets them up again; the switch keeps the slave and its addresses.
- A front-end can reconnect in a loop and send what it likes: the lines it makes the
  daemon log (``front-end connected``, ``accept failed``, and what its session reports:
  a ring resynced, dirty logging on/off, a dirty log mapped) are rate-limited per slave
  (``lograte``). The session's lines have a budget per slave that holds a whole
  migration of the largest device at once (a line per ring).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import stat
import struct
from pathlib import Path

from .. import unixsock
from ..vhost_user.session import MAX_QUEUE_PAIRS, Session
from . import fastpath
from .channel import Connection
from .device import NetDevice
from .host import OsHost
from .lograte import RateLimitedLog

log = logging.getLogger(__name__)
RETRY = 1.0
#: test only: sessions take the dirty log but never mark it (see the rules)
NO_DIRTY_LOG = os.environ.get("VHOST_IPVLAN_TEST_NO_DIRTY_LOG") == "1"
#: seconds a listening socket is left alone after accept failed for want of resources
ACCEPT_RETRY = 0.5
_OUT_OF_RESOURCES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
_refusals = RateLimitedLog(log)  # refused connections are logged within a budget per slave
_connects = RateLimitedLog(log, burst=10)  # connections taken (and failed accepts), per slave
_session_log = RateLimitedLog(log, burst=2 * MAX_QUEUE_PAIRS + 2)  # the session's lines, per slave and level


class _NotASocket(Exception):
    pass


class Endpoint:
    """Accepts (or makes) the front-end connection for one ``NetDevice``."""

    def __init__(self, path: Path, role: str, device: NetDevice, loop: asyncio.AbstractEventLoop,
                 socket_mode: int = 0o660, owner: int = -1, group: int = -1,
                 peer: tuple[int | None, int | None] = (None, None)) -> None:
        self.path = path
        self.role = role
        self.device = device
        self.loop = loop
        self.socket_mode = socket_mode
        self.owner, self.group = owner, group
        self.peer_uid, self.peer_gid = peer
        self.host = OsHost()
        self.conn: Connection | None = None
        self.listener: socket.socket | None = None
        self._retry: asyncio.TimerHandle | None = None
        self.closed = False
        self.connections = 0

    @property
    def name(self) -> str:
        return self.device.slave.name

    def start(self) -> None:
        if self.role == "server":
            self._listen()
        else:
            self._connect()

    def _listen(self) -> None:
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        why = unixsock.writable_by_others(path.parent)
        if why is not None:
            log.warning("slave %s: the socket directory %s is %s: other users can replace the socket "
                        "(use a root-owned directory, e.g. 0750 root:kvm; README, Security)", self.name,
                        path.parent, why)
        sock = unixsock.listen(path, self.socket_mode, self.owner, self.group, 4, f"slave {self.name}")
        self.listener = sock
        self.loop.add_reader(sock.fileno(), self._accept)
        log.info("slave %s: listening on %s", self.name, path)

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            _connects.log(f"{self.name} accept", logging.WARNING, "slave %s: accept failed: %s", self.name, e)
            if e.errno in _OUT_OF_RESOURCES:  # the connection stays queued, the socket readable: the loop would spin
                self.loop.remove_reader(self.listener.fileno())
                self._retry = self.loop.call_later(ACCEPT_RETRY, self._resume_accepting)
            return
        if self.conn is not None:
            _refusals.log(self.name, logging.WARNING, "slave %s: refused a second front-end connection (one is active)",
                          self.name)
            sock.close()
            return
        if not self._peer_allowed(sock):
            sock.close()
            return
        self._attach(sock)

    def _resume_accepting(self) -> None:
        self._retry = None
        if not self.closed and self.listener is not None:
            self.loop.add_reader(self.listener.fileno(), self._accept)

    def _connect(self) -> None:
        self._retry = None
        if self.closed or self.conn is not None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)  # a full backlog is EAGAIN (retried), never a loop blocked in connect()
        try:
            target = os.open(self.path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                if not stat.S_ISSOCK(os.fstat(target).st_mode):
                    raise _NotASocket()
                sock.connect(f"/proc/self/fd/{target}")  # the very file checked: no symlink swapped in
            finally:
                os.close(target)
        except _NotASocket:
            sock.close()
            _refusals.log(self.name, logging.WARNING, "slave %s: %s is not a socket (a symlink?): not connecting",
                          self.name, self.path)
            self._retry = self.loop.call_later(RETRY, self._connect)
            return
        except OSError as e:
            sock.close()
            log.debug("slave %s: cannot connect to %s yet: %s", self.name, self.path, e)
            self._retry = self.loop.call_later(RETRY, self._connect)
            return
        if not self._peer_allowed(sock):
            sock.close()
            self._retry = self.loop.call_later(RETRY, self._connect)
            return
        self._attach(sock)

    def _peer_allowed(self, sock: socket.socket) -> bool:
        """``peer_uid``/``peer_gid`` (if set) match the front-end process (SO_PEERCRED)."""
        if self.peer_uid is None and self.peer_gid is None:
            return True
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", creds)
        if self.peer_uid not in (None, uid) or self.peer_gid not in (None, gid):
            _refusals.log(self.name, logging.WARNING, "slave %s: refused a front-end (pid %d, uid %d, gid %d): "
                          "the slave is pinned to uid %s gid %s", self.name, pid, uid, gid, self.peer_uid,
                          self.peer_gid)
            return False
        return True

    def _attach(self, sock: socket.socket) -> None:
        self.connections += 1
        name = self.name
        session = Session(self.host, self.device, dirty_log=not NO_DIRTY_LOG, log_mark=fastpath.log_mark(),
                          log=lambda msg: self._session_line(logging.WARNING, msg),
                          note=lambda msg: self._session_line(logging.INFO, msg))
        self.device.attach(session)
        self.conn = Connection(sock, session, self.loop, name, self._closed)
        _connects.log(name, logging.INFO, "slave %s: front-end connected (%s)", name, self.role)

    def _session_line(self, level: int, msg: str) -> None:
        _session_log.log(f"{self.name} {logging.getLevelName(level)}", level, "slave %s: %s", self.name, msg)

    def _closed(self, conn: Connection) -> None:
        if conn is self.conn:
            self.conn = None
            self.device.detach()
            if self.role == "client" and not self.closed:
                self._retry = self.loop.call_later(RETRY, self._connect)

    def close(self) -> None:
        self.closed = True
        if self._retry is not None:
            self._retry.cancel()
        if self.conn is not None:
            self.conn.close("daemon stopping")
        if self.listener is not None:
            self.loop.remove_reader(self.listener.fileno())
            self.listener.close()
            try:
                self.path.unlink()
            except OSError:
                pass
