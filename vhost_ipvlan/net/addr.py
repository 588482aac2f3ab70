"""MAC and IP addresses as ``bytes``: the only representation used on the hot path.

Rules:
- A MAC address is 6 bytes, an IPv4 address 4 bytes, an IPv6 address 16 bytes.
  They are plain ``bytes`` so they hash, compare with ``memoryview`` slices and can
  be dictionary keys; no wrapper object is created per frame.
- The text forms are parsed and printed here, at configuration time only
  (``parse_mac``/``format_mac``, ``parse_ip``/``format_ip``); they raise
  ``ValueError`` with a message quoting the bad input.
- The predicates (``is_multicast_mac``, ``is_link_local_v6`` ...) take bytes and never
  raise, whatever their length.
"""

from __future__ import annotations

import ipaddress

MAC_LEN = 6
BROADCAST_MAC = b"\xff" * 6
ZERO_MAC = b"\x00" * 6
ZERO_V4 = b"\x00" * 4
ZERO_V6 = b"\x00" * 16

_HEX = frozenset("0123456789abcdefABCDEF")


def parse_mac(text: str) -> bytes:
    """Parse ``aa:bb:cc:dd:ee:ff`` (or ``-`` separated) into 6 bytes."""
    parts = text.strip().replace("-", ":").split(":")
    if len(parts) != MAC_LEN or any(
        not 1 <= len(p) <= 2 or not set(p) <= _HEX for p in parts
    ):
        raise ValueError(f"invalid MAC address {text!r} (expected aa:bb:cc:dd:ee:ff)")
    return bytes(int(p, 16) for p in parts)


def format_mac(mac: bytes | bytearray | memoryview) -> str:
    """Format 6 bytes as ``aa:bb:cc:dd:ee:ff``."""
    return ":".join(f"{b:02x}" for b in bytes(mac))


def is_multicast_mac(mac: bytes) -> bool:
    """True for multicast and broadcast MACs (I/G bit set); False if empty."""
    return bool(mac) and bool(mac[0] & 1)


def parse_ip(
    value: str | bytes | ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> bytes:
    """Return the packed form (4 or 16 bytes) of an IPv4/IPv6 address."""
    if isinstance(value, bytes):
        if len(value) not in (4, 16):
            raise ValueError(f"invalid packed IP address {value!r} (need 4 or 16 bytes)")
        return value
    if isinstance(value, str):
        try:
            return ipaddress.ip_address(value.strip()).packed
        except ValueError:
            raise ValueError(f"invalid IP address {value!r}") from None
    return value.packed


def format_ip(addr: bytes) -> str:
    """Format 4 or 16 packed bytes as an IP address string."""
    return str(ipaddress.ip_address(addr))


def is_link_local_v6(addr: bytes) -> bool:
    """True for fe80::/10."""
    return len(addr) == 16 and addr[0] == 0xFE and (addr[1] & 0xC0) == 0x80


def is_unicast_ip(addr: bytes) -> bool:
    """True if ``addr`` may be assigned to a slave: not unspecified, multicast,
    limited broadcast or loopback."""
    if len(addr) == 4:
        return addr != ZERO_V4 and addr[0] < 224 and addr[0] != 127
    if len(addr) == 16:
        return addr != ZERO_V6 and addr[0] != 0xFF and addr != ZERO_V6[:15] + b"\x01"
    return False


def eui64_link_local(mac: bytes) -> bytes:
    """The modified-EUI-64 link-local address (RFC 4291) a guest derives from ``mac``."""
    return (
        b"\xfe\x80" + ZERO_V6[:6] + bytes([mac[0] ^ 0x02]) + mac[1:3] + b"\xff\xfe" + mac[3:6]
    )
