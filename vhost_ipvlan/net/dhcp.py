"""A DHCPv4 server for one guest (RFC 2131, 2132), built by the backend: parse a client
message, build the reply. Pure: bytes in, bytes out.

The daemon answers a guest's DHCP client messages itself (``switch`` gives them the
verdict ``ANSWERED_DHCP``; the data path delivers the reply into that guest's RX ring
only; nothing reaches the wire or another guest). There is one client per server:
the port the frame came from says who asks, so neither ``chaddr`` nor the client
identifier (option 61, RFC 4361) is needed to find the lease; both are echoed.

Rules:
- ``is_client_message(frame)``: an unfragmented IPv4 UDP datagram from port 68 to
  port 67, whatever its addresses (broadcast, or unicast to the server identifier
  while renewing). Bounds-checked; ``False`` for anything else.
- ``answer(frame, lease, network, server_mac)`` returns ``(Outcome, reply | None)``.
  Nothing raises on frame content: a message that does not parse (short, not
  BOOTREQUEST, htype/hlen not Ethernet, no magic cookie, an option running past the
  end, no or a bad message type) is ``MALFORMED`` (the caller counts a drop).
  Options are read from the ``options`` field only (overload, option 52, is ignored).
- DISCOVER -> OFFER of the lease's first IPv4 address (or the requested one,
  option 50, if it is one of the lease's). REQUEST: selecting (server identifier
  present): another server's -> ``IGNORED``, else ACK if the requested address is
  the lease's, NAK otherwise; init-reboot (option 50, no server id) and
  renewing/rebinding (``ciaddr``): ACK if that address is the lease's, else NAK.
  INFORM -> ACK without ``yiaddr`` or lease time (RFC 2131 §4.3.5). RELEASE and
  DECLINE: no reply (``RELEASED``, ``DECLINED``: counted by the caller).
- OFFER/ACK options: 53 type, 54 server identifier, 51 lease time (``LEASE_TIME``),
  1 subnet mask, 3 router and, when the router is off the guest's subnet, 121
  classless static routes (RFC 3442: ``router/32`` on-link, then the default via
  the router; clients that know 121 ignore 3), 6 DNS servers, 15 domain name
  (the first search domain), 119 domain search (RFC 3397, uncompressed, what fits
  in one option), 26 interface MTU, 12 host name, 61 the client's identifier when
  it sent one (RFC 6842). NAK: 53, 54, 61. Every option is bounded (at most
  ``MAX_DNS`` servers, 255 bytes of search list, 63-byte labels).
- Addressing (RFC 2131 §4.1): a NAK, or a client with the broadcast flag, or one
  without an address to reach (no ``ciaddr``, no ``yiaddr``) gets 255.255.255.255
  and ff:ff:ff:ff:ff:ff; an INFORM or a renewing client (``ciaddr``) gets its
  ``ciaddr``; else the offered address, unicast to the requester's MAC. The
  Ethernet source is ``server_mac`` (the master's), the IP source the server
  identifier; IP and UDP checksums are computed (the reply carries no offload).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from .frames import ETH, ETH_HLEN, ETH_P_IP, IPPROTO_UDP, Frame
from .neigh import checksum

SERVER_PORT: Final = 67
CLIENT_PORT: Final = 68
BOOTREQUEST: Final = 1
BOOTREPLY: Final = 2
MAGIC: Final = b"\x63\x82\x53\x63"
BOOTP_LEN: Final = 236  # op .. file, before the magic cookie
FLAG_BROADCAST: Final = 0x8000
#: one day: renewals (T1, 12 h) are answered locally and cheap, and a slave whose
#: address changed gets a NAK at its next renewal instead of never
LEASE_TIME: Final = 86400
MAX_DNS: Final = 8
BROADCAST_IP: Final = b"\xff" * 4
BROADCAST_MAC: Final = b"\xff" * 6
ZERO4: Final = bytes(4)

# message types (option 53)
DISCOVER: Final = 1
OFFER: Final = 2
REQUEST: Final = 3
DECLINE: Final = 4
ACK: Final = 5
NAK: Final = 6
RELEASE: Final = 7
INFORM: Final = 8

# option codes (RFC 2132, 3397, 3442, 4361)
OPT_PAD: Final = 0
OPT_SUBNET_MASK: Final = 1
OPT_ROUTER: Final = 3
OPT_DNS: Final = 6
OPT_HOSTNAME: Final = 12
OPT_DOMAIN_NAME: Final = 15
OPT_MTU: Final = 26
OPT_REQUESTED_IP: Final = 50
OPT_LEASE_TIME: Final = 51
OPT_MESSAGE_TYPE: Final = 53
OPT_SERVER_ID: Final = 54
OPT_CLIENT_ID: Final = 61
OPT_DOMAIN_SEARCH: Final = 119
OPT_CLASSLESS_ROUTES: Final = 121
OPT_END: Final = 255

_IPV4: Final = struct.Struct("!BBHHHBBH4s4s")
_UDP: Final = struct.Struct("!HHHH")
_BOOTP: Final = struct.Struct("!BBBB4sHH4s4s4s4s16s")  # up to chaddr; sname and file follow
_IP_HLEN: Final = 20
_UDP_HLEN: Final = 8


class Outcome(IntEnum):
    """What ``answer`` did with a client message (the caller counts it)."""

    OFFERED = 0
    ACKED = 1
    NAKED = 2
    INFORMED = 3
    RELEASED = 4
    DECLINED = 5
    IGNORED = 6
    MALFORMED = 7

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Lease:
    """What one guest is given: its configured IPv4 addresses as (packed, prefix length),
    the first one offered, and its host name (the slave's name)."""

    addresses: tuple[tuple[bytes, int], ...]
    hostname: str


@dataclass(frozen=True, slots=True)
class Network:
    """What the port's guests share: the server identifier, the router (``None``:
    no option 3/121), the master's MTU, DNS servers and search domains."""

    server_id: bytes
    router: bytes | None
    mtu: int
    dns: tuple[bytes, ...] = ()
    search: tuple[str, ...] = ()
    lease_time: int = LEASE_TIME


@dataclass(frozen=True, slots=True)
class Message:
    """The fields of a client message the server uses."""

    kind: int
    xid: bytes
    flags: int
    ciaddr: bytes
    giaddr: bytes
    chaddr: bytes  # the whole 16-byte field, echoed
    src_mac: bytes
    requested: bytes | None
    server_id: bytes | None
    client_id: bytes | None


def _udp_offset(frame: Frame) -> int:
    """Where the UDP header starts, or -1 unless ``frame`` is unfragmented IPv4 UDP that fits."""
    n = len(frame)
    if n < ETH_HLEN + _IP_HLEN + _UDP_HLEN or frame[12] != 0x08 or frame[13] != 0x00:
        return -1
    ihl = (frame[ETH_HLEN] & 0x0F) * 4
    total = frame[ETH_HLEN + 2] << 8 | frame[ETH_HLEN + 3]
    if frame[ETH_HLEN] >> 4 != 4 or ihl < _IP_HLEN or total < ihl + _UDP_HLEN or ETH_HLEN + total > n:
        return -1
    if frame[ETH_HLEN + 9] != IPPROTO_UDP or frame[ETH_HLEN + 6] & 0x3F or frame[ETH_HLEN + 7]:
        return -1  # not UDP, or a fragment (MF set or an offset)
    return ETH_HLEN + ihl


def is_client_message(frame: Frame) -> bool:
    """Whether ``frame`` is IPv4 UDP from the DHCP client port to the server port."""
    off = _udp_offset(frame)
    return off >= 0 and (frame[off] << 8 | frame[off + 1]) == CLIENT_PORT and \
        (frame[off + 2] << 8 | frame[off + 3]) == SERVER_PORT


def _options(data: bytes) -> dict[int, bytes] | None:
    """The options after the magic cookie (the first instance of each code), or ``None``
    if one runs past the end."""
    out: dict[int, bytes] = {}
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == OPT_END:
            return out
        if code == OPT_PAD:
            i += 1
            continue
        if i + 1 >= n or i + 2 + data[i + 1] > n:
            return None
        out.setdefault(code, data[i + 2 : i + 2 + data[i + 1]])
        i += 2 + data[i + 1]
    return out  # no END: tolerated (some clients pad to the end)


def parse(frame: Frame) -> Message | None:
    """The client message in ``frame``, or ``None`` if it is not a well-formed one."""
    off = _udp_offset(frame)
    if off < 0:
        return None
    udp_len = frame[off + 4] << 8 | frame[off + 5]
    end = min(off + udp_len, ETH_HLEN + (frame[ETH_HLEN + 2] << 8 | frame[ETH_HLEN + 3]))
    body = bytes(frame[off + _UDP_HLEN : end])
    if udp_len < _UDP_HLEN or len(body) < BOOTP_LEN + len(MAGIC) or body[BOOTP_LEN : BOOTP_LEN + 4] != MAGIC:
        return None
    op, htype, hlen, _hops, xid, _secs, flags, ciaddr, _yiaddr, _siaddr, giaddr, chaddr = _BOOTP.unpack_from(body)
    if op != BOOTREQUEST or htype != 1 or hlen != 6:
        return None
    opts = _options(body[BOOTP_LEN + 4 :])
    if opts is None:
        return None
    kind = opts.get(OPT_MESSAGE_TYPE, b"")
    if len(kind) != 1 or not DISCOVER <= kind[0] <= INFORM or kind[0] in (OFFER, ACK, NAK):
        return None
    requested = opts.get(OPT_REQUESTED_IP)
    server_id = opts.get(OPT_SERVER_ID)
    client_id = opts.get(OPT_CLIENT_ID)
    if (requested is not None and len(requested) != 4) or (server_id is not None and len(server_id) != 4) or \
            (client_id is not None and len(client_id) < 2):  # RFC 2132 §9.14: at least 2 bytes
        return None
    src_mac = bytes(ETH.unpack_from(frame)[1])
    return Message(kind[0], xid, flags, ciaddr, giaddr, chaddr, src_mac, requested, server_id, client_id)


def _mask(prefix: int) -> bytes:
    return ((0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF).to_bytes(4, "big")


def _same_subnet(a: bytes, b: bytes, prefix: int) -> bool:
    m = int.from_bytes(_mask(prefix), "big")
    return int.from_bytes(a, "big") & m == int.from_bytes(b, "big") & m


def _opt(code: int, value: bytes) -> bytes:
    return bytes((code, len(value))) + value


def encode_search(domains: tuple[str, ...]) -> bytes:
    """RFC 1035 names, uncompressed, as many whole domains as fit in 255 bytes; a
    domain with an empty or longer-than-63-byte label is left out."""
    out = b""
    for domain in domains:
        labels = [label.encode("ascii", "replace") for label in domain.strip(".").split(".")]
        if not all(0 < len(label) <= 63 for label in labels):
            continue
        name = b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"
        if len(out) + len(name) > 255:
            break
        out += name
    return out


def _routes(address: bytes, prefix: int, router: bytes | None) -> bytes:
    """Options 3 and, for an off-subnet router, 121 (``router/32`` on-link, default via it)."""
    if router is None:
        return b""
    out = _opt(OPT_ROUTER, router)
    if not _same_subnet(address, router, prefix):
        out += _opt(OPT_CLASSLESS_ROUTES, b"\x20" + router + ZERO4 + b"\x00" + router)
    return out


def _config_options(lease: Lease, network: Network, address: bytes, prefix: int) -> bytes:
    out = _opt(OPT_SUBNET_MASK, _mask(prefix)) + _routes(address, prefix, network.router)
    dns = network.dns[:MAX_DNS]
    if dns:
        out += _opt(OPT_DNS, b"".join(dns))
    search = encode_search(network.search)
    if search:
        first = encode_search(network.search[:1])
        if first:
            out += _opt(OPT_DOMAIN_NAME, network.search[0].strip(".").encode("ascii", "replace"))
        out += _opt(OPT_DOMAIN_SEARCH, search)
    out += _opt(OPT_MTU, struct.pack("!H", max(68, min(network.mtu, 0xFFFF))))
    host = lease.hostname.encode("ascii", "replace")[:63]
    if host:
        out += _opt(OPT_HOSTNAME, host)
    return out


def _reply(msg: Message, kind: int, yiaddr: bytes, options: bytes, network: Network, server_mac: bytes) -> bytes:
    ciaddr = msg.ciaddr if kind == ACK else ZERO4
    bootp = _BOOTP.pack(BOOTREPLY, 1, 6, 0, msg.xid, 0, msg.flags, ciaddr, yiaddr, ZERO4, msg.giaddr,
                        msg.chaddr) + bytes(64 + 128) + MAGIC
    opts = _opt(OPT_MESSAGE_TYPE, bytes((kind,))) + _opt(OPT_SERVER_ID, network.server_id) + options
    if msg.client_id is not None:
        opts += _opt(OPT_CLIENT_ID, msg.client_id)
    payload = bootp + opts + bytes((OPT_END,))
    payload += bytes(max(0, 300 - len(payload)))  # BOOTP's minimum (RFC 1542 §3.2.1)
    if kind == NAK or msg.flags & FLAG_BROADCAST or (msg.ciaddr == ZERO4 and yiaddr == ZERO4):
        dst_ip, dst_mac = BROADCAST_IP, BROADCAST_MAC
    elif msg.ciaddr != ZERO4:
        dst_ip, dst_mac = msg.ciaddr, msg.src_mac
    else:
        dst_ip, dst_mac = yiaddr, msg.src_mac
    src_ip = network.server_id
    udp_len = _UDP_HLEN + len(payload)
    pseudo = src_ip + dst_ip + struct.pack("!BBH", 0, IPPROTO_UDP, udp_len)
    udp = _UDP.pack(SERVER_PORT, CLIENT_PORT, udp_len, 0) + payload
    csum = checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    ip = _IPV4.pack(0x45, 0, _IP_HLEN + udp_len, 0, 0, 64, IPPROTO_UDP, 0, src_ip, dst_ip)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ETH.pack(dst_mac, server_mac, ETH_P_IP) + ip + udp


def _owned(lease: Lease, address: bytes | None) -> tuple[bytes, int] | None:
    return next(((a, p) for a, p in lease.addresses if a == address), None)


def answer(frame: Frame, lease: Lease, network: Network, server_mac: bytes) -> tuple[Outcome, bytes | None]:
    """The outcome of the client message in ``frame`` and the reply to deliver, if any."""
    msg = parse(frame)
    if msg is None or not lease.addresses:
        return Outcome.MALFORMED, None
    if msg.kind == RELEASE:
        return Outcome.RELEASED, None
    if msg.kind == DECLINE:
        return Outcome.DECLINED, None
    if msg.kind == INFORM:
        held = _owned(lease, msg.ciaddr) or lease.addresses[0]
        opts = _config_options(lease, network, *held)
        return Outcome.INFORMED, _reply(msg, ACK, ZERO4, opts, network, server_mac)
    if msg.kind == DISCOVER:
        offered = _owned(lease, msg.requested) or lease.addresses[0]
        opts = _opt(OPT_LEASE_TIME, struct.pack("!I", network.lease_time)) + _config_options(lease, network, *offered)
        return Outcome.OFFERED, _reply(msg, OFFER, offered[0], opts, network, server_mac)
    # REQUEST: selecting, init-reboot, or renewing/rebinding (RFC 2131 §4.3.2)
    if msg.server_id is not None and msg.server_id != network.server_id:
        return Outcome.IGNORED, None  # the client chose another server
    wanted = msg.requested if msg.requested is not None else msg.ciaddr
    granted = _owned(lease, wanted)
    if granted is None:
        return Outcome.NAKED, _reply(msg, NAK, ZERO4, b"", network, server_mac)
    opts = _opt(OPT_LEASE_TIME, struct.pack("!I", network.lease_time)) + _config_options(lease, network, *granted)
    return Outcome.ACKED, _reply(msg, ACK, granted[0], opts, network, server_mac)
