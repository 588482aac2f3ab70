"""Write the seed corpora (``fuzz/corpus/<harness>/seed-*``) from the tests' own inputs.

``python -m fuzz.seeds [HARNESS ...]`` (needs the dev extra: scapy). Seeds are what
the tests already send: ``tests/support/frontend.py``'s message sequence (session),
``tests/pair/test_fastpath.py``'s scenario frames laid out in rings (rings, switch),
the control API's requests (control) and ``tests/unit/test_libvirt_domain.py``'s
domain XML (domain). Crash inputs found later are added by hand as ``crash-*``.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _write(harness: str, seeds: Iterable[bytes]) -> int:
    out = HERE / "corpus" / harness
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("seed-*"):
        old.unlink()
    n = 0
    for data in seeds:
        (out / f"seed-{hashlib.sha1(data).hexdigest()[:16]}").write_bytes(data)
        n += 1
    return n


# -- session ---------------------------------------------------------------------------------


def session_seeds() -> list[bytes]:
    from tests.support import frontend as fe_mod
    from tests.support.frontend import DriverQueue, FakeFrontend
    from vhost_ipvlan.vhost_user import codec
    from vhost_ipvlan.vhost_user.codec import Request
    from vhost_ipvlan.vhost_user.session import Session

    from .h_session import KIND_EVENT, KIND_MEM, SIZES, FakeDevice, FakeHost

    class Small(FakeFrontend):
        """The tests' front-end with 16-entry rings, so the rings fit in a seed."""

        def __init__(self, **kw: object) -> None:
            super().__init__(**kw)  # type: ignore[arg-type]
            self.rxq = DriverQueue(self.mem, 0, num=16)
            self.txq = DriverQueue(self.mem, self.rxq.end, num=16)
            self.buffers = self.txq.end

        def _buf_addr(self, queue: int, i: int) -> int:
            return self.buffers + (queue * 16 + i) * 256

    def record(script: Callable[[FakeFrontend], None], **kw: object) -> bytes:
        fe = Small(**kw)
        host = FakeHost(b"")
        device = FakeDevice()
        session = Session(host, device)
        device.attach(session)
        records = bytearray()

        def transport(data: bytes, fds: list[int]) -> bytes | None:
            kind = KIND_MEM if fds and fds[0] in (fe.fd, fe.log_fd) else KIND_EVENT
            ctl = len(fds) | kind << 2 | SIZES.index(8 << 20) << 4
            records.append(ctl)
            records.extend(data)
            request, flags, _ = codec.decode_header(data)
            fake = [host.new_fd(kind, 8 << 20) for _ in fds]
            reply = session.handle(codec.Message(request, flags, data[codec.HEADER_SIZE :], fake))
            return None if reply is None else reply[codec.HEADER_SIZE :]

        fe.transport = transport
        try:
            script(fe)
            ram = bytes(fe.mem[: fe.txq.end])
        finally:
            session.close()
            fe.close()
        return struct.pack("<H", len(ram)) + ram + bytes(records)

    def traffic(fe: FakeFrontend) -> None:
        fe.setup()
        for i in range(3):
            fe.transmit(bytes(60 + i), split=bool(i & 1))

    def restart(fe: FakeFrontend) -> None:
        fe.setup()
        fe.transmit(bytes(60))
        for i in (0, 1):  # QEMU's stop, then a restart
            fe.send(Request.GET_VRING_BASE, codec.VRING_STATE.pack(i, 0), reply=True)
        for i in (0, 1):
            fe.send(Request.SET_VRING_KICK, codec.U64.pack(i), [fe.kick[i]])

    def remap(fe: FakeFrontend) -> None:
        fe.setup()
        region = codec.MEM_REGION.pack(0, fe_mod.MEM_SIZE, fe_mod.UVA_BASE, 0)
        fe.send(Request.SET_MEM_TABLE, codec.MEM_HEADER.pack(1, 0) + region, [fe.fd], need_reply=True)
        fe.transmit(bytes(60))

    def migrate(fe: FakeFrontend) -> None:  # QEMU's migration: the dirty log, logging on, the stop
        fe.setup()
        fe.start_dirty_log()
        for i in range(3):
            fe.transmit(bytes(60 + i), split=bool(i & 1))
        for i in (0, 1):
            fe.vring_base(i)

    legacy = 1 << 32 | 1 << 15 | 1 << 29  # VERSION_1, MRG_RXBUF, EVENT_IDX; no PROTOCOL_FEATURES
    return [record(traffic), record(restart), record(remap), record(traffic, features=legacy),
            record(traffic, mergeable=False), record(migrate)]


# -- rings -------------------------------------------------------------------------------------


def _scenario() -> list[tuple[bytes, bytes, bool]]:
    from tests.pair.test_fastpath import scenario

    return [f for f in scenario() if len(f[0]) + len(f[1]) <= 200]


def rings_seeds() -> list[bytes]:
    from vhost_ipvlan.virtio.virtqueue import VRING_DESC_F_NEXT, VRING_DESC_F_WRITE

    from .h_rings import RAM, RINGS

    frames = _scenario()
    out = []
    for cfg, chunk in ((0x20, 0), (0x21, 1), (0x23, 2), (0x60, 3), (0x18, 4), (0xA1, 5)):
        num = 1 << ((cfg >> 3 & 7) % 5)
        ram = bytearray(RAM)

        def desc(off: int, i: int, addr: int, length: int, flags: int, nxt: int = 0, ram: bytearray = ram) -> None:
            struct.pack_into("<QIHH", ram, off + 16 * i, addr, length, flags, nxt)

        def avail(off: int, heads: list[int], ram: bytearray = ram) -> None:
            for k, h in enumerate(heads):
                struct.pack_into("<H", ram, off + 0x100 + 4 + 2 * k, h)
            struct.pack_into("<H", ram, off + 0x100 + 2, len(heads))

        tx = RINGS[("a", "tx")]
        pos = 0x800
        heads: list[int] = []
        i = 0
        for frame, hdr, split in frames[chunk * 8 :][: num]:
            if i >= num:
                break
            data = hdr + frame
            ram[pos : pos + len(data)] = data
            if split and i + 1 < num:
                desc(tx, i, pos, len(hdr), VRING_DESC_F_NEXT, i + 1)
                desc(tx, i + 1, pos + len(hdr), len(frame), 0)
                heads.append(i)
                i += 2
            else:
                desc(tx, i, pos, len(data), 0)
                heads.append(i)
                i += 1
            pos += (len(data) + 15) & ~15
        avail(tx, heads)
        size = 128 if cfg & 1 else 512
        pos = 0x1800
        for key in (("b", "rx"), ("c", "rx"), ("a", "rx")):
            off = RINGS[key]
            n = min(num, 0x1800 // 3 // size)
            for k in range(n):
                desc(off, k, pos, size, VRING_DESC_F_WRITE)
                pos += size
            avail(off, list(range(n)))
        out.append(bytes([cfg]) + b"\0\0" + bytes(ram).rstrip(b"\0"))
    return out


# -- switch ---------------------------------------------------------------------------------


def _frames() -> list[tuple[int, bytes]]:
    """(sender: 0..2 guest a..c, 3 the wire, frame): the scenario plus control-plane frames."""
    from scapy.contrib.igmpv3 import IGMPv3, IGMPv3gr, IGMPv3mr  # type: ignore[attr-defined]
    from scapy.layers.dhcp import BOOTP, DHCP
    from scapy.layers.dhcp6 import DUID_LL, DHCP6_InfoRequest, DHCP6_Solicit, DHCP6OptClientId, DHCP6OptIA_NA
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import (
        ICMPv6MLReport2,
        ICMPv6ND_NA,
        ICMPv6ND_NS,
        ICMPv6ND_RA,
        ICMPv6ND_RS,
        ICMPv6NDOptSrcLLAddr,
        IPv6,
        IPv6ExtHdrHopByHop,
    )
    from scapy.layers.l2 import ARP, LLC, STP, Dot1Q, Ether

    a, b, c, m = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c", "02:00:00:00:00:01"
    a4, b4, c4, a6, a_ll = "10.0.0.10", "10.0.0.11", "10.0.0.12", "fd00::10", "fe80::aff:fe00:a"
    out = [(0, f[0]) for f in _scenario()]
    g = [
        (0, Ether(src=a, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=a, psrc=a4, pdst="10.0.0.1")),
        (0, Ether(src=a, dst="ff:ff:ff:ff:ff:ff") / ARP(op=2, hwsrc=a, psrc=a4, pdst=a4)),
        (0, Ether(src=a, dst="33:33:ff:00:00:11") / IPv6(src=a6, dst="ff02::1:ff00:11")
         / ICMPv6ND_NS(tgt="fd00::11") / ICMPv6NDOptSrcLLAddr(lladdr=a)),
        (0, Ether(src=a, dst="33:33:00:00:00:01") / IPv6(src=a_ll, dst="ff02::1") / ICMPv6ND_NA(tgt=a6, R=0)),
        (0, Ether(src=a, dst="33:33:00:00:00:01") / IPv6(src=a_ll, dst="ff02::1")
         / IPv6ExtHdrHopByHop() / ICMPv6ND_NA(tgt="fd00::11")),
        (0, Ether(src=a, dst="33:33:00:00:00:02") / IPv6(src=a_ll, dst="ff02::2") / ICMPv6ND_RS()),
        (0, Ether(src=a, dst="33:33:00:00:00:02") / IPv6(src=a_ll, dst="ff02::2", hlim=255) / ICMPv6ND_RS()),
        (0, Ether(src=a, dst="33:33:00:01:00:02") / IPv6(src=a_ll, dst="ff02::1:2") / UDP(sport=546, dport=547)
         / DHCP6_Solicit(trid=1) / DHCP6OptClientId(duid=DUID_LL(lladdr=a)) / DHCP6OptIA_NA(iaid=1)),
        (1, Ether(src=b, dst="33:33:00:01:00:02") / IPv6(src="fe80::b", dst="ff02::1:2") / UDP(sport=546, dport=547)
         / DHCP6_InfoRequest(trid=2)),
        (0, Ether(src=a, dst="33:33:00:00:00:01") / IPv6(src=a_ll, dst="ff02::1") / ICMPv6ND_RA()),
        (0, Ether(src=a, dst="33:33:00:00:00:16") / IPv6(src=a_ll, dst="ff02::16", hlim=1) / ICMPv6MLReport2()),
        (0, Ether(src=a, dst="01:00:5e:00:00:16") / IP(src=a4, dst="224.0.0.22", ttl=1)
         / IGMPv3(type=0x22) / IGMPv3mr(records=[IGMPv3gr(maddr="239.1.1.1")])),
        (2, Ether(src=c, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
         / UDP(sport=68, dport=67) / BOOTP(chaddr=bytes.fromhex("02000000000c"))
         / DHCP(options=[("message-type", "discover"), "end"])),
        (2, Ether(src=c, dst="ff:ff:ff:ff:ff:ff") / IP(src=c4, dst="255.255.255.255")
         / UDP(sport=67, dport=68) / BOOTP(op=2) / DHCP(options=[("message-type", "offer"), "end"])),
        (2, Ether(src=c, dst=a) / IP(src="10.0.0.99", dst=a4) / UDP()),
        (1, Ether(src=b, dst="01:80:c2:00:00:00") / LLC() / STP()),
        (1, Ether(src=b, dst=a) / Dot1Q(vlan=5) / IP(src=b4, dst=a4) / UDP()),
        (1, Ether(src=b, dst=m) / IP(src=b4, dst="192.0.2.1") / UDP()),
        (3, Ether(src="02:99:00:00:00:01", dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.0.0.1", pdst=a4)),
        (3, Ether(src="02:99:00:00:00:01", dst=m) / IP(src="192.0.2.1", dst=a4) / UDP()),
        (3, Ether(src="02:99:00:00:00:01", dst="33:33:ff:00:00:10") / IPv6(src="fd00::1", dst="ff02::1:ff00:10")
         / ICMPv6ND_NS(tgt=a6) / ICMPv6NDOptSrcLLAddr(lladdr="02:99:00:00:00:01")),
        (3, Ether(src="02:99:00:00:00:01", dst="01:00:5e:01:01:01") / IP(src="192.0.2.1", dst="239.1.1.1") / UDP()),
        (3, Ether(src="02:99:00:00:00:01", dst="33:33:00:00:00:01") / IPv6(src="fe80::1", dst="ff02::1", hlim=255)
         / ICMPv6ND_RA()),
        (0, Ether(src=a, dst="33:33:00:00:00:02") / IPv6(src=a_ll, dst="ff02::2", hlim=255) / ICMPv6ND_RS()),
    ]
    return out + [(who, bytes(f)) for who, f in g]


def switch_seeds() -> list[bytes]:
    from .h_switch import PAIRS

    frames = _frames()
    out = []
    for cfg in range(len(PAIRS)):
        for start in range(0, len(frames), 12):
            body = b"".join(struct.pack("<BH", who, len(f)) + f for who, f in frames[start : start + 12])
            out.append(bytes([cfg]) + body)
    return out


# -- control -------------------------------------------------------------------------------


def control_seeds() -> list[bytes]:
    """Request sequences in the shape of docs/control-api.md and tests/component/test_control.py."""
    from vhost_ipvlan.control import protocol

    def req(i: int | str, method: str, params: dict[str, Any] | None = None) -> bytes:
        return protocol.request(i, method, params).rstrip(b"\n")

    slave_a = {"master": "eth0", "name": "vm1", "socket": "/run/vhost-ipvlan/vm1.sock",
               "addresses": ["192.0.2.10/24", "2001:db8::10/64"], "mac": "02:00:00:00:00:0a"}
    slave_b = {"master": "eth0", "name": "vm2", "socket": "/run/vhost-ipvlan/vm2.sock", "socket_mode": "client",
               "addresses": ["192.0.2.11"], "learn": True}
    filt = {"name": "vm1", "rx_filter": {"multicast": "normal", "multicast-table": ["01:00:5e:00:00:fb"],
                                         "multicast-overflow": False, "promiscuous": False}}
    sequences = [
        [req(1, "port.add", {"master": "eth0"}), req(2, "slave.add", slave_a), req(3, "slave.list"),
         req(4, "stats", {"slave": "vm1"}), req(5, "slave.change", {"name": "vm1", "addresses": ["192.0.2.12/24"]}),
         req(6, "slave.remove", {"name": "vm1"}), req(7, "port.remove", {"master": "eth0"})],
        [req("a", "port.add", {"master": "eth1", "mode": "l3", "flag": "private"}),
         req("b", "port.change", {"master": "eth1", "mode": "l2", "flag": "vepa"}),
         req("c", "slave.add", {**slave_b, "master": "eth1"}), req("d", "port.list"),
         req("e", "slave.change", {"name": "vm2", "master": "eth1", "mac": None, "qmp": "/run/q.sock"})],
        [req(1, "port.add", {"master": "eth0"}), req(2, "slave.add", slave_a), req(3, "slave.rx_filter", filt),
         req(4, "slave.rx_filter", {"name": "vm1", "rx_filter": None}), req(5, "slave.add", {**slave_a, "name": "x"})],
        [b'{"id": 1, "method": "port.add", "params": {"master": "eth0", "slave": [{"name": "v", '
         b'"socket": "/run/vhost-ipvlan/v.sock", "addresses": ["10.0.0.2/24"]}]}}',
         b'{"method": "nope"}', b"[1, 2]", b'{"id": 1.5}', b'{"id": "\ud800", "method": "stats"}', b"{" * 40],
    ]
    return [b"\n".join(seq) for seq in sequences]


# -- domain --------------------------------------------------------------------------------


def domain_seeds() -> list[bytes]:
    """Domain XML built with tests/unit/test_libvirt_domain.py's helpers."""
    from tests.unit.test_libvirt_domain import domain, meta, nic, vi

    xmls = [
        domain(nic(), meta(vi(extra=" mode='l2' flag='bridge'"))),
        domain(nic(mode="server", alias="net0"), meta(vi(addrs=("192.0.2.10/24", "2001:db8::10/64")))),
        domain(nic(), nic(mac="52:54:00:00:00:20", path="/run/vhost-ipvlan/vm1b.sock"),
               meta(vi(), vi(mac="52:54:00:00:00:20", extra=" learn='yes'"),
                    vi(mac="52:54:00:00:00:30", extra=" socket='/run/vhost-ipvlan/vm1c.sock' socket-mode='client'"))),
        domain(nic(), nic(mac="52:54:00:00:00:20", path="/run/vhost-ipvlan/vm1b.sock"),
               meta(vi(), vi(mac="52:54:00:00:00:20", addrs=("192.0.2.20/24", "2001:db8::20/64")))),
        domain(nic(), meta(vi(extra=" mode='l3' flag='private'")), name="a domain/with../odd name", type_="kvm"),
        domain(nic(), nic(mac="52:54:00:00:00:20", path="/srv/other.sock"), shared=False, override=False),
        domain(nic(), meta(vi(master="eth1")), name="vm2").replace("<domain ", "<domain id='3' "),
        "<domain><name>x",
    ]
    return [x.encode() for x in xmls]


GENERATORS: dict[str, Callable[[], list[bytes]]] = {
    "session": session_seeds,
    "rings": rings_seeds,
    "switch": switch_seeds,
    "control": control_seeds,
    "domain": domain_seeds,
}


def main(argv: list[str]) -> None:
    for name in argv or list(GENERATORS):
        print(f"{name}: {_write(name, GENERATORS[name]())} seeds")


if __name__ == "__main__":
    main(sys.argv[1:])
