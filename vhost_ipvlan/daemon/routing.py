"""l3 egress: the next hop's MAC for a guest's packet, from the host's tables, pinned to the master.

Kernel reference (docs/kernel-behaviour.md §4, ``ipvlan_process_v4/v6_outbound``): an l3 slave's packet is
routed in the master's namespace with ``oif = master`` and leaves with the
master's MAC as source; only unicast and local routes are accepted. Here the
daemon asks the kernel the same question (``RTM_GETROUTE`` with ``oif``), takes the
gateway (or the destination itself when on-link), reads the neighbour table on
the master, and the data path rewrites the Ethernet header: source = the master's
MAC, destination = the next hop's. The IP packet is left as it is (the kernel
does not decrement the TTL on this path either: it is local output).

Theory of operation. ``Router.next_hop_mac`` runs on the event loop and never
talks to the kernel: it answers from a cache. A destination it has no answer for
starts a resolution (``Resolver.resolve``: route, neighbour, maybe ``NTF_USE``) in
the ``Rtnl`` worker thread and answers ``neigh_unresolved``; the data path then
gives the packet to ``Router.hold``, which keeps a copy until the destination
resolves (the kernel queues it on the neighbour: ``unres_qlen_bytes``). The answer
is installed into the cache from the loop (``call_soon_threadsafe``);
``_install`` is the one place an answer arrives, and it hands the held packets
back (``on_release``) with the answer, before any later packet of the guest.

Rules:
- The loop never waits for netlink. Loop-only state: the cache, the pending
  resolutions, the token buckets. Worker-only state: the ``Resolver`` (solicited
  next hops, the neighbour entries the daemon created, the master's prefixes).
- Answers are cached per destination for ``TTL`` seconds ("unresolved" for
  ``UNRESOLVED_TTL``), at most ``Limits.cache`` destinations, least recently used
  evicted first. An expired answer is still used (for at most ``STALE_MAX``
  seconds) while a refresh runs, so a flow loses no packet when its entry expires.
- New resolutions are rate-limited per guest (a token bucket, ``Limits.rate`` per
  second, ``Limits.burst``): beyond it the packet is dropped ``neigh_rate_limited``.
  At most ``Limits.pending`` resolutions are outstanding in all, half of them for
  one guest: beyond it, ``neigh_busy``.
- An unresolved next hop is solicited (``RTM_NEWNEIGH`` with ``NTF_USE``) at most
  once per ``TTL``, and re-checked from the loop after ``Limits.recheck`` delays
  (about 3 s in all, the kernel's 3 probes 1 s apart).
- Packets to a destination that is being resolved (a resolution outstanding or a
  re-check scheduled) are held, per destination, at most ``Limits.queue_packets``
  packets and ``Limits.queue_bytes`` bytes (the kernel's ``unres_qlen`` 101 and
  ``unres_qlen_bytes`` 212992 defaults, per neighbour; here per destination, as the
  next hop is known only with the answer): beyond either, the oldest is dropped
  ``neigh_queue_full`` (as the kernel). At most ``Limits.queue_total`` bytes are held
  for the master: a packet beyond it is not held (``neigh_queue_full``). A packet
  for a destination nothing is resolving (its last answer was "unresolved", less
  than ``UNRESOLVED_TTL`` ago) is dropped ``neigh_unresolved``.
- The held packets are released with the answer: a MAC or ``LOCAL`` sends them; a
  drop reason drops each under it (``no_route``, ``neigh_not_on_link``, ...), and a
  next hop still unresolved after the last re-check drops them ``neigh_failed``
  (the kernel's ``NEIGH_FAILED``), as does ``invalidate``.
- Neighbour entries are created only for a route's gateway or a destination inside
  one of the master's own prefixes (its addresses' networks); another destination
  a route puts on-link uses an entry the host already has, or is dropped
  ``neigh_not_on_link``. Entries the daemon creates for on-link destinations are
  budgeted (``Limits.budget`` per master, ``Limits.budget_per_guest`` per guest,
  counted while the kernel still holds them): beyond it, ``neigh_budget``.
- A local route (the host's own address) is ``LOCAL``: the data path hands the
  packet to the host link. Broadcast, multicast, unreachable, prohibit:
  ``no_route``. Every other answer is a MAC or a ``DropReason``.
- ``invalidate`` drops the cache and, in the worker, what it knew of the master
  (master gone or back, MAC changed); answers resolved before it are discarded
  (a destination packets were held for meanwhile is asked again).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from pyroute2.netlink.exceptions import NetlinkError

from ..drops import DropReason
from ..net.addr import parse_mac
from .rtnl import Rtnl, message_address

RTN_UNICAST: Final = 1
RTN_LOCAL: Final = 2
NTF_USE: Final = 0x01
NUD_VALID: Final = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80  # REACHABLE STALE DELAY PROBE NOARP PERMANENT
TTL: Final = 1.0
UNRESOLVED_TTL: Final = 0.1
#: how long past its TTL an answer is still used while its refresh runs
STALE_MAX: Final = 10.0
#: how often the worker re-reads the master's prefixes, and at most re-counts its entries
PREFIX_TTL: Final = 5.0
PRUNE_INTERVAL: Final = 1.0
LOCAL: Final = b"local"
# drop reasons (the data path counts them on the guest)
NO_ROUTE: Final = DropReason.NO_ROUTE
UNRESOLVED: Final = DropReason.NEIGH_UNRESOLVED
RATE_LIMITED: Final = DropReason.NEIGH_RATE_LIMITED
BUSY: Final = DropReason.NEIGH_BUSY
NOT_ON_LINK: Final = DropReason.NEIGH_NOT_ON_LINK
BUDGET: Final = DropReason.NEIGH_BUDGET
QUEUE_FULL: Final = DropReason.NEIGH_QUEUE_FULL
FAILED: Final = DropReason.NEIGH_FAILED

#: a MAC (6 bytes), ``LOCAL``, or a drop reason
Hop = bytes | DropReason


@dataclass(frozen=True)
class Limits:
    rate: float = 64.0  # new resolutions per second, per guest
    burst: int = 128
    pending: int = 64  # resolutions outstanding, all guests
    pending_per_guest: int = 32
    cache: int = 4096  # destinations cached
    triggered: int = 1024  # next hops solicited within the last TTL
    budget: int = 256  # neighbour entries the daemon created and the kernel still holds
    budget_per_guest: int = 64
    buckets: int = 1024  # token buckets kept before idle (full) ones are dropped
    recheck: tuple[float, ...] = (0.02, 0.1, 0.5, 1.0, 1.5)  # after a solicitation, look again after (seconds)
    queue_packets: int = 101  # held per destination while it resolves (kernel: unres_qlen)
    queue_bytes: int = 212992  # ... and bytes (kernel: unres_qlen_bytes)
    queue_total: int = 1 << 20  # bytes held for the master, all destinations


class Netlink(Protocol):
    """What the router needs of ``rtnl.Rtnl`` (tests give a fake)."""

    def submit(self, job: Callable[[], Any]) -> Future[Any]: ...

    def request(self, method: str, *args: Any, **kwargs: Any) -> Any: ...

    def close(self) -> None: ...


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst, self.tokens, self.last = rate, float(burst), float(burst), now

    def refill(self, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        return self.tokens

    def take(self, now: float) -> bool:
        if self.refill(now) < 1.0:
            return False
        self.tokens -= 1.0
        return True


@dataclass(slots=True)
class _Entry:
    hop: Hop
    expires: float


#: called on the loop with (guest, frame, answer) for each packet ``hold`` kept
Release = Callable[[str, bytearray, Hop], None]


@dataclass(slots=True)
class _Held:
    """The packets held for one destination, oldest first."""

    frames: deque[tuple[str, bytearray]] = field(default_factory=deque)
    size: int = 0


class Router:
    """Next-hop lookups for one master, answered on the loop, resolved in the worker."""

    def __init__(self, master_index: int, loop: asyncio.AbstractEventLoop, rtnl: Netlink | None = None,
                 *, limits: Limits = Limits(), clock: Callable[[], float] = time.monotonic) -> None:
        self.master_index = master_index
        self.loop = loop
        self.rtnl: Netlink = rtnl if rtnl is not None else Rtnl()
        self.limits = limits
        self.clock = clock
        self._cache: OrderedDict[bytes, _Entry] = OrderedDict()
        self._pending: dict[bytes, Future[tuple[Hop, bool]]] = {}
        self._pending_by_guest: Counter[str] = Counter()
        self._rechecks: dict[bytes, asyncio.TimerHandle] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._generation = 0
        self._closed = False
        self.resolver = Resolver(self.rtnl, limits, clock)
        self._held: dict[bytes, _Held] = {}
        self._held_bytes = 0
        #: where held packets go with their destination's answer (set by the data path)
        self.on_release: Release | None = None

    def close(self) -> None:
        self._closed = True
        for fut in self._pending.values():
            fut.cancel()
        for timer in self._rechecks.values():
            timer.cancel()
        self._pending.clear()
        self._pending_by_guest.clear()
        self._rechecks.clear()
        self._held.clear()
        self._held_bytes = 0
        self.rtnl.close()

    def invalidate(self, master_index: int | None = None) -> None:
        if master_index is not None:
            self.master_index = master_index
        self._generation += 1
        self._cache.clear()
        for timer in self._rechecks.values():
            timer.cancel()
        self._rechecks.clear()
        for dst in list(self._held):
            self._release(dst, FAILED)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def held(self) -> int:
        """Packets held for destinations being resolved."""
        return sum(len(h.frames) for h in self._held.values())

    @property
    def cached(self) -> int:
        return len(self._cache)

    def next_hop_mac(self, dst: bytes, guest: str = "") -> Hop:
        """Where ``guest``'s packet for ``dst`` (packed IPv4/IPv6) goes: the next hop's
        MAC, ``LOCAL``, or the reason it is dropped. Never waits."""
        now = self.clock()
        hit = self._cache.get(dst)
        if hit is not None:
            if hit.expires > now:
                self._cache.move_to_end(dst)
                return hit.hop
            if hit.expires + STALE_MAX > now:  # used while it is refreshed
                if dst not in self._pending:
                    self._start(dst, guest, now)
                return hit.hop
            del self._cache[dst]
        if dst in self._pending:
            return UNRESOLVED
        return self._start(dst, guest, now) or UNRESOLVED

    def hold(self, dst: bytes, guest: str, frame: memoryview) -> DropReason | None:
        """Keep a copy of ``guest``'s ``frame`` for ``dst`` (an ``UNRESOLVED`` answer)
        until ``dst`` resolves; ``None``, or the reason it is dropped now."""
        if dst not in self._pending and dst not in self._rechecks:
            return UNRESOLVED  # nothing is resolving it: the last answer stands
        size = len(frame)
        if size > self.limits.queue_bytes or self._held_bytes + size > self.limits.queue_total:
            return QUEUE_FULL  # bigger than a destination's queue, or the master's is full: not held
        held = self._held.get(dst)
        if held is None:
            held = self._held[dst] = _Held()
        while held.frames and (len(held.frames) >= self.limits.queue_packets or
                               held.size + size > self.limits.queue_bytes):
            old_guest, old = held.frames.popleft()  # the kernel drops the oldest
            held.size -= len(old)
            self._held_bytes -= len(old)
            self._give(old_guest, old, QUEUE_FULL)
        held.frames.append((guest, bytearray(frame)))
        held.size += size
        self._held_bytes += size
        return None

    def _release(self, dst: bytes, hop: Hop) -> None:
        """Hand ``dst``'s held packets back with its answer ``hop``."""
        held = self._held.pop(dst, None)
        if held is None:
            return
        self._held_bytes -= held.size
        for guest, frame in held.frames:
            self._give(guest, frame, hop)

    def _give(self, guest: str, frame: bytearray, hop: Hop) -> None:
        if self.on_release is not None:
            self.on_release(guest, frame, hop)

    def _start(self, dst: bytes, guest: str, now: float, attempt: int = 0) -> DropReason | None:
        """Start resolving ``dst``; the drop reason if that is refused now."""
        if len(self._pending) >= self.limits.pending or \
                self._pending_by_guest[guest] >= self.limits.pending_per_guest:
            return BUSY
        if attempt == 0 and not self._bucket(guest, now).take(now):
            return RATE_LIMITED
        if self._closed:
            return UNRESOLVED
        gen, master = self._generation, self.master_index
        fut = self.rtnl.submit(lambda: self.resolver.resolve(dst, master, guest, gen))
        self._pending[dst] = fut
        self._pending_by_guest[guest] += 1
        fut.add_done_callback(lambda f: self._answered(dst, guest, gen, attempt, f))
        return None

    def _bucket(self, guest: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(guest)
        if bucket is None:
            if len(self._buckets) >= self.limits.buckets:  # a full bucket is as good as a new one
                for name in [n for n, b in self._buckets.items() if b.refill(now) >= b.burst]:
                    del self._buckets[name]
            bucket = self._buckets[guest] = TokenBucket(self.limits.rate, self.limits.burst, now)
        return bucket

    def _answered(self, dst: bytes, guest: str, gen: int, attempt: int, fut: Future[tuple[Hop, bool]]) -> None:
        """In the worker (or wherever the future completes): back to the loop."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: the daemon is exiting
            self.loop.call_soon_threadsafe(self._install, dst, guest, gen, attempt, fut)

    def _install(self, dst: bytes, guest: str, gen: int, attempt: int, fut: Future[tuple[Hop, bool]]) -> None:
        """On the loop: put a resolution's answer into the cache."""
        if self._pending.get(dst) is fut:
            del self._pending[dst]
            self._pending_by_guest[guest] -= 1
            if not self._pending_by_guest[guest]:
                del self._pending_by_guest[guest]
        if self._closed or fut.cancelled():
            return
        if gen != self._generation:  # a stale answer; what was held since is asked again
            if dst in self._held and dst not in self._pending and dst not in self._rechecks:
                why = self._start(dst, guest, self.clock())
                if why is not None:
                    self._release(dst, why)
            return
        exc = fut.exception()
        hop, solicited = (UNRESOLVED, False) if exc is not None else fut.result()
        now = self.clock()
        self._cache[dst] = _Entry(hop, now + (UNRESOLVED_TTL if hop == UNRESOLVED else TTL))
        self._cache.move_to_end(dst)
        while len(self._cache) > self.limits.cache:
            self._cache.popitem(last=False)
        if solicited and attempt < len(self.limits.recheck):
            old = self._rechecks.pop(dst, None)
            if old is not None:
                old.cancel()
            delay = self.limits.recheck[attempt]
            self._rechecks[dst] = self.loop.call_later(delay, self._recheck, dst, guest, gen, attempt + 1)
        elif dst not in self._pending and dst not in self._rechecks:
            self._release(dst, FAILED if hop == UNRESOLVED else hop)
            return
        if hop != UNRESOLVED:
            self._release(dst, hop)

    def _recheck(self, dst: bytes, guest: str, gen: int, attempt: int) -> None:
        self._rechecks.pop(dst, None)
        why = None
        if gen == self._generation and dst not in self._pending and dst in self._cache:
            why = self._start(dst, guest, self.clock(), attempt)
        if dst not in self._pending:
            self._release(dst, why or FAILED)


class Resolver:
    """The worker's half: asks the kernel. Only ever runs in the ``Rtnl`` worker thread."""

    def __init__(self, rtnl: Netlink, limits: Limits, clock: Callable[[], float]) -> None:
        self.rtnl = rtnl
        self.limits = limits
        self.clock = clock
        self._generation = 0
        #: next hop (text) -> until when it counts as solicited
        self._triggered: OrderedDict[str, float] = OrderedDict()
        #: next hops (text) whose neighbour entry the daemon created -> the guest it was for
        self._created: dict[str, str] = {}
        self._pruned = float("-inf")
        self._prefixes: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self._prefixes_until = float("-inf")

    @property
    def created(self) -> int:
        return len(self._created)

    @property
    def triggered(self) -> int:
        return len(self._triggered)

    def resolve(self, dst: bytes, master: int, guest: str, generation: int) -> tuple[Hop, bool]:
        """(the answer for ``dst``, whether the next hop was solicited)."""
        if generation != self._generation:  # the master changed: forget what we knew of it
            self._generation = generation
            self._triggered.clear()
            self._created.clear()
            self._prefixes_until = self._pruned = float("-inf")
        now = self.clock()
        ip = ipaddress.ip_address(dst)
        family = 2 if ip.version == 4 else 10
        try:
            routes = self.rtnl.request("route", "get", dst=str(ip), oif=master, family=family)
        except NetlinkError:
            return NO_ROUTE, False
        if not routes:
            return NO_ROUTE, False
        r = routes[0]
        if r["type"] == RTN_LOCAL:
            return LOCAL, False
        if r["type"] != RTN_UNICAST or r.get("RTA_OIF") != master:
            return NO_ROUTE, False
        gateway = r.get("RTA_GATEWAY")
        nh = str(ipaddress.ip_address(gateway)) if gateway else str(ip)
        found, mac = self._neighbour(nh, master, family)
        if mac is not None:
            return mac, False
        if gateway is None and not self._on_link(ip, master, now):
            return NOT_ON_LINK, False
        if not found and gateway is None and not self._room(guest, master, now):
            return BUDGET, False
        if self._solicit(nh, master, family, now) and not found and gateway is None:
            self._created[nh] = guest
        return UNRESOLVED, True

    def _neighbour(self, nh: str, master: int, family: int) -> tuple[bool, bytes | None]:
        """(whether the master has an entry for ``nh``, its MAC if valid)."""
        try:
            entries = self.rtnl.request("neigh", "get", dst=nh, ifindex=master, family=family)
        except NetlinkError:
            return False, None
        for n in entries:
            mac = n.get("NDA_LLADDR")
            if n["state"] & NUD_VALID and mac:
                return True, parse_mac(mac)
        return bool(entries), None

    def _solicit(self, nh: str, master: int, family: int, now: float) -> bool:
        """``NTF_USE`` for ``nh`` unless done within ``TTL``; whether it was sent."""
        triggered = self._triggered
        while triggered and next(iter(triggered.values())) <= now:  # oldest first: same TTL for all
            triggered.popitem(last=False)
        if nh in triggered:
            return False
        while len(triggered) >= self.limits.triggered:
            triggered.popitem(last=False)
        triggered[nh] = now + TTL
        try:
            self.rtnl.request("neigh", "replace", dst=nh, ifindex=master, family=family, flags=NTF_USE, state=0)
        except NetlinkError:
            return False
        return True

    def _on_link(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, master: int, now: float) -> bool:
        """Whether ``ip`` is inside one of the master's own prefixes."""
        if now >= self._prefixes_until:
            self._prefixes_until = now + PREFIX_TTL
            prefixes = []
            try:
                for msg in self.rtnl.request("get_addr", index=master):
                    addr = message_address(msg)
                    if addr is not None:
                        prefixes.append(ipaddress.ip_network((addr, msg["prefixlen"]), strict=False))
            except (NetlinkError, ValueError):
                pass
            self._prefixes = prefixes
        return any(ip in p for p in self._prefixes)

    def _room(self, guest: str, master: int, now: float) -> bool:
        """Whether the daemon may create one more neighbour entry for ``guest``."""
        if self._has_room(guest):
            return True
        if now - self._pruned < PRUNE_INTERVAL:
            return False
        self._pruned = now
        try:  # keep counting only the entries the kernel still holds
            held = {str(ipaddress.ip_address(n.get("NDA_DST"))) for n in
                    self.rtnl.request("neigh", "dump", ifindex=master) if n.get("NDA_DST")}
        except (NetlinkError, ValueError):
            return False
        self._created = {nh: g for nh, g in self._created.items() if nh in held}
        return self._has_room(guest)

    def _has_room(self, guest: str) -> bool:
        created = self._created
        if len(created) >= self.limits.budget:
            return False
        return sum(1 for g in created.values() if g == guest) < self.limits.budget_per_guest
