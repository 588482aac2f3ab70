"""QEMU 7.2 migrates a guest whose NIC is on vhost-ipvlan (the back-end's part of issue 14).

One TCG guest; the outside host pings it while QEMU migrates it to a file (``exec:``,
no destination QEMU: the two-QEMU tests are ``test_migration_qemu.py``'s). QEMU puts
no migration blocker on the device (LOG_ALL and LOG_SHMFD offered), hands over its
dirty log (SET_LOG_BASE, answered as it waits for), turns logging on and off on the
running rings and stops them with GET_VRING_BASE; the migration completes. Then the
source is resumed (``cont``): QEMU sets the rings up again from the bases we gave, and
the daemon resumes them without a resync (and without logging: QEMU's SET_FEATURES
drops LOG_ALL then), and the guest answers pings again.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.guest import Guest
from tests.support.lab import Lab, SlaveSpec
from tests.support.wait import wait_until

pytestmark = [pytest.mark.qemu, pytest.mark.netns]

VM_IP, VM_MAC = "192.0.2.10", "52:54:00:00:00:10"


@pytest.fixture(params=[(1, False), (2, False), (1, True)], ids=["1-queue", "2-queues", "1-queue-pure-python"])
def world(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Lab, Guest]]:
    """A guest with one queue pair, or two (QEMU 7.2: one SET_LOG_BASE per pair); the
    daemon with its C accelerator, or without (Python's whole-byte marks)."""
    queues, pure = request.param
    with Lab(tmp_path, [SlaveSpec("vm", [f"{VM_IP}/24"], VM_MAC, extra={"queues": queues})],
             pure_python=pure) as lab:
        vm = Guest("vm", tmp_path, vhost_socket=lab.sock("vm"), mac=VM_MAC, ip4=f"{VM_IP}/24", queues=queues,
                   smp=queues)
        try:
            vm.start()
            vm.wait_ready(180)
            yield lab, vm
        finally:
            vm.stop()
            if sys.exc_info()[0] is not None:
                print(lab.log_text())


def test_qemu_migrates_the_guest_and_resumes_its_rings(world: tuple[Lab, Guest], tmp_path: Path) -> None:
    lab, vm = world
    assert lab.out_run("ping", "-c", "2", "-W", "5", VM_IP, timeout=30).returncode == 0
    stop = threading.Event()
    pinger = threading.Thread(target=lambda: [lab.out_run("ping", "-c", "5", "-i", "0.02", "-W", "1", VM_IP)
                                              for _ in iter(stop.is_set, True)], daemon=True)
    pinger.start()
    try:
        vm.qmp("migrate-set-parameters", **{"max-bandwidth": 64 << 20})  # several dirty-log passes
        vm.qmp("migrate", uri=f"exec:cat > {tmp_path / 'vm.migration'}")

        def finished() -> dict[str, object] | None:
            info = vm.qmp("query-migrate")
            return info if info.get("status") in ("completed", "failed", "cancelled") else None

        info = wait_until(finished, 300, what="the migration to end")
    finally:
        stop.set()
        pinger.join(30)
    assert info["status"] == "completed", (info, vm.qemu_log.read_text())
    assert vm.qmp("query-status")["status"] == "postmigrate"
    log = lab.log_text()
    assert "protocol error" not in log and "connection closed" not in log, log
    assert "slave vm: dirty log of " in log and "slave vm: dirty logging on" in log
    vm.qmp("cont")  # the source runs on: rings set up again from the bases the daemon gave
    wait_until(lambda: lab.out_run("ping", "-c", "1", "-W", "2", VM_IP, timeout=30).returncode == 0, 60,
               what="the resumed guest to answer")
    log = lab.log_text()
    assert "disagrees with the used index" not in log, log
    # QEMU stopped the rings logging; it turns logging off when it starts them again
    assert log.index("slave vm: dirty logging on") < log.index("slave vm: dirty logging off"), log
    assert "Migration disabled" not in vm.qemu_log.read_text()
