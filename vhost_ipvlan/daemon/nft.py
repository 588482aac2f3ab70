"""Taking guest-bound frames away from the host stack ("consume"), with nftables.

The kernel's ipvlan rx_handler *consumes* frames for slave addresses: the host
stack never sees, answers, forwards or ICMPs them. An AF_PACKET socket only gets
copies, so the daemon pairs it with a netdev-family ingress chain on the master
that drops exactly those frames; packet taps run before the ingress hook, so the
daemon still receives them (ENVIRONMENT.md, verified).

Rules:
- One table ``netdev vhost_ipvlan`` per network namespace, one chain per master;
  a chain's rules are replaced in a single ``nft -f`` transaction (atomic).
- Dropped: IPv4/IPv6 packets to a slave address, ARP whose target is one, and
  Neighbour Solicitations whose target is one. Broadcast and multicast are left
  alone: the host always keeps its copy. In l3s (``ip=False``) the host forwards
  guest-bound IP into the host link, so only ARP, NS and IPv6 packets to a slave's
  link-local address are dropped (the host cannot forward those: the daemon
  delivers them).
- Nothing is spliced into a script unchecked: addresses are re-formatted by
  ``ipaddress``, the master must be an interface name of the configuration's
  charset (no quote, ``;``, ``#`` or whitespace) and a chain name a plain word;
  anything else is an ``UplinkError`` and no script runs.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from collections.abc import Iterable

from ..errors import UplinkError

TABLE = "vhost_ipvlan"
_IFNAME = re.compile(r"[A-Za-z0-9_.@+-]{1,15}")  # config._IFNAME
_CHAIN = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")


def _word(kind: str, pattern: re.Pattern[str], text: str) -> str:
    if not pattern.fullmatch(text):
        raise UplinkError(f"nft: {text!r} is not a valid {kind} for an nft script")
    return text


def _run(script: str) -> None:
    nft = shutil.which("nft") or "/usr/sbin/nft"
    try:
        proc = subprocess.run([nft, "-f", "-"], input=script, text=True, capture_output=True, timeout=30)
    except FileNotFoundError:
        raise UplinkError("nft (package nftables) is not installed; it is needed to consume guest traffic") from None
    if proc.returncode:
        first = (proc.stderr.strip().splitlines() or ["no message"])[0]
        raise UplinkError(f"nft failed: {first}")


def reset() -> None:
    """Remove rules a previous daemon in this namespace may have left (crash)."""
    _run(f"table netdev {TABLE} {{}}\ndelete table netdev {TABLE}\n")


def remove() -> None:
    reset()


def consume(chain: str, master: str, v4_addresses: Iterable[str], v6_addresses: Iterable[str],
            *, ip: bool = True) -> None:
    """Make ``master``'s ingress drop what belongs to these slave addresses.

    ``ip=False`` (l3s) drops only ARP, NS and IPv6 to link-locals: the host must forward the other IP packets."""
    chain = _word("chain name", _CHAIN, chain)
    master = _word("interface name", _IFNAME, master)
    v4 = [str(ipaddress.IPv4Address(a)) for a in v4_addresses]
    v6 = [ipaddress.IPv6Address(a) for a in v6_addresses]
    lines = [
        f"table netdev {TABLE} {{}}",
        f'add chain netdev {TABLE} {chain} {{ type filter hook ingress device "{master}" priority -500; }}',
        f"flush chain netdev {TABLE} {chain}",
    ]
    if v4:
        s = ", ".join(v4)
        if ip:
            lines.append(f"add rule netdev {TABLE} {chain} ip daddr {{ {s} }} drop")
        lines.append(f"add rule netdev {TABLE} {chain} arp daddr ip {{ {s} }} drop")
    if v6:
        s = ", ".join(str(a) for a in v6)
        targets = ", ".join(f"0x{a.packed.hex()}" for a in v6)
        steal = v6 if ip else [a for a in v6 if a.is_link_local]
        if steal:
            lines.append(f"add rule netdev {TABLE} {chain} ip6 daddr {{ {', '.join(str(a) for a in steal)} }} drop")
        lines.append(
            f"add rule netdev {TABLE} {chain} icmpv6 type nd-neighbor-solicit @th,64,128 {{ {targets} }} drop"
        )
    _run("\n".join(lines) + "\n")


def release(chain: str) -> None:
    chain = _word("chain name", _CHAIN, chain)
    _run(f"table netdev {TABLE} {{}}\nflush table netdev {TABLE}\ndelete chain netdev {TABLE} {chain}\n")
