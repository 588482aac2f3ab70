"""The dirty log through the real daemon: fake front-ends on its sockets, a veth master.

A front-end that migrates (``FakeFrontend.start_dirty_log`` over the socket: the
SET_LOG_BASE reply is read as QEMU 7.2 reads it) gets the pages the daemon writes for
it marked; a bad SET_LOG_BASE closes that connection only, with one line naming what
is wrong; VHOST_IPVLAN_TEST_NO_DIRTY_LOG=1 (the migration tests' negative control)
takes the log and marks nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.support.frontend import FakeFrontend
from tests.support.lab import FrontendLab, SlaveSpec, receive
from vhost_ipvlan.vhost_user import codec
from vhost_ipvlan.vhost_user.codec import Request

pytestmark = [pytest.mark.netns]

MAC_A, MAC_B, MAC_C = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
A_IP, B_IP, C_IP = "192.0.2.10", "192.0.2.11", "192.0.2.12"


def make_lab(tmp: Path, env: dict[str, str] | None = None) -> FrontendLab:
    return FrontendLab(tmp, [
        SlaveSpec("a", [f"{A_IP}/24"], MAC_A),
        SlaveSpec("b", [f"{B_IP}/24"], MAC_B),
        SlaveSpec("c", [f"{C_IP}/24"], MAC_C),
    ], ipv6=False, daemon_env=env)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[FrontendLab]:
    with make_lab(tmp_path) as lab:
        yield lab


@pytest.fixture(params=[False, True], ids=["accelerated", "pure-python"])
def any_lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[FrontendLab]:
    env = {"VHOST_IPVLAN_PURE": "1"} if request.param else None
    with make_lab(tmp_path, env) as lab:
        lab.pure_python = request.param
        yield lab


def a_to_b(lab: FrontendLab, a: FakeFrontend, b: FakeFrontend, port: int) -> None:
    a.transmit(bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=A_IP, dst=B_IP) / UDP(dport=port) / b"ok"))
    receive(b, lambda p: UDP in p and p[UDP].dport == port, f"a->b (port {port})")
    lab.check_daemon()


def buffer_pages(fe: FakeFrontend) -> set[int]:
    """The pages of every RX buffer of ``fe``'s first ring."""
    return {fe._buf_addr(0, i) // 4096 for i in range(fe.rxq.num)}


def test_a_migrating_guest_gets_what_the_daemon_wrote_marked(any_lab: FrontendLab) -> None:
    lab = any_lab
    a, b = lab.frontend("a"), lab.frontend("b")
    b.start_dirty_log()
    lab.wait_log("slave b: dirty logging on (live migration)", 0)
    a_to_b(lab, a, b, 10)
    marked = b.dirty_pages()
    assert marked & buffer_pages(b) and b.rxq.used // 4096 in marked
    if not lab.pure_python:  # C's log_mark for Python's marks too: exact pages, no whole bytes
        assert marked <= buffer_pages(b) | {b.rxq.used // 4096}
    base = b.vring_base(0)  # the switch-over: the ring stops where the guest stands
    assert base == b.rxq.used_idx() == b.rxq.last_used


def test_the_negative_control_marks_nothing(tmp_path: Path) -> None:
    with make_lab(tmp_path, {"VHOST_IPVLAN_TEST_NO_DIRTY_LOG": "1"}) as lab:
        assert "VHOST_IPVLAN_TEST_NO_DIRTY_LOG=1: dirty pages are not logged" in lab.log_text()
        a, b = lab.frontend("a"), lab.frontend("b")
        b.start_dirty_log()  # offered, taken and answered as ever
        a_to_b(lab, a, b, 11)
        assert b.dirty_pages() == set()


def memfd(size: int) -> int:
    fd = os.memfd_create("log")
    os.ftruncate(fd, size)
    return fd


@pytest.mark.parametrize(("kind", "reason"), [
    ("no-fd", "SET_LOG_BASE: 0 file descriptors, expected the log's one"),
    ("short-file", "SET_LOG_BASE: cannot map a log of 256 bytes at offset 0x0: "),
    ("too-small", "SET_LOG_BASE: a log of 8 bytes covers guest addresses below 0x40000, but guest memory ends at "
                  "0x800000 (256 bytes needed)"),
])
def test_a_bad_log_closes_only_that_connection(lab: FrontendLab, kind: str, reason: str) -> None:
    a, b, c = lab.frontend("a"), lab.frontend("b"), lab.frontend("c")
    size = c.log_size()
    fds = {"no-fd": [], "short-file": [memfd(16)], "too-small": [memfd(8)]}[kind]
    try:
        c.send(Request.SET_LOG_BASE, codec.LOG.pack(8 if kind == "too-small" else size, 0), fds)
    finally:
        for fd in fds:
            os.close(fd)
    lab.wait_log(f"slave c: connection closed: protocol error: {reason}", 0)
    a_to_b(lab, a, b, 12)
    c.close()
    lab.frontends.remove(c)
    c2 = lab.frontend("c")
    c2.start_dirty_log()
    c2.transmit(bytes(Ether(src=MAC_C, dst=MAC_A) / IP(src=C_IP, dst=A_IP) / UDP(dport=13)))
    receive(a, lambda p: UDP in p and p[UDP].dport == 13, "c->a after reconnecting")


def test_a_log_that_shrinks_closes_only_that_connection(lab: FrontendLab) -> None:
    """A log the front-end can truncate (not sealed: mapped under the SIGBUS guard) is
    truncated, then written: that connection closes; the daemon and the others go on."""
    a, b, c = lab.frontend("a"), lab.frontend("b"), lab.frontend("c")
    c.start_dirty_log(sealed=False)
    os.ftruncate(c.log_fd, 0)
    a.transmit(bytes(Ether(src=MAC_A, dst=MAC_C) / IP(src=A_IP, dst=C_IP) / UDP(dport=14) / b"to c"))
    lab.wait_log("slave c: connection closed: guest memory shrank under us", 0)
    a_to_b(lab, a, b, 15)
