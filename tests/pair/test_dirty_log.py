"""Live migration, the back-end's part: every page of guest memory the back-end writes is
marked in the front-end's dirty log, and GET_VRING_BASE hands over exactly where the
rings stand.

An in-process port (real data path and switch, fake guests a, b, c) after QEMU's
migration start (``FakeFrontend.start_dirty_log``: SET_LOG_BASE, SET_FEATURES with
LOG_ALL, SET_VRING_ADDR with VHOST_VRING_F_LOG). Each burst of traffic is run between
two snapshots of every guest's memory, taken after the fake guests wrote theirs (TX
frames, RX buffers posted) and before the guests read anything back; every 4 KiB page
whose bytes changed must be marked in that guest's log. With the C accelerator and
in pure Python; and the negative control (the session's ``dirty_log=False``, the
daemon's VHOST_IPVLAN_TEST_NO_DIRTY_LOG) must make the same check fail.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6ND_NS, IPv6
from scapy.layers.l2 import ARP, Ether

from tests.support.frontend import MEM_SIZE
from tests.support.inproc import MASTER_MAC, FakeHostLink, InprocPort, pure_python
from vhost_ipvlan.daemon import fastpath
from vhost_ipvlan.net.dhcp import Lease
from vhost_ipvlan.virtio import net

A, B, C, OUT = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c", "02:99:00:00:00:01"
A4, B4, C4, HOST4, OUT4 = "10.0.0.10", "10.0.0.11", "10.0.0.12", "10.0.0.1", "10.0.0.200"
A6, B6 = "fd00::10", "fd00::11"
MASTER = ":".join(f"{b:02x}" for b in MASTER_MAC)
PAGE = 4096
LogMark = Callable[[memoryview, int, int], int]
PATHS = ["accelerated", "pure-python"]
#: (data path, Python's marks exact): the daemon's two setups, and pure Python's marks
#: made exact, which shows Python names the right guest addresses, page by page
SETUPS = [("accelerated", True), ("pure-python", False), ("pure-python", True)]


def packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def path(name: str) -> AbstractContextManager[None]:
    if name == "accelerated":
        if not fastpath.accelerated():
            pytest.skip("the C accelerator is not built")
        return nullcontext()
    return pure_python()


def exact_marks(exact: bool) -> LogMark | None:
    """The accelerator's ``log_mark`` when ``exact`` (taken before ``pure_python()``
    hides the module), else None."""
    if not exact:
        return None
    mark = fastpath.log_mark()
    if mark is None:
        pytest.skip("the C accelerator is not built")
    return mark


def make_port(dirty_log: bool = True, b_queues: int = 1, log_mark: LogMark | None = None) -> InprocPort:
    """Guests a, b and c, migrating; ``log_mark``: Python marks through it (the
    accelerator's, as the daemon does when it is built), not whole bytes."""
    p = InprocPort([
        ("a", [packed(A4), packed(A6)], mac(A)),
        ("b", [packed(B4), packed(B6)], mac(B)),
        ("c", [packed(C4)], mac(C)),
    ], queues={"b": (b_queues, b_queues)})
    p.port.master_addresses = frozenset({packed(HOST4)})
    p.dp.hostlink = FakeHostLink()  # the host's address is answered for
    p.device("a").slave.dhcp = Lease(((packed(A4), 24),), "a")
    for name, fe in p.frontends.items():
        session = p.device(name).session
        assert session is not None
        session.dirty_log = dirty_log
        session.log_mark = log_mark
        fe.start_dirty_log()
    return p


@pytest.fixture
def port() -> Iterator[InprocPort]:
    p = make_port()
    yield p
    p.close()


def unmarked(p: InprocPort, run: Callable[[], None], written: str = "abc") -> dict[str, list[int]]:
    """Run ``run`` (the back-end's work) between two snapshots of every guest's memory;
    per guest, the pages that changed and are not marked in its log (the logs are
    cleared first). Asserts that the back-end wrote something into the guests named
    in ``written``."""
    for fe in p.frontends.values():
        fe.clear_log()
    before = {name: bytes(fe.mem) for name, fe in p.frontends.items()}
    run()
    out: dict[str, list[int]] = {}
    for name, fe in p.frontends.items():
        now, old = bytes(fe.mem), before[name]
        changed = [i for i in range(0, MEM_SIZE, PAGE) if now[i : i + PAGE] != old[i : i + PAGE]]
        changed = [i // PAGE for i in changed]
        assert changed or name not in written, f"the back-end wrote nothing into guest {name}"
        out[name] = sorted(set(changed) - fe.dirty_pages())
    return out


def from_a(p: InprocPort, frames: list[bytes]) -> Callable[[], None]:
    a = p.frontends["a"]
    for f in frames:
        a.transmit(f)

    def run() -> None:
        p.device("a").drain_tx()

    return run


def from_wire(p: InprocPort, frames: list[bytes]) -> Callable[[], None]:
    p.port.wire_macs.add(mac(OUT))
    p.uplink.inject(*[bytes(10) + f for f in frames])

    def run() -> None:
        for _ in range(3):
            p.dp._uplink_readable()

    return run


def guest_frames() -> list[bytes]:
    """From a: unicast to b and c (C's fast path: one RX buffer each), a frame needing
    several RX buffers (mergeable, Python's), broadcast ARP (flooded, and to the wire),
    an ARP request for the host's address and a DHCP DISCOVER (both answered by the
    daemon into a's own RX ring), IPv6 and NS."""
    udp = Ether(src=A, dst=B) / IP(src=A4, dst=B4) / UDP(sport=1, dport=2)
    return [
        *(bytes(udp / (bytes([i]) * (i * 37 % 1400))) for i in range(40)),
        bytes(Ether(src=A, dst=C) / IP(src=A4, dst=C4) / UDP() / b"to-c"),
        bytes(Ether(src=A, dst=B) / IPv6(src=A6, dst=B6) / UDP() / b"v6"),
        bytes(udp / (b"x" * 5000)),
        bytes(Ether(src=A, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=A, psrc=A4, pdst=B4)),
        bytes(Ether(src=A, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=A, psrc=A4, pdst=HOST4)),
        bytes(Ether(src=A, dst="33:33:ff:00:00:11") / IPv6(src=A6, dst="ff02::1:ff00:11") / ICMPv6ND_NS(tgt=B6)),
        bytes(Ether(src=A, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
              / UDP(sport=68, dport=67) / BOOTP(chaddr=mac(A), xid=7) / DHCP(options=[("message-type", "discover"),
                                                                                        "end"])),
    ]


def wire_frames() -> list[bytes]:
    """From the wire: unicast to every guest (C's), big TCP, broadcast ARP (flooded)."""
    out: list[bytes] = []
    for i in range(60):
        dst4, dst_mac = [(A4, A), (B4, B), (C4, C)][i % 3]
        to = MASTER if i % 2 else dst_mac
        out.append(bytes(Ether(src=OUT, dst=to) / IP(src=OUT4, dst=dst4) / UDP() / (bytes([i]) * (i * 23 % 1400))))
    out.append(bytes(Ether(src=OUT, dst=MASTER) / IP(src=OUT4, dst=B4) / TCP() / (b"t" * 4000)))
    out.append(bytes(Ether(src=OUT, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=OUT, psrc=OUT4, pdst=B4)))
    return out


@pytest.mark.parametrize(("which", "exact"), SETUPS)
def test_every_page_the_back_end_writes_is_marked(which: str, exact: bool) -> None:
    mark = exact_marks(exact)
    with path(which):
        p = make_port(log_mark=mark)
        try:
            delivered = p.device("b").counters()["rx_packets"]
            assert unmarked(p, from_a(p, guest_frames())) == {"a": [], "b": [], "c": []}
            got = {n: fe.receive() for n, fe in p.frontends.items()}
            assert len(got["b"]) == 44 and len(got["c"]) == 3  # NS floods too
            a_got = [Ether(f) for _, f in got["a"]]
            assert any(ARP in f and f[ARP].op == 2 for f in a_got) and any(DHCP in f for f in a_got)
            p.frontends["a"].reclaim_tx()
            assert unmarked(p, from_wire(p, wire_frames())) == {"a": [], "b": [], "c": []}
            got = {n: fe.receive() for n, fe in p.frontends.items()}
            assert [len(got[n]) for n in "abc"] == [20, 22, 20]  # the ARP request goes to its target only
            assert p.device("b").counters()["rx_packets"] - delivered == 44 + 22
        finally:
            p.close()


@pytest.mark.parametrize(("which", "exact"), SETUPS)
def test_a_guest_with_two_queue_pairs_gets_both_rings_logged(which: str, exact: bool) -> None:
    mark = exact_marks(exact)
    with path(which):
        p = make_port(b_queues=2, log_mark=mark)
        try:
            frames = [bytes(Ether(src=A, dst=B) / IP(src=A4, dst=B4) / UDP(sport=1000 + i, dport=2) / b"mq")
                      for i in range(40)]
            assert unmarked(p, from_a(p, frames), "ab") == {"a": [], "b": [], "c": []}
            assert all(p.frontends["b"].receive_all())  # both rings got frames
        finally:
            p.close()


@pytest.mark.parametrize("source", ["guest", "wire"])
def test_the_accelerator_marks_exact_pages(source: str) -> None:
    """A burst C takes whole (a -> b, or the wire -> b: one RX buffer each): only the
    pages of the buffers it filled are marked, besides the used ring's (Python's
    publish: whole bytes of the log, 8 pages each)."""
    if not fastpath.accelerated():
        pytest.skip("the C accelerator is not built")
    p = make_port()
    try:
        b = p.frontends["b"]
        if source == "guest":
            from_a(p, [bytes(Ether(src=A, dst=B) / IP(src=A4, dst=B4) / UDP() / b"c")] * 4)()
        else:
            from_wire(p, [bytes(Ether(src=OUT, dst=MASTER) / IP(src=OUT4, dst=B4) / UDP() / b"c")] * 4)()
        dev = p.device("b")
        assert dev.fast.rx_counts()[0] + sum(fastpath.counts(q.fast_rx)[0] for q in dev.pairs) == 4
        heads = [used[0] for used in iter(b.rxq.pop_used, None)]
        buffers = {b._buf_addr(0, h) // PAGE for h in heads}
        first, last = b.rxq.used // PAGE // 8, (b.rxq.used + 6 + 8 * b.rxq.num - 1) // PAGE // 8
        used_ring = set(range(8 * first, 8 * last + 8))
        assert len(heads) == 4 and buffers.isdisjoint(used_ring)
        assert b.dirty_pages() - used_ring == buffers
    finally:
        p.close()


@pytest.mark.parametrize("which", PATHS)
def test_the_negative_control_marks_nothing(which: str) -> None:
    """dirty_log=False (VHOST_IPVLAN_TEST_NO_DIRTY_LOG=1 in the daemon): the features
    and the log are taken as before, nothing is marked, and the check above fails."""
    with path(which):
        p = make_port(dirty_log=False)
        try:
            missed = unmarked(p, from_a(p, guest_frames()))
            assert all(missed.values())
            assert all(not fe.dirty_pages() for fe in p.frontends.values())
        finally:
            p.close()


def test_logging_off_again_marks_nothing(port: InprocPort) -> None:
    """Migration done or cancelled: SET_FEATURES without LOG_ALL, the rings' log flag
    cleared; writes go on unmarked."""
    for fe in port.frontends.values():
        fe.set_logging(False)
    unmarked(port, from_a(port, guest_frames()))
    assert all(not fe.dirty_pages() for fe in port.frontends.values())


# -- GET_VRING_BASE around the switch-over ----------------------------------------------------


@pytest.mark.parametrize("which", PATHS)
def test_get_vring_base_is_where_the_guest_stands(which: str) -> None:
    """After traffic both ways, each ring's base is the guest's view: TX, every chain it
    made available (all taken and returned); RX, the used index it reads. A destination
    given those bases (SET_VRING_BASE, then the rings again over the same memory)
    resumes without a resync, and frames flow on."""
    with path(which):
        p = make_port()
        try:
            from_a(p, guest_frames())()
            from_wire(p, wire_frames())()
            a, b = p.frontends["a"], p.frontends["b"]
            for fe in p.frontends.values():
                fe.clear_log()
            bases = {(n, i): fe.vring_base(i) for n, fe in p.frontends.items() for i in range(len(fe.vqs))}
            assert bases[("a", 1)] == a.txq.avail_idx == a.txq.used_idx()
            for n, fe in p.frontends.items():
                assert bases[(n, 0)] == fe.rxq.used_idx() > 0
            assert p.device("b").slave.up is False
            for (n, i), base in bases.items():  # the destination's ring set-up, same memory
                fe = p.frontends[n]
                fe.send_ring(i, base)
                session = p.device(n).session
                assert session is not None
                q = session.vrings[i].queue
                assert q is not None and q.resynced_from is None and q.last_avail == base
            got = [f for _, f in b.receive()]
            assert len(got) == 44 + 22
            frame = bytes(Ether(src=A, dst=B) / IP(src=A4, dst=B4) / UDP() / b"after")
            from_a(p, [frame])()
            assert [f for _, f in b.receive()] == [frame]
        finally:
            p.close()


def test_get_vring_base_publishes_what_the_ring_used(port: InprocPort) -> None:
    """A frame put into b's RX ring and not yet published (no flush) is published, and
    its used ring page marked, before GET_VRING_BASE answers: the base and the used
    index the guest sees agree."""
    b = port.frontends["b"]
    frame = bytes(12) + bytes(Ether(src=A, dst=B) / IP(src=A4, dst=B4) / UDP() / b"in flight")
    port.device("b").deliver(memoryview(bytearray(frame)))
    assert b.rxq.used_idx() == 0
    b.clear_log()
    assert b.vring_base(0) == b.rxq.used_idx() == 1
    assert b.rxq.used // PAGE in b.dirty_pages()
    assert [f for _, f in b.receive()] == [frame[net.HDR_LEN :]]

