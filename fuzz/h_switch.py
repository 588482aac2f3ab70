"""Harness (c): frames into the switch (``Port.from_guest``/``from_uplink``) and MAC translation.

Input: ``cfg u8`` (``cfg % len(PAIRS)`` picks the (mode, flag): every one the policy
implements, l2/l3/l3s x bridge/private/vepa), then records ``op u8, len u16, frame``:
``op & 3`` is the sender (0..2 guests a, b, c; 3 the wire). Guest a has a MAC and
IPv4+IPv6 addresses (and a DHCPv6 lease: its DHCPv6 client messages and, where the
port advertises, its Router Solicitations are answered, ``net.dhcp6``, ``net.ra``), b a
MAC and IPv4 (and a DHCP lease: its DHCPv4 client messages are answered, ``net.dhcp``;
a stateless DHCPv6 one), c no MAC (learns it; learning mode in l2), d is down.
Each verdict is acted on the way ``daemon.datapath`` does it, translation included
(``net.translate``), on a copy of the frame.

Invariants: nothing raises (a frame problem is a counted drop); a verdict is one of
the policy's; TO_SLAVE names a slave of the port that is up; ANSWER(DHCP) only for a
slave with a lease, and its reply goes to the sender's MAC or broadcast; ANSWER(DHCP6) and
ANSWER(RS) only for a slave with a DHCPv6 lease (RS: on a port that advertises), the
reply to the sender's MAC, from the master's; an RA from the wire only ever stops an l2
port advertising, and no guest (none may route) stops it; a frame for the wire,
once translated, carries the master's MAC as its Ethernet (and ARP sender) source,
never a guest's; translation never changes a frame's length; the port's tables stay
consistent (every owner a slave that has the address, MACs unique, learning limits).
"""

from __future__ import annotations

from vhost_ipvlan.net import dhcp, dhcp6, ra
from vhost_ipvlan.net.addr import eui64_link_local
from vhost_ipvlan.net.translate import hairpin_to_wire, to_guest, to_wire
from vhost_ipvlan.switch import source
from vhost_ipvlan.switch.decisions import DECISIONS
from vhost_ipvlan.switch.port import MAX_LEARNED_LINK_LOCALS, Port, Slave
from vhost_ipvlan.switch.verdict import ANSWER, DHCP, DHCP6, DROP, FLOOD, PASS, ROUTE, TO_HOST, TO_SLAVE, TO_UPLINK

from .common import Reader, check

PAIRS = sorted(DECISIONS)
MASTER_MAC = bytes.fromhex("020000000001")
MACS = {"a": bytes.fromhex("02000000000a"), "b": bytes.fromhex("02000000000b"), "d": bytes.fromhex("02000000000d")}
ADDRS = {
    "a": [bytes([10, 0, 0, 10]), bytes.fromhex("fd00" + "00" * 13 + "10")],
    "b": [bytes([10, 0, 0, 11])],
    "c": [bytes([10, 0, 0, 12])],
    "d": [bytes([10, 0, 0, 13])],
}
GUEST_ACTIONS = {TO_SLAVE, TO_UPLINK, FLOOD, DROP, TO_HOST, ROUTE, ANSWER}
UPLINK_ACTIONS = {TO_SLAVE, FLOOD, PASS, DROP, ANSWER}

_NETWORK = dhcp.Network(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 254]), 1500, (bytes([10, 0, 0, 53]),), ("fuzz.example",))

_NETWORK6 = dhcp6.Network(dhcp6.duid_ll(MASTER_MAC), eui64_link_local(MASTER_MAC),
                          (bytes.fromhex("fd00" + "00" * 13 + "53"),), ("fuzz.example",))


def _make_port(cfg: int) -> tuple[Port, list[Slave]]:
    mode, flag = PAIRS[cfg % len(PAIRS)]
    port = Port("fuzz", MASTER_MAC, mode, flag)
    port.master_addresses = frozenset({bytes([10, 0, 0, 1]), bytes.fromhex("fd00" + "00" * 13 + "01")})
    slaves = [port.add_slave(n, ADDRS[n], mac=MACS.get(n), learn=(n == "c" and mode == "l2")) for n in "abcd"]
    for s in slaves[:3]:
        s.up = True
    slaves[1].dhcp = dhcp.Lease(tuple((a, 24) for a in ADDRS["b"] if len(a) == 4), "b")
    slaves[0].dhcp6 = dhcp.Lease(tuple((a, 64) for a in ADDRS["a"] if len(a) == 16), "a")
    slaves[1].dhcp6 = dhcp.Lease((), "b")
    return port, slaves


def _wire_checks(port: Port, frame: bytearray) -> None:
    guests = {s.mac for s in port.slaves.values() if s.mac is not None}
    if len(frame) >= 14:
        check(bytes(frame[6:12]) not in guests, f"a guest's MAC {frame[6:12].hex()} as source on the wire")
        if frame[12:14] == b"\x08\x06" and len(frame) >= 28 and frame[18] == 6:
            check(bytes(frame[22:28]) not in guests, "a guest's MAC as ARP sender on the wire")


def _act_guest(port: Port, sender: Slave, frame: bytes) -> None:
    advertised = port.advertises
    action, arg = port.from_guest(sender, memoryview(frame))
    check(port.advertises == advertised or sender.allow_router, "a guest that may not route silenced the daemon's RAs")
    check(action in GUEST_ACTIONS, f"from_guest verdict {action!r}")
    buf = bytearray(frame)
    n = len(buf)
    mac = sender.mac
    if action == TO_UPLINK:
        if arg is not None:
            check(isinstance(arg, Slave) and arg.mac is not None, f"vepa hairpin to {arg!r}")
            hairpin_to_wire(buf, n, arg.mac, port.master_mac)  # type: ignore[union-attr, arg-type]
        check(mac is not None, "a frame for the wire from a guest whose MAC is unknown")
        to_wire(buf, n, mac, port.master_mac)
        _wire_checks(port, buf)
    elif action == FLOOD:
        check(arg is None, "FLOOD with an argument")
        check(mac is not None, "a flooded frame from a guest whose MAC is unknown")
        to_wire(buf, n, mac, port.master_mac)
        _wire_checks(port, buf)
    elif action == TO_SLAVE:
        check(isinstance(arg, Slave) and port.slaves.get(arg.name) is arg, f"TO_SLAVE to {arg!r}, not a slave")
        check(arg.up, f"TO_SLAVE to {arg!r}, which is down")  # type: ignore[union-attr]
        to_guest(buf, n, arg.mac, port.master_mac)  # type: ignore[union-attr]
    elif action == ROUTE:
        check(port.mode != "l2", "ROUTE in mode l2")
    elif action == ANSWER and arg == DHCP:
        check(sender.dhcp is not None, f"ANSWER(DHCP) for {sender!r}, which has no lease")
        assert sender.dhcp is not None and mac is not None
        _, reply = dhcp.answer(frame, sender.dhcp, _NETWORK, port.master_mac)
        check(reply is None or reply[:6] in (mac, b"\xff" * 6), "a DHCP reply to another MAC")
    elif action == ANSWER and arg is not None:
        check(sender.dhcp6 is not None, f"ANSWER({arg}) for {sender!r}, which has no DHCPv6 lease")
        check(arg == DHCP6 or port.advertises, f"ANSWER(RS) on {port!r}, which does not advertise")
        assert sender.dhcp6 is not None and mac is not None
        if arg == DHCP6:
            reply = dhcp6.answer(frame, sender.dhcp6, _NETWORK6, port.master_mac)[1]
        else:
            adv = ra.Advert(_NETWORK6.server_ip, True, True, 1800, 1500, sender.dhcp6.addresses, _NETWORK6.dns)
            reply = ra.advert(mac, bytes(frame[22:38]), port.master_mac, adv)
        check(reply is None or (reply[:6] == mac and reply[6:12] == port.master_mac), "a DHCPv6/RA reply elsewhere")
    check(len(buf) == n, "translation changed the frame's length")


def _act_uplink(port: Port, frame: bytes) -> None:
    advertised = port.advertises
    action, arg = port.from_uplink(memoryview(frame))
    check(port.advertises in (advertised, False), "a frame from the wire made the port advertise")
    check(action in UPLINK_ACTIONS, f"from_uplink verdict {action!r}")
    if action == TO_SLAVE:
        check(isinstance(arg, Slave) and port.slaves.get(arg.name) is arg, f"TO_SLAVE to {arg!r}, not a slave")
        check(arg.up, f"TO_SLAVE to {arg!r}, which is down")  # type: ignore[union-attr]
        buf = bytearray(frame)
        to_guest(buf, len(buf), arg.mac, port.master_mac)  # type: ignore[union-attr]
        check(len(buf) == len(frame), "translation changed the frame's length")


def _tables(port: Port) -> None:
    for addr, owner in port.by_addr.items():
        check(port.slaves.get(owner.name) is owner, f"{addr.hex()} owned by a slave not on the port")
        check(addr in owner.addresses | owner.learned | owner.learned_addrs, f"{addr.hex()}: owner does not know")
        check(addr not in port.master_addresses or addr in owner.addresses, f"learned the master's {addr.hex()}")
    for mac, owner in port.by_mac.items():
        check(owner.mac == mac and mac != port.master_mac, f"MAC table entry {mac.hex()}")
    for s in port.slaves.values():
        check(len(s.learned) <= MAX_LEARNED_LINK_LOCALS + 1, f"{s.name} learned {len(s.learned)} link-locals")
        check(s.learned_v4() <= source.MAX_LEARNED_V4 and s.learned_v6() <= source.MAX_LEARNED_V6,
              f"{s.name} learned too many addresses")
        check(s.learn or not s.learned_addrs, f"{s.name} learned addresses without learning mode")


def test_one_input(data: bytes) -> None:
    r = Reader(data)
    port, slaves = _make_port(r.u8())
    while r.left() >= 3:
        op = r.u8()
        frame = r.take(r.u16() % 2048)
        who = op & 3
        if who == 3:
            _act_uplink(port, frame)
        else:
            _act_guest(port, slaves[who], frame)
    _tables(port)
