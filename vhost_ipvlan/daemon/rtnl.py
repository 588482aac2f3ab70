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
"""

from __future__ import annotations

import ipaddress
import logging
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
