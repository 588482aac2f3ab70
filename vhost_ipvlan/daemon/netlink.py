"""Link and address events from the kernel: an rtnetlink socket on the daemon's event loop.

Rules:
- One ``AF_NETLINK``/``NETLINK_ROUTE`` socket subscribed to ``RTMGRP_LINK`` (and,
  with an ``on_addr`` callback, ``RTMGRP_IPV4_IFADDR``/``RTMGRP_IPV6_IFADDR``),
  non-blocking, read by the asyncio loop when readable (no thread, no polling);
  messages are decoded with pyroute2's rtnetlink marshal.
- Every ``RTM_NEWLINK``/``RTM_DELLINK`` becomes a ``LinkState`` handed to the
  callback; the callback decides what matters (most links are not masters).
  Every ``RTM_NEWADDR``/``RTM_DELADDR`` becomes ``on_addr(index, packed address,
  present)``.
- A link is *up* when it is administratively up and running (``IFF_UP`` and
  ``IFF_RUNNING``: the kernel's operstate is UP, i.e. it has carrier).
- With an ``on_netconf`` callback it also subscribes to the IPv4 and IPv6 netconf
  groups: every ``RTM_NEWNETCONF`` that carries ``NETCONFA_FORWARDING`` becomes
  ``on_netconf(family, ifindex, forwarding)`` (ifindex ``NETCONFA_IFINDEX_ALL`` -1
  for ``all``, -2 for ``default``). pyroute2 does not decode netconf messages: they
  are read here (``netconf_forwarding``), everything else goes to its marshal.
- If the kernel drops notifications (``ENOBUFS``: our receive buffer overflowed),
  the callback's owner is told to re-read what it watches (``on_overflow``).
- ``read_link(name)`` reads one interface's state synchronously (ioctls), for
  start-up and re-synchronisation.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.rtnl import (
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWNETCONF,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_LINK,
    RTNLGRP_IPV4_NETCONF,
    RTNLGRP_IPV6_NETCONF,
)
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from .ifinfo import interface_mac, interface_mtu
from .rtnl import message_address

log = logging.getLogger(__name__)

IFF_UP = 0x1
IFF_RUNNING = 0x40
SIOCGIFFLAGS = 0x8913
RCVBUF = 1 << 20
RTMGRP_NETCONF = 1 << (RTNLGRP_IPV4_NETCONF - 1) | 1 << (RTNLGRP_IPV6_NETCONF - 1)
NETCONFA_IFINDEX = 1
NETCONFA_FORWARDING = 2
_NLMSG = struct.Struct("=IHHII")  # struct nlmsghdr
_NLA = struct.Struct("=HH")  # struct nlattr


def netconf_forwarding(data: bytes) -> tuple[list[tuple[int, int, int]], bytes]:
    """Split a netlink datagram: ``(family, ifindex, forwarding)`` of each
    ``RTM_NEWNETCONF`` with both attributes, and the other messages' bytes."""
    found: list[tuple[int, int, int]] = []
    rest = bytearray()
    off = 0
    while off + _NLMSG.size <= len(data):
        length, kind = _NLMSG.unpack_from(data, off)[:2]
        if length < _NLMSG.size or off + length > len(data):
            break
        if kind != RTM_NEWNETCONF:
            rest += data[off : off + length]
        elif length >= _NLMSG.size + 4:
            family = data[off + _NLMSG.size]
            attrs: dict[int, int] = {}
            a = off + _NLMSG.size + 4  # struct netconfmsg: one byte, aligned to 4
            while a + _NLA.size <= off + length:
                alen, atype = _NLA.unpack_from(data, a)
                if alen < _NLA.size or a + alen > off + length:
                    break
                if alen == _NLA.size + 4:
                    attrs[atype & 0x3FFF] = struct.unpack_from("=i", data, a + _NLA.size)[0]
                a += (alen + 3) & ~3
            if NETCONFA_IFINDEX in attrs and NETCONFA_FORWARDING in attrs:
                found.append((family, attrs[NETCONFA_IFINDEX], attrs[NETCONFA_FORWARDING]))
        off += (length + 3) & ~3
    return found, bytes(rest)


@dataclass(frozen=True, slots=True)
class LinkState:
    """One interface as a link message (or the ioctls) described it."""

    name: str
    index: int
    present: bool  # False: RTM_DELLINK (the interface is gone)
    up: bool  # administratively up and running (carrier)
    mtu: int
    mac: bytes | None


def _parse_mac(text: object) -> bytes | None:
    if not isinstance(text, str):
        return None
    try:
        mac = bytes.fromhex(text.replace(":", ""))
    except ValueError:
        return None
    return mac if len(mac) == 6 else None


def read_link(name: str) -> LinkState | None:
    """The current state of interface ``name``, or None if it does not exist."""
    try:
        index = socket.if_nametoindex(name)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            res = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, struct.pack("256s", name.encode()))
        flags: int = struct.unpack_from("H", res, 16)[0]
        mtu = interface_mtu(name)
        mac = interface_mac(name)
    except OSError:
        return None
    return LinkState(name, index, True, bool(flags & IFF_UP and flags & IFF_RUNNING), mtu, mac)


class LinkMonitor:
    """Calls ``on_link(state)`` for every link message, ``on_addr(index, addr, present)``
    for every address message, ``on_netconf(family, index, forwarding)`` for every
    forwarding change, ``on_overflow()`` after lost ones."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_link: Callable[[LinkState], None],
        on_overflow: Callable[[], None],
        on_addr: Callable[[int, bytes, bool], None] | None = None,
        on_netconf: Callable[[int, int, int], None] | None = None,
    ) -> None:
        self.loop = loop
        self.on_link = on_link
        self.on_overflow = on_overflow
        self.on_addr = on_addr
        self.on_netconf = on_netconf
        groups = RTMGRP_LINK | (RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR if on_addr is not None else 0) | \
            (RTMGRP_NETCONF if on_netconf is not None else 0)
        self._marshal = MarshalRtnl()
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.bind((0, groups))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock: socket.socket | None = sock
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        for _ in range(64):
            try:
                data = sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    log.warning("netlink: link notifications were lost; re-reading the masters")
                    self.on_overflow()
                    continue
                log.warning("netlink: read failed: %s", e)
                return
            if self.on_netconf is not None:
                changes, data = netconf_forwarding(data)
                for family, index, forwarding in changes:
                    self.on_netconf(family, index, forwarding)
            for msg in self._marshal.parse(data):
                kind = msg["header"]["type"]
                if kind in (RTM_NEWADDR, RTM_DELADDR):
                    self._address(msg, kind == RTM_NEWADDR)
                    continue
                if kind not in (RTM_NEWLINK, RTM_DELLINK):
                    continue
                name = msg.get_attr("IFLA_IFNAME")
                if not isinstance(name, str):
                    continue
                flags = int(msg["flags"])
                state = LinkState(
                    name=name,
                    index=int(msg["index"]),
                    present=kind == RTM_NEWLINK,
                    up=bool(flags & IFF_UP and flags & IFF_RUNNING),
                    mtu=int(msg.get_attr("IFLA_MTU") or 0),
                    mac=_parse_mac(msg.get_attr("IFLA_ADDRESS")),
                )
                self.on_link(state)

    def _address(self, msg: Any, present: bool) -> None:
        packed = message_address(msg)
        if self.on_addr is not None and packed is not None:
            self.on_addr(int(msg["index"]), packed, present)

    def close(self) -> None:
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
