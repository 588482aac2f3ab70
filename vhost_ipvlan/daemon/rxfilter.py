"""A slave's multicast filter from its guest's own RX filter, read over QMP.

QEMU handles the virtio-net control queue itself (``VIRTIO_NET_F_CTRL_RX`` and the
MAC table are not vhost-user features) and never tells a vhost-user backend what the
guest asked for; it does report it on its monitor. Verified with QEMU 7.2 and a
Linux guest on a vhost-user NIC: ``query-rx-filter`` lists the guest's multicast
MACs (``ip maddr add``, group joins, the solicited-node groups), its ``allmulticast``
and ``promisc``, and ``NIC_RX_FILTER_CHANGED`` fires when they change, then stays
quiet until the next ``query-rx-filter`` (QEMU's rate limit).

``RxFilterWatch`` (one per slave that has ``qmp`` in its configuration) runs on the
daemon's event loop:

- connects to the QMP socket with ``qemu.qmp``; when that fails (QEMU not started
  yet, socket gone, monitor busy) it retries with backoff (``BACKOFF``, doubling to
  ``BACKOFF_MAX``) while the slave's filter stays on IGMP/MLD snooping;
- once connected: ``query-rx-filter`` (for ``qmp_device``, else every NIC, choosing
  the one whose ``main-mac`` is the slave's MAC, or the only one), its answer given
  to ``GroupFilter.set_rx_filter``; again on every ``NIC_RX_FILTER_CHANGED``;
- when the connection ends or fails (QEMU gone, a bad reply, no such NIC), the
  filter goes back to snooping (``clear_rx_filter``) and it reconnects; the watch
  looks at the connection's state at least every ``STATE_POLL`` seconds, as qemu.qmp
  announces a change only to a waiter already there (one that closed just before the
  watch started waiting would otherwise go unnoticed for good).

Each change of source (QMP <-> snooping) is logged as one line; retries are not.
Those lines are rate-limited per slave (``lograte``): a QEMU whose monitor answers
and then closes, in a loop, cannot flood the log.
``close`` (slave removed, daemon exit) stops it and leaves the filter on snooping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from ..errors import RxFilterError
from ..net.addr import format_mac
from ..switch.port import Slave
from .lograte import RateLimitedLog

log = logging.getLogger(__name__)
_source_log = RateLimitedLog(log)  # the changes of source, per slave and source
BACKOFF = 0.5
BACKOFF_MAX = 30.0
CONNECT_TIMEOUT = 10.0
QUERY_TIMEOUT = 10.0
#: how long the watch waits for an event or a change of the client's state before it
#: looks at the state itself: qemu.qmp tells a change only to those already waiting, so
#: a monitor that closed between the watch's look and the start of its wait would
#: otherwise leave it connected to nothing for good
STATE_POLL = 5.0
EVENT = "NIC_RX_FILTER_CHANGED"


def pick_nic(reply: Any, device: str | None, mac: bytes | None) -> dict[str, Any]:
    """The ``RxFilterInfo`` of the slave's NIC from a ``query-rx-filter`` reply."""
    if not isinstance(reply, list) or not all(isinstance(i, dict) for i in reply):
        raise RxFilterError("query-rx-filter: the reply is not a list of NICs")
    if device is not None:
        found = [i for i in reply if i.get("name") == device]
    elif mac is not None:
        found = [i for i in reply if i.get("main-mac") == format_mac(mac)]
    else:
        found = reply
    if len(found) != 1:
        names = ", ".join(str(i.get("name")) for i in reply) or "none"
        want = f"NIC {device!r}" if device is not None else \
            f"NIC with MAC {format_mac(mac)}" if mac is not None else "a single NIC (set qmp_device)"
        raise RxFilterError(f"query-rx-filter: no {want} among the guest's NICs ({names})")
    info: dict[str, Any] = found[0]
    return info


class RxFilterWatch:
    def __init__(self, slave: Slave, path: Path, device: str | None, loop: asyncio.AbstractEventLoop) -> None:
        self.slave, self.path, self.device = slave, path, device
        self.source = "snooping"
        self._announced = False
        self._task = loop.create_task(self._run(), name=f"rxfilter-{slave.name}")

    def close(self) -> None:
        self._task.cancel()
        self.slave.mcast.clear_rx_filter()

    # -- the source --------------------------------------------------------------------------

    def _use_qmp(self, nic: str) -> None:
        if self.source != "qmp":
            self.source, self._announced = "qmp", True
            _source_log.log(f"{self.slave.name} qmp", logging.INFO, "slave %s: multicast filter from QMP %s (NIC %s)",
                            self.slave.name, self.path, nic)

    def _use_snooping(self, reason: str) -> None:
        self.slave.mcast.clear_rx_filter()
        if self.source != "snooping" or not self._announced:
            self.source, self._announced = "snooping", True
            _source_log.log(f"{self.slave.name} snooping", logging.WARNING,
                            "slave %s: multicast filter from IGMP/MLD snooping: QMP %s: %s", self.slave.name,
                            self.path, reason)
        else:
            log.debug("slave %s: QMP %s: %s", self.slave.name, self.path, reason)

    # -- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            from qemu.qmp import QMPClient
        except ImportError:
            self._use_snooping("the Python package qemu.qmp is not installed")
            return
        qmp_log = logging.getLogger("qemu.qmp")
        if qmp_log.level == logging.NOTSET:  # it logs every failed connection at ERROR; we log what matters
            qmp_log.setLevel(logging.CRITICAL)
        delay = BACKOFF
        while True:
            client = QMPClient(f"vhost-ipvlan:{self.slave.name}")
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await client.connect(str(self.path))
                delay = BACKOFF
                await self._session(client)
                reason = "QEMU closed the monitor"
            except Exception as e:  # OSError, TimeoutError, RxFilterError, qemu.qmp's ConnectError, ...
                reason = _why(e)
            finally:
                with contextlib.suppress(Exception):
                    await client.disconnect()
            self._use_snooping(reason)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _session(self, client: Any) -> None:
        from qemu.qmp import EventListener, Runstate

        listener = EventListener(EVENT)
        with client.listen(listener):
            await self._query(client)
            while client.runstate == Runstate.RUNNING:
                event = asyncio.ensure_future(listener.get())
                state = asyncio.ensure_future(client.runstate_changed())
                done, _ = await asyncio.wait((event, state), timeout=STATE_POLL,
                                             return_when=asyncio.FIRST_COMPLETED)
                for t in (event, state):
                    t.cancel()
                if event in done and client.runstate == Runstate.RUNNING:
                    listener.clear()  # one query answers every event so far
                    await self._query(client)

    async def _query(self, client: Any) -> None:
        args = {"name": self.device} if self.device is not None else {}
        async with asyncio.timeout(QUERY_TIMEOUT):
            reply = await client.execute("query-rx-filter", args)
        info = pick_nic(reply, self.device, self.slave.mac)
        try:
            self.slave.mcast.set_qmp_rx_filter(info)
        except ValueError as e:
            raise RxFilterError(str(e)) from None
        self._use_qmp(str(info.get("name")))


def _why(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300]
