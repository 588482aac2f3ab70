"""A port's data path: it executes the switch's verdicts for frames from the guests and the wire.

Theory of operation. Each slave is a ``NetDevice`` (``device.py``) with one
receive and one transmit virtqueue; its TX drain hands each frame to
``PortDatapath.from_guest``, which asks the port's switch for a verdict and
delivers the frame to other guests' RX rings and/or sends it out the uplink.
Frames read from the uplink take the same decision the other way. RX rings
touched during a burst are published, and their drivers interrupted if they
asked for it, once at the end of the burst (``PortDatapath.flush``). The C
accelerator's glue is ``fastpath.py``; the uplink, host link and next-hop
lookups it is given are typed by the Protocols in ``seams.py``. Frames from the
host (``hostlink``: the I/O only) are steered here too (``_host_readable``).

Rules:
- No per-frame allocation beyond memoryview slices: one preallocated buffer per
  TX queue (``NetDevice``) and one per uplink, verdicts are ints.
- A group frame goes through ``receivers()``: the devices whose slave is up, kept
  until the fast table's key changes (``PortTable.key``: slaves, addresses, rings,
  up states; every change of ``Slave.up`` in ``device.py`` invalidates it), so a
  broadcast costs the guests that are up, not every slave configured.
- Every copy of a flooded (multicast/broadcast) frame counts as one more frame
  of the burst's budget, from a TX ring and from the uplink alike; a group frame
  longer than ``max_frame`` (GSO or not) is dropped ``mtu_exceeded`` uncopied.
- An unexpected exception while handling one frame from the uplink never escapes
  the burst: the frame is counted ``internal_error`` in the port's ``drops`` and
  skipped (``device.internal_error_log`` rate-limits the log lines). The uplink
  reads ``device.BURST`` frames per burst, as a TX drain takes. With the C
  accelerator (l2) the burst reads the uplink's RX ring (``uplink.RxRing``) or 32
  frames per ``recvmmsg``, C delivers the common ones and calls ``_uplink_frame`` for
  every other one, in order; a recvmmsg batch already read is finished even when
  floods used up the budget.
- The wire follows the master (``daemon.master`` keeps ``wire_up`` and
  ``max_frame``): while the master is down or gone, frames for the wire are
  dropped and counted ``master_down`` (guest <-> guest goes on); a non-GSO frame
  whose Ethernet payload exceeds the master's MTU is dropped and counted
  ``mtu_exceeded``, never truncated (GSO frames are segmented by the kernel).
- Host <-> guest (``hostlink``, optional): ``TO_HOST`` frames go into the port's
  host tap; without one they are dropped ``to_host_unsupported``. In l2 a guest's
  ARP/NS for one of the host's addresses on the master is answered here.
- ``ANSWER(DHCP)`` (a guest whose ``Slave.dhcp`` is set): ``net.dhcp`` answers its
  DHCPv4 client message into its own RX ring; the message goes nowhere else.
  Counted per outcome in ``NetDevice.dhcp`` (``stats``: ``dhcp``), a malformed one
  as ``dhcp_malformed``. What it is told: ``dhcp_network``.
- ``ANSWER(DHCP6)`` (``Slave.dhcp6`` set): ``net.dhcp6`` answers its DHCPv6 client
  message the same way (``NetDevice.dhcp6``, ``dhcp6_malformed``; ``dhcp6_network``:
  the server's DUID-LL and link-local from the master's MAC, the IPv6 DNS servers).
  ``ANSWER(RS)``: the guest's Router Solicitation gets an RA (``net.ra``, ``advert``)
  into its RX ring, unicast to its source; a guest whose RX ring starts (``slave_up``)
  gets one unsolicited (to ff02::1; one due at a time), and every up guest one every ``ra.INTERVAL``
  (``_ra_tick``), while the port ``advertises``. Counted in ``NetDevice.ra_sent``.
- l3/l3s: ``ANSWER`` replies with the master's MAC (to the guest, or out the
  master); ``ROUTE`` asks ``routing.Router`` for the next hop's MAC (a local route
  goes to the host link; l3s ports route only link-local destinations and vepa's
  guest -> guest unicast). A packet whose next hop is being resolved is held by
  the router (bounded) and comes back through ``routed_later`` with the answer:
  the one queue on the data path.
  Frames delivered to l3 guests carry the master's MAC as their source: the
  guest's router.
- ``announce``: a guest that resumes here (``NetDevice``: its rings continue where
  another back-end left them, e.g. after a live migration) is announced on the wire
  with the master's MAC, the only MAC the wire knows it by: one gratuitous ARP per
  IPv4 and one unsolicited NA per IPv6 address it owns (``net.neigh.announce``),
  counted per slave (``announcements``). Nothing is sent while the master is down.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Final

from ..drops import DropReason, new_counters
from ..net import dhcp, dhcp6, neigh, ra
from ..net.addr import eui64_link_local
from ..net.frames import ETH_HLEN, IPV4_DST, IPV6_DST, L3_IPV4, L3_IPV6, OFF_ETHERTYPE, classify, shifted
from ..net.translate import hairpin_to_wire, to_guest, to_wire
from ..switch.verdict import ANSWER, DHCP, DHCP6, FLOOD, ROUTE, TO_HOST, TO_SLAVE, TO_UPLINK
from ..virtio import net
from . import device, fastpath
from .device import NetDevice
from .fastpath import Args, PortTable
from .routing import LOCAL, UNRESOLVED

if TYPE_CHECKING:
    from ..switch.port import Port, Slave
    from .seams import Cancellable, HostPort, Loop, NextHops, UplinkPort

log = logging.getLogger(__name__)


def with_header(frame: bytes) -> memoryview:
    """``frame`` the daemon built (an ARP/NA or DHCP answer) behind a zeroed
    virtio-net header: no offload asked, ready for ``deliver`` or the uplink."""
    return memoryview(bytearray(net.HDR_LEN) + frame)

RESCAN_INTERVAL = 0.2
#: the DHCP router and server identifier of an l3/l3s port whose master has no IPv4
#: address (and the server identifier of an l2 one with neither address nor gateway):
#: link-local, never on the wire; the guest reaches it through option 121
DHCP_FALLBACK_ROUTER: Final = bytes((169, 254, 1, 1))
#: virtio_net_hdr flag: the checksum is known good (the tap sets it on the host's frames)
HDR_F_DATA_VALID = 2
# fields of the frame behind the virtio-net header (net/frames.py)
_ETHERTYPE: Final = net.HDR_LEN + OFF_ETHERTYPE
_IPV4_DST: Final = shifted(IPV4_DST, net.HDR_LEN)
_IPV6_DST: Final = shifted(IPV6_DST, net.HDR_LEN)


class PortDatapath:
    """One master's data path: the switch's verdicts executed for frames from its
    guests (``from_guest``), the wire (``_uplink_readable``) and the host
    (``_host_readable``). It is given its uplink (a ``seams.UplinkPort``) and the
    loop, and may be given a host link (``seams.HostPort``) and next hops
    (``seams.NextHops``); every frame for a guest goes through ``_deliver`` (one
    guest) or ``_flood`` (a group)."""

    def __init__(self, port: Port, uplink: UplinkPort, loop: Loop) -> None:
        self.port = port
        self.uplink = uplink
        self.loop = loop
        #: the worker thread whose loop ``loop`` is (``daemon.workers``; 0: the only one)
        self.worker = 0
        #: the worker's devices to plan for the C accelerator's GIL-free kicks (``workers.py``
        #: ``_CoreSelector``; ``NetDevice.drain_tx`` adds itself), or None
        self.plans: tuple[set[NetDevice], set[NetDevice]] | None = None
        self.devices: dict[str, NetDevice] = {}
        self.dirty: set[NetDevice] = set()
        #: devices with ``rx_waste`` to forget at the end of the burst
        self.wasteful: set[NetDevice] = set()
        self.buf = bytearray(net.MAX_BUFFER)
        self.view = memoryview(self.buf)
        self.uplink_rx = self.uplink_tx = 0
        #: drop counters of frames from the wire and the host link, indexed by DropReason
        #: (the switch's are ``port.uplink_drops``)
        self.drops = new_counters()
        #: the master is present, up and has carrier (kept by daemon.master)
        self.wire_up = True
        #: the largest non-GSO buffer (12-byte header + Ethernet header + MTU) for the wire
        self.max_frame = net.HDR_LEN + ETH_HLEN + 1500
        self._rescan: Cancellable | None = None
        self._ra_timer: Cancellable | None = None
        #: guests with an unsolicited RA due (``slave_up``): one timer each at a time
        self._first_due: set[NetDevice] = set()
        #: the C accelerator's view of the port (``fastpath.py``)
        self.fast_table = PortTable(port, self.devices)
        self._receivers: list[NetDevice] = []
        self._receivers_key: tuple[int, int, int] | None = None
        #: the host tap (host <-> guest), and l3's next-hop lookups; set by the topology
        self.hostlink: HostPort | None = None
        self.router: NextHops | None = None
        self.master_src_mac = port.traits.master_src_mac
        #: DNS servers (packed IPv4 and IPv6) and search domains the DHCP servers hand out; set
        #: by the topology (``[daemon] dns``/``dns_search``, else the host's resolv.conf)
        self.dns: tuple[tuple[bytes, ...], tuple[str, ...]] = ((), ())
        self._flushing = False

    def start(self) -> None:
        """Read the uplink and the host link (if any), and rescan the TX rings."""
        self.loop.add_reader(self.uplink.fileno(), self._uplink_readable)
        if self.hostlink is not None:
            self.loop.add_reader(self.hostlink.fileno(), self._host_readable)
        self._rescan = self.loop.call_later(RESCAN_INTERVAL, self._rescan_tick)
        self._ra_timer = self.loop.call_later(ra.INTERVAL, self._ra_tick)

    def stop(self) -> None:
        if self.uplink.fileno() >= 0:
            self.loop.remove_reader(self.uplink.fileno())
        self._stop_host()
        for timer in (self._rescan, self._ra_timer):
            if timer is not None:
                timer.cancel()

    def _stop_host(self) -> None:
        if self.hostlink is not None and self.hostlink.fileno() >= 0:
            self.loop.remove_reader(self.hostlink.fileno())

    def close_hostlink(self) -> None:
        """Stop reading the host link and close it (deleting the tap and its routes)."""
        if self.hostlink is not None:
            self._stop_host()
            self.hostlink.close()
            self.hostlink = None

    def close_uplink(self) -> None:
        """The master is gone: stop reading its socket and close it."""
        if self.uplink.fileno() >= 0:
            self.loop.remove_reader(self.uplink.fileno())
            self.uplink.close()

    def open_uplink(self, uplink: UplinkPort) -> None:
        """The master is back: read from (and send to) its new socket."""
        self.close_uplink()
        self.uplink = uplink
        self.loop.add_reader(uplink.fileno(), self._uplink_readable)

    def _rescan_tick(self) -> None:
        # Safety net against a lost kick: the kick may race our re-enabling of kicks.
        for dev in self.devices.values():
            if dev.has_tx():
                dev.schedule_drain()
        self._rescan = self.loop.call_later(RESCAN_INTERVAL, self._rescan_tick)

    def flush(self) -> None:
        """Publish the RX rings frames went into, each after its guest's TX ring.

        A receiver's pending TX chains are taken (one bounded burst per flush)
        before its RX ring is published: a run-to-completion driver (DPDK's
        testpmd in io/5tswap mode, any l2fwd-style loop) answers what it receives
        at once and drops what finds its TX ring full. Publishing RX first, while
        the chains it had made available (and kicked for) still filled that ring,
        dropped every frame of a 256-entry ring's loop, for ever.
        """
        if self._flushing:
            return  # a drain started by this flush: the outer loop publishes
        self._flushing = True
        dirty = self.dirty
        drained: set[NetDevice] = set()
        try:
            while dirty:
                dev = dirty.pop()
                if dev not in drained and dev.tx_pending():
                    drained.add(dev)
                    dev.drain_tx()  # may mark receivers dirty again, dev included
                dev.flush_rx()
        finally:
            self._flushing = False
            wasteful = self.wasteful
            while wasteful:
                wasteful.pop().rx_waste = 0

    def fast_args(self, dev: NetDevice) -> Args | None:
        """The C accelerator's arguments for a drain of ``dev``'s TX ring (``fastpath.py``),
        the wire included while it is up (else Python sends, and counts, everything)."""
        fd = self.uplink.batch_fd() if self.wire_up else -1
        wire = (fd, self.port.master_mac, self.port.by_mac, self.max_frame) if fd >= 0 else None
        return self.fast_table.args(dev, wire)

    def _device(self, slave: Slave) -> NetDevice:
        return self.devices[slave.name]

    def from_guest(self, dev: NetDevice, length: int) -> int:
        """Switch the frame in ``dev.view[:length]`` taken from ``dev``'s TX ring
        (``length`` >= the 12-byte header: ``NetDevice`` drops runts); return the
        number of copies flooded to other guests (0 for anything else)."""
        buf = dev.view
        action, arg = self.port.from_guest(dev.slave, buf[net.HDR_LEN : length])
        if action == TO_UPLINK:
            if arg is not None:  # vepa, to another guest's MAC: the wire sees the master's
                hairpin_to_wire(buf[net.HDR_LEN : length], length - net.HDR_LEN, arg.mac, self.port.master_mac)  # type: ignore[union-attr, arg-type]
            self._to_uplink(dev, buf, length)
        elif action == TO_SLAVE:
            self._deliver(self._device(arg), buf, length)  # type: ignore[arg-type]
        elif action == FLOOD:
            if length > self.max_frame:  # GSO or not: a group frame the wire could not carry
                dev.drops[DropReason.MTU_EXCEEDED] += 1
                return 0
            copies = self._flood(buf, length, dev)
            if self.hostlink is not None:
                self._answer_for_host(dev, buf[net.HDR_LEN : length])
            self._to_uplink(dev, buf, length)
            return copies
        elif action == TO_HOST:
            self._to_host(dev, buf, length)
        elif action == ROUTE:
            self._route(dev, buf, length)
        elif action == ANSWER:
            if arg is None:
                self._answer(dev, buf[net.HDR_LEN : length])
            elif arg == DHCP:
                self._answer_dhcp(dev, buf[net.HDR_LEN : length])
            elif arg == DHCP6:
                self._answer_dhcp6(dev, buf[net.HDR_LEN : length])
            else:
                self._answer_rs(dev, buf[net.HDR_LEN : length])
        # DROP: the switch has counted it on the slave
        return 0

    def _deliver(self, dev: NetDevice, buf: memoryview, length: int) -> None:
        """Deliver ``buf[:length]`` (12-byte header + a frame for ``dev``'s guest,
        addressed to the master's MAC or to the guest's) into ``dev``'s RX ring: the
        guest sees its own MAC as the destination, also as an ARP target's hardware
        address (``to_guest``), and the master's as the source where the mode says so
        (``traits.master_src_mac``: l3/l3s, the guest's router)."""
        mac = dev.slave.mac
        # most frames already carry the receiver's MAC; an ARP frame may name the master's inside
        arp = buf[_ETHERTYPE] == 0x08 and buf[_ETHERTYPE + 1] == 0x06  # ETH_P_ARP
        if arp or buf[net.HDR_LEN : net.HDR_LEN + 6].tobytes() != mac:
            to_guest(buf[net.HDR_LEN : length], length - net.HDR_LEN, mac, self.port.master_mac)
        if self.master_src_mac:
            buf[net.HDR_LEN + 6 : net.HDR_LEN + 12] = self.port.master_mac
        dev.deliver(buf[:length])

    def receivers(self) -> list[NetDevice]:
        """The devices whose slave is up, in the order of ``devices`` (a flood's candidates),
        rebuilt when the fast table's key has changed."""
        key = self.fast_table.key()
        if key != self._receivers_key:
            self._receivers = [dev for dev in self.devices.values() if dev.slave.up]
            self._receivers_key = key
        return self._receivers

    def _flood(self, buf: memoryview, length: int, sender: NetDevice | None) -> int:
        """Deliver the group frame in ``buf[:length]``, untranslated, to every up guest
        but ``sender`` whose multicast filter accepts its destination; return the copies.
        (A delivery may take a guest down, a broken ring: it is checked again.)"""
        frame = buf[:length]
        dst = buf[net.HDR_LEN : net.HDR_LEN + 6].tobytes()
        copies = 0
        for dev in self.receivers():
            if dev is not sender and dev.slave.up and dev.slave.mcast.accepts(dst):
                dev.deliver(frame)
                copies += 1
        return copies

    def _to_host(self, dev: NetDevice, buf: memoryview, length: int) -> None:
        if self.hostlink is None:
            dev.drops[DropReason.TO_HOST_UNSUPPORTED] += 1
            return
        to_wire(buf[net.HDR_LEN : length], length - net.HDR_LEN, dev.slave.mac, self.port.master_mac)
        if not self.hostlink.send(buf, length):  # it reports, the sender counts (once)
            dev.drops[DropReason.HOST_SEND_FAILED] += 1

    def _route(self, dev: NetDevice, buf: memoryview, length: int) -> None:
        """l3 egress: to the next hop the host's tables give, with the master's MAC."""
        router = self.router
        if router is None:
            dev.drops[DropReason.NO_ROUTE] += 1
            return
        dst = (buf[_IPV4_DST] if buf[_ETHERTYPE] == 0x08 else buf[_IPV6_DST]).tobytes()  # ETH_P_IP, else ETH_P_IPV6
        mac = router.next_hop_mac(dst, dev.slave.name)  # never waits
        if mac == UNRESOLVED:  # held until it resolves (then ``routed_later``), or dropped now
            why = router.hold(dst, dev.slave.name, buf[:length])
            if why is None:
                return
            mac = why
        self._routed(dev, buf, length, mac)

    def routed_later(self, guest: str, frame: bytearray, hop: bytes | DropReason) -> None:
        """A packet ``Router.hold`` kept, with its destination's answer (``Router.on_release``)."""
        dev = self.devices.get(guest)
        if dev is not None:  # the guest may have gone meanwhile
            self._routed(dev, memoryview(frame), len(frame), hop)

    def _routed(self, dev: NetDevice, buf: memoryview, length: int, mac: bytes | DropReason) -> None:
        """Send a routed packet to the next hop ``mac`` (``LOCAL``: the host), or count why not."""
        if isinstance(mac, DropReason):
            dev.drops[mac] += 1  # no_route, neigh_unresolved, neigh_rate_limited, ... (routing.py)
        elif mac == LOCAL:
            self._to_host(dev, buf, length)
        elif self._wire_ok(dev, buf, length):
            to_wire(buf[net.HDR_LEN : length], length - net.HDR_LEN, dev.slave.mac, self.port.master_mac)
            buf[net.HDR_LEN : net.HDR_LEN + 6] = mac
            self._send(dev, buf, length)

    def _answer(self, dev: NetDevice, frame: memoryview) -> None:
        """Answer a guest's ARP request or NS with the master's MAC (l3/l3s: its router)."""
        reply = neigh.reply(frame, self.port.master_mac, router=True)
        if reply is not None:
            dev.deliver(with_header(reply))

    def announce(self, dev: NetDevice) -> int:
        """Announce ``dev``'s addresses on the wire from the master's MAC (see the rules);
        return how many announcements were sent."""
        if not self.wire_up:
            return 0
        sent = sum(self._send(dev, with_header(frame), net.HDR_LEN + len(frame))
                   for frame in neigh.announce(self.port.master_mac, dev.slave.owned()))
        dev.announcements += sent
        return sent

    def _answer_dhcp(self, dev: NetDevice, frame: memoryview) -> None:
        """A DHCPv4 client message from ``dev``'s guest: the reply goes into its RX ring
        only (``net.dhcp``); counted by outcome, a malformed one as a drop."""
        lease = dev.slave.dhcp
        if lease is None:  # turned off between the decision and here: cannot happen on one loop
            return
        outcome, reply = dhcp.answer(frame, lease, self.dhcp_network(lease), self.port.master_mac)
        if outcome == dhcp.Outcome.MALFORMED:
            dev.drops[DropReason.DHCP_MALFORMED] += 1
            return
        dev.dhcp[outcome] += 1
        if reply is not None:
            dev.deliver(with_header(reply))

    def dhcp_network(self, lease: dhcp.Lease) -> dhcp.Network:
        """What the DHCP server tells ``lease``'s guest about the port (built per message:
        they are rare). l3/l3s (``traits.master_src_mac``: the master is the guest's
        router): router and server identifier are the master's first IPv4 address (in
        the guest's subnet if it has one there), else ``DHCP_FALLBACK_ROUTER``; the
        guest's ARP for it is answered with the master's MAC, like any. l2: the router
        is the master's IPv4 default gateway (``Port.gateway_v4``, read from the host's
        routes; none: no router option), the server identifier the master's address,
        else the router, else ``DHCP_FALLBACK_ROUTER``."""
        own = sorted(a for a in self.port.master_addresses if len(a) == 4)
        addr, prefix = lease.addresses[0]
        mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
        near = [a for a in own if int.from_bytes(a, "big") & mask == int.from_bytes(addr, "big") & mask]
        master = (near or own)[0] if own else None
        if self.master_src_mac:
            router: bytes | None = master or DHCP_FALLBACK_ROUTER
            server = router
        else:
            router = self.port.gateway_v4
            server = master or router or DHCP_FALLBACK_ROUTER
        assert server is not None
        return dhcp.Network(server, router, self.mtu, tuple(a for a in self.dns[0] if len(a) == 4), self.dns[1])

    def _answer_dhcp6(self, dev: NetDevice, frame: memoryview) -> None:
        """A DHCPv6 client message from ``dev``'s guest: the reply goes into its RX ring
        only (``net.dhcp6``); counted by outcome, a malformed one as a drop."""
        lease = dev.slave.dhcp6
        if lease is None:
            return
        outcome, reply = dhcp6.answer(frame, lease, self.dhcp6_network(), self.port.master_mac)
        if outcome == dhcp6.Outcome.MALFORMED:
            dev.drops[DropReason.DHCP6_MALFORMED] += 1
            return
        dev.dhcp6[outcome] += 1
        if reply is not None:
            dev.deliver(with_header(reply))

    def dhcp6_network(self) -> dhcp6.Network:
        """What the DHCPv6 server tells the port's guests: its DUID (DUID-LL of the
        master's MAC), its address (the link-local the master's MAC gives), IPv6 DNS."""
        mac = self.port.master_mac
        return dhcp6.Network(dhcp6.duid_ll(mac), eui64_link_local(mac), self._dns6(), self.dns[1])

    @property
    def mtu(self) -> int:
        """The master's MTU, as the DHCP server and the RA tell it (from ``max_frame``)."""
        return self.max_frame - net.HDR_LEN - ETH_HLEN

    def _dns6(self) -> tuple[bytes, ...]:
        return tuple(a for a in self.dns[0] if len(a) == 16)

    def advert(self, lease: dhcp.Lease) -> ra.Advert:
        """The RA for a guest with the DHCPv6 lease ``lease``: M when it has IPv6
        addresses to hand out, O when there are DNS servers or search domains; a
        router lifetime where the daemon routes (l3/l3s, ``traits.master_src_mac``),
        0 in l2 (the daemon forwards nothing off the link); the master's MTU; the
        lease's prefixes on-link; from the master's EUI-64 link-local."""
        servers = self._dns6()
        return ra.Advert(eui64_link_local(self.port.master_mac), managed=bool(lease.addresses),
                         other=bool(servers or self.dns[1]),
                         lifetime=ra.ROUTER_LIFETIME if self.master_src_mac else 0, mtu=self.mtu,
                         prefixes=lease.addresses, dns=servers, search=self.dns[1])

    def _answer_rs(self, dev: NetDevice, frame: memoryview) -> None:
        """A Router Solicitation from ``dev``'s guest: an RA to its source (all-nodes
        when it has none) into its RX ring only."""
        src = bytes(frame[22:38])  # the IPv6 source (``ra.is_router_solicit`` checked the header)
        to_all = src == bytes(16)
        self._advertise(dev, ra.ALL_NODES_MAC if to_all else bytes(frame[6:12]), ra.ALL_NODES if to_all else src)

    def _advertise(self, dev: NetDevice, dst_mac: bytes, dst_ip: bytes) -> None:
        lease = dev.slave.dhcp6
        if lease is None or not self.port.advertises:
            return
        before = dev.rx_packets  # ``ra_sent`` counts what went into the ring: a full one is a drop only
        dev.deliver(with_header(ra.advert(dst_mac, dst_ip, self.port.master_mac, self.advert(lease))))
        dev.ra_sent += dev.rx_packets - before

    def slave_up(self, dev: NetDevice) -> None:
        """``dev``'s guest's RX ring has started: one unsolicited RA (when it is answered),
        ``ra.FIRST_DELAY`` later (the driver posts its receive buffers after enabling the
        ring: at once, the RA would find none). One is due per guest at a time: a
        front-end toggling its ring piles up neither timers nor RAs."""
        if dev.slave.dhcp6 is not None and dev not in self._first_due:
            self._first_due.add(dev)
            self.loop.call_later(ra.FIRST_DELAY, self._first_advert, dev)

    def _first_advert(self, dev: NetDevice) -> None:
        self._first_due.discard(dev)
        if dev.slave.up and self.devices.get(dev.slave.name) is dev:
            self._advertise(dev, ra.ALL_NODES_MAC, ra.ALL_NODES)
            self.flush()

    def _ra_tick(self) -> None:
        """Every ``ra.INTERVAL``: an unsolicited RA to every up guest that gets them (after
        l2 forgets a wire router it no longer hears, ``Port.age_link_router``)."""
        self.port.age_link_router()
        for dev in self.receivers():
            self._advertise(dev, ra.ALL_NODES_MAC, ra.ALL_NODES)
        self.flush()
        self._ra_timer = self.loop.call_later(ra.INTERVAL, self._ra_tick)

    def _answer_for_host(self, dev: NetDevice, frame: memoryview) -> None:
        """l2: a guest's ARP request or NS for one of the host's addresses on the master."""
        asked = neigh.request_target(frame)
        if asked is not None and self.hostlink is not None and asked[1] in self.port.master_addresses:
            reply = neigh.reply(frame, self.port.master_mac)
            if reply is not None:
                dev.deliver(with_header(reply))

    def _wire_ok(self, dev: NetDevice, buf: memoryview, length: int) -> bool:
        if not self.wire_up:
            dev.drops[DropReason.MASTER_DOWN] += 1
            return False
        if length > self.max_frame and not buf[1]:  # buf[1]: gso_type; GSO frames are segmented later
            dev.drops[DropReason.MTU_EXCEEDED] += 1
            return False
        return True

    def _to_uplink(self, dev: NetDevice, buf: memoryview, length: int) -> None:
        if not self._wire_ok(dev, buf, length):
            return
        mac = dev.slave.mac
        assert mac is not None  # the switch learned or validated it
        to_wire(buf[net.HDR_LEN : length], length - net.HDR_LEN, mac, self.port.master_mac)
        self._send(dev, buf, length)

    def _send(self, dev: NetDevice, buf: memoryview, length: int) -> bool:
        """Put ``dev``'s frame (translated for the wire) on the uplink; count a failure."""
        if self.uplink.send(buf, length):
            self.uplink_tx += 1
            return True
        dev.drops[DropReason.UPLINK_SEND_FAILED] += 1
        return False

    def _uplink_readable(self) -> None:
        fp = fastpath.ext
        table = self.fast_table.rx_table() if fp is not None else None
        source = self.uplink.batch_rx() if table is not None else -1
        if fp is not None and table is not None and source != -1:
            # C delivers the common frames and gives every other one, in order, to _uplink_frame
            try:
                status, detail, delivered = fp.uplink_burst(source, self.buf, table, self.port.master_mac,
                                                            self.port.wire_macs, device.BURST, self.dirty,
                                                            self._uplink_frame)
            except Exception as e:  # raised by Python's own path: a bug
                status, detail, delivered = fp.ERROR, e, 0
            self.uplink_rx += delivered
            if status == fp.READ_ERROR:
                self.drops[DropReason.UPLINK_READ_ERROR] += 1
                log.debug("master %s: read error: %s", self.uplink.master, os.strerror(detail))
            elif status == fp.ERROR:
                self.drops[DropReason.INTERNAL_ERROR] += 1
                device.internal_error_log(f"master {self.uplink.master}: the C accelerator failed", detail)
            self.flush()
            return
        view = self.view
        budget = device.BURST  # frames read plus copies flooded to guests
        while budget > 0:
            budget -= 1
            try:
                length = self.uplink.recv(view)
            except OSError as e:
                self.drops[DropReason.UPLINK_READ_ERROR] += 1
                log.debug("master %s: read error: %s", self.uplink.master, e)
                break
            if length == 0:
                break
            budget -= self._uplink_frame(length)
        self.flush()

    def _uplink_frame(self, length: int) -> int:
        """Count and switch one frame read from the uplink (``view[:length]``, -1 if it was
        truncated); return the copies flooded to guests (the burst pays for them)."""
        if length < 0:
            self.drops[DropReason.UPLINK_TRUNCATED] += 1
            return 0
        self.uplink_rx += 1
        try:
            return self._from_uplink(length)
        except Exception as e:  # a bug must cost one frame, not the daemon
            self.drops[DropReason.INTERNAL_ERROR] += 1
            device.internal_error_log(f"master {self.uplink.master}: a frame from the wire dropped", e)
            return 0

    def _from_uplink(self, length: int) -> int:
        """Switch the frame in ``view[:length]`` read from the uplink; return the
        number of copies flooded to guests (0 for anything else)."""
        view = self.view
        frame = view[net.HDR_LEN : length]
        action, arg = self.port.from_uplink(frame)
        if action == TO_SLAVE:
            dev = self._device(arg)  # type: ignore[arg-type]
            if dev.slave.mac is None:
                dev.drops[DropReason.MAC_UNKNOWN] += 1
                return 0
            self._deliver(dev, view, length)
        elif action == ANSWER:
            # l3/l3s: the outside's ARP/NS for a slave address (a departure)
            reply = neigh.reply(frame, self.port.master_mac)
            if reply is not None and self.wire_up and self.uplink.send(with_header(reply), net.HDR_LEN + len(reply)):
                self.uplink_tx += 1
        elif action == FLOOD:
            if length > self.max_frame:  # a coalesced (GRO) group frame: no guest needs it whole
                self.drops[DropReason.MTU_EXCEEDED] += 1
                return 0
            return self._flood(view, length, None)
        # PASS: the host's; DROP: the switch has counted it in port.uplink_drops
        return 0

    def _host_readable(self) -> None:
        """Frames from the host's stack (through the tap): unicast IP to a guest's
        address, from the tap's MAC to the tap's, go to that guest as the master's."""
        link = self.hostlink
        if link is None:
            return
        view = self.view
        port = self.port
        for _ in range(device.BURST):
            try:
                n = link.recv(view)
            except OSError:
                self.drops[DropReason.HOST_READ_ERROR] += 1
                break
            if n < net.HDR_LEN + ETH_HLEN:
                break
            kind, dst, _src, _sha, _l3src, key = classify(view[net.HDR_LEN : n])
            if dst[0] & 1 or kind not in (L3_IPV4, L3_IPV6):
                self.drops[DropReason.HOST_NOT_UNICAST_IP] += 1  # MLD, IPv6 RS and the like
                continue
            owner = port.by_addr.get(key)
            dev = self.devices.get(owner.name) if owner is not None else None
            if dev is None or owner is None or owner.mac is None or not owner.up:
                self.drops[DropReason.HOST_NO_GUEST] += 1
                continue
            if view[0] == HDR_F_DATA_VALID:
                view[0] = 0
            view[net.HDR_LEN : net.HDR_LEN + 12] = owner.mac + port.master_mac
            self._deliver(dev, view, n)
        self.flush()
