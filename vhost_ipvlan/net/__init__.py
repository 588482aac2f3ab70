"""Pure network-frame code: addresses, frame inspection, MAC translation.

Rules:
- Standard library only (``struct``, ``ipaddress``): no sockets, no mmap, no I/O.
- Addresses are ``bytes`` on the hot path (6-byte MAC, 4/16-byte IP); text forms
  exist only for configuration and display (``addr``).
- Parsers are bounds-checked and never raise on frame content (``frames``);
  translation works in place on a writable buffer (``translate``).
"""

from .addr import format_ip, format_mac, parse_ip, parse_mac
from .frames import classify
from .translate import to_guest, to_wire

__all__ = [
    "classify",
    "format_ip",
    "format_mac",
    "parse_ip",
    "parse_mac",
    "to_guest",
    "to_wire",
]
