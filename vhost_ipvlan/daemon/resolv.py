"""The host's resolver configuration, for the DHCP server's DNS options (``net.dhcp``).

Rules:
- ``[daemon] dns`` / ``dns_search`` win where set; what is not set is read from the
  host: ``/etc/resolv.conf`` (``nameserver``: IPv4 for DHCPv4, IPv6 for DHCPv6 and
  RAs, at most ``MAX_DNS`` of each, not link-local (no zone to give);
  ``search``, else ``domain``: the last line of either wins, as in glibc).
- Loopback servers (systemd-resolved's 127.0.0.53, a local dnsmasq) are useless to
  a guest: they are left out. When that leaves none, the servers resolved uses
  upstream are read from ``/run/systemd/resolve/resolv.conf`` if it exists.
- Read when a port is added and when the ``[daemon]`` table changes (start-up,
  SIGHUP, never per DHCP message); a file that cannot be read gives nothing (no
  DNS option), logged once per read.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Final

from ..config import DaemonConfig
from ..net.dhcp import MAX_DNS

log = logging.getLogger(__name__)

RESOLV_CONF: Final = Path("/etc/resolv.conf")
RESOLVED_UPSTREAM: Final = Path("/run/systemd/resolve/resolv.conf")

Dns = tuple[tuple[bytes, ...], tuple[str, ...]]


def parse(text: str) -> tuple[list[bytes], list[str]]:
    """(nameservers that are not loopback: IPv4 then IPv6, search domains) from resolv.conf text."""
    servers: list[bytes] = []
    search: list[str] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) < 2:
            continue
        if words[0] == "nameserver":
            try:
                ip = ipaddress.ip_address(words[1])
            except ValueError:
                continue
            if not ip.is_loopback and not ip.is_unspecified and not ip.is_link_local and ip.packed not in servers:
                servers.append(ip.packed)
        elif words[0] in ("search", "domain"):
            search = words[1:] if words[0] == "search" else words[1:2]
    v4 = [a for a in servers if len(a) == 4][:MAX_DNS]
    return v4 + [a for a in servers if len(a) == 16][:MAX_DNS], search


def _read(path: Path) -> tuple[list[bytes], list[str]]:
    try:
        return parse(path.read_text(errors="replace"))
    except OSError as e:
        log.warning("cannot read %s for the DHCP server's DNS options: %s", path, e.strerror)
        return [], []


def dns(daemon: DaemonConfig, resolv: Path = RESOLV_CONF, upstream: Path = RESOLVED_UPSTREAM) -> Dns:
    """The DNS servers (packed IPv4 and IPv6) and search domains the DHCP servers hand out."""
    servers: list[bytes] = [ipaddress.ip_address(a).packed for a in daemon.dns or ()]
    search: list[str] = list(daemon.dns_search or ())
    if daemon.dns is None or daemon.dns_search is None:
        host_servers, host_search = _read(resolv)
        if not host_servers and daemon.dns is None and upstream.exists():
            host_servers = _read(upstream)[0]
        if daemon.dns is None:
            servers = host_servers
        if daemon.dns_search is None:
            search = host_search
    return tuple(servers), tuple(search)
