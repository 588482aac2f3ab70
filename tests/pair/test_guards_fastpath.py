"""The guests' guards (``switch.guard``) hold with the C accelerator too.

Guest -> guest unicast between owned addresses is what ``_fastpath.c`` forwards
without asking Python; the guards must not be skipped there.
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Ether

from tests.pair.test_fastpath import A4, A6, B4, B6, A, B, Frames, run
from tests.support.inproc import pure_python
from vhost_ipvlan.daemon import fastpath
from vhost_ipvlan.virtio import net

pytestmark = pytest.mark.skipif(not fastpath.accelerated(), reason="the C accelerator is not built")


def guarded() -> Frames:
    plain = bytes(net.HDR_LEN)
    hbh_na = (Ether(src=A, dst=B) / IPv6(src=A6, dst=B6) / IPv6ExtHdrHopByHop()
              / ICMPv6ND_NA(tgt="fd00::1", R=1, S=1, O=1) / ICMPv6NDOptDstLLAddr(lladdr=A))
    offer = Ether(src=A, dst=B) / IP(src=A4, dst=B4) / UDP(sport=67, dport=68) / b"offer"
    dhcp6 = Ether(src=A, dst=B) / IPv6(src=A6, dst=B6) / UDP(sport=547, dport=546) / b"reply"
    return [(bytes(f), plain, False) for f in (hbh_na, offer, dhcp6)]


def test_guarded_unicast_is_dropped_with_and_without_the_accelerator() -> None:
    fast = run(guarded())
    with pure_python():
        pure = run(guarded())
    assert pure["drops"]["a"][1] == {"ndp_ext_header": 1, "dhcp_guard": 2}  # type: ignore[index]
    assert fast == pure
