"""Listening unix sockets created without trusting any path another user can change.

Rules:
- ``listen`` never chmods or chowns through a path: the socket is bound inside a
  fresh staging directory (mode 0700, created next to the target through a
  directory fd and checked to be ours), given its owner, group and mode there, and
  only then renamed into place. rename(2) replaces a stale socket atomically; a
  symlink or file planted at the target name is replaced, never followed (audit
  finding 5: a symlink swapped in between bind() and chmod() made the root daemon
  chmod and chgrp the symlink's target).
- Whatever is at the target first must be a socket (or nothing); anything else is
  an error and is left alone.
- ``writable_by_others`` names a directory in which another user can add, rename or
  remove entries (group/other write, or not owned by root or us): the daemon refuses
  its control socket there, and warns for slave sockets.
- Errors are ``UplinkError`` with one line naming the path.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import stat
from pathlib import Path

from .errors import UplinkError

STAGED = "s"  # the socket's name inside its staging directory


def writable_by_others(directory: Path) -> str | None:
    """Why another user could change entries of ``directory`` (None: nobody but root/us)."""
    st = os.stat(directory)
    if st.st_uid not in (0, os.geteuid()):
        return f"owned by uid {st.st_uid}"
    if st.st_mode & 0o022:
        return f"mode {stat.S_IMODE(st.st_mode):04o} (group/other-writable)"
    return None


def check_target(path: Path, what: str) -> bool:
    """True if a socket is at ``path`` (stale or live), False if nothing; else an error."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise UplinkError(f"{what}: {path} exists and is not a socket")
    return True


def listen(path: Path, mode: int, owner: int = -1, group: int = -1, backlog: int = 4,
           what: str = "socket") -> socket.socket:
    """A non-blocking listening socket at ``path`` with ``mode``, ``owner`` and ``group``.

    The parent directory must exist. A socket already at ``path`` is replaced.
    """
    check_target(path, what)
    try:
        pfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise UplinkError(f"{what}: cannot open the directory {path.parent}: {e.strerror}") from e
    try:
        return _listen_in(pfd, path, mode, owner, group, backlog, what)
    finally:
        os.close(pfd)


def _listen_in(pfd: int, path: Path, mode: int, owner: int, group: int, backlog: int,
               what: str) -> socket.socket:
    stage = f".{path.name[:40]}.{secrets.token_hex(6)}"
    try:
        os.mkdir(stage, 0o700, dir_fd=pfd)
        dfd = os.open(stage, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
    except OSError as e:
        raise UplinkError(f"{what}: cannot create a staging directory in {path.parent}: {e.strerror}") from e
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        st = os.fstat(dfd)
        if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
            raise UplinkError(f"{what}: the staging directory {path.parent / stage} was replaced (by another user?)")
        sock.bind(f"/proc/self/fd/{dfd}/{STAGED}")  # through the fd: no path lookup in path.parent
        if owner != -1 or group != -1:
            os.chown(STAGED, owner, group, dir_fd=dfd, follow_symlinks=False)
        os.chmod(STAGED, mode, dir_fd=dfd)  # nobody else can enter a 0700 directory of ours
        sock.listen(backlog)
        sock.setblocking(False)
        os.rename(STAGED, path.name, src_dir_fd=dfd, dst_dir_fd=pfd)
    except OSError as e:
        sock.close()
        raise UplinkError(f"{what}: cannot listen on {path}: {e.strerror or e}") from e
    except BaseException:
        sock.close()
        raise
    finally:
        with contextlib.suppress(OSError):
            os.unlink(STAGED, dir_fd=dfd)
        os.close(dfd)
        with contextlib.suppress(OSError):
            os.rmdir(stage, dir_fd=pfd)
    return sock
