"""A hostile vhost-user front-end breaks at most its own connection (audit section 4).

The real daemon, a veth master in a test namespace, fake front-ends: a and b are
well-behaved guests whose traffic must keep flowing; c is the attacker (a
compromised QEMU or any member of group kvm) and must never take the daemon, nor
a's or b's connections, with it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.support.frontend import MEM_SIZE, UVA_BASE, FakeFrontend
from tests.support.lab import FrontendLab, SlaveSpec, receive
from tests.support.wait import wait_until
from vhost_ipvlan.daemon import host
from vhost_ipvlan.vhost_user import codec
from vhost_ipvlan.vhost_user.codec import Request

pytestmark = [pytest.mark.netns]

MAC_A, MAC_B, MAC_C = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
A_IP, B_IP, C_IP = "192.0.2.10", "192.0.2.11", "192.0.2.12"
FULL = 0xFFFF_FFFF_FFFF_FFFE  # the largest value an eventfd counter holds


class Lab(FrontendLab):
    def __init__(self, tmp: Path, pure_python: bool = False) -> None:
        super().__init__(tmp, [
            SlaveSpec("a", [f"{A_IP}/24"], MAC_A),
            SlaveSpec("b", [f"{B_IP}/24"], MAC_B),
            SlaveSpec("c", [f"{C_IP}/24"], MAC_C),
        ], pure_python=pure_python, ipv6=False)

    def attacker(self, **kwargs: object) -> FakeFrontend:
        """A front-end connected to c, not set up."""
        fe = FakeFrontend(**kwargs)  # type: ignore[arg-type]
        self.frontends.append(fe)
        fe.connect(str(self.sock("c")))
        return fe

    def a_reaches_b(self, a: FakeFrontend, b: FakeFrontend, port: int) -> None:
        a.transmit(bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=A_IP, dst=B_IP) / UDP(dport=port) / b"ok"))
        receive(b, lambda p: UDP in p and p[UDP].dport == port, f"a->b (port {port})")
        self.check_daemon()

    def closed(self, reason: str) -> None:
        self.wait_log(f"slave c: connection closed: {reason}", 0)

    def daemon_fds(self) -> int:
        assert self.daemon is not None
        return len(os.listdir(f"/proc/{self.daemon.pid}/fd"))


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path) as lab:
        yield lab


@pytest.mark.parametrize("pure_python", [False, True], ids=["accelerated", "pure-python"])
def test_memory_that_shrinks_closes_only_that_connection(tmp_path: Path, pure_python: bool) -> None:
    """r7: the front-end truncates its memfd; the next ring access was a SIGBUS for the daemon."""
    with Lab(tmp_path, pure_python) as lab:
        a, b = lab.frontend("a"), lab.frontend("b")
        c = lab.frontend("c")  # its memfd cannot be sealed (as DPDK's)
        os.ftruncate(c.fd, 0)
        os.eventfd_write(c.kick[1], 1)  # the daemon reads c's TX ring
        a.transmit(bytes(Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") / IP(src=A_IP, dst="192.0.2.255") /
                         UDP(dport=9)))  # and writes to c's RX ring
        lab.closed("guest memory shrank under us")
        lab.a_reaches_b(a, b, 20)
        c.close()
        lab.frontends.remove(c)
        c2 = lab.frontend("c")
        c2.transmit(bytes(Ether(src=MAC_C, dst=MAC_A) / IP(src=C_IP, dst=A_IP) / UDP(dport=21)))
        receive(a, lambda p: UDP in p and p[UDP].dport == 21, "c->a after reconnecting")


def test_sealable_memory_is_sealed_and_sealed_memory_taken(lab: Lab) -> None:
    c = lab.attacker(sealing="allow")
    c.setup()
    lab.wait_log("slave c: up", 0)
    with pytest.raises(PermissionError):
        os.ftruncate(c.fd, 0)  # the daemon added F_SEAL_SHRINK
    c.close()
    lab.frontends.remove(c)
    ups = lab.log_text().count("slave c: up")
    c2 = lab.attacker(sealing="shrink")  # as QEMU's memory-backend-memfd
    c2.setup()
    lab.wait_log("slave c: up", ups)


def test_pipe_as_call_or_kick_fd_is_refused(lab: Lab) -> None:
    """r6/r13: a pipe as call fd blocked the loop, as kick fd (write end closed) made it spin."""
    a, b = lab.frontend("a"), lab.frontend("b")
    for which in ("call", "kick"):
        c = lab.attacker()
        r, w = os.pipe()
        os.close(w)
        getattr(c, which)[0] = r
        with pytest.raises((ConnectionError, OSError)):
            c.setup()
            c.get_u64(Request.GET_FEATURES)  # the connection is gone by now
        name = "SET_VRING_CALL" if which == "call" else "SET_VRING_KICK"
        lab.closed(f"protocol error: {name}: the descriptor is 'pipe:")
        c.close()
        lab.frontends.remove(c)
    lab.a_reaches_b(a, b, 22)


def test_memory_on_a_disk_file_system_is_refused(lab: Lab) -> None:
    """A page fault on a front-end's file on FUSE/NFS/disk can block the event loop
    (a FUSE server that never answers: every guest stalls): only tmpfs/memfd and
    hugetlbfs memory is mapped, anything else closes that connection only."""
    a, b = lab.frontend("a"), lab.frontend("b")
    c = lab.attacker()
    disk = os.open("/var/tmp", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    if host.fstatfs_type(disk) in host.MEMORY_FS:
        os.close(disk)
        pytest.skip("/var/tmp is on tmpfs")
    os.ftruncate(disk, MEM_SIZE)
    os.close(c.fd)
    c.fd = disk
    with pytest.raises((ConnectionError, OSError)):
        c.setup()
        c.get_u64(Request.GET_FEATURES)  # the connection is gone by now
    lab.closed("protocol error: SET_MEM_TABLE: cannot map region at gpa 0x0: the memory is a file on ")
    lab.a_reaches_b(a, b, 25)


def test_full_call_counter_does_not_block_the_daemon(lab: Lab) -> None:
    """r6: c fills its RX call eventfd and makes it blocking; a's broadcast to c must not freeze us."""
    a, b = lab.frontend("a"), lab.frontend("b")
    c = lab.frontend("c")
    os.eventfd_write(c.call[0], FULL)
    os.set_blocking(c.call[0], True)  # shared with the daemon's copy
    for port in (23, 24):
        a.transmit(bytes(Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") / IP(src=A_IP, dst="192.0.2.255") /
                         UDP(dport=port)))
        lab.a_reaches_b(a, b, port + 100)
    wait_until(lambda: lab.slave_stats("c")["drops"].get("call_failed"), 5, what="call_failed counted on c")


def test_front_end_that_does_not_read_replies_is_closed(lab: Lab) -> None:
    """r5 stall: 9300 GET_FEATURES unread blocked the loop 5 s per connection."""
    a, b = lab.frontend("a"), lab.frontend("b")
    c = lab.attacker()
    assert c.sock is not None
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    request = codec.encode_request(Request.GET_FEATURES)
    c.sock.settimeout(0)
    sent = 0
    for _ in range(20000):
        try:
            c.sock.send(request * 64)
            sent += 1
        except BlockingIOError:
            lab.check_daemon()
            if "slave c: connection closed" in lab.log_text():
                break
        except OSError:
            break
    lab.closed("protocol error: more than 65536 bytes of replies unread")
    lab.a_reaches_b(a, b, 25)


def test_slow_reader_gets_every_reply(lab: Lab) -> None:
    """Replies the socket does not take at once wait in the outgoing buffer, in order."""
    c = lab.attacker()
    assert c.sock is not None
    n = 1000  # 20-byte replies, one skb each: more than the socket buffer holds
    c.sock.sendall(codec.encode_request(Request.GET_FEATURES) * n + codec.encode_request(Request.GET_QUEUE_NUM))
    lab.wait_log("slave c: <- GET_QUEUE_NUM", 0)  # all handled before we read anything
    replies = [codec.HEADER.unpack(c._recv_exact(codec.HEADER_SIZE + 8)[: codec.HEADER_SIZE])[0]
               for _ in range(n + 1)]
    assert replies == [Request.GET_FEATURES] * n + [Request.GET_QUEUE_NUM]
    assert "slave c: connection closed" not in lab.log_text()


def test_descriptors_parked_on_an_incomplete_message_are_bounded(lab: Lab) -> None:
    """r5 fds: one payload byte and 8 fds per sendmsg held 800 daemon fds after 100 sends."""
    a, b = lab.frontend("a"), lab.frontend("b")
    before = lab.daemon_fds()
    c = lab.attacker()
    c.send_raw(codec.HEADER.pack(Request.SET_OWNER, codec.FLAG_VERSION, codec.MAX_PAYLOAD))
    fds = [os.eventfd(0) for _ in range(codec.MAX_FDS)]
    try:
        with pytest.raises(OSError):
            for _ in range(100):
                c.send_raw(b"x", fds)
                lab.check_daemon()
            c.get_u64(Request.GET_FEATURES)
    finally:
        for fd in fds:
            os.close(fd)
    lab.closed("protocol error: 16 file descriptors wait on an incomplete message (at most 8)")
    wait_until(lambda: lab.daemon_fds() <= before, 5, what="the daemon's fds back to what they were")
    lab.a_reaches_b(a, b, 26)


def test_bad_mem_table_then_the_next_connection_works(lab: Lab) -> None:
    """r8/r8b: a table that does not cover ring 0 left the device on the old mapping and the
    closed kick fd registered; kicks on it then hit whatever took that fd number."""
    a = lab.frontend("a")
    c = lab.frontend("c")
    region = codec.MEM_REGION.pack(0, MEM_SIZE, UVA_BASE + (1 << 40), 0)  # the rings are not in it
    with pytest.raises((ConnectionError, OSError)):
        c.send(Request.SET_MEM_TABLE, codec.MEM_HEADER.pack(1, 0) + region, [c.fd], need_reply=True)
    lab.closed("protocol error: vring 0")
    lab.wait_log("slave c: down", 0)
    old_kicks = list(c.kick)
    c.kick = [os.eventfd(0), os.eventfd(0)]  # keep the old ones open, as the attacker's QEMU would
    c.close()
    lab.frontends.remove(c)
    try:
        for _ in range(3):  # new connections take the freed fd numbers; old kicks must not reach them
            for fd in old_kicks:
                os.eventfd_write(fd, 1)
            c2 = lab.frontend("c")
            for fd in old_kicks:
                os.eventfd_write(fd, 1)
            c2.transmit(bytes(Ether(src=MAC_C, dst=MAC_A) / IP(src=C_IP, dst=A_IP) / UDP(dport=27)))
            receive(a, lambda p: UDP in p and p[UDP].dport == 27, "c->a on the next connection")
            c2.close()
            lab.frontends.remove(c2)
            lab.wait_log("slave c: down", 1)
    finally:
        for fd in old_kicks:
            os.close(fd)
    assert "Traceback" not in lab.log_text()


def test_reconnect_loop_does_not_flood_the_log(lab: Lab) -> None:
    b = lab.frontend("b")
    for _ in range(40):
        bad = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bad.connect(str(lab.sock("c")))
        bad.sendall(codec.HEADER.pack(1, 7, 0))  # protocol version 3
        bad.settimeout(10)
        assert bad.recv(1) == b""
        bad.close()
        second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        second.connect(str(lab.sock("b")))  # b is connected: refused
        second.settimeout(10)
        assert second.recv(1) == b""
        second.close()
    lab.check_daemon()
    log = lab.log_text()
    # at the default level (INFO), within their budgets; the rest went to DEBUG (the lab's level)
    shown = "\n".join(line for line in log.splitlines() if " DEBUG " not in line)
    assert 1 <= shown.count("slave c: connection closed: protocol error") <= 6, log
    assert 1 <= shown.count("slave c: front-end connected") <= 10, log  # a budget of 10: a guest's connects are seen
    assert 1 <= shown.count("slave b: refused a second front-end connection") <= 6, log
    assert log.count("slave c: front-end connected") == 40  # with --log-level debug, every one
    assert b is not None
