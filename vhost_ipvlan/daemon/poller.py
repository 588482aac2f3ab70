"""Busy polling of the guests' TX rings while traffic flows (``[daemon] poll_us``).

Theory of operation. Without polling a guest kicks (an eventfd write: a system
call in a DPDK front-end, a VM exit in QEMU) for every burst it transmits, and the
daemon wakes from epoll for each. With ``poll_us`` > 0, a TX ring the daemon has just
drained is not handed back to kicks: the device asks the driver not to kick
(``SplitQueue.suppress_kicks``) and the port's ``Poller`` keeps draining it from the
event loop, as long as frames keep coming; once a device's rings have been idle for
``poll_us`` microseconds it asks for kicks again (``want_kick``, which re-checks the
ring behind a barrier) and goes back to sleeping in epoll. This is QEMU's ``poll-us``
and vhost-net's busy-loop timeout, in the daemon: CPU time traded for fewer wake-ups
and kicks, only while there is traffic.

Rules:
- Polling never holds the loop for more than ``SLICE`` seconds at a time: it goes on
  in a fresh ``call_soon`` after every slice, so the uplink, the vhost-user channels
  and the control API are served between slices; a busy guest cannot starve them.
- A device polled is drained as a kick would drain it (``NetDevice.drain_tx``: same
  budgets, same order); the poller only decides when.
- A device leaves the poller when its rings stop (``forget``: ``vring_stopped``,
  ``detach``) or after ``poll_us`` without a frame; either way it asks for kicks again
  first, so a frame made available meanwhile is drained, not stranded.
- While it polls, the poller also looks at the wire between passes (``wire``: the
  port reads the uplink when its RX ring shows a frame, without a system call), so a
  reply from the wire does not wait for the slice to end.
- ``poll_us`` 0 (the default) is off: every drain ends by asking for kicks, as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .device import internal_error_log

if TYPE_CHECKING:
    from .device import NetDevice
    from .seams import Loop

#: the longest one polling pass holds the event loop (seconds)
SLICE = 0.0002

_clock = time.monotonic


class Poller:
    """The devices of one port whose TX rings are polled, and when each last had work."""

    def __init__(self, loop: Loop, wire: Callable[[], object], poll_us: int = 0) -> None:
        self.loop = loop
        self.wire = wire
        self.window = poll_us / 1e6
        #: device -> the last time it had a frame
        self._devices: dict[NetDevice, float] = {}
        self._scheduled = False

    @property
    def active(self) -> bool:
        return self.window > 0

    def set_poll_us(self, poll_us: int) -> None:
        """Change the window; 0 stops polling (every device asks for kicks again)."""
        self.window = poll_us / 1e6
        if not self.active:
            for dev in list(self._devices):
                self.forget(dev)

    def watch(self, dev: NetDevice) -> None:
        """``dev`` has just been drained and its rings asked not to kick: poll it."""
        self._devices[dev] = _clock()
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._run)

    def forget(self, dev: NetDevice) -> None:
        """Stop polling ``dev`` (its rings asked to kick again)."""
        if self._devices.pop(dev, None) is not None:
            dev.want_tx_kicks()

    def _slice(self) -> None:
        """Passes over the polled devices (and a look at the wire) for up to ``SLICE``."""
        devices = self._devices
        end = _clock() + SLICE
        wire = self.wire
        while devices:
            wire()
            now = _clock()
            for dev, last in list(devices.items()):
                if dev.tx_pending():
                    dev.drain_tx()  # watch() records the time
                elif now - last >= self.window:
                    del devices[dev]
                    dev.want_tx_kicks()
            if now >= end:
                return

    def polls(self, dev: NetDevice) -> bool:
        """Whether ``dev``'s TX rings are polled now (``stats``: ``tx_polled``)."""
        return dev in self._devices

    def _run(self) -> None:
        self._scheduled = False
        try:
            self._slice()
        except Exception as e:  # a bug: no ring may stay without kicks and without polling
            internal_error_log("the TX ring poller failed; the rings it polled ask for kicks again", e)
            for dev in list(self._devices):
                self.forget(dev)
            return
        if self._devices and not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._run)
