"""Per-slave multicast filters: which multicast frames a guest receives.

The kernel gives every slave a multicast filter (``ipvlan_set_multicast_mac_filter``,
docs/kernel-behaviour.md §2 and §5: a 256-bit hash of the destination MAC, broadcast always set,
PROMISC/ALLMULTI set every bit) and fans multicast out only to slaves whose filter
matches, both from the wire and from other slaves. A vhost-user backend is never told
the guest's RX filter (QEMU keeps it), so the filter is built here:

- **Snooping** (``snoop``): the guest's own IGMP v1/v2/v3 reports and leaves and its
  MLD v1/v2 reports and dones (after a Hop-by-Hop header, as MLD always is) add and
  remove groups. IGMPv3/MLDv2 records: ``MODE_IS_EXCLUDE``/``CHANGE_TO_EXCLUDE`` and
  ``ALLOW_NEW_SOURCES`` join, ``MODE_IS_INCLUDE``/``CHANGE_TO_INCLUDE`` join with
  sources and leave without; ``BLOCK_OLD_SOURCES`` changes nothing. Filtering is by
  destination MAC (group -> 01:00:5e / 33:33 MAC), so sources are not filtered and
  IPv4 groups sharing a MAC share a fate, as on a NIC.
- **Bounded work**: at most ``MAX_RECORDS`` group records are read per IGMPv3/MLDv2
  report (the rest are ignored; a report that fits a 1500-byte MTU holds at most
  183 IGMPv3 records), and each join or leave is O(1) (the MAC set is a reference
  count per MAC, not rebuilt). The policy snoops only frames that passed the guards
  and source validation and fit the master's MTU (``Port.max_frame``).
- **Always in**: broadcast; 224.0.0.1 (01:00:5e:00:00:01); ff02::1 (33:33:00:00:00:01);
  the solicited-node group of every IPv6 address the slave owns (configured or learned),
  because a Linux guest does not report ff02::1 and a guest must get NS for its own
  addresses even before it reports.
- **Grace, per family**: IPv4 multicast MACs are not filtered until the guest's first
  IGMP message, IPv6 ones until its first MLD message. A guest that never sends any
  (or whose reports were sent before the daemon started: a guest only re-reports when
  queried) then still gets all multicast of that family, as before this filter existed.
  Other multicast MACs (no IP group, e.g. 01:80:c2:...) always pass unless an explicit
  filter is set: there is nothing to snoop for them.
- **Explicit filter** (``set_rx_filter``, fed from QMP ``query-rx-filter`` by
  ``daemon/rxfilter.py``; ``qmp_rx_filter`` reads the reply): once set it replaces
  snooping for delivery (snooping still records groups, so a fall back to it is
  informed): ``promisc`` or ``allmulti`` pass every multicast, otherwise exactly the
  MACs given plus broadcast. ``clear_rx_filter`` returns to snooping.

Rules: pure; never raises on frame content (every read is bounds-checked); called by
the policy on a guest's multicast frames only, and by the daemon's flood loop via
``accepts``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from ..net.addr import format_ip, format_mac, parse_mac
from ..net.frames import (
    ETH_HLEN,
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_HOPOPTS,
    IPPROTO_ICMPV6,
    IPV4_HLEN,
    OFF_ETHERTYPE,
    OFF_ICMPV6,
    OFF_IPV4_PROTO,
    OFF_IPV4_VER_IHL,
    OFF_IPV6_NEXT,
    Frame,
)

BROADCAST: Final = b"\xff" * 6
ALL_HOSTS_MAC: Final = bytes.fromhex("01005e000001")  # 224.0.0.1
ALL_NODES_MAC: Final = bytes.fromhex("333300000001")  # ff02::1

IPPROTO_IGMP: Final = 2
IGMP_V1_REPORT: Final = 0x12
IGMP_V2_REPORT: Final = 0x16
IGMP_V2_LEAVE: Final = 0x17
IGMP_V3_REPORT: Final = 0x22
MLD_V1_REPORT: Final = 131
MLD_V1_DONE: Final = 132
MLD_V2_REPORT: Final = 143
# IGMPv3 / MLDv2 group record types (RFC 3376 §4.2.12, RFC 3810 §5.2.12)
MODE_IS_INCLUDE: Final = 1
MODE_IS_EXCLUDE: Final = 2
CHANGE_TO_INCLUDE: Final = 3
CHANGE_TO_EXCLUDE: Final = 4
ALLOW_NEW_SOURCES: Final = 5

MAX_GROUPS: Final = 256  # per slave; joins beyond that are ignored (and counted)
MAX_RECORDS: Final = 256  # per IGMPv3/MLDv2 report; the rest are ignored


def group_mac(group: bytes) -> bytes:
    """The Ethernet multicast MAC of an IPv4 (4 bytes) or IPv6 (16 bytes) group."""
    if len(group) == 4:
        return b"\x01\x00\x5e" + bytes((group[1] & 0x7F,)) + group[2:4]
    return b"\x33\x33" + group[12:16]


def qmp_rx_filter(info: Mapping[str, object]) -> frozenset[bytes] | None:
    """The multicast MACs a NIC accepts, from one entry of QMP ``query-rx-filter``'s
    reply (QEMU's ``RxFilterInfo``); ``None`` means every multicast.

    ``promiscuous``, ``multicast: all`` and ``multicast-overflow`` (the guest gave more
    groups than QEMU's table holds, 64 MACs in all) accept every multicast;
    ``multicast: none`` none; ``normal`` those of ``multicast-table``.
    ``broadcast-allowed`` is not read: broadcast always passes, as on an IPvlan slave
    (and QEMU 7.2 reports that field inverted). Raises ValueError on a malformed entry.
    """
    promisc, mode, overflow, table = (info.get(k) for k in
                                      ("promiscuous", "multicast", "multicast-overflow", "multicast-table"))
    if not isinstance(promisc, bool) or not isinstance(overflow, bool) or mode not in ("normal", "none", "all"):
        raise ValueError("query-rx-filter: promiscuous, multicast or multicast-overflow missing or malformed")
    if not isinstance(table, list):
        raise ValueError("query-rx-filter: multicast-table is not a list")
    if promisc or overflow or mode == "all":
        return None
    if mode == "none":
        return frozenset()
    if not all(isinstance(m, str) for m in table):
        raise ValueError("query-rx-filter: multicast-table holds a non-string")
    try:
        return frozenset(parse_mac(m) for m in table)
    except ValueError as e:
        raise ValueError(f"query-rx-filter: multicast-table: {e}") from None


class GroupFilter:
    """One slave's multicast filter. ``own`` are the slave's address sets (configured,
    learned), read live for the solicited-node groups."""

    __slots__ = ("_macs", "_own", "explicit", "groups", "overflow", "snooped_v4", "snooped_v6")

    def __init__(self, *own: set[bytes]) -> None:
        self._own = own
        #: joined groups (packed IPv4/IPv6 group addresses), from snooping
        self.groups: set[bytes] = set()
        #: group MAC -> how many joined groups map to it
        self._macs: dict[bytes, int] = {}
        self.snooped_v4 = False
        self.snooped_v6 = False
        #: None (snooping decides), or the explicit filter: None inside means "all"
        self.explicit: tuple[frozenset[bytes] | None] | None = None
        self.overflow = 0

    # -- delivery -------------------------------------------------------------------

    def accepts(self, dst: bytes) -> bool:
        """Whether a frame to the multicast/broadcast MAC ``dst`` is delivered."""
        if dst == BROADCAST:
            return True
        explicit = self.explicit
        if explicit is not None:
            macs = explicit[0]
            return macs is None or dst in macs
        if dst[:3] == b"\x01\x00\x5e":
            return not self.snooped_v4 or dst == ALL_HOSTS_MAC or dst in self._macs
        if dst[:2] == b"\x33\x33":
            if not self.snooped_v6 or dst == ALL_NODES_MAC or dst in self._macs:
                return True
            if dst[2] == 0xFF:
                tail = dst[3:]
                return any(len(a) == 16 and a[13:] == tail for own in self._own for a in own)
            return False
        return True

    # -- the QMP hook ---------------------------------------------------------------

    def set_rx_filter(self, macs: Iterable[bytes], *, allmulti: bool = False, promisc: bool = False) -> None:
        """Use the guest's own RX filter (QMP ``query-rx-filter``: its multicast
        table, ``multicast: all``, ``promiscuous``) instead of snooping."""
        self.explicit = (None if allmulti or promisc else frozenset(bytes(m) for m in macs),)

    def set_qmp_rx_filter(self, info: Mapping[str, object]) -> None:
        """``set_rx_filter`` from one ``query-rx-filter`` entry (``qmp_rx_filter``);
        ValueError on a malformed one, and then nothing changes."""
        macs = qmp_rx_filter(info)
        self.set_rx_filter(macs or (), allmulti=macs is None)

    def clear_rx_filter(self) -> None:
        """Back to snooping."""
        self.explicit = None

    # -- snooping -------------------------------------------------------------------

    def join(self, group: bytes) -> None:
        if group not in self.groups:
            if len(self.groups) >= MAX_GROUPS:
                self.overflow += 1
                return
            self.groups.add(group)
            mac = group_mac(group)
            self._macs[mac] = self._macs.get(mac, 0) + 1

    def leave(self, group: bytes) -> None:
        if group in self.groups:
            self.groups.discard(group)
            mac = group_mac(group)
            left = self._macs[mac] - 1
            if left:
                self._macs[mac] = left
            else:
                del self._macs[mac]

    def snoop(self, frame: Frame) -> bool:
        """Learn from ``frame`` if it is an IGMP or MLD membership message; True if it was."""
        n = len(frame)
        if n < ETH_HLEN + IPV4_HLEN:
            return False
        etype = frame[OFF_ETHERTYPE] << 8 | frame[OFF_ETHERTYPE + 1]
        version_ihl = frame[OFF_IPV4_VER_IHL]
        if etype == ETH_P_IP:
            if version_ihl >> 4 != 4 or frame[OFF_IPV4_PROTO] != IPPROTO_IGMP:
                return False
            return self._igmp(frame, ETH_HLEN + (version_ihl & 0x0F) * 4, n)
        if etype == ETH_P_IPV6 and n >= OFF_ICMPV6 and version_ihl >> 4 == 6:
            nh, off = frame[OFF_IPV6_NEXT], OFF_ICMPV6
            if nh == IPPROTO_HOPOPTS:
                if off + 2 > n:
                    return False
                nh, off = frame[off], off + (frame[off + 1] + 1) * 8
            if nh != IPPROTO_ICMPV6:
                return False
            return self._mld(frame, off, n)
        return False

    def _igmp(self, frame: Frame, off: int, n: int) -> bool:
        if off < ETH_HLEN + IPV4_HLEN or off + 8 > n:
            return False
        kind = frame[off]
        if kind in (IGMP_V1_REPORT, IGMP_V2_REPORT, IGMP_V2_LEAVE):
            group = bytes(frame[off + 4 : off + 8])
            if group[0] & 0xF0 != 0xE0:
                return False
            self.snooped_v4 = True
            self.leave(group) if kind == IGMP_V2_LEAVE else self.join(group)
            return True
        if kind == IGMP_V3_REPORT:
            self.snooped_v4 = True
            self._records(frame, off + 8, n, frame[off + 6] << 8 | frame[off + 7], 4)
            return True
        return False

    def _mld(self, frame: Frame, off: int, n: int) -> bool:
        if off + 8 > n:
            return False
        kind = frame[off]
        if kind in (MLD_V1_REPORT, MLD_V1_DONE):
            if off + 24 > n:
                return False
            group = bytes(frame[off + 8 : off + 24])
            if group[0] != 0xFF:
                return False
            self.snooped_v6 = True
            self.leave(group) if kind == MLD_V1_DONE else self.join(group)
            return True
        if kind == MLD_V2_REPORT:
            self.snooped_v6 = True
            self._records(frame, off + 8, n, frame[off + 6] << 8 | frame[off + 7], 16)
            return True
        return False

    def _records(self, frame: Frame, off: int, n: int, count: int, alen: int) -> None:
        for _ in range(min(count, MAX_RECORDS)):
            if off + 4 + alen > n:
                return
            rtype, aux, nsrc = frame[off], frame[off + 1], frame[off + 2] << 8 | frame[off + 3]
            group = bytes(frame[off + 4 : off + 4 + alen])
            off += 4 + alen + nsrc * alen + aux * 4
            if (alen == 4 and group[0] & 0xF0 != 0xE0) or (alen == 16 and group[0] != 0xFF):
                continue
            if rtype in (MODE_IS_EXCLUDE, CHANGE_TO_EXCLUDE) or (rtype == ALLOW_NEW_SOURCES and nsrc):
                self.join(group)
            elif rtype in (MODE_IS_INCLUDE, CHANGE_TO_INCLUDE):
                self.join(group) if nsrc else self.leave(group)

    def describe(self) -> dict[str, object]:
        """For stats and the control API."""
        explicit = self.explicit
        return {
            "groups": sorted(format_ip(g) for g in self.groups),
            "filtering": {"ipv4": self.snooped_v4, "ipv6": self.snooped_v6},
            "source": "snooping" if explicit is None else "qmp",
            "rx_filter": None if explicit is None else (
                "all" if explicit[0] is None else sorted(format_mac(m) for m in explicit[0])),
        }
