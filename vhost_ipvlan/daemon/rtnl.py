"""Synchronous rtnetlink requests (pyroute2 ``IPRoute``) from inside the daemon's event loop.

pyroute2 0.9's synchronous ``IPRoute`` drives its own asyncio loop with
``run_until_complete``, which cannot run in a thread whose loop is already running
(the daemon's). So each ``Rtnl`` owns one worker thread holding an ``IPRoute``;
``call`` runs one request there and waits for its answer; ``submit`` hands the
worker a job and returns at once.

Rules:
- ``call`` only for rare requests (route and neighbour changes at configuration
  time): the caller blocks for one netlink round trip. Anything a guest's traffic
  can cause goes through ``submit`` (the event loop never waits for the kernel).
- A ``submit``-ted job runs in the worker and talks to the kernel with ``request``,
  which is refused in any other thread. Jobs run one at a time, in order.
- Exceptions (``NetlinkError``, ``OSError``) are re-raised in the caller (``call``)
  or set on the future (``submit``).
- ``close`` closes the socket and stops the thread; calls after it raise ``OSError``.
- ``route_batch``: many host routes added or deleted in a few ``sendmsg`` calls on a
  plain rtnetlink socket of the calling thread (``CHUNK`` messages each, every one
  acknowledged), not one request and round trip each: 2000 routes at start-up.
  The routes are those pyroute2 makes (main table, ``proto static``, unicast).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from pyroute2 import IPRoute

logging.getLogger("pyroute2").setLevel(logging.WARNING)  # its DEBUG logs every message

T = TypeVar("T")


class Rtnl:
    """One rtnetlink socket, used from any thread through its worker."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rtnl")
        self._ipr: Any = self._pool.submit(IPRoute).result()
        self._worker = self._pool.submit(threading.get_ident).result()
        self._closed = False

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``IPRoute.<method>(*args, **kwargs)``, materialised as a list when it is a generator."""
        return self.submit(lambda: self.request(method, *args, **kwargs)).result()

    def submit(self, job: Callable[[], T]) -> Future[T]:
        """Run ``job`` in the worker thread; returns at once."""
        if self._closed:
            raise OSError("rtnetlink socket closed")
        return self._pool.submit(job)

    def request(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``call`` from inside a job: runs in the calling thread, which must be the worker."""
        if threading.get_ident() != self._worker:
            raise RuntimeError("Rtnl.request outside the rtnl worker thread")
        result = getattr(self._ipr, method)(*args, **kwargs)
        return list(result) if hasattr(result, "__next__") else result

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool.submit(self._ipr.close).result()
            self._pool.shutdown(wait=True)


def message_address(msg: Any) -> bytes | None:
    """The address (packed) of an ``RTM_NEWADDR``/``RTM_DELADDR`` message, or None."""
    text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
    if not isinstance(text, str):
        return None
    try:
        return ipaddress.ip_address(text).packed
    except ValueError:
        return None


def interface_addresses(rtnl: Rtnl, index: int) -> frozenset[bytes]:
    """The addresses (packed, IPv4 and IPv6, link-locals included) of interface ``index``."""
    found = (message_address(msg) for msg in rtnl.call("get_addr", index=index))
    return frozenset(a for a in found if a is not None)


NLMSG_ERROR = 2
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_CREATE = 0x400
RTA_DST = 1
RTA_OIF = 4
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4
RTN_UNICAST = 1
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
CHUNK = 128
_NLMSG = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTA = struct.Struct("=HH")
_OIF = struct.Struct("=i")


def route_message(seq: int, delete: bool, addr: bytes, oif: int) -> bytes:
    """RTM_NEWROUTE (create or replace) or RTM_DELROUTE for host route ``addr`` (packed) via ``oif``."""
    family = socket.AF_INET if len(addr) == 4 else socket.AF_INET6
    body = (_RTMSG.pack(family, len(addr) * 8, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, 0, RTN_UNICAST, 0)
            + _RTA.pack(_RTA.size + len(addr), RTA_DST) + addr + _RTA.pack(_RTA.size + _OIF.size, RTA_OIF)
            + _OIF.pack(oif))
    kind, flags = (RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK) if delete else \
        (RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE)
    return _NLMSG.pack(_NLMSG.size + len(body), kind, flags, seq, 0) + body


def route_batch(oif: int, changes: list[tuple[bool, bytes]], timeout: float = 5.0) -> list[int]:
    """Apply (delete?, packed address) host routes via ``oif``; the errno of each (0: done).
    ``OSError`` if the kernel cannot be asked (the changes not acknowledged count as failed)."""
    result = [0] * len(changes)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE) as s:
        s.settimeout(timeout)
        try:  # acknowledgements without a copy of the request
            s.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        except OSError:
            pass
        s.bind((0, 0))
        for start in range(0, len(changes), CHUNK):
            chunk = changes[start:start + CHUNK]
            s.send(b"".join(route_message(start + i + 1, d, a, oif) for i, (d, a) in enumerate(chunk)))
            pending = set(range(start + 1, start + len(chunk) + 1))
            while pending:
                _acknowledged(s.recv(1 << 16), pending, result)
    return result


def _acknowledged(data: bytes, pending: set[int], result: list[int]) -> None:
    off = 0
    while off + _NLMSG.size <= len(data):
        length, kind, _, seq, _ = _NLMSG.unpack_from(data, off)
        if length < _NLMSG.size:
            return
        if kind == NLMSG_ERROR and seq in pending and off + _NLMSG.size + 4 <= len(data):
            result[seq - 1] = -_OIF.unpack_from(data, off + _NLMSG.size)[0]
            pending.discard(seq)
        off += (length + 3) & ~3
