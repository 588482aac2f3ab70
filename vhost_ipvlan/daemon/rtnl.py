"""Synchronous rtnetlink requests (pyroute2 ``IPRoute``) from inside the daemon's event loop.

pyroute2 0.9's synchronous ``IPRoute`` drives its own asyncio loop with
``run_until_complete``, which cannot run in a thread whose loop is already running
(the daemon's). So each ``Rtnl`` owns one worker thread holding an ``IPRoute``;
``call`` runs one request there and waits for its answer.

Rules:
- Only for rare requests (route and neighbour changes, cached lookups): the caller
  blocks for one netlink round trip.
- Exceptions (``NetlinkError``, ``OSError``) are re-raised in the caller.
- ``close`` closes the socket and stops the thread; calls after it raise ``OSError``.
"""

from __future__ import annotations

import ipaddress
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pyroute2 import IPRoute

logging.getLogger("pyroute2").setLevel(logging.WARNING)  # its DEBUG logs every message


class Rtnl:
    """One rtnetlink socket, used from any thread through its worker."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rtnl")
        self._ipr: Any = self._pool.submit(IPRoute).result()
        self._closed = False

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``IPRoute.<method>(*args, **kwargs)``, materialised as a list when it is a generator."""
        if self._closed:
            raise OSError("rtnetlink socket closed")

        def run() -> Any:
            result = getattr(self._ipr, method)(*args, **kwargs)
            return list(result) if hasattr(result, "__next__") else result

        return self._pool.submit(run).result()

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
