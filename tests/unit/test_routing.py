"""l3 next hops (daemon.routing) against a fake kernel: never waits, rate-limited, bounded.

The fake answers ``route get``, ``neigh get|replace|dump`` and ``get_addr`` as
pyroute2 does, in a worker thread of its own (as ``rtnl.Rtnl``); its ``gate`` can
hold the worker to show that the event loop does not wait for it.

    master (index 7): 192.0.2.2/24, 2001:db8::2/64; default via 192.0.2.1 / 2001:db8::1;
    198.51.100.0/24 and 2001:db8:5::/64 on-link on the master but not its prefixes
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from vhost_ipvlan.daemon import routing
from vhost_ipvlan.daemon.routing import (
    BUDGET,
    BUSY,
    LOCAL,
    NOT_ON_LINK,
    RATE_LIMITED,
    UNRESOLVED,
    Limits,
    Router,
)
from vhost_ipvlan.drops import counts

MASTER = 7
GW4, GW6 = "192.0.2.1", "2001:db8::1"
MAC_GW = "02:00:00:00:00:fe"
NUD_INCOMPLETE, NUD_REACHABLE, NUD_FAILED = 0x01, 0x02, 0x20


class Msg(dict[str, Any]):
    """A pyroute2 message: fields and attributes by name."""

    def get_attr(self, name: str) -> Any:
        return self.get(name)


class FakeKernel:
    """The master's routes, addresses and neighbour table."""

    def __init__(self) -> None:
        self.routes = [  # (prefix, gateway, type): longest prefix wins
            (ipaddress.ip_network("0.0.0.0/0"), GW4, 1), (ipaddress.ip_network("::/0"), GW6, 1),
            (ipaddress.ip_network("192.0.2.0/24"), None, 1), (ipaddress.ip_network("2001:db8::/64"), None, 1),
            (ipaddress.ip_network("198.51.100.0/24"), None, 1), (ipaddress.ip_network("2001:db8:5::/64"), None, 1),
            (ipaddress.ip_network("192.0.2.2/32"), None, 2), (ipaddress.ip_network("203.0.113.0/24"), None, 7),
        ]
        self.addresses = [("192.0.2.2", 24), ("2001:db8::2", 64)]
        self.neigh: dict[str, tuple[int, str | None]] = {GW4: (NUD_REACHABLE, MAC_GW)}
        #: addresses that answer a solicitation (the neighbour becomes reachable)
        self.answering: dict[str, str] = {}
        self.created: list[str] = []
        self.calls: Counter[str] = Counter()
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()

    def request(self, method: str, *args: Any, **kw: Any) -> Any:
        self.gate.wait(10)
        with self.lock:
            self.calls[" ".join((method, *args))] += 1
            if method == "route":
                return self.route_get(kw["dst"], kw["oif"])
            if method == "get_addr":
                return [Msg(prefixlen=n, IFA_ADDRESS=a) for a, n in self.addresses]
            return self.neighbour(args[0], kw)

    def route_get(self, dst: str, oif: int) -> list[Msg]:
        ip = ipaddress.ip_address(dst)
        match = max((r for r in self.routes if r[0].version == ip.version and ip in r[0]), key=lambda r: r[0].prefixlen)
        if match[2] == 7:
            raise NetlinkError(113, "no route to host")
        msg = Msg(type=match[2], RTA_OIF=oif)
        if match[1] is not None:
            msg["RTA_GATEWAY"] = match[1]
        return [msg]

    def neighbour(self, cmd: str, kw: dict[str, Any]) -> list[Msg]:
        if cmd == "dump":
            return [Msg(NDA_DST=a, state=s) for a, (s, _) in self.neigh.items()]
        dst = kw["dst"]
        if cmd == "get":
            if dst not in self.neigh:
                raise NetlinkError(2, "no such neighbour")
            state, mac = self.neigh[dst]
            return [Msg(state=state, NDA_LLADDR=mac)]
        assert cmd == "replace" and kw["flags"] == routing.NTF_USE
        if dst not in self.neigh:
            self.created.append(dst)
        mac = self.answering.get(dst)
        self.neigh[dst] = (NUD_REACHABLE, mac) if mac else (NUD_INCOMPLETE, None)
        return []

    def total_calls(self) -> int:
        return sum(self.calls.values())


class FakeRtnl:
    """``rtnl.Rtnl`` over the fake kernel: one worker thread."""

    def __init__(self, kernel: FakeKernel) -> None:
        self.kernel = kernel
        self.pool = ThreadPoolExecutor(max_workers=1)

    def submit(self, job: Callable[[], Any]) -> Future[Any]:
        return self.pool.submit(job)

    def request(self, method: str, *args: Any, **kw: Any) -> Any:
        return self.kernel.request(method, *args, **kw)

    def close(self) -> None:
        self.kernel.gate.set()
        self.pool.shutdown(wait=True)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def kernel() -> FakeKernel:
    return FakeKernel()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(loop: asyncio.AbstractEventLoop, kernel: FakeKernel, clock: Clock, **limits: Any) -> Router:
    """A router; it re-checks solicited neighbours only if ``recheck`` is given."""
    return Router(MASTER, loop, FakeRtnl(kernel), limits=Limits(**{"recheck": (), **limits}), clock=clock)


@pytest.fixture
def router(loop: asyncio.AbstractEventLoop, kernel: FakeKernel, clock: Clock) -> Iterator[Router]:
    r = make(loop, kernel, clock)
    yield r
    r.close()


def run_until(loop: asyncio.AbstractEventLoop, cond: Callable[[], bool], what: str, timeout: float = 5) -> None:
    """Run the loop (its callbacks: answers coming back) until ``cond`` holds."""
    async def wait() -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise TimeoutError(what)
            await asyncio.sleep(0.001)
    loop.run_until_complete(wait())


def settle(loop: asyncio.AbstractEventLoop, router: Router) -> None:
    run_until(loop, lambda: router.pending == 0, "no resolution outstanding")


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def resolved(loop: asyncio.AbstractEventLoop, router: Router, dst: str, guest: str = "a") -> routing.Hop:
    """The answer once the first lookup's resolution is in."""
    router.next_hop_mac(ip(dst), guest)
    settle(loop, router)
    return router.next_hop_mac(ip(dst), guest)


def test_a_miss_returns_at_once_while_the_kernel_is_busy(loop: asyncio.AbstractEventLoop, kernel: FakeKernel,
                                                         router: Router) -> None:
    kernel.gate.clear()  # the worker blocks in its first netlink request
    assert router.next_hop_mac(ip("8.8.8.8"), "a") == UNRESOLVED
    assert router.next_hop_mac(ip("8.8.8.8"), "a") == UNRESOLVED  # one resolution per destination
    assert router.next_hop_mac(ip("192.0.2.2"), "a") == UNRESOLVED
    assert router.pending == 2 and kernel.total_calls() == 0
    kernel.gate.set()
    settle(loop, router)
    assert router.next_hop_mac(ip("8.8.8.8"), "a") == bytes.fromhex(MAC_GW.replace(":", ""))  # via the gateway
    assert router.next_hop_mac(ip("192.0.2.2"), "a") == LOCAL
    assert router.next_hop_mac(ip("203.0.113.5"), "a") == UNRESOLVED
    settle(loop, router)
    assert router.next_hop_mac(ip("203.0.113.5"), "a") == routing.NO_ROUTE


def test_an_expired_answer_is_used_while_it_is_refreshed(loop: asyncio.AbstractEventLoop, kernel: FakeKernel,
                                                         clock: Clock, router: Router) -> None:
    mac = resolved(loop, router, "8.8.8.8")
    assert isinstance(mac, bytes) and len(mac) == 6
    calls = kernel.total_calls()
    clock.now += routing.TTL + 0.5
    kernel.gate.clear()
    assert router.next_hop_mac(ip("8.8.8.8"), "a") == mac  # no packet lost while the refresh runs
    assert router.pending == 1
    kernel.gate.set()
    settle(loop, router)
    assert kernel.total_calls() > calls
    clock.now += routing.TTL + routing.STALE_MAX
    assert router.next_hop_mac(ip("8.8.8.8"), "a") == UNRESOLVED  # too old: a miss


def test_a_solicited_neighbour_is_looked_at_again_without_a_packet(loop: asyncio.AbstractEventLoop,
                                                                   kernel: FakeKernel, clock: Clock) -> None:
    router = make(loop, kernel, clock, recheck=(0.01, 0.01, 0.01))
    try:
        kernel.answering["192.0.2.50"] = "02:00:00:00:00:50"
        assert resolved(loop, router, "192.0.2.50") == UNRESOLVED  # solicited: reachable from now on
        assert kernel.created == ["192.0.2.50"]
        run_until(loop, lambda: router.cached == 1 and router._cache[ip("192.0.2.50")].hop == bytes.fromhex(
            "020000000050"), "the re-check installs the neighbour")
        calls = kernel.calls["route get"]
        kernel.answering.clear()
        assert resolved(loop, router, "192.0.2.51") == UNRESOLVED  # nobody answers: three re-checks, no more
        run_until(loop, lambda: kernel.calls["route get"] == calls + 4 and router.pending == 0 and
                  not router._rechecks, "three re-checks")
    finally:
        router.close()


def test_new_resolutions_are_rate_limited_per_guest(loop: asyncio.AbstractEventLoop, kernel: FakeKernel,
                                                    clock: Clock) -> None:
    router = make(loop, kernel, clock, rate=10, burst=20, pending=1000)
    try:
        got = Counter(router.next_hop_mac(ip(f"10.1.{i // 256}.{i % 256}"), "a") for i in range(100))
        assert got == {UNRESOLVED: 20, RATE_LIMITED: 80}
        assert router.next_hop_mac(ip("10.2.0.1"), "b") == UNRESOLVED  # b has its own bucket
        settle(loop, router)
        assert kernel.calls["route get"] == 21
        clock.now += 1.0  # ten more for a
        got = Counter(router.next_hop_mac(ip(f"10.3.0.{i}"), "a") for i in range(50))
        assert got == {UNRESOLVED: 10, RATE_LIMITED: 40}
        # answers already cached cost nothing
        settle(loop, router)
        assert isinstance(router.next_hop_mac(ip("10.1.0.0"), "a"), bytes)
    finally:
        router.close()


def test_outstanding_resolutions_are_bounded(loop: asyncio.AbstractEventLoop, kernel: FakeKernel,
                                             clock: Clock) -> None:
    router = make(loop, kernel, clock, pending=8, pending_per_guest=5)
    try:
        kernel.gate.clear()
        got = Counter(router.next_hop_mac(ip(f"10.1.0.{i}"), "a") for i in range(20))
        assert got == {UNRESOLVED: 5, BUSY: 15} and router.pending == 5  # a's share
        got = Counter(router.next_hop_mac(ip(f"10.1.{ord(g)}.{i}"), g) for i in range(20) for g in "bc")
        assert got == {UNRESOLVED: 3, BUSY: 37} and router.pending == 8  # all of them
        kernel.gate.set()
        settle(loop, router)
        assert router.next_hop_mac(ip("10.1.0.5"), "a") == UNRESOLVED and router.pending == 1
    finally:
        router.close()


def test_bounded_after_20000_on_link_destinations(loop: asyncio.AbstractEventLoop, kernel: FakeKernel,
                                                  clock: Clock) -> None:
    """A guest scanning its on-link /64 (the audit's r14: 60000 netlink calls, 20000 entries)."""
    limits = Limits(cache=512)
    router = make(loop, kernel, clock, cache=512, recheck=limits.recheck)
    try:
        got: Counter[routing.Hop] = Counter()
        for i in range(20000):
            clock.now += 0.001  # 20 seconds of scanning
            got[router.next_hop_mac(ip(f"2001:db8::1:{i:x}"), "a")] += 1
            if i % 64 == 0:
                settle(loop, router)
        settle(loop, router)
        resolutions = limits.burst + limits.rate * 20
        assert kernel.calls["route get"] <= resolutions * (1 + len(limits.recheck))
        assert kernel.total_calls() <= 3 * resolutions * (1 + len(limits.recheck))
        # the host's neighbour table got the guest's share of the budget, no more
        assert len(kernel.created) == limits.budget_per_guest == router.resolver.created
        assert got[RATE_LIMITED] > 15000 and any(e.hop == BUDGET for e in router._cache.values())
        assert router.cached <= limits.cache
        assert router.resolver.triggered <= limits.triggered
        assert len(router._rechecks) <= limits.cache
    finally:
        router.close()


def test_no_neighbour_outside_the_masters_prefixes(loop: asyncio.AbstractEventLoop, kernel: FakeKernel,
                                                   router: Router) -> None:
    # routed: the gateway is resolved (it already is), never the destination
    for i in range(50):
        assert resolved(loop, router, f"100.64.0.{i}") == bytes.fromhex(MAC_GW.replace(":", ""))
    assert resolved(loop, router, "2001:db8:77::1") == UNRESOLVED  # the v6 gateway: solicited once
    assert resolved(loop, router, "2001:db8:77::2") == UNRESOLVED
    assert kernel.created == [GW6]
    # on-link by a route, outside the master's prefixes: no entry is made...
    assert resolved(loop, router, "198.51.100.7") == NOT_ON_LINK
    assert resolved(loop, router, "2001:db8:5::7") == NOT_ON_LINK
    assert kernel.created == [GW6] and kernel.calls["neigh replace"] == 1
    # ... but one the host has is used
    kernel.neigh["198.51.100.8"] = (NUD_REACHABLE, "02:00:00:00:00:08")
    assert resolved(loop, router, "198.51.100.8") == bytes.fromhex("020000000008")


def test_neighbour_entries_made_are_budgeted(loop: asyncio.AbstractEventLoop, kernel: FakeKernel,
                                             clock: Clock) -> None:
    router = make(loop, kernel, clock, budget=5, budget_per_guest=3)
    try:
        assert [resolved(loop, router, f"192.0.2.{10 + i}") for i in range(4)] == [UNRESOLVED] * 3 + [BUDGET]
        assert [resolved(loop, router, f"192.0.2.{20 + i}", "b") for i in range(3)] == [UNRESOLVED] * 2 + [BUDGET]
        assert len(kernel.created) == 5
        # an entry the host already has costs nothing, nor does a gateway
        kernel.neigh["192.0.2.30"] = (NUD_FAILED, None)
        assert resolved(loop, router, "192.0.2.30") == UNRESOLVED
        assert resolved(loop, router, "2001:db8:77::1") == UNRESOLVED
        assert kernel.created[5:] == [GW6]
        # the kernel lets entries go: counted no more (re-counted at most once a second)
        for a in ("192.0.2.10", "192.0.2.11"):
            del kernel.neigh[a]
        clock.now += routing.PRUNE_INTERVAL + routing.STALE_MAX + routing.TTL
        assert resolved(loop, router, "192.0.2.40") == UNRESOLVED
        assert resolved(loop, router, "192.0.2.41") == UNRESOLVED
        assert resolved(loop, router, "192.0.2.42") == BUDGET
        assert kernel.calls["neigh dump"] <= 3
    finally:
        router.close()


def test_solicited_next_hops_are_bounded_and_pruned(loop: asyncio.AbstractEventLoop, kernel: FakeKernel,
                                                   clock: Clock) -> None:
    router = make(loop, kernel, clock, triggered=4)
    try:
        for i in range(10):
            assert resolved(loop, router, f"192.0.2.{100 + i}") == UNRESOLVED
        assert router.resolver.triggered == 4 and kernel.calls["neigh replace"] == 10
        clock.now += routing.TTL + routing.STALE_MAX
        assert resolved(loop, router, "192.0.2.200") == UNRESOLVED
        assert router.resolver.triggered == 1  # the expired ones are gone
    finally:
        router.close()


def test_invalidate_discards_answers_in_flight(loop: asyncio.AbstractEventLoop, kernel: FakeKernel,
                                               router: Router) -> None:
    kernel.gate.clear()
    router.next_hop_mac(ip("8.8.8.8"), "a")
    router.invalidate(9)
    kernel.gate.set()
    settle(loop, router)
    assert router.cached == 0
    assert router.next_hop_mac(ip("8.8.8.8"), "a") == UNRESOLVED  # asked again, for master 9


def test_the_data_path_counts_each_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.inproc import InprocPort

    p = InprocPort([("a", [ip("192.0.2.10")], bytes.fromhex("02000000000a"))], mode="l3")
    answers = iter([RATE_LIMITED, BUSY, NOT_ON_LINK, BUDGET, UNRESOLVED])
    monkeypatch.setattr(p.router, "next_hop_mac", lambda dst, guest="": next(answers))
    dev = p.dp.devices["a"]
    for _ in range(5):
        frame = bytes.fromhex("000000000001" "02000000000a" "0800") + _ipv4(b"\xc0\x00\x02\x0a", b"\x08\x08\x08\x08")
        dev.view[: 12 + len(frame)] = bytes(12) + frame
        p.dp.from_guest(dev, 12 + len(frame))
    assert counts(dev.drops) == {r.label: 1 for r in (RATE_LIMITED, BUSY, NOT_ON_LINK, BUDGET, UNRESOLVED)}


def _ipv4(src: bytes, dst: bytes, ident: int = 0) -> bytes:
    hdr = bytearray(b"\x45\x00\x00\x1c" + ident.to_bytes(2, "big") + b"\x00\x00\x40\x11\x00\x00" + src + dst)
    s = sum(int.from_bytes(hdr[i : i + 2], "big") for i in range(0, 20, 2))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    hdr[10:12] = (~s & 0xFFFF).to_bytes(2, "big")
    return bytes(hdr) + b"\x00\x35\x00\x35\x00\x08\x00\x00"


# -- packets held while their destination resolves (issue 16 item 4) ----------------------


class Released:
    """``Router.on_release``: what came back, in order."""

    def __init__(self, router: Router) -> None:
        self.got: list[tuple[str, bytes, routing.Hop]] = []
        router.on_release = lambda guest, frame, hop: self.got.append((guest, bytes(frame), hop))

    def hops(self) -> list[routing.Hop]:
        return [hop for _, _, hop in self.got]


def frame(n: int, size: int = 100) -> memoryview:
    return memoryview(n.to_bytes(2, "big") + bytes(size - 2))


MAC50 = bytes.fromhex("020000000050")


def test_the_first_packets_are_held_and_sent_when_the_neighbour_answers(
        loop: asyncio.AbstractEventLoop, kernel: FakeKernel, clock: Clock) -> None:
    router = make(loop, kernel, clock, recheck=(0.01, 0.01, 0.01))
    out = Released(router)
    try:
        kernel.answering["192.0.2.50"] = "02:00:00:00:00:50"
        for n in range(3):  # a burst before anything is known: none is lost
            assert router.next_hop_mac(ip("192.0.2.50"), "a") == UNRESOLVED
            assert router.hold(ip("192.0.2.50"), "a", frame(n)) is None
        assert router.held == 3 and out.got == []
        run_until(loop, lambda: len(out.got) == 3, "the held packets released")
        assert out.got == [("a", bytes(frame(n)), MAC50) for n in range(3)]  # in order, with the MAC
        assert router.held == 0 and router.next_hop_mac(ip("192.0.2.50"), "a") == MAC50
        # a destination behind a known gateway: released with the first answer
        assert router.next_hop_mac(ip("8.8.8.8"), "b") == UNRESOLVED
        assert router.hold(ip("8.8.8.8"), "b", frame(9)) is None
        run_until(loop, lambda: len(out.got) == 4, "released with the first answer")
        assert out.got[3] == ("b", bytes(frame(9)), bytes.fromhex(MAC_GW.replace(":", "")))
    finally:
        router.close()


def test_held_packets_are_bounded_per_destination_and_per_master(
        loop: asyncio.AbstractEventLoop, kernel: FakeKernel, clock: Clock) -> None:
    router = make(loop, kernel, clock, queue_packets=3, queue_bytes=1000, queue_total=1500)
    out = Released(router)
    try:
        kernel.gate.clear()  # nothing resolves meanwhile
        dst = ip("192.0.2.60")
        assert router.next_hop_mac(dst, "a") == UNRESOLVED
        for n in range(5):  # packets: the oldest go, as in the kernel
            assert router.hold(dst, "a", frame(n)) is None
        assert out.got == [("a", bytes(frame(0)), routing.QUEUE_FULL), ("a", bytes(frame(1)), routing.QUEUE_FULL)]
        assert router.held == 3
        assert router.hold(dst, "a", frame(5, 900)) is None  # bytes: 900 + 100 fit 1000, 900 + 200 do not
        assert out.hops()[2:] == [routing.QUEUE_FULL] * 2 and router.held == 2
        assert router.hold(dst, "a", frame(6, 1001)) == routing.QUEUE_FULL  # alone bigger than the bound
        assert router.held == 2 and len(out.got) == 4  # ... and the queue is left alone
        other = ip("192.0.2.61")
        assert router.next_hop_mac(other, "b") == UNRESOLVED
        assert router.hold(other, "b", frame(7, 600)) == routing.QUEUE_FULL  # the master's 1500 bytes
        assert router.hold(other, "b", frame(8, 400)) is None
    finally:
        router.close()


def test_held_packets_are_dropped_when_resolution_fails(loop: asyncio.AbstractEventLoop, kernel: FakeKernel,
                                                        clock: Clock) -> None:
    router = make(loop, kernel, clock, recheck=(0.01, 0.01))
    out = Released(router)
    try:
        assert router.next_hop_mac(ip("192.0.2.70"), "a") == UNRESOLVED  # nobody answers
        assert router.hold(ip("192.0.2.70"), "a", frame(1)) is None
        run_until(loop, lambda: out.got != [], "the held packet dropped")
        assert out.hops() == [routing.FAILED] and router.held == 0
        # the answer stands for UNRESOLVED_TTL: nothing resolving, nothing held
        assert router.next_hop_mac(ip("192.0.2.70"), "a") == UNRESOLVED
        assert router.hold(ip("192.0.2.70"), "a", frame(2)) == UNRESOLVED
        # no route: released under that reason
        assert router.next_hop_mac(ip("203.0.113.9"), "a") == UNRESOLVED
        assert router.hold(ip("203.0.113.9"), "a", frame(3)) is None
        run_until(loop, lambda: len(out.got) == 2, "released with no_route")
        assert out.hops()[1] == routing.NO_ROUTE
        # the master changes: whatever is held is dropped
        kernel.gate.clear()
        assert router.next_hop_mac(ip("8.8.4.4"), "a") == UNRESOLVED
        assert router.hold(ip("8.8.4.4"), "a", frame(4)) is None
        router.invalidate(9)
        assert out.hops()[2] == routing.FAILED and router.held == 0
        kernel.gate.set()
        settle(loop, router)
        assert len(out.got) == 3
    finally:
        router.close()


def test_the_data_path_sends_every_packet_to_a_new_destination(loop: asyncio.AbstractEventLoop,
                                                               kernel: FakeKernel, clock: Clock) -> None:
    """N packets to a destination nobody has resolved yet -> N packets on the wire, in order."""
    from tests.support.inproc import InprocPort

    p = InprocPort([("a", [ip("192.0.2.10")], bytes.fromhex("02000000000a"))], mode="l3")
    router = make(loop, kernel, clock, recheck=(0.01, 0.01, 0.01))
    router.on_release = p.dp.routed_later
    p.dp.router = router
    kernel.answering["192.0.2.80"] = "02:00:00:00:00:80"
    try:
        dev = p.dp.devices["a"]
        for n in range(4):
            frame = bytes.fromhex("000000000001" "02000000000a" "0800") + \
                _ipv4(b"\xc0\x00\x02\x0a", b"\xc0\x00\x02\x50", n)
            dev.view[: 12 + len(frame)] = bytes(12) + frame
            p.dp.from_guest(dev, 12 + len(frame))
        run_until(loop, lambda: len(p.uplink.sent) == 4, "four packets on the wire")
        assert [f[10:16] for f in p.uplink.sent] == [bytes.fromhex("020000000080")] * 4
        assert [f[10 + 14 + 4 : 10 + 14 + 6] for f in p.uplink.sent] == [n.to_bytes(2, "big") for n in range(4)]
        assert not any(dev.drops)
    finally:
        router.close()
        p.close()


def test_packets_held_after_invalidate_are_not_stranded_by_a_discarded_answer(
        loop: asyncio.AbstractEventLoop, kernel: FakeKernel, clock: Clock) -> None:
    """A packet held while an answer from before ``invalidate`` is in flight comes back
    when that answer is discarded (the destination is asked again, or it is dropped),
    not kept until another packet to it happens to arrive."""
    router = make(loop, kernel, clock, recheck=(0.01, 0.01))
    out = Released(router)
    try:
        kernel.answering["192.0.2.90"] = "02:00:00:00:00:90"
        kernel.gate.clear()
        dst = ip("192.0.2.90")
        assert router.next_hop_mac(dst, "a") == UNRESOLVED
        router.invalidate(MASTER)  # the master went and came back: the answer in flight is stale
        assert router.next_hop_mac(dst, "a") == UNRESOLVED
        assert router.hold(dst, "a", frame(1)) is None
        kernel.gate.set()
        run_until(loop, lambda: out.got != [], "the packet held after invalidate released")
        assert router.held == 0
    finally:
        router.close()
