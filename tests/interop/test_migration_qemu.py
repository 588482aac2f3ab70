"""Live migration between two QEMU (TCG) processes, each on its own host's daemon (issue 14).

The lab (``tests/support/migration.py``): two hosts, each a namespace with its own
daemon and master, the masters' peers on one bridge in the outside namespace (the
LAN); both daemons have the guest's slave (same name, addresses, MAC). The guest
boots on host a; ``MovingGuest.migrate`` starts QEMU on the other host with
``-incoming unix:...`` and migrates over QMP.

The guest's NIC is ``guest_announce=off``: the guest does not announce itself after
a move (QEMU 7.2 then asks the back-end for SEND_RARP, which is not offered), so
what the outside learns about the move comes from the destination daemon's own
announcements (test_qemu.py covers the guest announcing itself). It is also
``mrg_rxbuf=off``: Linux then receives into "big packet" page chains that only the
back-end writes, and a TCP payload stays in those pages until the reader takes it.
With mergeable buffers the guest itself writes into every receive buffer's page
(the skb_shared_info at its end) and QEMU re-sends the page anyway, which hides a
missing dirty bit (measured: no corruption without dirty logging). The reader is
slow (``gzip | gunzip``) so that megabytes sit in those pages at the switch-over.
Indirect descriptors stay on for the stream tests: with ``indirect_desc=off`` each
big-packet buffer takes 19 ring entries, so little payload waits in the ring at the
switch-over and the negative control saw no damage in 3 of 3 migrations (measured).
The six-move back-and-forth test is ``indirect_desc=off`` (``NO_INDIRECT``): QEMU 7.2
under TCG sometimes corrupts the guest's memory when a guest receiving into indirect
big-packet buffers is migrated with frames arriving across the switch-over, with or
without vhost-user (``MIGRATION_RAM_BUG``; measured: 5 broken guests in 74 slow moves
with indirect buffers, on QEMU's own virtio-net on a tap as on vhost-ipvlan; none in 150
without); repeated moves would fail on QEMU's bug, not ours.

Timings are reported (``-s``), never asserted: pings lost per migration, QEMU's
total time and downtime.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from tests.support.guest import Guest, GuestError
from tests.support.lab import OUT_IP, SlaveSpec
from tests.support.migration import Migration, MigrationFailed, MigrationLab, MovingGuest, Pinger, TapLab, median
from tests.support.wait import wait_until

pytestmark = [pytest.mark.qemu, pytest.mark.netns]

VM, VM_MAC, VM_IP, VM_IP6 = "vm", "52:54:00:00:00:20", "192.0.2.20", "2001:db8::20"
BLOB_MB = 4
#: the migration's bandwidth for the stream tests: the RAM takes a few seconds to move
STREAM_BANDWIDTH = 64 << 20
#: the guest NIC's options (the module's docstring says why each)
NIC_OPTS = "guest_announce=off"
NO_INDIRECT = NIC_OPTS + ",indirect_desc=off"
#: each download: the guest reads slowly, so data waits in the pages the back-end wrote
DOWNLOAD = f"wget -q -O - http://{OUT_IP}:8000/blob | gzip -1 | gunzip | md5sum"


@dataclass
class World:
    lab: MigrationLab
    vm: MovingGuest
    want: str  # the blob's md5


@contextmanager
def build_world(tmp: Path, daemon_env: dict[str, str] | None = None, *, pure_python: bool = False,
                nic_opts: str = NIC_OPTS) -> Iterator[World]:
    """The lab, the outside's HTTP server with the blob, the guest booted on host a."""
    www = tmp / "www"
    www.mkdir()
    blob = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(BLOB_MB * 32768))
    (www / "blob").write_bytes(blob)
    slaves = [SlaveSpec(VM, [f"{VM_IP}/24", f"{VM_IP6}/64"], VM_MAC)]
    with MigrationLab(tmp, slaves, daemon_env=daemon_env, pure_python=pure_python) as lab:
        server = subprocess.Popen(
            ["ip", "netns", "exec", lab.out, sys.executable, "-m", "http.server", "8000", "--bind", OUT_IP,
             "--directory", str(www)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        vm = MovingGuest(lab, VM, VM_MAC, f"{VM_IP}/24", f"{VM_IP6}/64", nic_opts=nic_opts, mrg_rxbuf=False)
        try:
            vm.boot("a")
            yield World(lab, vm, hashlib.md5(blob).hexdigest())
        finally:
            vm.stop()
            server.terminate()
            server.wait(10)
            if sys.exc_info()[0] is not None:
                print(lab.logs())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with build_world(tmp_path_factory.mktemp("mig")) as w:
        yield w


def guest(world: World) -> Guest:
    return guest_of(world.vm)


def log_times(text: str, needle: str) -> list[datetime]:
    """When the daemon logged ``needle`` (its log lines start with a millisecond timestamp)."""
    return [datetime.strptime(ln[:23], "%Y-%m-%d %H:%M:%S,%f") for ln in text.splitlines() if needle in ln]


def report(what: str, m: Migration, lost: int | None = None) -> None:
    pings = f", {lost} pings lost (every 20 ms)" if lost is not None else ""
    print(f"\nmigration {m.src} -> {m.dst} ({what}): total {m.total_ms} ms, downtime {m.downtime_ms} ms{pings}")


def migrate_with_pings(world: World) -> tuple[Migration, int]:
    """Migrate while the outside pings the guest every 20 ms; the pings lost once it answers again."""
    pinger = Pinger(world.lab, VM_IP)
    try:
        pinger.wait_answers(10)
        m = world.vm.migrate()
        after = pinger.answers()
        pinger.wait_answers(after + 10, 60)  # the ping recovers
    finally:
        pinger.stop()
    return m, pinger.lost()


class WireLog:
    """tcpdump on the outside's bridge: ARP and ICMPv6, with MAC addresses."""

    def __init__(self, lab: MigrationLab) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.out, "tcpdump", "-i", "br0", "-n", "-l", "-e", "-p", "arp or icmp6"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_until(lambda: any("listening on" in ln for ln in self.lines), 30, what="tcpdump to listen")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._reader.join(5)


def test_the_guest_moves_keeps_its_address_and_is_announced_from_the_new_master(world: World) -> None:
    """(a) ping every 20 ms across a migration a -> b: the ping recovers; the destination
    daemon announced both addresses with its master's MAC (gratuitous ARP, unsolicited NA)
    and the outside's neighbour entries follow; the two slaves were never up at once."""
    lab = world.lab
    assert world.vm.host == "a"
    wire = WireLog(lab)
    try:
        m, lost = migrate_with_pings(world)
        wait_until(lambda: any(f"tgt is {VM_IP6}" in ln for ln in wire.lines), 30, what="the unsolicited NA")
    finally:
        wire.stop()
    report("ping", m, lost)
    b_mac = lab.hosts["b"].master_mac
    assert guest(world).check("ip -4 addr show dev eth0").count(f"{VM_IP}/24") == 1
    stats = lab.hosts["b"].slave_stats(VM)
    assert stats["up"] is True and stats["announcements"] == 2
    assert lab.hosts["a"].slave_stats(VM)["up"] is False
    garp = [ln for ln in wire.lines if f"Request who-has {VM_IP} tell {VM_IP}" in ln]
    una = [ln for ln in wire.lines if f"neighbor advertisement, tgt is {VM_IP6}" in ln]
    assert any(ln.startswith(f"{b_mac} > ff:ff:ff:ff:ff:ff") or f" {b_mac} > ff:ff:ff:ff:ff:ff" in ln
               for ln in garp), wire.lines
    assert any(f"{b_mac} > 33:33:00:00:00:01" in ln for ln in una), wire.lines
    assert b_mac in lab.out_run("ip", "neigh", "show", VM_IP).stdout
    proc = lab.out_run("ping", "-c", "3", "-W", "5", VM_IP6, timeout=60)
    assert proc.returncode == 0, proc.stdout
    assert b_mac in lab.out_run("ip", "-6", "neigh", "show", VM_IP6).stdout
    # never both: host a's slave went down (source stopped: GET_VRING_BASE) no later than
    # host b's came up (the destination's rings started)
    down_a = log_times(lab.hosts["a"].log_text(), f"slave {VM}: down")[-1]
    up_b = log_times(lab.hosts["b"].log_text(), f"slave {VM}: up")[-1]
    assert down_a <= up_b, (down_a, up_b)


def stream_across_migration(world: World) -> tuple[Migration | None, list[str], str]:
    """(b) downloads back to back in the guest (outside -> guest TCP), a migration in the
    middle of them; returns the migration, the md5 of every download finished, and what
    went wrong when they stopped (a stalled stream, a failed migration), else ''."""
    vm = guest(world)
    vm.check(f"rm -f /tmp/sums; (while :; do {DOWNLOAD} >>/tmp/sums; done) >/dev/null 2>&1 &"
             " echo $! >/tmp/loop.pid")
    wait_until(lambda: vm.check("cat /tmp/sums").count("\n") >= 1, 120, 0.5, what="a first download")
    problem = ""
    m = None
    try:
        m = world.vm.migrate(max_bandwidth=STREAM_BANDWIDTH)
        vm = guest(world)
        done = vm.check("cat /tmp/sums").count("\n")
        wait_until(lambda: vm.check("cat /tmp/sums").count("\n") >= done + 2, 120, 0.5,
                   what="two more downloads after the migration")
    except (TimeoutError, MigrationFailed) as e:
        problem = str(e).splitlines()[0]
    try:
        vm = guest(world)
        if problem:  # a stalled download would never finish: keep what finished before
            text = vm.check("cat /tmp/sums")
            vm.run("kill $(cat /tmp/loop.pid); killall wget", timeout=30)
        else:  # stop the loop; the download in flight finishes (a killed one would leave a partial md5)
            vm.run("kill $(cat /tmp/loop.pid); while pidof wget >/dev/null; do sleep 0.2; done", timeout=120)
            text = vm.check("cat /tmp/sums")
    except (TimeoutError, GuestError) as e:
        problem = problem or f"the guest stopped answering: {str(e).splitlines()[0]}"
        text = ""
    sums = [ln.split()[0] for ln in text.splitlines() if ln.strip()]
    return m, sums, problem


def test_a_tcp_stream_into_the_guest_survives_a_migration(world: World) -> None:
    """(b) every download completes with the right checksum, the one cut by the migration too."""
    m, sums, problem = stream_across_migration(world)
    assert not problem, problem
    assert m is not None
    report("TCP stream", m)
    assert len(sums) >= 3 and all(s == world.want for s in sums), (world.want, sums)
    stats = world.lab.hosts[world.vm.host].slave_stats(VM)
    assert "queue_broken" not in stats["drops"], stats


def test_a_failed_migration_leaves_the_source_running_with_its_slave(world: World) -> None:
    """The destination QEMU dies mid-migration: the source reports failure, the guest runs
    on where it was, its slave up, and answers."""
    src = world.vm.host
    other = "b" if src == "a" else "a"
    info = world.vm.fail_migration()
    assert info["status"] == "failed", info
    assert world.vm.host == src
    assert world.lab.hosts[src].slave_stats(VM)["up"] is True
    assert world.lab.hosts[other].slave_stats(VM)["up"] is False
    proc = world.lab.out_run("ping", "-c", "3", "-W", "5", VM_IP, timeout=60)
    assert proc.returncode == 0, proc.stdout
    guest(world).check("echo still here")


#: the destination guest's memory broken after a move (README, "Live migration", known problem): first seen
#: with the C accelerator ('output.0:id 2 is not a head!'), but pure Python fails the same way once migrations
#: are slower (this lab, six-plus moves at max-bandwidth 48 MiB/s: a guest kernel general protection fault in
#: kmalloc, a corrupted slab freelist, in 2 of 2 pure-Python runs and 1 of 3 with C). The rings resume exactly
#: where they stopped, and the RAM arrives exact (a destination paused with -S holds the source's RAM page for
#: page when the migration completes), and 16 migrations whose source was resumed instead broke nothing: the
#: memory breaks after the guest resumes on the destination.
MIGRATION_RAM_BUG = ("the destination guest's memory is sometimes broken after a move (a corrupted slab, 'id 2 is "
                     "not a head'), pure Python and C alike, and the same without vhost-user (QEMU's own "
                     "virtio-net on a tap): QEMU 7.2 TCG's migration or the guest kernel, not the back-end")


@pytest.mark.slow
@pytest.mark.parametrize("pure", [True, False], ids=["python", "accelerator"])
def test_back_and_forth(tmp_path: Path, pure: bool) -> None:
    """(c) six migrations, each way three times, with pings every 20 ms: each recovers."""
    with build_world(tmp_path, pure_python=pure, nic_opts=NO_INDIRECT) as world:
        results = []
        for _ in range(6):
            m, lost = migrate_with_pings(world)
            report("back and forth", m, lost)
            results.append((m, lost))
            assert guest(world).check("echo ok") == "ok\n"
        losses = [lost for _, lost in results]
        totals = [m.total_ms for m, _ in results]
        print(f"\npings lost per migration: median {median([float(x) for x in losses])}, range {min(losses)}-"
              f"{max(losses)}; total time median {median([float(x) for x in totals])} ms, range {min(totals)}-"
              f"{max(totals)} ms; downtime {[m.downtime_ms for m, _ in results]} ms")
        for h in ("a", "b"):
            assert "queue_broken" not in world.lab.hosts[h].slave_stats(VM)["drops"]


#: the bandwidth at which the memory breaks more often (about 2.3 s per migration)
SLOW_BANDWIDTH = 48 << 20


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("VHOST_IPVLAN_MIGRATION_BUG"),
                    reason="a reproduction of QEMU's bug, opt-in: VHOST_IPVLAN_MIGRATION_BUG=1")
@pytest.mark.xfail(strict=False, reason=MIGRATION_RAM_BUG)
def test_back_and_forth_control_without_vhost_user(tmp_path: Path) -> None:
    """The control for MIGRATION_RAM_BUG: the same guest (memory, QEMU options, NIC
    options) moved back and forth at 48 MiB/s with pings from the outside every 20 ms, its
    NIC on QEMU's own virtio-net over a tap (``TapLab``: no daemon, no vhost-user). It
    breaks the same way (measured: a general protection fault in kmalloc after 8 moves),
    so the bug is not the back-end's."""
    with TapLab(tmp_path) as lab:
        vm = MovingGuest(lab, VM, VM_MAC, f"{VM_IP}/24", f"{VM_IP6}/64", nic_opts="guest_announce=off",
                         mrg_rxbuf=False)
        pinger = None
        try:
            vm.boot("a")
            pinger = Pinger(lab, VM_IP)
            pinger.wait_answers(10)
            for _ in range(8):
                m = vm.migrate(max_bandwidth=SLOW_BANDWIDTH)
                pinger.wait_answers(pinger.answers() + 10, 60)
                report("control without vhost-user", m)
                assert guest_of(vm).check("echo ok") == "ok\n"
        finally:
            if pinger is not None:
                pinger.stop()
            vm.stop()


def guest_of(vm: MovingGuest) -> Guest:
    assert vm.guest is not None
    return vm.guest


@pytest.mark.slow
def test_negative_control_without_dirty_logging_the_stream_breaks(tmp_path: Path) -> None:
    """With VHOST_IPVLAN_TEST_NO_DIRTY_LOG=1 (the daemons offer live migration but mark no
    page), the stream test must fail: broken data (a wrong checksum) or a stalled or
    broken ring. It shows the stream test can see a missing dirty bit."""
    with build_world(tmp_path, {"VHOST_IPVLAN_TEST_NO_DIRTY_LOG": "1"}) as w:
        assert "dirty" in w.lab.hosts["a"].log_text().lower()
        seen = []
        for _ in range(3):  # whether stale pages hold payload at the switch-over depends on timing
            m, sums, problem = stream_across_migration(w)
            bad = [s for s in sums if s != w.want]
            broken = w.lab.hosts[w.vm.host].slave_stats(VM)["drops"].get("queue_broken", 0)
            print(f"\nnegative control: {len(bad)} of {len(sums)} downloads corrupted, problem {problem!r}, "
                  f"queue_broken {broken}" + (f", migration {m.total_ms} ms" if m else ""))
            seen.append(sums)
            if bad or problem or broken:
                break
        else:
            raise AssertionError(f"no damage seen without dirty logging in 3 migrations: {seen}")
