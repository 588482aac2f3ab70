"""The data path: guest TX rings -> switch -> guest RX rings and the uplink, and back.

Theory of operation. Each slave is a ``NetDevice`` with one receive and one
transmit virtqueue. A kick on the TX eventfd (or the safety-net rescan) drains
the TX ring in bursts: each chain is copied into the device's frame buffer
(12-byte virtio_net_hdr + frame), handed to the port's switch, and delivered to
other guests' RX rings and/or sent out the uplink. Frames read from the uplink
take the same decision the other way. RX rings touched during a burst are
published, and their drivers interrupted if they asked for it, once at the end
of the burst (``PortDatapath.flush``).

Rules:
- No per-frame allocation beyond memoryview slices: one preallocated buffer per
  TX queue and one per uplink, verdicts are ints.
- A frame a receiver cannot take (ring full, offload it did not negotiate, too
  big) is dropped and counted on that receiver; nothing is queued.
- Walking a receive ring for frames it then does not take is budgeted per burst
  (``RX_WASTE_BUDGET`` descriptors per receiver, plus the walk that crosses it):
  beyond it, the rest of the burst is delivered only into single buffers that
  fit (``rx_deliver(walk=False)``). A guest that keeps changing its ring while
  frames come (``virtio.net`` remembers a failed walk only while the ring stays
  as it was) costs one budget per burst, not a walk per frame.
- A guest that breaks its ring (``GuestError``) gets that queue stopped and
  counted; the daemon and the other guests go on.
- A TX drain is bounded in frames (``BURST``) and in descriptors walked
  (``DESC_BUDGET``, zero-length and indirect descriptors included; one chain
  costs at most the queue size + 1, so a drain stops within ``DESC_BUDGET + num``);
  the rest is rescheduled so one guest cannot starve the others. The C
  accelerator forwards single-descriptor chains only, so it is given the smaller
  of the two budgets as its frame budget and stops exactly where Python would.
  Every copy of a flooded (multicast/broadcast) frame counts as one more frame
  of the burst's budget, from a TX ring and from the uplink alike; a group frame
  longer than ``max_frame`` (GSO or not) is dropped ``mtu_exceeded`` uncopied.
- A TX chain shorter than the 12-byte virtio_net_hdr (zero-length included) is a
  ``runt`` drop: it adds nothing to ``tx_packets``/``tx_bytes``.
- An unexpected exception (not ``GuestError``: a bug, or the C accelerator
  failing) while handling one frame never escapes the burst: the frame is counted
  ``internal_error`` on the guest it came from (``drops`` of the port for the
  uplink) and skipped, the burst goes on; it is logged with its traceback at most
  once per ``ERROR_LOG_INTERVAL`` (with how many were not logged). The C
  accelerator gives back a frame it failed on and is off for the rest of that
  drain: the failure is counted ``internal_error`` too, but Python switches the
  frame (nothing is lost).
- The wire follows the master (``daemon.master`` keeps ``wire_up`` and
  ``max_frame``): while the master is down or gone, frames for the wire are
  dropped and counted ``master_down`` (guest <-> guest goes on); a non-GSO frame
  whose Ethernet payload exceeds the master's MTU is dropped and counted
  ``mtu_exceeded``, never truncated (GSO frames are segmented by the kernel).
- Host <-> guest (``hostlink``, optional): ``TO_HOST`` frames go into the port's
  host tap; without one they are dropped ``to_host_unsupported``. In l2 a guest's
  ARP/NS for one of the host's addresses on the master is answered here.
- l3/l3s: ``ANSWER`` replies with the master's MAC (to the guest, or out the
  master); ``ROUTE`` asks ``routing.Router`` for the next hop's MAC (a local route
  goes to the host link; l3s ports route only link-local destinations and vepa's
  guest -> guest unicast). A packet whose next hop is being resolved is held by
  the router (bounded) and comes back through ``routed_later`` with the answer:
  the one queue on the data path.
  Frames delivered to l3 guests carry the master's MAC as their source: the
  guest's router.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from collections import Counter
from types import ModuleType
from typing import TYPE_CHECKING

from ..errors import GuestError
from ..net import neigh
from ..net.translate import hairpin_to_wire, to_guest, to_wire
from ..switch.policy import ANSWER, FLOOD, ROUTE, TO_HOST, TO_SLAVE, TO_UPLINK
from ..vhost_user.session import RX, TX, Session, Vring
from ..virtio import net
from ..virtio.virtqueue import SplitQueue
from .host import eventfd_drain, eventfd_signal
from .routing import LOCAL, UNRESOLVED

if TYPE_CHECKING:
    from ..switch.port import Port, Slave
    from .hostlink import HostLink
    from .routing import Router
    from .uplink import Uplink

log = logging.getLogger("vhost_ipvlan.datapath")

# The optional C accelerator for guest-to-guest unicast; VHOST_IPVLAN_PURE=1 turns it off.
_fastpath: ModuleType | None
try:
    if os.environ.get("VHOST_IPVLAN_PURE") == "1":
        raise ImportError("disabled by VHOST_IPVLAN_PURE=1")
    from .. import _fastpath  # type: ignore[attr-defined, no-redef]
except ImportError:
    _fastpath = None


def accelerated() -> bool:
    return _fastpath is not None

BURST = 256
#: descriptors one TX drain may walk before it reschedules (see the rules)
DESC_BUDGET = 4 * BURST
#: descriptors a receive queue may walk for frames it then did not take, per burst
RX_WASTE_BUDGET = 4 * BURST
ETH_HLEN = 14
RESCAN_INTERVAL = 0.2
ERROR_LOG_INTERVAL = 10.0


class _ErrorLog:
    """Rate-limited logging of unexpected exceptions on the data path."""

    def __init__(self) -> None:
        self.next_at = 0.0
        self.suppressed = 0

    def __call__(self, what: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now < self.next_at:
            self.suppressed += 1
            return
        self.next_at = now + ERROR_LOG_INTERVAL
        more = f" ({self.suppressed} more since the last report)" if self.suppressed else ""
        self.suppressed = 0
        log.error("internal error in the data path, %s%s", what, more,
                  exc_info=(type(exc), exc, exc.__traceback__))


internal_error_log = _ErrorLog()


class NetDevice:
    """One slave's virtio-net device: its rings, counters and frame buffer."""

    def __init__(self, slave: Slave, dp: PortDatapath) -> None:
        self.slave = slave
        self.dp = dp
        self.session: Session | None = None
        self.rx: SplitQueue | None = None
        self.tx: SplitQueue | None = None
        self.rx_enabled = False
        self.tx_enabled = False
        self.rx_call: int | None = None
        self.tx_call: int | None = None
        self._kick_fds: dict[int, int] = {}
        self.mergeable = False
        self.takes_csum = False
        self.gso_mask = 1
        self.ecn = False
        self.buf = bytearray(net.MAX_BUFFER)
        self.view = memoryview(self.buf)
        self.rx_packets = self.rx_bytes = self.tx_packets = self.tx_bytes = 0
        #: descriptors walked this burst for frames not taken (``RX_WASTE_BUDGET``)
        self.rx_waste = 0
        # RX counters the C accelerator adds to (two native u64: packets, bytes)
        self.fast_rx = bytearray(16)
        self._fast: tuple[tuple[int, int, int], bytes, frozenset[bytes]] | None = None
        self.drops: Counter[str] = Counter()
        self._drain_scheduled = False

    # -- session.Device -----------------------------------------------------------

    def attach(self, session: Session) -> None:
        self.session = session

    def vring_started(self, vring: Vring) -> None:
        assert self.session is not None and vring.queue is not None
        features = self.session.features
        self.mergeable = bool(features >> net.F_MRG_RXBUF & 1)
        self.takes_csum, self.gso_mask = net.offload_mask(features)
        self.ecn = bool(features >> net.F_GUEST_ECN & 1)
        loop = self.dp.loop
        if vring.kick_fd is not None:
            handler = self._tx_kick if vring.index == TX else self._rx_kick
            loop.add_reader(vring.kick_fd, handler, vring.kick_fd)
            self._kick_fds[vring.index] = vring.kick_fd
        if vring.index == TX:
            self.tx = vring.queue
            self.schedule_drain()
        else:
            self.rx = vring.queue
        self.vring_changed(vring)
        log.info("slave %s: %s queue started (size %d)", self.slave.name, _QNAME[vring.index], vring.num)

    def vring_stopped(self, vring: Vring) -> None:
        fd = self._kick_fds.pop(vring.index, None)
        if fd is not None:
            self.dp.loop.remove_reader(fd)
        if vring.index == TX:
            self.tx = None
        else:
            self.rx = None
        self.vring_changed(vring)
        log.info("slave %s: %s queue stopped", self.slave.name, _QNAME[vring.index])

    def vring_changed(self, vring: Vring) -> None:
        if vring.index == RX:
            self.rx_call = vring.call_fd
            self.rx_enabled = vring.enabled
        else:
            self.tx_call = vring.call_fd
            self.tx_enabled = vring.enabled
        self.dp.fast_gen += 1
        up = self.rx is not None and self.rx_enabled
        if up != self.slave.up:
            self.slave.up = up
            log.info("slave %s: %s", self.slave.name, "up" if up else "down")

    def detach(self) -> None:
        self.session = None
        self.slave.up = False
        self.dp.fast_gen += 1

    def counters(self) -> dict[str, int]:
        """rx/tx packets and bytes, whichever path moved them."""
        fast_packets, fast_bytes = struct.unpack("=QQ", self.fast_rx)
        return {
            "rx_packets": self.rx_packets + fast_packets,
            "rx_bytes": self.rx_bytes + fast_bytes,
            "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes,
        }

    # -- events -------------------------------------------------------------------

    def _rx_kick(self, fd: int) -> None:
        if not eventfd_drain(fd):  # new RX buffers; frames are never queued, nothing to do
            self._kick_failed(RX, fd)

    def _tx_kick(self, fd: int) -> None:
        if not eventfd_drain(fd):
            self._kick_failed(TX, fd)
            return
        self.drain_tx()

    def _kick_failed(self, which: int, fd: int) -> None:
        """A kick descriptor that cannot be read would be reported readable forever."""
        if self._kick_fds.get(which) == fd:
            del self._kick_fds[which]
        self.dp.loop.remove_reader(fd)
        log.warning("slave %s: %s kick descriptor unreadable: no longer watched", self.slave.name, _QNAME[which])

    def schedule_drain(self) -> None:
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self.dp.loop.call_soon(self._scheduled_drain)

    def _scheduled_drain(self) -> None:
        self._drain_scheduled = False
        self.drain_tx()

    def break_queue(self, which: int, err: GuestError) -> None:
        self.drops["queue_broken"] += 1
        self.dp.fast_gen += 1
        log.warning("slave %s: %s queue broken by the guest: %s", self.slave.name, _QNAME[which], err)
        fd = self._kick_fds.pop(which, None)
        if fd is not None:
            self.dp.loop.remove_reader(fd)
        if which == TX:
            self.tx = None
        else:
            self.rx = None
            self.slave.up = False

    # -- guest -> switch --------------------------------------------------------------

    def drain_tx(self) -> None:
        q = self.tx
        if q is None:
            return
        view = self.view
        budget = BURST
        limit = q.walked + DESC_BUDGET
        fp = _fastpath
        fast = self.dp.fast_args(self) if self.tx_enabled else None
        try:
            while True:
                while budget and q.walked < limit:
                    if fast is not None and fp is not None:
                        # the C accelerator forwards what it can; it stops at the first
                        # frame (SLOW_FRAME, in view) or chain (SLOW_CHAIN) for Python;
                        # each chain it takes is one descriptor: frames == descriptors
                        try:
                            status, length, nf, nb = fp.forward_burst(
                                q, self.buf, fast[0], fast[1], fast[2], min(budget, limit - q.walked),
                                self.dp.dirty,
                            )
                        except Exception as e:  # a bug: nothing was taken
                            status, length, nf, nb = fp.ERROR, e, 0, 0
                        budget -= nf
                        self.tx_packets += nf
                        self.tx_bytes += nb
                        if status == fp.SLOW_FRAME:
                            budget = max(0, budget - 1 - self._from_guest(length))
                            fast = self.dp.fast_args(self)  # the frame may have changed state
                            continue
                        if status == fp.ERROR:  # the frame, if any, was given back
                            self.drops["internal_error"] += 1
                            internal_error_log(f"slave {self.slave.name}: the C accelerator failed", length)
                            fast = None  # Python handles the rest of this drain
                            continue
                        if status != fp.SLOW_CHAIN:
                            break
                    if not q.pending():
                        break
                    head = q.pop()
                    length = q.gather(head, view)
                    q.push(head, 0)
                    budget -= 1
                    if self.tx_enabled:
                        budget = max(0, budget - self._from_guest(length))
                        if fast is not None:  # the frame may have changed state (a target's ring broken)
                            fast = self.dp.fast_args(self)
                if q.publish() and self.tx_call is not None and not eventfd_signal(self.tx_call):
                    self.drops["call_failed"] += 1
                if not budget or q.walked >= limit:
                    self.schedule_drain()
                    break
                if not q.want_kick():
                    break
        except GuestError as e:
            self.break_queue(TX, e)
        finally:
            self.dp.flush()

    def _from_guest(self, length: int) -> int:
        """Count and switch one frame taken from the TX ring (``view[:length]``);
        return how many copies of it went to other guests (the burst pays for them)."""
        if length < net.HDR_LEN:
            self.drops["runt"] += 1
            return 0
        self.tx_packets += 1
        self.tx_bytes += length - net.HDR_LEN
        try:
            return self.dp.from_guest(self, length)
        except Exception as e:  # a bug must cost one frame, not the daemon
            self.drops["internal_error"] += 1
            internal_error_log(f"slave {self.slave.name}: a frame from the guest dropped", e)
            return 0

    # -- switch -> guest ----------------------------------------------------------------

    def deliver(self, buf: memoryview) -> None:
        """Put ``buf`` (12-byte header + frame) into this guest's receive queue."""
        q = self.rx
        if q is None or not self.rx_enabled:
            self.drops["rx_not_ready"] += 1
            return
        flags, gso = buf[0], buf[1]
        if (flags or gso) and not net.offload_ok(flags, gso, self.takes_csum, self.gso_mask, self.ecn):
            self.drops["offload_unsupported"] += 1
            return
        before = q.walked
        try:
            rc = net.rx_deliver(q, buf, self.mergeable, self.rx_waste <= RX_WASTE_BUDGET)
        except GuestError as e:
            self.break_queue(RX, e)
            return
        if rc != net.RX_OK and q.walked != before:
            if not self.rx_waste:
                self.dp.wasteful.add(self)
            self.rx_waste += q.walked - before
        if rc == net.RX_OK:
            self.rx_packets += 1
            self.rx_bytes += len(buf) - net.HDR_LEN
            self.dp.dirty.add(self)
        elif rc == net.RX_RING_FULL:
            self.drops["rx_ring_full"] += 1
        elif rc == net.RX_BAD_BUFFER:
            self.drops["rx_bad_buffer"] += 1
        else:
            self.drops["rx_too_big"] += 1

    def flush_rx(self) -> None:
        q = self.rx
        if q is not None and q.publish() and self.rx_call is not None and not eventfd_signal(self.rx_call):
            self.drops["call_failed"] += 1  # the counter is full or the descriptor gone: never block


_QNAME = {RX: "rx", TX: "tx"}


class PortDatapath:
    """One master: its switch ``Port``, uplink socket and slave devices."""

    def __init__(self, port: Port, uplink: Uplink, loop: asyncio.AbstractEventLoop) -> None:
        self.port = port
        self.uplink = uplink
        self.loop = loop
        self.devices: dict[str, NetDevice] = {}
        self.dirty: set[NetDevice] = set()
        #: devices with ``rx_waste`` to forget at the end of the burst
        self.wasteful: set[NetDevice] = set()
        self.buf = bytearray(net.MAX_BUFFER)
        self.view = memoryview(self.buf)
        self.uplink_rx = self.uplink_tx = 0
        self.drops: Counter[str] = Counter()
        #: the master is present, up and has carrier (kept by daemon.master)
        self.wire_up = True
        #: the largest non-GSO buffer (12-byte header + Ethernet header + MTU) for the wire
        self.max_frame = net.HDR_LEN + ETH_HLEN + 1500
        self._rescan: asyncio.TimerHandle | None = None
        # The C accelerator's view of the port, rebuilt when anything that decides
        # reachability changes: bump ``fast_gen`` for ring/up-state changes; the
        # port's ``generation`` covers slaves and addresses.
        self.fast_gen = 0
        self._fast_table: dict[bytes, tuple[object, ...]] = {}
        self._fast_key: tuple[int, int, int] | None = None
        #: the host tap (host <-> guest), and l3's next-hop lookups; set by the topology
        self.hostlink: HostLink | None = None
        self.router: Router | None = None
        self.l3 = port.mode != "l2"
        self._flushing = False

    def start(self) -> None:
        self.loop.add_reader(self.uplink.fileno(), self._uplink_readable)
        self._rescan = self.loop.call_later(RESCAN_INTERVAL, self._rescan_tick)

    def stop(self) -> None:
        if self.uplink.fileno() >= 0:
            self.loop.remove_reader(self.uplink.fileno())
        if self._rescan is not None:
            self._rescan.cancel()

    def close_uplink(self) -> None:
        """The master is gone: stop reading its socket and close it."""
        if self.uplink.fileno() >= 0:
            self.loop.remove_reader(self.uplink.fileno())
            self.uplink.close()

    def open_uplink(self, uplink: Uplink) -> None:
        """The master is back: read from (and send to) its new socket."""
        self.close_uplink()
        self.uplink = uplink
        self.loop.add_reader(uplink.fileno(), self._uplink_readable)

    def _rescan_tick(self) -> None:
        # Safety net against a lost kick: the kick may race our re-enabling of kicks.
        for dev in self.devices.values():
            if dev.tx is not None:
                dev.schedule_drain()
        self._rescan = self.loop.call_later(RESCAN_INTERVAL, self._rescan_tick)

    def fast_args(self, dev: NetDevice) -> tuple[bytes, frozenset[bytes], dict[bytes, tuple[object, ...]]] | None:
        """(sender MAC, addresses it owns, destination table) for the C accelerator,
        or None when it is unavailable or does not apply (see ``_fastpath.c``): it
        forwards guest -> guest unicast the l2 way, which only the l2 bridge port does
        (private drops it, vepa sends it to the wire; l3/l3s, whatever the flag, never
        use it: ``tests/pair/test_fastpath.py`` checks they equal pure Python)."""
        if _fastpath is None or self.port.mode != "l2" or self.port.flag != "bridge":
            return None
        mac = dev.slave.mac
        if mac is None:
            return None
        key = (self.port.generation, self.fast_gen, len(self.devices))
        if key != self._fast_key:
            self._rebuild_fast_table()
            self._fast_key = key
        cached = dev._fast
        if cached is None or cached[0] != key or cached[1] != mac:
            owned = frozenset(a for a, owner in self.port.by_addr.items() if owner is dev.slave)
            cached = dev._fast = (key, mac, owned)
        return mac, cached[2], self._fast_table

    def _rebuild_fast_table(self) -> None:
        entries: dict[str, tuple[object, ...]] = {}
        for name, d in self.devices.items():
            if d.slave.up and d.rx is not None and d.rx_enabled and d.slave.mac is not None:
                caps = int(d.takes_csum) | int(d.ecn) << 1 | (d.gso_mask & 0xFF) << 8
                entries[name] = (d.rx, d.slave.mac, caps, d.fast_rx, d)
        table: dict[bytes, tuple[object, ...]] = {}
        for addr, owner in self.port.by_addr.items():
            entry = entries.get(owner.name)
            if entry is not None and self.devices.get(owner.name) is not None:
                table[addr] = entry
        self._fast_table = table

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
                tx = dev.tx
                if dev not in drained and tx is not None and tx.has_pending():
                    drained.add(dev)
                    dev.drain_tx()  # may mark receivers dirty again, dev included
                dev.flush_rx()
        finally:
            self._flushing = False
            wasteful = self.wasteful
            while wasteful:
                wasteful.pop().rx_waste = 0

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
            target = self._device(arg)  # type: ignore[arg-type]
            # a guest may address another by the master's MAC (or ARP for its MAC):
            # give the receiver its own; most frames already carry the receiver's MAC
            is_arp = buf[24] == 0x08 and buf[25] == 0x06
            if is_arp or buf[net.HDR_LEN : net.HDR_LEN + 6].tobytes() != target.slave.mac:
                to_guest(buf[net.HDR_LEN : length], length - net.HDR_LEN, target.slave.mac, self.port.master_mac)
            if self.l3:
                buf[net.HDR_LEN + 6 : net.HDR_LEN + 12] = self.port.master_mac
            target.deliver(buf[:length])
        elif action == FLOOD:
            if length > self.max_frame:  # GSO or not: a group frame the wire could not carry
                dev.drops["mtu_exceeded"] += 1
                return 0
            frame = buf[:length]
            dst = buf[net.HDR_LEN : net.HDR_LEN + 6].tobytes()
            copies = 0
            for other in self.devices.values():
                if other is not dev and other.slave.up and other.slave.mcast.accepts(dst):
                    other.deliver(frame)
                    copies += 1
            if self.hostlink is not None:
                self._answer_for_host(dev, buf[net.HDR_LEN : length])
            self._to_uplink(dev, buf, length)
            return copies
        elif action == TO_HOST:
            self._to_host(dev, buf, length)
        elif action == ROUTE:
            self._route(dev, buf, length)
        elif action == ANSWER:
            self._answer(dev, buf[net.HDR_LEN : length])
        # DROP: the switch has counted it on the slave
        return 0

    def _to_host(self, dev: NetDevice, buf: memoryview, length: int) -> None:
        if self.hostlink is None:
            dev.drops["to_host_unsupported"] += 1
            return
        to_wire(buf[net.HDR_LEN : length], length - net.HDR_LEN, dev.slave.mac, self.port.master_mac)
        if not self.hostlink.to_host(buf, length):
            dev.drops["host_send_failed"] += 1

    def _route(self, dev: NetDevice, buf: memoryview, length: int) -> None:
        """l3 egress: to the next hop the host's tables give, with the master's MAC."""
        router = self.router
        if router is None:
            dev.drops["no_route"] += 1
            return
        off = net.HDR_LEN + ETH_HLEN
        dst = (buf[off + 16 : off + 20] if buf[net.HDR_LEN + 12] == 0x08 else buf[off + 24 : off + 40]).tobytes()
        mac = router.next_hop_mac(dst, dev.slave.name)  # never waits
        if mac == UNRESOLVED:  # held until it resolves (then ``routed_later``), or dropped now
            why = router.hold(dst, dev.slave.name, buf[:length])
            if why is None:
                return
            mac = why
        self._routed(dev, buf, length, mac)

    def routed_later(self, guest: str, frame: bytearray, hop: bytes | str) -> None:
        """A packet ``Router.hold`` kept, with its destination's answer (``Router.on_release``)."""
        dev = self.devices.get(guest)
        if dev is not None:  # the guest may have gone meanwhile
            self._routed(dev, memoryview(frame), len(frame), hop)

    def _routed(self, dev: NetDevice, buf: memoryview, length: int, mac: bytes | str) -> None:
        """Send a routed packet to the next hop ``mac`` (``LOCAL``: the host), or count why not."""
        if isinstance(mac, str):
            dev.drops[mac] += 1  # no_route, neigh_unresolved, neigh_rate_limited, ... (routing.py)
        elif mac == LOCAL:
            self._to_host(dev, buf, length)
        elif self._wire_ok(dev, buf, length):
            to_wire(buf[net.HDR_LEN : length], length - net.HDR_LEN, dev.slave.mac, self.port.master_mac)
            buf[net.HDR_LEN : net.HDR_LEN + 6] = mac
            if self.uplink.send(buf, length):
                self.uplink_tx += 1
            else:
                dev.drops["uplink_send_failed"] += 1

    def _answer(self, dev: NetDevice, frame: memoryview) -> None:
        """Answer a guest's ARP request or NS with the master's MAC (l3/l3s: its router)."""
        reply = neigh.reply(frame, self.port.master_mac, router=True)
        if reply is not None:
            dev.deliver(memoryview(bytearray(net.HDR_LEN) + reply))

    def _answer_for_host(self, dev: NetDevice, frame: memoryview) -> None:
        """l2: a guest's ARP request or NS for one of the host's addresses on the master."""
        asked = neigh.request_target(frame)
        if asked is not None and self.hostlink is not None and self.hostlink.is_host_address(asked[1]):
            reply = neigh.reply(frame, self.port.master_mac)
            if reply is not None:
                dev.deliver(memoryview(bytearray(net.HDR_LEN) + reply))

    def _wire_ok(self, dev: NetDevice, buf: memoryview, length: int) -> bool:
        if not self.wire_up:
            dev.drops["master_down"] += 1
            return False
        if length > self.max_frame and not buf[1]:  # buf[1]: gso_type; GSO frames are segmented later
            dev.drops["mtu_exceeded"] += 1
            return False
        return True

    def _to_uplink(self, dev: NetDevice, buf: memoryview, length: int) -> None:
        if not self._wire_ok(dev, buf, length):
            return
        mac = dev.slave.mac
        assert mac is not None  # the switch learned or validated it
        to_wire(buf[net.HDR_LEN : length], length - net.HDR_LEN, mac, self.port.master_mac)
        if self.uplink.send(buf, length):
            self.uplink_tx += 1
        else:
            dev.drops["uplink_send_failed"] += 1

    def _uplink_readable(self) -> None:
        view = self.view
        budget = BURST  # frames read plus copies flooded to guests
        while budget > 0:
            budget -= 1
            try:
                length = self.uplink.recv(view)
            except OSError as e:
                self.drops["uplink_read_error"] += 1
                log.debug("master %s: read error: %s", self.uplink.master, e)
                break
            if length == 0:
                break
            if length < 0:
                self.drops["uplink_truncated"] += 1
                continue
            self.uplink_rx += 1
            try:
                budget -= self._from_uplink(length)
            except Exception as e:  # a bug must cost one frame, not the daemon
                self.drops["internal_error"] += 1
                internal_error_log(f"master {self.uplink.master}: a frame from the wire dropped", e)
        self.flush()

    def _from_uplink(self, length: int) -> int:
        """Switch the frame in ``view[:length]`` read from the uplink; return the
        number of copies flooded to guests (0 for anything else)."""
        view = self.view
        frame = view[net.HDR_LEN : length]
        action, arg = self.port.from_uplink(frame)
        if action == TO_SLAVE:
            dev = self._device(arg)  # type: ignore[arg-type]
            mac = dev.slave.mac
            if mac is None:
                dev.drops["mac_unknown"] += 1
                return 0
            to_guest(frame, length - net.HDR_LEN, mac, self.port.master_mac)
            if self.l3:
                view[net.HDR_LEN + 6 : net.HDR_LEN + 12] = self.port.master_mac
            dev.deliver(view[:length])
        elif action == ANSWER:
            # l3/l3s: the outside's ARP/NS for a slave address (a departure)
            reply = neigh.reply(frame, self.port.master_mac)
            if reply is not None and self.wire_up and self.uplink.send(memoryview(bytearray(net.HDR_LEN) + reply),
                                                                       net.HDR_LEN + len(reply)):
                self.uplink_tx += 1
        elif action == FLOOD:
            if length > self.max_frame:  # a coalesced (GRO) group frame: no guest needs it whole
                self.drops["mtu_exceeded"] += 1
                return 0
            out = view[:length]
            dst = frame[:6].tobytes()
            copies = 0
            for dev in self.devices.values():
                if dev.slave.up and dev.slave.mcast.accepts(dst):
                    dev.deliver(out)
                    copies += 1
            return copies
        # PASS: the host's; DROP: the switch has counted it in port.uplink_drops
        return 0
