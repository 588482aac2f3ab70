"""The outside reaches a guest's IPv6 link-local address, in every mode (issue 16 item 1).

    fake guest a (fe80::ff:fe00:a, its MAC's EUI-64) -- vhost-ipvlan -- vim0 (ns host) <== veth ==> vio0 (ns out)

The outside host holds a static neighbour entry for the guest's link-local address
pointing to the master's MAC, as with the kernel's ipvlan (docs/kernel-behaviour.md §8.2 #9:
``x.ll-steer`` answered in l2, l3 and l3s), and pings it. The host cannot forward a
link-local packet (it has one per interface), so in l3s too the daemon steers it to
the guest and routes the guest's answer out of the master itself.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether

from tests.component.test_hostlink import MAC_A, Lab
from tests.support.lab import MASTER, sh
from tests.support.wait import wait_until
from vhost_ipvlan.net.addr import eui64_link_local, parse_mac

pytestmark = [pytest.mark.netns]

A_LL = str(ipaddress.IPv6Address(eui64_link_local(parse_mac(MAC_A))))


@pytest.fixture(params=["l2", "l3", "l3s"])
def lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Lab]:
    with Lab(tmp_path, request.param) as lab:
        yield lab


def test_outside_pings_the_guests_link_local(lab: Lab) -> None:
    a = lab.frontend("a")
    sh("ip", "-n", lab.out, "-6", "neigh", "replace", A_LL, "lladdr", lab.master_mac, "dev", "vio0", "nud",
       "permanent")
    ping = subprocess.Popen(["ip", "netns", "exec", lab.out, "ping", "-6", "-c", "3", "-i", "0.3", "-W", "5",
                             f"{A_LL}%vio0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    requests = []

    def answer() -> bool:
        for _, data in a.receive():
            p = Ether(data)
            if ICMPv6EchoRequest in p and p[IPv6].dst == A_LL:
                requests.append(p)
                req = p[ICMPv6EchoRequest]
                a.transmit(bytes(Ether(src=MAC_A, dst=p[Ether].src) / IPv6(src=A_LL, dst=p[IPv6].src) /
                                 ICMPv6EchoReply(id=req.id, seq=req.seq, data=req.data)))
        return ping.poll() is not None

    wait_until(answer, 20, what="the outside's ping finished")
    out = ping.communicate()[0]
    assert " 3 received" in out, f"{out}\nthe guest got {len(requests)} request(s); " \
        f"host: {sh('ip', 'netns', 'exec', lab.host, 'nstat', '-az', 'Ip6OutNoRoutes', 'Icmp6OutRedirects')}"
    assert len(requests) == 3
    # the host never saw them: no neighbour solicited for the guest's link-local out of the master
    assert A_LL not in sh("ip", "-n", lab.host, "-6", "neigh", "show", "dev", MASTER)
