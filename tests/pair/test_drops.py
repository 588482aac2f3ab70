"""Each dropped frame is counted once, by the code that gives up on it (``vhost_ipvlan/drops.py``).

Architecture review (issue 15): a failed write into the host link was counted
twice, ``host_send_failed`` on the master (``HostLink.to_host``, now ``send``) and on the sender
(the data path that called it).
"""

from __future__ import annotations

import os

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.support.inproc import MASTER_MAC, InprocPort
from vhost_ipvlan.daemon.hostlink import HostLink
from vhost_ipvlan.drops import counts

A, A4 = "02:00:00:00:00:0a", "10.0.0.10"


def broken_host_link(p: InprocPort, fd: int) -> HostLink:
    """A host link whose tap refuses every write (``fd`` is not writable); no tap is created."""
    link = HostLink.__new__(HostLink)
    link.fd = fd
    link.mac = bytes.fromhex("020000000099")
    link.tx_packets = link.rx_packets = 0
    return link


def test_a_failed_write_into_the_host_link_is_counted_once_on_the_sender() -> None:
    p = InprocPort([("a", [bytes([10, 0, 0, 10])], bytes.fromhex(A.replace(":", "")))])
    r, w = os.pipe()
    try:
        p.dp.hostlink = broken_host_link(p, r)
        master = ":".join(f"{b:02x}" for b in MASTER_MAC)
        p.frontends["a"].transmit(bytes(Ether(src=A, dst=master) / IP(src=A4, dst="10.0.0.1") / UDP()))
        p.device("a").drain_tx()
        dev = p.device("a")
        assert counts(dev.drops, dev.slave.drops) == {"host_send_failed": 1}
        assert counts(p.dp.drops, p.port.uplink_drops) == {}
    finally:
        os.close(r)
        os.close(w)
        p.close()
