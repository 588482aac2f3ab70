"""The Debian image's static path (vm-images/debian/vi-net): ``vi.net=MAC,ADDRESS...[,via=GW]``
on the kernel command line becomes a systemd-networkd file for that NIC with no DHCP and no
RA; without it nothing is written and every NIC takes 90-dhcp.network (DHCP, RA). Runs the
script on this machine with another command line file and output directory; no guest."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.lab.lab import ROOT

DEBIAN = ROOT / "vm-images" / "debian"


def vi_net(tmp: Path, cmdline: str) -> dict[str, str]:
    (tmp / "cmdline").write_text(cmdline + "\n")
    out = tmp / "network"
    subprocess.run(["sh", str(DEBIAN / "vi-net")], check=True, timeout=30,
                   env=dict(os.environ, VI_NET_CMDLINE=str(tmp / "cmdline"), VI_NET_DIR=str(out)))
    return {f.name: f.read_text() for f in sorted(out.iterdir())}


def test_no_vi_net_no_static_file(tmp_path: Path) -> None:
    assert vi_net(tmp_path, "root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet") == {}


def test_static_addresses_and_gateways(tmp_path: Path) -> None:
    files = vi_net(tmp_path, "root=/dev/vda vi.net=52:54:00:1a:00:11,192.0.2.11/24,2001:db8::11/64,via=192.0.2.1 "
                             "quiet vi.net=52:54:00:1a:01:11,198.51.100.11/24")
    assert list(files) == ["10-vi-0.network", "10-vi-1.network"]
    first = files["10-vi-0.network"].splitlines()
    assert "MACAddress=52:54:00:1a:00:11" in first and "DHCP=no" in first and "IPv6AcceptRA=no" in first
    assert [ln for ln in first if ln.startswith(("Address=", "Gateway="))] == [
        "Address=192.0.2.11/24", "Address=2001:db8::11/64", "Gateway=192.0.2.1"]
    second = files["10-vi-1.network"].splitlines()
    assert "MACAddress=52:54:00:1a:01:11" in second and "Address=198.51.100.11/24" in second
    assert not any(ln.startswith("Gateway=") for ln in second)


def test_a_later_boot_forgets_the_old_files(tmp_path: Path) -> None:
    vi_net(tmp_path, "vi.net=52:54:00:1a:00:11,192.0.2.11/24")
    assert vi_net(tmp_path, "quiet") == {}


def test_the_default_is_dhcp_and_ra() -> None:
    """The catch-all file every NIC without vi.net= gets: DHCP (v4 and v6) and RA."""
    lines = (DEBIAN / "90-dhcp.network").read_text().splitlines()
    assert {"DHCP=yes", "IPv6AcceptRA=yes", "UseDNS=yes", "UseDomains=yes", "UseHostname=yes"} <= set(lines)
