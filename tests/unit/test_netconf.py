"""Netconf notifications (``RTM_NEWNETCONF``), which pyroute2 does not decode: ``netlink.netconf_forwarding``."""

from __future__ import annotations

import struct

from vhost_ipvlan.daemon.netlink import NETCONFA_FORWARDING, NETCONFA_IFINDEX, netconf_forwarding

RTM_NEWLINK, RTM_NEWNETCONF = 16, 80
NETCONFA_RP_FILTER = 3


def nlmsg(kind: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def attr(kind: int, value: int) -> bytes:
    return struct.pack("=HHi", 8, kind, value)


def netconf(family: int, *attrs: bytes) -> bytes:
    return nlmsg(RTM_NEWNETCONF, bytes([family, 0, 0, 0]) + b"".join(attrs))


def test_forwarding_changes_are_read_and_the_rest_passed_on() -> None:
    link = nlmsg(RTM_NEWLINK, bytes(16))
    data = netconf(2, attr(NETCONFA_IFINDEX, 5), attr(NETCONFA_RP_FILTER, 1), attr(NETCONFA_FORWARDING, 0)) + \
        link + netconf(10, attr(NETCONFA_IFINDEX, -1), attr(NETCONFA_FORWARDING, 1)) + \
        netconf(2, attr(NETCONFA_IFINDEX, 6))  # no forwarding attribute: another setting changed
    found, rest = netconf_forwarding(data)
    assert found == [(2, 5, 0), (10, -1, 1)]
    assert rest == link


def test_truncated_input_is_ignored() -> None:
    data = netconf(2, attr(NETCONFA_IFINDEX, 5), attr(NETCONFA_FORWARDING, 0))
    for cut in range(len(data)):
        netconf_forwarding(data[:cut])  # never raises
    assert netconf_forwarding(data[:-4]) == ([], b"")
