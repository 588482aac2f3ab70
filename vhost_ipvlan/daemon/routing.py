"""l3 egress: the next hop's MAC for a guest's packet, from the host's tables, pinned to the master.

Kernel reference (§4 ``ipvlan_process_v4/v6_outbound``): an l3 slave's packet is
routed in the master's namespace with ``oif = master`` and leaves with the
master's MAC as source; only unicast and local routes are accepted. Here the
daemon asks the kernel the same question (``RTM_GETROUTE`` with ``oif``), takes the
gateway (or the destination itself when on-link), reads the neighbour table on
the master, and the data path rewrites the Ethernet header: source = the master's
MAC, destination = the next hop's. The IP packet is left as it is (the kernel
does not decrement the TTL on this path either: it is local output).

Rules:
- Answers are cached per destination for ``TTL`` seconds, "unresolved" for
  ``UNRESOLVED_TTL`` (a netlink round trip per packet would cost more than the
  rest of the switch).
- An unknown or unresolved neighbour: the lookup triggers resolution
  (``RTM_NEWNEIGH`` with ``NTF_USE``, at most once per ``TTL`` per next hop) and the
  packet is dropped and counted (``neigh_unresolved``); the guest's retransmission
  finds the neighbour resolved. Nothing is queued.
- A local route (the host's own address) is ``LOCAL``: the data path hands the
  packet to the host link. Broadcast, multicast, unreachable, prohibit: ``None``.
- ``invalidate`` drops the cache (master gone or back, MAC changed).
"""

from __future__ import annotations

import ipaddress
import time
from typing import Final

from pyroute2.netlink.exceptions import NetlinkError

from ..net.addr import parse_mac
from .rtnl import Rtnl

RTN_UNICAST: Final = 1
RTN_LOCAL: Final = 2
NTF_USE: Final = 0x01
NUD_VALID: Final = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80  # REACHABLE STALE DELAY PROBE NOARP PERMANENT
TTL: Final = 1.0
UNRESOLVED_TTL: Final = 0.1
LOCAL: Final = b"local"
#: the lookup failed: no route, or a route type that is not unicast/local
NO_ROUTE: Final = b""
#: the route exists but the next hop's MAC is not known yet
UNRESOLVED: Final = b"?"


class Router:
    """Next-hop lookups for one master."""

    def __init__(self, master_index: int) -> None:
        self.master_index = master_index
        self.ipr = Rtnl()
        self._cache: dict[bytes, tuple[bytes, float]] = {}
        self._triggered: dict[str, float] = {}

    def close(self) -> None:
        self.ipr.close()

    def invalidate(self, master_index: int | None = None) -> None:
        if master_index is not None:
            self.master_index = master_index
        self._cache.clear()

    def next_hop_mac(self, dst: bytes) -> bytes:
        """The MAC to send a packet for ``dst`` (packed IPv4/IPv6) to, or ``LOCAL``,
        ``NO_ROUTE`` or ``UNRESOLVED``."""
        now = time.monotonic()
        hit = self._cache.get(dst)
        if hit is not None and hit[1] > now:
            return hit[0]
        result = self._lookup(dst, now)
        if len(self._cache) > 4096:
            self._cache.clear()
        # an unresolved next hop is asked again soon, not per packet
        self._cache[dst] = (result, now + (TTL if result != UNRESOLVED else UNRESOLVED_TTL))
        return result

    def _lookup(self, dst: bytes, now: float) -> bytes:
        ip = str(ipaddress.ip_address(dst))
        family = 2 if len(dst) == 4 else 10
        try:
            routes = self.ipr.call("route", "get", dst=ip, oif=self.master_index, family=family)
        except NetlinkError:
            return NO_ROUTE
        if not routes:
            return NO_ROUTE
        r = routes[0]
        if r["type"] == RTN_LOCAL:
            return LOCAL
        if r["type"] != RTN_UNICAST or r.get("RTA_OIF") != self.master_index:
            return NO_ROUTE
        nh = r.get("RTA_GATEWAY") or ip
        try:
            for n in self.ipr.call("neigh", "get", dst=nh, ifindex=self.master_index, family=family):
                mac = n.get("NDA_LLADDR")
                if n["state"] & NUD_VALID and mac:
                    return parse_mac(mac)
        except NetlinkError:
            pass
        if self._triggered.get(nh, 0.0) <= now:
            self._triggered[nh] = now + TTL
            try:
                self.ipr.call("neigh", "replace", dst=nh, ifindex=self.master_index, family=family,
                              flags=NTF_USE, state=0)
            except NetlinkError:
                pass
        return UNRESOLVED
