"""One slave's virtio-net device: its queue pairs, kicks, the TX drains and RX delivery.

A kick on the TX eventfd (or the port's safety-net rescan) drains the TX ring in
bursts: each chain is copied into the device's frame buffer (12-byte
virtio_net_hdr + frame) and handed to the port's data path (``PortDatapath``,
``datapath.py``), which switches it; frames for this guest come back through
``deliver``. The C accelerator (``fastpath.py``) takes what it can of a drain.

Rules:
- Multiqueue: the device declares ``queues`` pairs (``num_queues``, the session's
  seam; a change applies from the next connection) and serves those the
  front-end started, each ring enabled or not on its own (``QueuePair``; with
  several pairs, a ring's enabling and disabling is logged). Every
  started TX ring is drained the same way (a disabled one is drained and its
  frames discarded, as vhost-user.rst says). A frame for the guest goes into one
  of the started and enabled RX rings, chosen by ``frames.flow_hash`` modulo
  their number: one flow stays in one ring, so in order, as long as the guest
  does not change its enabled pairs (the kernel's own choice, not the pair the
  guest last sent on, which would move a flow whenever the guest's sending CPU
  changes). The slave is up while at least one RX ring is ready. The C
  accelerator drains any TX ring and chooses the RX ring the same way, with the
  same hash computed in C (``fastpath``); with one ready ring neither looks at
  the frame.
- No per-frame allocation beyond memoryview slices: one buffer per TX queue,
  allocated when first used (an idle slave holds none); verdicts are ints.
- A frame this receiver cannot take (ring full, offload it did not negotiate, too
  big) is dropped and counted here; nothing is queued.
- Walking the receive ring for frames it then does not take is budgeted per burst
  (``RX_WASTE_BUDGET`` descriptors, plus the walk that crosses it): beyond it, the
  rest of the burst is delivered only into single buffers that fit
  (``rx_deliver(walk=False)``). A guest that keeps changing its ring while frames
  come (``virtio.net`` remembers a failed walk only while the ring stays as it
  was) costs one budget per burst, not a walk per frame.
- A guest that breaks its ring (``GuestError``) gets that queue stopped and
  counted; the daemon and the other guests go on.
- The lines a front-end or guest can make repeat (a ring started, stopped, enabled
  or disabled; the slave up or down; a queue broken; a kick descriptor unreadable)
  are rate-limited (``lograte``) per slave and kind of event, the ring lines per
  ring: a normal connection of any number of pairs logs them all, a front-end
  reconnecting or restarting rings in a loop gets 10 of each, then one per 10 s
  with the count suppressed.
- Resuming guests are announced: when a connection's rings start at a non-zero
  base (SET_VRING_BASE: the front-end continues where another back-end, or an
  earlier connection, left them: an incoming live migration, a reconnect after a
  daemon restart) the slave's addresses are announced on the wire with the
  master's MAC (``PortDatapath.announce``) once, when the slave is first up in that
  connection, within a budget per slave (``ANNOUNCE_BURST`` at once, then one every
  ``ANNOUNCE_INTERVAL``; beyond it one rate-limited line is logged instead): a front-end
  reconnecting at a non-zero base in a loop cannot flood the wire with the slave's
  addresses. A fresh guest (every ring at 0) is not announced. QEMU 7.2's own
  trigger, SEND_RARP, never comes for a guest that acked GUEST_ANNOUNCE (QEMU makes
  the guest announce itself instead, with its own MAC and only the addresses it
  knows), so the back-end does not rely on it (docs/design.md §3).
- Until its rings start, a device delivers nothing (``rx_not_ready``); once a front-end
  takes its rings back (GET_VRING_BASE) it delivers nothing more: with the two slaves of
  a migrating guest, a frame reaches at most the one whose front-end runs the guest.
- A TX drain is bounded in frames (``BURST``) and in descriptors walked
  (``DESC_BUDGET``, zero-length and indirect descriptors included; one chain
  costs at most the queue size + 1, so a drain stops within ``DESC_BUDGET + num``);
  the rest is rescheduled so one guest cannot starve the others. While a drain
  takes chains, and until a drain empties the ring, the ring asks for no kicks
  (``suppress_kicks``, then ``want_kick``; vhost-net's ``vhost_disable_notify``): a
  driver without EVENT_IDX (DPDK's) would otherwise kick after every burst it adds. A
  stopped TX ring is handed back asking for kicks. The C
  accelerator forwards single-descriptor chains only, so it is given the smaller
  of the two budgets as its frame budget and stops exactly where Python would.
  Every copy of a flooded frame counts as one more frame of the burst's budget.
- A TX chain shorter than the 12-byte virtio_net_hdr (zero-length included) is a
  ``runt`` drop: it adds nothing to ``tx_packets``/``tx_bytes``.
- An unexpected exception (not ``GuestError``: a bug, or the C accelerator
  failing) while handling one frame never escapes the burst: the frame is counted
  ``internal_error`` on the guest it came from and skipped, the burst goes on; it
  is logged with its traceback at most once per ``ERROR_LOG_INTERVAL`` (with how
  many were not logged). The C accelerator gives back a frame it failed on and is
  off for the rest of that drain: the failure is counted ``internal_error`` too,
  but Python switches the frame (nothing is lost).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from ..drops import DropReason, new_counters
from ..errors import GuestError
from ..net import dhcp6
from ..net.dhcp import Outcome
from ..net.frames import flow_hash
from ..vhost_user.session import RX, TX, Session, Vring, pair_of
from ..virtio import net
from ..virtio.virtqueue import SplitQueue
from . import fastpath
from .host import eventfd_drain, eventfd_signal
from .lograte import RateLimitedLog

if TYPE_CHECKING:
    from ..switch.port import Slave
    from .datapath import PortDatapath

log = logging.getLogger(__name__)
_announce_log = RateLimitedLog(log)  # announcements refused, per slave
#: the lines a front-end or guest can make repeat, per slave and kind of event (see the rules)
_event_log = RateLimitedLog(log, burst=10, max_keys=8192)

BURST = 256
#: descriptors one TX drain may walk before it reschedules (see the rules)
DESC_BUDGET = 4 * BURST
#: descriptors a receive queue may walk for frames it then did not take, per burst
RX_WASTE_BUDGET = 4 * BURST
ERROR_LOG_INTERVAL = 10.0
#: a slave's announcements (see the rules): this many at once, then one more every
#: ``ANNOUNCE_INTERVAL`` seconds, whatever its front-ends do
ANNOUNCE_BURST = 3
ANNOUNCE_INTERVAL = 10.0
_clock = time.monotonic  # the announcements' budget's clock (a test sets it)


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


_NO_BUFFER = bytearray()


class QueuePair:
    """One receive and one transmit ring of a device (vrings ``2 * index`` and
    ``2 * index + 1``): the queues while started, enabled states, call descriptors,
    and the frames moved since the connection began."""

    __slots__ = ("fast_rx", "index", "rx", "rx_call", "rx_enabled", "rx_packets", "tx", "tx_call", "tx_enabled",
                 "tx_packets")

    def __init__(self, index: int) -> None:
        self.index = index
        self.rx: SplitQueue | None = None
        self.tx: SplitQueue | None = None
        self.rx_enabled = False
        self.tx_enabled = False
        self.rx_call: int | None = None
        self.tx_call: int | None = None
        self.rx_packets = self.tx_packets = 0  # rx: what Python delivered (the C accelerator's is in fast_rx)
        #: the C accelerator's RX counters for this ring (two native u64: packets, bytes)
        self.fast_rx = bytearray(16)

    @property
    def rx_ready(self) -> bool:
        return self.rx is not None and self.rx_enabled

    def stats(self) -> dict[str, object]:
        fast_packets, _ = fastpath.counts(self.fast_rx)
        return {"rx": _state(self.rx, self.rx_enabled), "tx": _state(self.tx, self.tx_enabled),
                "rx_packets": self.rx_packets + fast_packets, "tx_packets": self.tx_packets}


def _state(q: SplitQueue | None, enabled: bool) -> str:
    return ("enabled" if enabled else "disabled") if q is not None else "stopped"


class NetDevice:
    """One slave's virtio-net device: its queue pairs, counters and frame buffer.
    ``rx``, ``tx``, ``rx_enabled``, ``tx_enabled``, ``rx_call`` and ``tx_call`` are the
    first pair's (all a single-queue guest has)."""

    def __init__(self, slave: Slave, dp: PortDatapath, queues: int = 1) -> None:
        self.slave = slave
        self.dp = dp
        self.session: Session | None = None
        #: queue pairs offered to the next connection (the slave's ``queues``)
        self.queues = queues
        self.pairs = [QueuePair(0)]
        #: the pairs whose RX ring is started and enabled (where frames for the guest go)
        self.rx_ready: list[QueuePair] = []
        self._rx_sole: QueuePair | None = None  # rx_ready's one pair, if it has one
        self._kick_fds: dict[int, int] = {}
        self.mergeable = False
        self.takes_csum = False
        self.gso_mask = 1
        self.ecn = False
        #: the frame buffer (12-byte header + the largest frame) a TX drain copies into;
        #: empty until the TX queue first starts: a slave that never had a guest
        #: costs no 64 KiB. Plain attributes, not properties: read once per frame.
        self.buf = _NO_BUFFER
        self.view = memoryview(self.buf)
        self.rx_packets = self.rx_bytes = self.tx_packets = self.tx_bytes = 0
        #: descriptors walked this burst for frames not taken (``RX_WASTE_BUDGET``)
        self.rx_waste = 0
        #: the C accelerator's RX counters and cached arguments for this device
        self.fast = fastpath.DeviceCounters()
        #: drop counters, indexed by DropReason (the switch's are ``slave.drops``)
        self.drops = new_counters()
        #: what the backend's DHCP server did for this guest, indexed by ``dhcp.Outcome``
        #: (MALFORMED stays 0: it is the drop ``dhcp_malformed``)
        self.dhcp = [0] * len(Outcome)
        #: announcements sent for this guest on the wire (``PortDatapath.announce``)
        self.announcements = 0
        #: kicks of its TX ring a worker's WorkerCore served without Python (workers.py)
        self.core_kicks = 0
        #: this connection's rings resume at a non-zero base / it has been announced
        self.resumed = self.announced = False
        #: what is left of the announcements' budget (tokens, when), across connections
        self._announce_budget = (float(ANNOUNCE_BURST), _clock())
        #: the same for DHCPv6 (``dhcp6.Outcome``; MALFORMED is the drop ``dhcp6_malformed``)
        self.dhcp6 = [0] * len(dhcp6.Outcome)
        #: Router Advertisements the daemon put into this guest's RX ring (``net.ra``)
        self.ra_sent = 0
        self._drain_scheduled = False

    # -- the first pair's rings (a single-queue guest's) ------------------------------

    @property
    def rx(self) -> SplitQueue | None:
        return self.pairs[0].rx

    @rx.setter
    def rx(self, q: SplitQueue | None) -> None:
        self.pairs[0].rx = q
        self._ready_changed()

    @property
    def tx(self) -> SplitQueue | None:
        return self.pairs[0].tx

    @tx.setter
    def tx(self, q: SplitQueue | None) -> None:
        if q is not None:
            self._make_buffer()
        self.pairs[0].tx = q

    def _make_buffer(self) -> None:
        """The frame buffer, when a TX queue first starts (see ``buf``)."""
        if self.buf is _NO_BUFFER:
            self.buf = bytearray(net.MAX_BUFFER)
            self.view = memoryview(self.buf)

    @property
    def rx_enabled(self) -> bool:
        return self.pairs[0].rx_enabled

    @rx_enabled.setter
    def rx_enabled(self, on: bool) -> None:
        self.pairs[0].rx_enabled = on
        self._ready_changed()

    @property
    def tx_enabled(self) -> bool:
        return self.pairs[0].tx_enabled

    @tx_enabled.setter
    def tx_enabled(self, on: bool) -> None:
        self.pairs[0].tx_enabled = on

    @property
    def rx_call(self) -> int | None:
        return self.pairs[0].rx_call

    @property
    def tx_call(self) -> int | None:
        return self.pairs[0].tx_call

    def _ready_changed(self) -> None:
        self.rx_ready = [p for p in self.pairs if p.rx_ready]
        self._rx_sole = self.sole_rx()

    def sole_rx(self) -> QueuePair | None:
        """The one pair frames for the guest go to, or None (none ready, or several:
        the choice is per flow, ``deliver``'s)."""
        ready = self.rx_ready
        return ready[0] if len(ready) == 1 else None

    def tx_pending(self) -> bool:
        """Whether a started TX ring has chains the device has not taken."""
        return any(p.tx is not None and p.tx.has_pending() for p in self.pairs)

    def has_tx(self) -> bool:
        return any(p.tx is not None for p in self.pairs)

    # -- session.Device -----------------------------------------------------------

    def num_queues(self) -> int:
        return self.queues

    def attach(self, session: Session) -> None:
        self.session = session
        for p in self.pairs:  # the last connection's pairs go: the device keeps what C delivered there
            packets, nbytes = fastpath.counts(p.fast_rx)
            self.rx_packets += packets
            self.rx_bytes += nbytes
        self.pairs = [QueuePair(i) for i in range(session.queue_pairs)]
        self.resumed = self.announced = False
        self._ready_changed()

    def vring_started(self, vring: Vring) -> None:
        assert self.session is not None and vring.queue is not None
        features = self.session.features
        self.mergeable = bool(features >> net.F_MRG_RXBUF & 1)
        self.takes_csum, self.gso_mask = net.offload_mask(features)
        self.ecn = bool(features >> net.F_GUEST_ECN & 1)
        loop = self.dp.loop
        pair = self.pairs[pair_of(vring.index)]
        self.resumed = self.resumed or vring.base != 0
        if vring.kick_fd is not None:
            handler = self._tx_kick if vring.index & 1 == TX else self._rx_kick
            loop.add_reader(vring.kick_fd, handler, vring.kick_fd, vring.index)
            self._kick_fds[vring.index] = vring.kick_fd
        if vring.index & 1 == TX:
            self._make_buffer()
            pair.tx = vring.queue
            self.schedule_drain()
        else:
            pair.rx = vring.queue
            vring.queue.suppress_kicks()  # frames are never queued for RX buffers: no use for them
        self.vring_changed(vring)
        self._event(f"started {vring.index}", logging.INFO, "slave %s: %s queue started (size %d)",
                    self._qname(vring.index), vring.num)

    def vring_stopped(self, vring: Vring) -> None:
        fd = self._kick_fds.pop(vring.index, None)
        if fd is not None:
            self.dp.loop.remove_reader(fd)
        pair = self.pairs[pair_of(vring.index)]
        if vring.index & 1 == TX:
            if pair.tx is not None:  # what it used is the guest's before GET_VRING_BASE answers
                pair.tx.allow_kicks()  # a burst cut by its budget left none asked for: the next back-end waits for them
                self._publish(pair.tx, pair.tx_call)
            pair.tx = None
        else:
            if pair.rx is not None:
                pair.rx.allow_kicks()  # the ring's next back-end may wait for RX kicks
                self._publish(pair.rx, pair.rx_call)
            pair.rx = None
        self.vring_changed(vring)
        self._event(f"stopped {vring.index}", logging.INFO, "slave %s: %s queue stopped", self._qname(vring.index))

    def vring_changed(self, vring: Vring) -> None:
        pair = self.pairs[pair_of(vring.index)]
        if vring.index & 1 == RX:
            was = pair.rx_enabled
            pair.rx_call = vring.call_fd
            pair.rx_enabled = vring.enabled
        else:
            was = pair.tx_enabled
            pair.tx_call = vring.call_fd
            pair.tx_enabled = vring.enabled
        if was != vring.enabled and len(self.pairs) > 1:  # the guest's choice of pairs (ethtool -L)
            self._event(f"enabled {vring.index}", logging.INFO, "slave %s: %s queue %s", self._qname(vring.index),
                        "enabled" if vring.enabled else "disabled")
        self._ready_changed()
        self.dp.fast_table.invalidate()
        up = bool(self.rx_ready)
        if up != self.slave.up:
            self.slave.up = up
            self._event("up" if up else "down", logging.INFO, "slave %s: %s", "up" if up else "down")
            if up:
                self.dp.slave_up(self)
        if up and self.resumed and not self.announced:
            self.announced = True
            if not self._announce_allowed():
                _announce_log.log(self.slave.name, logging.WARNING, "slave %s: resumed again: not announced "
                                  "(at most %d announcements, then one every %.0f s)", self.slave.name,
                                  ANNOUNCE_BURST, ANNOUNCE_INTERVAL)
                return
            sent = self.dp.announce(self)
            log.info("slave %s: resumed (rings continue at a non-zero base): %d address(es) announced "
                     "with the master's MAC", self.slave.name, sent)

    def _announce_allowed(self) -> bool:
        """Take one from the slave's announcement budget (see the rules), if any is left."""
        now = _clock()
        tokens, stamp = self._announce_budget
        tokens = min(float(ANNOUNCE_BURST), tokens + (now - stamp) / ANNOUNCE_INTERVAL)
        allowed = tokens >= 1.0
        self._announce_budget = (tokens - 1.0 if allowed else tokens, now)
        return allowed

    def detach(self) -> None:
        self.session = None
        self.slave.up = False
        self.dp.fast_table.invalidate()

    def counters(self) -> dict[str, int]:
        """rx/tx packets and bytes, whichever path moved them."""
        fast_packets, fast_bytes = self.fast.rx_counts()
        for p in self.pairs:
            packets, nbytes = fastpath.counts(p.fast_rx)
            fast_packets += packets
            fast_bytes += nbytes
        return {
            "rx_packets": self.rx_packets + fast_packets,
            "rx_bytes": self.rx_bytes + fast_bytes,
            "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes,
        }

    def dhcp_stats(self) -> dict[str, int]:
        """Non-zero DHCP outcomes (``offered``, ``acked``, ``naked``, ...) by label."""
        return {o.label: self.dhcp[o] for o in Outcome if self.dhcp[o]}

    def dhcp6_stats(self) -> dict[str, int]:
        """Non-zero DHCPv6 outcomes (``advertised``, ``assigned``, ...) by label, and the
        Router Advertisements sent (``ra_sent``)."""
        out = {o.label: self.dhcp6[o] for o in dhcp6.Outcome if self.dhcp6[o]}
        if self.ra_sent:
            out["ra_sent"] = self.ra_sent
        return out

    def queue_stats(self) -> dict[str, object]:
        """The queue pairs: how many the slave offers, the worker thread that serves them
        (its port's) and how many of its TX kicks that worker served in C (``WorkerCore``),
        how many the connection has and how many take frames (RX started
        and enabled), and each pair's state."""
        return {"queues": self.queues, "worker": self.dp.worker, "kicks_served_in_c": self.core_kicks,
                "queue_pairs": len(self.pairs) if self.session is not None else 0,
                "queue_pairs_enabled": len(self.rx_ready),
                "per_queue": [p.stats() for p in self.pairs] if self.session is not None else []}

    def _event(self, kind: str, level: int, msg: str, *args: object) -> None:
        """Log ``msg`` (its first ``%s`` the slave's name) within the slave's budget for ``kind``."""
        _event_log.log(f"{self.slave.name} {kind}", level, msg, self.slave.name, *args)

    def _qname(self, index: int) -> str:
        """A vring's name in log lines: rx/tx, with the pair's number when there are several."""
        kind = "tx" if index & 1 == TX else "rx"
        return kind if len(self.pairs) == 1 else f"{kind}{pair_of(index)}"

    # -- events -------------------------------------------------------------------

    def _rx_kick(self, fd: int, index: int) -> None:
        if not eventfd_drain(fd):  # new RX buffers; frames are never queued, nothing to do
            self._kick_failed(index, fd)

    #: it only reads its descriptor: a worker's WorkerCore does it without Python (workers.py)
    _rx_kick.quiet_reader = True  # type: ignore[attr-defined]

    def _tx_kick(self, fd: int, index: int) -> None:
        if not eventfd_drain(fd):
            self._kick_failed(index, fd)
            return
        self.drain_tx()

    def kick_fd(self, index: int) -> int | None:
        """The kick descriptor watched for vring ``index``, if any."""
        return self._kick_fds.get(index)

    def _kick_failed(self, index: int, fd: int) -> None:
        """A kick descriptor that cannot be read would be reported readable forever."""
        if self._kick_fds.get(index) == fd:
            del self._kick_fds[index]
        self.dp.loop.remove_reader(fd)
        self._event("kick", logging.WARNING, "slave %s: %s kick descriptor unreadable: no longer watched",
                    self._qname(index))

    def schedule_drain(self) -> None:
        plans = self.dp.plans
        if plans is not None:  # a plan serves the rest, or the worker's select drains it (workers.py)
            plans[1].add(self)
        elif not self._drain_scheduled:
            self._drain_scheduled = True
            self.dp.loop.call_soon(self._scheduled_drain)

    def _scheduled_drain(self) -> None:
        self._drain_scheduled = False
        self.drain_tx()

    def break_queue(self, index: int, err: GuestError) -> None:
        """The guest broke vring ``index``: stop using it (counted once, logged)."""
        self.drops[DropReason.QUEUE_BROKEN] += 1
        self.dp.fast_table.invalidate()
        self._event("broken", logging.WARNING, "slave %s: %s queue broken by the guest: %s", self._qname(index), err)
        fd = self._kick_fds.pop(index, None)
        if fd is not None:
            self.dp.loop.remove_reader(fd)
        pair = self.pairs[pair_of(index)]
        if index & 1 == TX:
            if pair.tx is not None:
                pair.tx.allow_kicks()  # broken mid-burst: handed back asking for kicks, as a stopped ring
            pair.tx = None
        else:
            pair.rx = None
            self._ready_changed()
            self.slave.up = bool(self.rx_ready)

    # -- guest -> switch --------------------------------------------------------------

    def drain_tx(self) -> None:
        """Drain every started TX ring (each its own burst), then publish the RX rings
        the frames went into (``PortDatapath.flush``)."""
        try:
            for pair in self.pairs:
                if pair.tx is not None:
                    before = self.tx_packets
                    self._drain(pair, pair.tx)
                    pair.tx_packets += self.tx_packets - before
        finally:
            self.dp.flush()
        plans = self.dp.plans
        if plans is not None:  # its next kicks may be served without Python (workers.py)
            plans[0].add(self)

    def _drain(self, pair: QueuePair, q: SplitQueue) -> None:
        """One burst of ``pair``'s TX ring ``q`` (see the rules for its budgets)."""
        view = self.view
        budget = BURST
        limit = q.walked + DESC_BUDGET
        fp = fastpath.ext
        fast = self.dp.fast_args(self) if pair.tx_enabled else None
        try:
            if q.pending():
                q.suppress_kicks()  # no kick per burst while this one runs (vhost_disable_notify)
            while True:
                while budget and q.walked < limit:
                    if fast is not None and fp is not None:
                        # the C accelerator forwards what it can; it stops at the first
                        # frame (SLOW_FRAME, in view) or chain (SLOW_CHAIN) for Python;
                        # each chain it takes is one descriptor: frames == descriptors
                        try:
                            status, length, nf, nb, sent, failed = fp.forward_burst(
                                q, self.buf, fast[0], fast[1], fast[2], min(budget, limit - q.walked),
                                self.dp.dirty, fast[3],
                            )
                        except Exception as e:  # a bug: nothing was taken
                            status, length, nf, nb, sent, failed = fp.ERROR, e, 0, 0, 0, 0
                        self.dp.uplink_tx += sent
                        self.drops[DropReason.UPLINK_SEND_FAILED] += failed
                        budget -= nf
                        self.tx_packets += nf
                        self.tx_bytes += nb
                        if status == fp.SLOW_FRAME:
                            budget = max(0, budget - 1 - self._from_guest(length))
                            fast = self.dp.fast_args(self)  # the frame may have changed state
                            continue
                        if status == fp.ERROR:  # the frame, if any, was given back
                            self.drops[DropReason.INTERNAL_ERROR] += 1
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
                    if pair.tx_enabled:
                        budget = max(0, budget - self._from_guest(length))
                        if fast is not None:  # the frame may have changed state (a target's ring broken)
                            fast = self.dp.fast_args(self)
                self._publish(q, pair.tx_call)
                if not budget or q.walked >= limit:
                    self.schedule_drain()
                    break
                if not q.want_kick():
                    break
                q.suppress_kicks()  # more came: quiet again while they are taken
        except GuestError as e:
            self.break_queue(2 * pair.index + TX, e)
        except BaseException:
            q.allow_kicks()  # a bug: the driver's next burst kicks (the rescan finds the rest)
            raise

    def _from_guest(self, length: int) -> int:
        """Count and switch one frame taken from the TX ring (``view[:length]``);
        return how many copies of it went to other guests (the burst pays for them)."""
        if length < net.HDR_LEN:
            self.drops[DropReason.RUNT] += 1
            return 0
        self.tx_packets += 1
        self.tx_bytes += length - net.HDR_LEN
        try:
            return self.dp.from_guest(self, length)
        except Exception as e:  # a bug must cost one frame, not the daemon
            self.drops[DropReason.INTERNAL_ERROR] += 1
            internal_error_log(f"slave {self.slave.name}: a frame from the guest dropped", e)
            return 0

    # -- switch -> guest ----------------------------------------------------------------

    def deliver(self, buf: memoryview) -> None:
        """Put ``buf`` (12-byte header + frame) into one of this guest's receive queues
        (the flow's, when several are ready: see the rules)."""
        pair = self._rx_sole  # a single-queue guest's case, without a look at the frame
        if pair is None:
            ready = self.rx_ready
            if not ready:
                self.drops[DropReason.RX_NOT_READY] += 1
                return
            pair = ready[flow_hash(buf[net.HDR_LEN :]) % len(ready)]
        q = pair.rx
        assert q is not None  # rx_ready holds started rings only
        flags, gso = buf[0], buf[1]
        if (flags or gso) and not net.offload_ok(flags, gso, self.takes_csum, self.gso_mask, self.ecn):
            self.drops[DropReason.OFFLOAD_UNSUPPORTED] += 1
            return
        before = q.walked
        try:
            rc = net.rx_deliver(q, buf, self.mergeable, self.rx_waste <= RX_WASTE_BUDGET)
        except GuestError as e:
            self.break_queue(2 * pair.index + RX, e)
            return
        if rc != net.RX_OK and q.walked != before:
            if not self.rx_waste:
                self.dp.wasteful.add(self)
            self.rx_waste += q.walked - before
        if rc == net.RX_OK:
            self.rx_packets += 1
            pair.rx_packets += 1
            self.rx_bytes += len(buf) - net.HDR_LEN
            self.dp.dirty.add(self)
        elif rc == net.RX_RING_FULL:
            self.drops[DropReason.RX_RING_FULL] += 1
        elif rc == net.RX_BAD_BUFFER:
            self.drops[DropReason.RX_BAD_BUFFER] += 1
        else:
            self.drops[DropReason.RX_TOO_BIG] += 1

    def flush_rx(self) -> None:
        """Publish the RX rings (and interrupt the guest where it asked for it)."""
        for pair in self.pairs:
            if pair.rx is not None:
                self._publish(pair.rx, pair.rx_call)

    def _publish(self, q: SplitQueue, call: int | None) -> None:
        """Publish a ring's used index and interrupt the guest if it asked."""
        if q.publish() and call is not None and not eventfd_signal(call):
            self.drops[DropReason.CALL_FAILED] += 1  # the counter is full or the descriptor gone: never block

