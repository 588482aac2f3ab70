"""Taking guest-bound frames away from the host stack ("consume"), with nftables.

The kernel's ipvlan rx_handler *consumes* frames for slave addresses: the host
stack never sees, answers, forwards or ICMPs them. An AF_PACKET socket only gets
copies, so the daemon pairs it with a netdev-family ingress chain on the master
that drops exactly those frames; packet taps run before the ingress hook, so the
daemon still receives them (``test_outside_ping_reaches_guest_and_host_does_not_see_it``).

Rules:
- One table ``netdev vhost_ipvlan`` per network namespace, one chain per master
  with three named sets (``<chain>_v4``, ``<chain>_v6`` and ``<chain>_t``: the IPv6
  addresses again as 128-bit integers, for the Neighbour Solicitation's target).
  Every script runs as one transaction (atomic): all of it or nothing.
- Dropped: IPv4/IPv6 packets to a slave address, ARP whose target is one, and
  Neighbour Solicitations whose target is one. Broadcast and multicast are left
  alone: the host always keeps its copy. In l3s (``ip=False``) the host forwards
  guest-bound IP into the host link, so only ARP, NS and IPv6 packets to a slave's
  link-local address (``fe80::/10`` and in the set) are dropped: the host cannot
  forward those, the daemon delivers them.
- Changes are incremental (``Chain.sync``): only the addresses that came or went
  are added to or deleted from the sets, so a change costs the same with 1 or
  1000 slaves. ``consume`` (re)writes a chain and its sets whole: the first time,
  after the master came back, and when a change by difference is refused (the
  kernel no longer holds what the daemon wrote: ``nft flush ruleset``, as
  nftables.service's reload does). ``release`` works whether or not the chain and
  its sets still exist.
- Scripts run in-process through libnftables (``libnftables.so.1``, ctypes; one
  context per network namespace) when it can be loaded, else through ``nft -f -``.
- Nothing is spliced into a script unchecked: addresses are re-formatted by
  ``ipaddress``, the master must be an interface name of the configuration's
  charset (no quote, ``;``, ``#`` or whitespace) and a chain name a plain word;
  anything else is an ``UplinkError`` and no script runs.
"""
from __future__ import annotations

import ctypes
import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Iterable

from ..errors import UplinkError

TABLE = "vhost_ipvlan"
_IFNAME = re.compile(r"[A-Za-z0-9_.@+-]{1,15}")  # config._IFNAME
_CHAIN = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,28}")  # room for the sets' suffixes

#: an address as text or packed bytes
Address = str | bytes


def _word(kind: str, pattern: re.Pattern[str], text: str) -> str:
    if not pattern.fullmatch(text):
        raise UplinkError(f"nft: {text!r} is not a valid {kind} for an nft script")
    return text


class _Libnftables:
    """libnftables through ctypes: one context per network namespace (a context's
    netlink socket stays in the namespace it was made in)."""

    def __init__(self) -> None:
        lib = ctypes.CDLL("libnftables.so.1")
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.lib = lib
        self.contexts: dict[int, int] = {}

    def run(self, script: str) -> str | None:
        """Run ``script``; None, or the first line of nft's error."""
        netns = os.stat("/proc/thread-self/ns/net").st_ino
        ctx = self.contexts.get(netns)
        if ctx is None:
            ctx = self.lib.nft_ctx_new(0)
            if not ctx:
                raise UplinkError("nft: cannot create a libnftables context")
            self.lib.nft_ctx_buffer_output(ctx)
            self.lib.nft_ctx_buffer_error(ctx)
            self.contexts[netns] = ctx
        rc = self.lib.nft_run_cmd_from_buffer(ctx, script.encode())
        self.lib.nft_ctx_get_output_buffer(ctx)  # read (and so reset) both buffers
        err = (self.lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
        if rc == 0:
            return None
        return (err.strip().splitlines() or ["no message"])[0]


_lib: _Libnftables | None = None
_lib_missing = False


def _library() -> _Libnftables | None:
    global _lib, _lib_missing
    if _lib is None and not _lib_missing:
        try:
            _lib = _Libnftables()
        except (OSError, AttributeError):
            _lib_missing = True
    return _lib


def _run(script: str) -> None:
    lib = _library()
    if lib is not None:
        first = lib.run(script)
        if first is not None:
            raise UplinkError(f"nft failed: {first}")
        return
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


def _elements(chain: str, v4: Iterable[Address], v6: Iterable[Address]) -> list[tuple[str, list[str]]]:
    """(set name, elements as nft text) for these addresses (text or packed)."""
    a6 = [ipaddress.IPv6Address(a) for a in v6]
    return [(f"{chain}_v4", [str(ipaddress.IPv4Address(a)) for a in v4]), (f"{chain}_v6", [str(a) for a in a6]),
            (f"{chain}_t", [f"0x{a.packed.hex()}" for a in a6])]


def _element_lines(verb: str, sets: list[tuple[str, list[str]]]) -> list[str]:
    return [f"{verb} element netdev {TABLE} {name} {{ {', '.join(items)} }}" for name, items in sets if items]


def consume(chain: str, master: str, v4_addresses: Iterable[Address], v6_addresses: Iterable[Address],
            *, ip: bool = True) -> None:
    """(Re)write ``master``'s chain and sets: its ingress drops what belongs to exactly these addresses.

    ``ip=False`` (l3s) drops only ARP, NS and IPv6 to link-locals: the host must forward the other IP packets."""
    chain = _word("chain name", _CHAIN, chain)
    master = _word("interface name", _IFNAME, master)
    sets = _elements(chain, v4_addresses, v6_addresses)
    t = f"netdev {TABLE}"
    lines = [
        f"table {t} {{}}",
        f'add chain {t} {chain} {{ type filter hook ingress device "{master}" priority -500; }}',
        _add_sets(t, chain) + f"flush chain {t} {chain}",
        *(f"flush set {t} {name}" for name, _ in sets),
    ]
    if ip:
        lines.append(f"add rule {t} {chain} ip daddr @{chain}_v4 drop")
    lines.append(f"add rule {t} {chain} arp daddr ip @{chain}_v4 drop")
    lines.append(f"add rule {t} {chain} ip6 daddr {'' if ip else 'fe80::/10 ip6 daddr '}@{chain}_v6 drop")
    lines.append(f"add rule {t} {chain} icmpv6 type nd-neighbor-solicit @th,64,128 @{chain}_t drop")
    _run("\n".join(lines + _element_lines("add", sets)) + "\n")


def update(chain: str, add: tuple[Iterable[Address], Iterable[Address]],
           delete: tuple[Iterable[Address], Iterable[Address]]) -> None:
    """Add and delete addresses ((IPv4, IPv6), text or packed) of a chain ``consume``
    made, in one transaction."""
    chain = _word("chain name", _CHAIN, chain)
    lines = _element_lines("delete", _elements(chain, *delete)) + _element_lines("add", _elements(chain, *add))
    if lines:
        _run("\n".join(lines) + "\n")


def release(chain: str) -> None:
    """Delete a chain and its sets (only that master's: the other chains keep their rules)."""
    chain = _word("chain name", _CHAIN, chain)
    t = f"netdev {TABLE}"
    _run(f"table {t} {{}}\nadd chain {t} {chain}\n{_add_sets(t, chain)}flush chain {t} {chain}\n"
         f"delete chain {t} {chain}\n" + "".join(f"delete set {t} {chain}_{s}\n" for s in ("v4", "v6", "t")))


def _add_sets(t: str, chain: str) -> str:
    """The script lines that make ``chain``'s sets (nothing if they exist)."""
    return (f"add set {t} {chain}_v4 {{ type ipv4_addr; }}\nadd set {t} {chain}_v6 {{ type ipv6_addr; }}\n"
            f"add set {t} {chain}_t {{ typeof @th,64,128; }}\n")


class Chain:
    """One master's chain, kept equal to a set of addresses by difference.

    ``applied`` is what the kernel holds (packed addresses): None before the first
    ``sync`` and after ``release``; it changes only when a script succeeded."""

    def __init__(self, name: str, master: str, *, ip: bool = True) -> None:
        self.name = _word("chain name", _CHAIN, name)
        self.master = master
        self.ip = ip
        self.applied: frozenset[bytes] | None = None

    def sync(self, addresses: Iterable[bytes]) -> None:
        """Make the chain drop exactly ``addresses`` (packed IPv4/IPv6)."""
        want = frozenset(addresses)
        if self.applied is None:
            consume(self.name, self.master, _v4(want), _v6(want), ip=self.ip)
        elif want != self.applied:
            gone, new = self.applied - want, want - self.applied
            try:
                update(self.name, (_v4(new), _v6(new)), (_v4(gone), _v6(gone)))
            except UplinkError:  # the kernel holds something else (flushed by someone): write it whole
                consume(self.name, self.master, _v4(want), _v6(want), ip=self.ip)
        self.applied = want

    def reapply(self, addresses: Iterable[bytes]) -> None:
        """Write the chain whole again (the master came back)."""
        self.applied = None
        self.sync(addresses)

    def release(self) -> None:
        """Delete the chain and its sets (nothing to do if they were never made); if
        that fails the kernel still holds them (one transaction), and so does ``applied``."""
        if self.applied is not None:
            release(self.name)
            self.applied = None

    def forget(self) -> None:
        """The master is gone: what the kernel held is unknown (a kernel may drop a
        netdev chain with its device); the next ``sync`` writes the chain whole."""
        self.applied = None


def _v4(addresses: Iterable[bytes]) -> list[bytes]:
    return sorted(a for a in addresses if len(a) == 4)


def _v6(addresses: Iterable[bytes]) -> list[bytes]:
    return sorted(a for a in addresses if len(a) == 16)
