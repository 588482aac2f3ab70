"""Host <-> guest traffic through a host-side tap device (a departure, docs/kernel-behaviour.md §3).

Kernel ipvlan never delivers the master's own traffic to its slaves (it only hooks
the master's RX), and a slave's packets to the host's addresses get no reply
(docs/kernel-behaviour.md §3, §8.1 row c). vhost-ipvlan gives every port a tap device, ``vih<N>``
(N = the master's ifindex), owned by the daemon in its own namespace:

- the host reaches a guest through a route per configured slave address
  (``ADDR/32`` or ``ADDR/128 dev vih<N>``). They are more specific than the
  master's connected prefix, so the host's replies to guests take the tap too,
  never the master. The tap is ``NOARP``: the host's stack resolves nothing on it
  and addresses every frame to the tap's own MAC; the daemon reads the frame,
  looks up the owner of its destination address, rewrites the Ethernet header
  (destination = the guest's MAC, source = the master's) and delivers it
  (``PortDatapath._host_readable``);
- a guest reaches the host by sending to the master's MAC (the policy's
  ``TO_HOST`` verdict, and ``ROUTE`` in l3s): the daemon writes the frame into the
  tap, destination MAC rewritten to the tap's, and the host's stack receives it;
- a guest resolves the host's addresses on the master through the daemon, which
  answers its ARP requests and Neighbour Solicitations for them with the master's
  MAC (the host's stack never sees a guest's broadcast in l2, as in the kernel;
  ``PortDatapath._answer_for_host``).

This module is the I/O only (the tap, its routes, the sysctls): ``recv``/``send``
like ``uplink.Uplink``; which guest gets a frame from the host, and what is
counted, is the port's data path's (``datapath.py``).

Rules:
- The tap is a plain (non-persistent) tun device: closing its file descriptor
  deletes it and every route through it, so a crashed daemon leaves nothing behind.
- It carries the 12-byte virtio-net header (IFF_VNET_HDR, TUNSETVNETHDRSZ 12), the
  same layout as the daemon's buffers: frames move with one read or write.
  No offloads are enabled on the tap, so the host hands it complete frames.
- Routes follow the port's configured and learned (learning mode) addresses
  (``sync``, called wherever the nftables chain is updated), changed by
  difference in one batch (``rtnl.route_batch``). Learned link-locals
  get no route, nor does a learned address outside the master's connected prefixes
  (``Port.on_link``: learning refuses those, but the master's prefixes may change
  later): the host's own traffic to an off-link address never goes into a guest.
- Nothing is raised per frame: ``recv`` raises ``OSError`` only for a read error
  (the caller counts it), ``send`` returns False for a frame it could not write
  (the caller counts ``host_send_failed`` on the sender, once).
- l3s (``enable_forwarding``): IPv4 forwarding is turned on for the tap and the
  master only, IPv6 forwarding for the namespace (the kernel has no per-device
  switch for it); the values found are restored when the link closes (IPv6's, the
  namespace's, when the last l3s host link closes: ``_SHARED``). Whoever
  turns one off meanwhile (``sysctl net.ipv4.ip_forward=0`` rewrites every
  interface's) is overruled: the daemon follows forwarding changes through netlink
  (``RTM_NEWNETCONF``: ``daemon.master`` asks ``needs_forwarding``), and
  ``check_forwarding`` turns them on again, with one log line per change.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import logging
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from pyroute2.netlink.exceptions import NetlinkError

from ..errors import UplinkError
from ..net.frames import ETH_HLEN
from ..virtio import net
from .ifinfo import interface_mac
from .rtnl import Rtnl, route_batch

if TYPE_CHECKING:
    from ..switch.port import Port

log = logging.getLogger(__name__)

TUNSETIFF = 0x400454CA
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_UP = 0x1
IFF_NOARP = 0x80
_SYSCTL = Path("/proc/sys/net")
#: the namespace's own sysctl l3s host links share (IPv6 has no per-device forwarding)
_SHARED_SYSCTLS = ("ipv6/conf/all/forwarding",)
#: (network namespace, shared sysctl) -> [the value found by its first user, users]
_SHARED: dict[tuple[int, str], tuple[str | None, int]] = {}


def tap_name(master_index: int) -> str:
    return f"vih{master_index}"


def _netns() -> int:
    try:
        return os.stat("/proc/thread-self/ns/net").st_ino
    except OSError:
        return 0


def _sysctl(path: str, value: str | None = None) -> str | None:
    p = _SYSCTL / path
    try:
        old = p.read_text().strip()
        if value is not None and old != value:
            p.write_text(value)
        return old
    except OSError:
        return None


class HostLink:
    """The tap device between one port and the host's own stack."""

    def __init__(self, port: Port, master_index: int) -> None:
        #: the switch's port: its master's name, and the addresses routed through the tap
        self.port = port
        self.master_index = master_index
        self.name = tap_name(master_index)
        self._restore: list[tuple[str, str]] = []
        #: the ``_SHARED`` sysctls this link uses
        self._shared: list[tuple[int, str]] = []
        #: the sysctls l3s needs on ("1"); empty unless ``enable_forwarding``
        self.forwarding: tuple[str, ...] = ()
        self.routes: set[bytes] = set()
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            ifr = struct.pack("16sH22x", self.name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
            fcntl.ioctl(fd, TUNSETIFF, ifr)
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", net.HDR_LEN))
        except OSError as e:
            os.close(fd)
            raise UplinkError(f"master {port.master}: cannot create host tap {self.name}: {e.strerror}") from e
        self.fd = fd
        self.ipr = Rtnl()
        try:
            self.index: int = self.ipr.call("link_lookup", ifname=self.name)[0]
            # no link-local, no DAD, no router solicitations: the tap only carries routed traffic
            _sysctl(f"ipv6/conf/{self.name}/addr_gen_mode", "1")
            _sysctl(f"ipv6/conf/{self.name}/accept_dad", "0")
            _sysctl(f"ipv6/conf/{self.name}/router_solicitations", "0")
            self.ipr.call("link", "set", index=self.index, flags=IFF_UP | IFF_NOARP, change=IFF_UP | IFF_NOARP)
        except (NetlinkError, OSError, IndexError) as e:
            self.close()
            raise UplinkError(f"master {port.master}: cannot set up host tap {self.name}: {e}") from e
        self.mac = interface_mac(self.name)
        self.rx_packets = self.tx_packets = 0
        log.info("master %s: host link %s up (index %d)", port.master, self.name, self.index)

    # -- life cycle ---------------------------------------------------------------

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        """Delete the tap (and with it every route through it); undo sysctls.
        The caller stops watching ``fileno()`` first."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        for path, old in reversed(self._restore):
            _sysctl(path, old)
        self._restore.clear()
        for key in self._shared:
            found, users = _SHARED.pop(key)
            if users > 1:
                _SHARED[key] = (found, users - 1)
            elif found is not None and found != "1":
                _sysctl(key[1], found)
        self._shared.clear()
        self.routes.clear()
        self.ipr.close()

    def enable_forwarding(self) -> None:
        """l3s: the host forwards between the tap and the master."""
        self.forwarding = (f"ipv4/conf/{self.name}/forwarding", f"ipv4/conf/{self.port.master}/forwarding",
                           "ipv6/conf/all/forwarding")
        for path in self.forwarding:
            old = _sysctl(path, "1")
            if path in _SHARED_SYSCTLS:  # restored by the last link that uses it
                key = (_netns(), path)
                found, users = _SHARED.get(key, (old, 0))
                _SHARED[key] = (found, users + 1)
                self._shared.append(key)
            elif old is not None and old != "1":
                self._restore.append((path, old))

    def needs_forwarding(self, family: int, index: int, master_index: int) -> bool:
        """Whether forwarding turned off for interface ``index`` (netconf: -1 is IPv6's
        ``all``) is forwarding l3s needs: this link's, the master's, or IPv6's."""
        return bool(self.forwarding) and (
            (family == 2 and index in (self.index, master_index)) or (family == 10 and index == -1))

    def check_forwarding(self) -> None:
        """Turn on again whatever forwarding l3s needs that is off (one log line)."""
        if self.fd < 0:
            return
        fixed = [path for path in self.forwarding if _sysctl(path, "1") not in ("1", None)]
        if fixed:
            names = ", ".join("net." + p.replace("/", ".") for p in fixed)
            log.warning("master %s: %s turned off by someone else; l3s needs it: turned on again",
                        self.port.master, names)

    # -- routes -------------------------------------------------------------------

    def sync(self) -> None:
        """Make the routes through the tap equal to the slaves' configured and learned addresses."""
        port = self.port
        want: set[bytes] = set()
        for slave in port.slaves.values():
            want |= slave.addresses
            want.update(a for a in slave.learned_addrs if port.on_link(a))
        gone, new = sorted(self.routes - want), sorted(want - self.routes)
        if not gone and not new:
            return
        changes = [(True, a) for a in gone] + [(False, a) for a in new]
        try:  # a few sendmsg calls, however many routes
            errors = self._route_batch(changes)
        except OSError as e:
            errors = [e.errno or errno.EIO] * len(changes)
        self.routes.difference_update(gone)  # a route that cannot be deleted is gone already
        for addr, err in zip(new, errors[len(gone):], strict=True):
            if err:
                log.warning("host link %s: cannot route %s through it: %s", self.name, ipaddress.ip_address(addr),
                            os.strerror(err))
            else:
                self.routes.add(addr)

    def _route_batch(self, changes: list[tuple[bool, bytes]]) -> list[int]:
        return route_batch(self.index, changes)

    # -- frames -------------------------------------------------------------------

    def recv(self, buf: memoryview) -> int:
        """Read one frame from the host into ``buf`` (12-byte header + frame): its
        length, 0 if there is none; a read error raises ``OSError``."""
        try:
            n = os.readv(self.fd, [buf])
        except (BlockingIOError, InterruptedError):
            return 0
        if n >= net.HDR_LEN + ETH_HLEN:
            self.rx_packets += 1
        return n

    def send(self, buf: memoryview, length: int) -> bool:
        """Give ``buf[:length]`` (12-byte header + frame) to the host's stack,
        addressed to the tap's MAC; False if it could not be written."""
        if self.fd < 0:
            return False
        buf[net.HDR_LEN : net.HDR_LEN + 6] = self.mac
        try:
            os.write(self.fd, buf[:length])
        except OSError:
            return False
        self.tx_packets += 1
        return True
