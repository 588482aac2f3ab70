"""The tiny guest image and the Guest helper's command channel (no NIC)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.guest import CommandFailed, Guest, GuestError, tiny_image

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="no QEMU"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    workdir = tmp_path_factory.mktemp("tiny")
    with Guest("tiny0", workdir, vhost_socket=None) as g:
        g.wait_ready(timeout=120)
        yield g


def test_image_is_cached() -> None:
    image = tiny_image()
    assert image.kernel.stat().st_size > 1_000_000
    assert image.initrd.stat().st_size > 1_000_000
    assert image.directory.name.startswith("tiny-")
    assert (image.directory / "kernel-version").read_text().strip()


def test_uname(guest: Guest) -> None:
    kver = (tiny_image().directory / "kernel-version").read_text().strip()
    assert guest.run("uname -r") == (0, kver + "\n")
    assert guest.check("hostname") == "tiny0\n"


def test_quotes(guest: Guest) -> None:
    assert guest.run("""echo 'a "quoted" b'""") == (0, 'a "quoted" b\n')
    assert guest.run("""printf '%s|' "it's" 'x\\y' "$((1+2))" """) == (0, "it's|x\\y|3|")


def test_exit_status(guest: Guest) -> None:
    assert guest.run("false") == (1, "")
    assert guest.run("echo out; echo err >&2; exit 7") == (7, "out\nerr\n")
    with pytest.raises(CommandFailed) as info:
        guest.check("echo nope; exit 3")
    assert info.value.rc == 3 and info.value.output == "nope\n"


def test_long_output(guest: Guest) -> None:
    rc, out = guest.run("seq 1 1000")
    assert rc == 0
    assert out == "".join(f"{i}\n" for i in range(1, 1001))


def test_output_edge_cases(guest: Guest) -> None:
    assert guest.run("printf 'no newline'") == (0, "no newline")
    assert guest.run("printf '\\n\\n'") == (0, "\n\n")
    assert guest.run("echo 'RC=0'; echo '0 RC=0'") == (0, "RC=0\n0 RC=0\n")
    assert guest.run("echo one\necho two") == (0, "one\ntwo\n")  # multi-line script
    assert guest.run("cat") == (0, "")  # stdin is /dev/null


def test_tools(guest: Guest) -> None:
    # iproute2 (not busybox's ip) also from nested shells and exec-ing tools
    for cmd in ("ip -V", "sh -c 'ip -V'", "env ip -V", "timeout 5 ip -V"):
        assert "iproute2" in guest.check(cmd)
    assert "ipvlan" in guest.check("lsmod")
    out = guest.check(
        "ip link add d0 type dummy && ip link add i0 link d0 type ipvlan mode l2 && "
        "ip netns add n1 && ip link set i0 netns n1 && ip -n n1 -d link show i0"
    )
    assert "ipvlan" in out
    assert "i0" in guest.check("ip netns exec n1 sh -c 'ip -br link'")
    guest.check("ip netns del n1; ip link del d0")


def test_background_command_does_not_block(guest: Guest) -> None:
    assert guest.run("sleep 30 & echo bg", timeout=10) == (0, "bg\n")
    guest.check("kill %1 2>/dev/null; pkill sleep; true")


def test_timeout_then_recover(guest: Guest) -> None:
    with pytest.raises(TimeoutError):
        guest.run("sleep 3; echo late", timeout=0.5)
    assert guest.run("echo next") == (0, "next\n")


def test_stop_is_idempotent(tmp_path: Path) -> None:
    g = Guest("tiny1", tmp_path, vhost_socket=None)
    g.start()
    g.wait_ready()
    g.stop()
    g.stop()
    assert not g.running
    assert "VI-TINY-READY" in g.console_log.read_text()
    with pytest.raises(GuestError):
        g.run("true")
