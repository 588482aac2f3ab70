"""What fuzzing found, as readable regression tests (each input is also in fuzz/corpus/).

The C accelerator must forward nothing the Python switch would not: the guards
(``switch.guard``) drop DHCP-server replies, DHCPv6 server messages and NDP behind
an IPv6 extension header from a guest; the fast path used to forward them between
guests (fuzz ``rings``, crash-497fe11f...). A domain's NICs each get their own slave
(fuzz ``domain``, crash-4ee37efe...).
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6ND_NA, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Ether

from tests.pair.test_fastpath import A4, A6, B4, B6, A, B, run
from tests.support.inproc import pure_python
from vhost_ipvlan.daemon import fastpath
from vhost_ipvlan.virtio import net

pytestmark = pytest.mark.skipif(not fastpath.accelerated(), reason="the C accelerator is not built")

PLAIN = bytes(net.HDR_LEN)
GUARDED = {
    "dhcp_server_reply": Ether(src=A, dst=B) / IP(src=A4, dst=B4) / UDP(sport=67, dport=68) / b"offer",
    "dhcpv6_server": Ether(src=A, dst=B) / IPv6(src=A6, dst=B6) / UDP(sport=547, dport=546) / b"advertise",
    "na_behind_hop_by_hop": Ether(src=A, dst=B) / IPv6(src=A6, dst=B6) / IPv6ExtHdrHopByHop()
    / ICMPv6ND_NA(tgt=B6, R=0, S=0, O=1),
    "udp_behind_dest_opts": Ether(src=A, dst=B) / IPv6(src=A6, dst=B6) / IPv6ExtHdrDestOpt() / UDP(dport=9) / b"x",
    "truncated_hop_by_hop": Ether(src=A, dst=B) / IPv6(src=A6, dst=B6, nh=0, plen=0) / b"",
}


@pytest.mark.parametrize("name", sorted(GUARDED))
def test_the_accelerator_leaves_guarded_frames_to_python(name: str) -> None:
    frame = bytes(GUARDED[name])
    frames = [(frame, PLAIN, False)] * 3
    fast = run(frames)
    with pure_python():
        pure = run(frames)
    assert fast == pure


def test_two_nics_with_one_mac_are_refused() -> None:
    """Two vhost-user NICs of one domain with the same MAC would map to one slave name:
    the hook's second ``slave.add`` turned into a change that took the first NIC's slave
    (its socket) away (fuzz ``domain``, crash-4ee37efe...). Refused, one line."""
    from tests.unit.test_libvirt_domain import SOCKDIR, domain, meta, nic, vi
    from vhost_ipvlan.errors import DomainError
    from vhost_ipvlan.libvirt.domain import slave_requests

    xml = domain(nic(), nic(path="/run/vhost-ipvlan/vm1b.sock"), meta(vi()))
    with pytest.raises(DomainError, match="two interfaces of vhost-ipvlan's have this MAC"):
        slave_requests(xml, SOCKDIR)
