"""The full guest (vm-images/build-debian.sh): boots under TCG, SSH with the build's key, python3,
iperf3 and a running qemu-guest-agent; cached; its key is not in the repository.

QEMU runs directly here (no libvirt): user networking forwards a free loopback port
to the guest's SSH, and the guest agent sits on a unix socket of the test.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.lab import ROOT, debian_image, missing_tools
from tests.support.proc import stop_process
from tests.support.wait import wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.qemu, pytest.mark.timeout(3600)]

_why = missing_tools()
if _why:
    pytest.skip(_why, allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Booted:
    def __init__(self, image: Path, port: int, qga: Path, console: Path) -> None:
        self.image, self.port, self.qga, self.console = image, port, qga, console

    def ssh(self, cmd: str, user: str = "vagrant", timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ssh", "-i", str(self.image / "id_ed25519"), "-p", str(self.port), "-o", "BatchMode=yes",
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10",
             "-o", "LogLevel=ERROR", f"{user}@127.0.0.1", cmd],
            capture_output=True, text=True, timeout=timeout)

    def agent(self, command: str) -> object:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(self.qga))
            s.sendall(json.dumps({"execute": command}).encode() + b"\n")
            buf = b""
            while b"\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    raise ConnectionError("guest agent closed the socket")
                buf += chunk
        return json.loads(buf.split(b"\n", 1)[0])


@pytest.fixture(scope="module")
def booted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Booted]:
    image = debian_image()
    tmp = tmp_path_factory.mktemp("debian")
    disk, qga, console = tmp / "disk.qcow2", tmp / "qga.sock", tmp / "console.log"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image / "disk.qcow2"),
                    str(disk)], check=True)
    port = free_port()
    qemu = subprocess.Popen([
        "qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-display", "none", "-monitor", "none",
        "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initrd.img"),
        "-append", (image / "cmdline").read_text().strip(),
        "-drive", f"file={disk},if=virtio",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22", "-device", "virtio-net-pci,netdev=n0",
        "-chardev", f"socket,id=qga,path={qga},server=on,wait=off",
        "-device", "virtio-serial", "-device", "virtserialport,chardev=qga,name=org.qemu.guest_agent.0",
        "-serial", f"file:{console}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        b = Booted(image, port, qga, console)

        def up() -> bool:
            if qemu.poll() is not None:
                raise RuntimeError(f"QEMU exited: {qemu.stderr.read().decode() if qemu.stderr else ''}")
            return b.ssh("true", timeout=30).returncode == 0

        try:
            wait_until(up, 900, interval=3, what="SSH in the Debian guest", fatal=(RuntimeError,))
        except TimeoutError:
            print(console.read_text(errors="replace")[-4000:])
            raise
        yield b
    finally:
        stop_process(qemu, 10)


def test_ssh_with_the_build_key_and_sudo(booted: Booted) -> None:
    proc = booted.ssh("sudo -n id -u")
    assert proc.returncode == 0 and proc.stdout.strip() == "0", proc.stdout + proc.stderr
    proc = booted.ssh("id -u", user="root")
    assert proc.returncode == 0 and proc.stdout.strip() == "0", proc.stdout + proc.stderr


def test_tools_for_ansible_and_the_lab(booted: Booted) -> None:
    proc = booted.ssh("python3 -c 'import sys; print(sys.version_info[0])' && iperf3 --version && ip -V")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[0] == "3" and "iperf 3" in proc.stdout and "iproute2" in proc.stdout


def test_guest_agent_answers(booted: Booted) -> None:
    assert booted.ssh("systemctl is-active qemu-guest-agent").stdout.strip() == "active"
    assert wait_until(lambda: booted.agent("guest-ping") == {"return": {}}, 120, interval=2,
                      what="guest-ping answered")


def test_host_key_made_at_first_boot(booted: Booted) -> None:
    # the image carries no host key: this guest made its own
    proc = booted.ssh("sudo -n ls /etc/ssh/")
    assert "ssh_host_ed25519_key" in proc.stdout, proc.stdout + proc.stderr


def test_the_key_is_made_by_the_build_not_committed(booted: Booted) -> None:
    pub = (booted.image / "id_ed25519.pub").read_text().split()[1]
    if shutil.which("git") and (ROOT / ".git").exists():
        grep = subprocess.run(["git", "grep", "-l", pub], cwd=ROOT, capture_output=True, text=True)
        assert grep.returncode == 1, grep.stdout
    assert (booted.image / "id_ed25519").stat().st_mode & 0o077 == 0


def test_cached_until_an_input_changes(booted: Booted) -> None:
    proc = subprocess.run(["bash", str(ROOT / "vm-images" / "build-debian.sh")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "up to date" in proc.stderr and Path(proc.stdout.split()[-1]) == booted.image
    box = booted.image / "box"
    meta = json.loads((box / "metadata.json").read_text())
    assert meta["provider"] == "libvirt" and meta["format"] == "qcow2" and (box / "box.img").exists()
