"""One slave's virtio-net device: its rings, kicks, the TX drain and RX delivery.

A kick on the TX eventfd (or the port's safety-net rescan) drains the TX ring in
bursts: each chain is copied into the device's frame buffer (12-byte
virtio_net_hdr + frame) and handed to the port's data path (``PortDatapath``,
``datapath.py``), which switches it; frames for this guest come back through
``deliver``. The C accelerator (``fastpath.py``) takes what it can of a drain.

Rules:
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
- A TX drain is bounded in frames (``BURST``) and in descriptors walked
  (``DESC_BUDGET``, zero-length and indirect descriptors included; one chain
  costs at most the queue size + 1, so a drain stops within ``DESC_BUDGET + num``);
  the rest is rescheduled so one guest cannot starve the others. The C
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
from ..vhost_user.session import RX, TX, Session, Vring
from ..virtio import net
from ..virtio.virtqueue import SplitQueue
from . import fastpath
from .host import eventfd_drain, eventfd_signal

if TYPE_CHECKING:
    from ..switch.port import Slave
    from .datapath import PortDatapath

log = logging.getLogger(__name__)

BURST = 256
#: descriptors one TX drain may walk before it reschedules (see the rules)
DESC_BUDGET = 4 * BURST
#: descriptors a receive queue may walk for frames it then did not take, per burst
RX_WASTE_BUDGET = 4 * BURST
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
        self._buf: bytearray | None = None  # allocated when first used (``buf``)
        self._view: memoryview | None = None
        self.rx_packets = self.rx_bytes = self.tx_packets = self.tx_bytes = 0
        #: descriptors walked this burst for frames not taken (``RX_WASTE_BUDGET``)
        self.rx_waste = 0
        #: the C accelerator's RX counters and cached arguments for this device
        self.fast = fastpath.DeviceCounters()
        #: drop counters, indexed by DropReason (the switch's are ``slave.drops``)
        self.drops = new_counters()
        self._drain_scheduled = False

    @property
    def buf(self) -> bytearray:
        """The frame buffer (12-byte header + the largest frame), made when first needed:
        a slave that never had a guest costs no 64 KiB."""
        if self._buf is None:
            self._allocate()
        assert self._buf is not None
        return self._buf

    @property
    def view(self) -> memoryview:
        if self._view is None:
            self._allocate()
        assert self._view is not None
        return self._view

    def _allocate(self) -> None:
        self._buf = bytearray(net.MAX_BUFFER)
        self._view = memoryview(self._buf)

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
        self.dp.fast_table.invalidate()
        up = self.rx is not None and self.rx_enabled
        if up != self.slave.up:
            self.slave.up = up
            log.info("slave %s: %s", self.slave.name, "up" if up else "down")

    def detach(self) -> None:
        self.session = None
        self.slave.up = False
        self.dp.fast_table.invalidate()

    def counters(self) -> dict[str, int]:
        """rx/tx packets and bytes, whichever path moved them."""
        fast_packets, fast_bytes = self.fast.rx_counts()
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
        self.drops[DropReason.QUEUE_BROKEN] += 1
        self.dp.fast_table.invalidate()
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
        fp = fastpath.ext
        fast = self.dp.fast_table.args(self) if self.tx_enabled else None
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
                            fast = self.dp.fast_table.args(self)  # the frame may have changed state
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
                    if self.tx_enabled:
                        budget = max(0, budget - self._from_guest(length))
                        if fast is not None:  # the frame may have changed state (a target's ring broken)
                            fast = self.dp.fast_table.args(self)
                if q.publish() and self.tx_call is not None and not eventfd_signal(self.tx_call):
                    self.drops[DropReason.CALL_FAILED] += 1
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
        """Put ``buf`` (12-byte header + frame) into this guest's receive queue."""
        q = self.rx
        if q is None or not self.rx_enabled:
            self.drops[DropReason.RX_NOT_READY] += 1
            return
        flags, gso = buf[0], buf[1]
        if (flags or gso) and not net.offload_ok(flags, gso, self.takes_csum, self.gso_mask, self.ecn):
            self.drops[DropReason.OFFLOAD_UNSUPPORTED] += 1
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
            self.drops[DropReason.RX_RING_FULL] += 1
        elif rc == net.RX_BAD_BUFFER:
            self.drops[DropReason.RX_BAD_BUFFER] += 1
        else:
            self.drops[DropReason.RX_TOO_BIG] += 1

    def flush_rx(self) -> None:
        q = self.rx
        if q is not None and q.publish() and self.rx_call is not None and not eventfd_signal(self.rx_call):
            self.drops[DropReason.CALL_FAILED] += 1  # the counter is full or the descriptor gone: never block


_QNAME = {RX: "rx", TX: "tx"}

