"""An interface's MAC address and MTU, read with ioctls.

Used by the uplink, the host link and the master's link monitor alike, so it is
none of theirs: a different uplink (``seams.UplinkPort``) leaves it as it is.

Rules:
- ``interface_mac`` raises ``UplinkError`` naming the interface; ``interface_mtu``
  raises ``OSError`` (its callers decide what a vanished interface means).
"""

from __future__ import annotations

import fcntl
import socket
import struct

from ..errors import UplinkError

SIOCGIFHWADDR = 0x8927
SIOCGIFMTU = 0x8921


def interface_mac(name: str) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            res = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, struct.pack("256s", name.encode()))
        except OSError as e:
            raise UplinkError(f"master {name}: cannot read its MAC address: {e.strerror}") from e
    return bytes(res[18:24])


def interface_mtu(name: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        res = fcntl.ioctl(s.fileno(), SIOCGIFMTU, struct.pack("256s", name.encode()))
    mtu: int = struct.unpack_from("i", res, 16)[0]
    return mtu
