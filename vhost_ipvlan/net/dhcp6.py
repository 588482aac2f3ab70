"""A DHCPv6 server for one guest (RFC 8415; DNS options RFC 3646), built by the backend:
parse a client message, build the reply. Pure: bytes in, bytes out.

The daemon answers a guest's DHCPv6 client messages itself (``switch`` gives them the
verdict ``ANSWERED_DHCP6``; the data path delivers the reply into that guest's RX ring
only; nothing reaches the wire or another guest), as ``net.dhcp`` does for DHCPv4.
The port the frame came from says who asks: one client per server, its DUID echoed.

Rules:
- ``is_client_message(frame)``: an IPv6 UDP datagram (UDP right after the IPv6
  header) from port 546 to port 547, whatever its addresses (ff02::1:2, or unicast).
  Bounds-checked; ``False`` for anything else.
- ``answer(frame, lease, network, server_mac)`` returns ``(Outcome, reply | None)``.
  Nothing raises on frame content: a message that does not parse (short, a UDP length
  that does not fit, an option running past the end, a relay or server message type,
  a Client Identifier missing where RFC 8415 §16 requires one or longer than a DUID,
  a Server Identifier where it is forbidden, an IA option too short for its fixed
  fields, more than ``MAX_OPTIONS`` options) is ``MALFORMED`` (the caller counts a drop).
  A message with a Server Identifier that is not ours is ``IGNORED`` (another server's).
- The lease's IPv6 addresses (its ``addresses``, possibly none: then stateless only)
  are the one binding of every IA_NA the client names. SOLICIT -> ADVERTISE (Preference
  255: the client need not wait for other servers), or REPLY when the client asked for
  Rapid Commit (option 14, echoed). REQUEST, RENEW, REBIND -> REPLY. Each IA_NA gets
  every lease address with ``network.preferred``/``valid`` lifetimes and T1/T2 at 0.5
  and 0.8 of the preferred lifetime; an address the client names that is not the
  lease's (another guest's, or an old one): in a REQUEST the IA gets status NotOnLink
  (the client solicits again, RFC 8415 §18.3.2), in a RENEW/REBIND it is returned with
  lifetimes 0 (§18.3.4-5), at most ``MAX_STALE`` per IA (so that the reply always fits
  one UDP datagram, whatever the client names). No lease address: SOLICIT/REQUEST IA_NA NoAddrsAvail,
  RENEW/REBIND IA_NA NoBinding. IA_TA is NoAddrsAvail, IA_PD NoPrefixAvail, always.
- CONFIRM -> REPLY Success if every address it names is the lease's, else NotOnLink
  (§18.3.3); none named: no reply (``IGNORED``). RELEASE, DECLINE -> REPLY Success
  (§18.3.7-8; nothing to free: the binding is the configuration). INFORMATION-REQUEST
  -> REPLY with the DNS options only (stateless, RFC 8415 §18.3.6).
- Every REPLY/ADVERTISE carries Server Identifier (``network.server_duid``: DUID-LL of
  the master's MAC, ``duid_ll``), the client's Client Identifier when it sent one,
  and, when there are some, 23 DNS servers (at most ``MAX_DNS``) and 24 domain search
  list (``dhcp.encode_search``). A reply never carries more IAs than the client sent
  (at most ``MAX_IAS`` of each kind are answered).
- Addressing: from the daemon's link-local (``network.server_ip``: fe80:: EUI-64 of
  the master's MAC) and port 547, to the client's source address and port 546 and its
  Ethernet source, from ``server_mac``; the UDP checksum is computed.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from .dhcp import MAX_DNS, Lease, encode_search
from .frames import ETH, ETH_HLEN, IPPROTO_UDP, IPV6, IPV6_HLEN, Frame
from .neigh import ipv6_frame

CLIENT_PORT: Final = 546
SERVER_PORT: Final = 547
#: the lifetimes given (one day preferred and valid, as DHCPv4's lease): renewals are
#: answered locally and cheap, and an address taken away is gone at the next one
PREFERRED_LIFETIME: Final = 86400
VALID_LIFETIME: Final = 86400
MAX_OPTIONS: Final = 64
MAX_IAS: Final = 8
MAX_STALE: Final = 8  # foreign addresses echoed with lifetimes 0 per IA_NA (see the rules)
MAX_DUID: Final = 130  # 2-byte type + at most 128 bytes (RFC 8415 §11.1)
PREFERENCE_MAX: Final = 255

# message types (RFC 8415 §7.3)
SOLICIT: Final = 1
ADVERTISE: Final = 2
REQUEST: Final = 3
CONFIRM: Final = 4
RENEW: Final = 5
REBIND: Final = 6
REPLY: Final = 7
RELEASE: Final = 8
DECLINE: Final = 9
INFORMATION_REQUEST: Final = 11
CLIENT_TYPES: Final = frozenset((SOLICIT, REQUEST, CONFIRM, RENEW, REBIND, RELEASE, DECLINE, INFORMATION_REQUEST))

# option codes (RFC 8415 §21, RFC 3646)
OPT_CLIENTID: Final = 1
OPT_SERVERID: Final = 2
OPT_IA_NA: Final = 3
OPT_IA_TA: Final = 4
OPT_IAADDR: Final = 5
OPT_ORO: Final = 6
OPT_PREFERENCE: Final = 7
OPT_STATUS_CODE: Final = 13
OPT_RAPID_COMMIT: Final = 14
OPT_DNS_SERVERS: Final = 23
OPT_DOMAIN_LIST: Final = 24
OPT_IA_PD: Final = 25

# status codes (RFC 8415 §21.13)
SUCCESS: Final = 0
NO_ADDRS_AVAIL: Final = 2
NO_BINDING: Final = 3
NOT_ON_LINK: Final = 4
NO_PREFIX_AVAIL: Final = 6

_UDP: Final = struct.Struct("!HHHH")
_UDP_HLEN: Final = 8
_OFF_UDP: Final = ETH_HLEN + IPV6_HLEN
_OPT: Final = struct.Struct("!HH")
_IA_FIXED: Final = {OPT_IA_NA: 12, OPT_IA_TA: 4, OPT_IA_PD: 12}
#: options a client may send at most once and whose content the server reads
_ONCE: Final = (OPT_CLIENTID, OPT_SERVERID, OPT_RAPID_COMMIT)


class Outcome(IntEnum):
    """What ``answer`` did with a client message (the caller counts it)."""

    ADVERTISED = 0
    ASSIGNED = 1  # a REPLY giving addresses (REQUEST, RENEW, REBIND, SOLICIT + Rapid Commit)
    REFUSED = 2  # a REPLY or ADVERTISE without addresses: NotOnLink, NoBinding, NoAddrsAvail
    CONFIRMED = 3
    RELEASED = 4
    DECLINED = 5
    INFORMED = 6
    IGNORED = 7
    MALFORMED = 8

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Network:
    """What the port's guests share: the server's DUID and link-local address, the DNS
    servers (packed IPv6) and search domains, the lifetimes."""

    server_duid: bytes
    server_ip: bytes
    dns: tuple[bytes, ...] = ()
    search: tuple[str, ...] = ()
    preferred: int = PREFERRED_LIFETIME
    valid: int = VALID_LIFETIME


@dataclass(frozen=True, slots=True)
class Message:
    """The parts of a client message the server uses."""

    kind: int
    xid: bytes
    src_mac: bytes
    src_ip: bytes
    client_id: bytes | None
    server_id: bytes | None
    rapid_commit: bool
    #: (option code, IAID, the addresses named in its IAADDR options)
    ias: tuple[tuple[int, bytes, tuple[bytes, ...]], ...]


def duid_ll(mac: bytes) -> bytes:
    """DUID-LL (RFC 8415 §11.4): type 3, hardware type 1 (Ethernet), the MAC."""
    return struct.pack("!HH", 3, 1) + mac


def is_client_message(frame: Frame) -> bool:
    """Whether ``frame`` is IPv6 UDP (no extension header) from port 546 to port 547."""
    n = len(frame)
    if n < _OFF_UDP + _UDP_HLEN or frame[12] != 0x86 or frame[13] != 0xDD or frame[ETH_HLEN] >> 4 != 6:
        return False
    if frame[ETH_HLEN + 6] != IPPROTO_UDP:
        return False
    o = _OFF_UDP
    return (frame[o] << 8 | frame[o + 1]) == CLIENT_PORT and (frame[o + 2] << 8 | frame[o + 3]) == SERVER_PORT


def _options(data: bytes) -> list[tuple[int, bytes]] | None:
    """The options in ``data`` in order, or ``None`` if one runs past the end or there
    are more than ``MAX_OPTIONS``."""
    out: list[tuple[int, bytes]] = []
    i, n = 0, len(data)
    while i < n:
        if i + 4 > n or len(out) >= MAX_OPTIONS:
            return None
        code, length = _OPT.unpack_from(data, i)
        if i + 4 + length > n:
            return None
        out.append((code, data[i + 4 : i + 4 + length]))
        i += 4 + length
    return out


def _ia(code: int, value: bytes) -> tuple[int, bytes, tuple[bytes, ...]] | None:
    """An IA option's (code, IAID, IA_NA/IA_TA addresses named), or ``None`` if it does not parse."""
    fixed = _IA_FIXED[code]
    if len(value) < fixed:
        return None
    inner = _options(value[fixed:])
    if inner is None:
        return None
    named = []
    for sub, body in inner:
        if sub == OPT_IAADDR and code != OPT_IA_PD:
            if len(body) < 24:
                return None
            named.append(body[:16])
    return code, value[:4], tuple(named)


def parse(frame: Frame) -> Message | None:
    """The client message in ``frame``, or ``None`` if it is not a well-formed one."""
    if not is_client_message(frame):
        return None
    plen = frame[ETH_HLEN + 4] << 8 | frame[ETH_HLEN + 5]
    udp_len = frame[_OFF_UDP + 4] << 8 | frame[_OFF_UDP + 5]
    if ETH_HLEN + IPV6_HLEN + plen > len(frame) or not _UDP_HLEN + 4 <= udp_len <= plen:
        return None
    body = bytes(frame[_OFF_UDP + _UDP_HLEN : _OFF_UDP + udp_len])
    kind = body[0]
    opts = _options(body[4:])
    if kind not in CLIENT_TYPES or opts is None:
        return None
    once: dict[int, bytes] = {}
    ias: list[tuple[int, bytes, tuple[bytes, ...]]] = []
    for code, value in opts:
        if code in _ONCE:
            if code in once:
                return None
            once[code] = value
        elif code in _IA_FIXED:
            ia = _ia(code, value)
            if ia is None:
                return None
            if [c for c, _, _ in ias].count(code) < MAX_IAS:
                ias.append(ia)
    client_id, server_id = once.get(OPT_CLIENTID), once.get(OPT_SERVERID)
    if not _ids_valid(kind, client_id, server_id):
        return None
    _d, src_mac, _t = ETH.unpack_from(frame)
    src_ip = IPV6.unpack_from(frame, ETH_HLEN)[4]
    return Message(kind, body[1:4], src_mac, src_ip, client_id, server_id, OPT_RAPID_COMMIT in once, tuple(ias))


def _ids_valid(kind: int, client_id: bytes | None, server_id: bytes | None) -> bool:
    """RFC 8415 §16: which identifiers each message must or must not carry."""
    for duid in (client_id, server_id):
        if duid is not None and not 2 < len(duid) <= MAX_DUID:
            return False
    if kind != INFORMATION_REQUEST and client_id is None:
        return False
    if kind in (SOLICIT, CONFIRM, REBIND):
        return server_id is None
    if kind in (REQUEST, RENEW, RELEASE, DECLINE):
        return server_id is not None
    return True


def _opt(code: int, value: bytes) -> bytes:
    return _OPT.pack(code, len(value)) + value


def _status(code: int) -> bytes:
    return _opt(OPT_STATUS_CODE, struct.pack("!H", code))


@functools.lru_cache(maxsize=256)
def _iaaddrs(addresses: tuple[tuple[bytes, int], ...], preferred: int, valid: int) -> bytes:
    """The IA Address options of a lease, built once per lease and lifetimes (a slave may
    have hundreds of addresses and a message several IA_NAs: the cost stays one join)."""
    return b"".join(_opt(OPT_IAADDR, a + struct.pack("!II", preferred, valid)) for a, _ in addresses)


def _ia_na(iaid: bytes, lease: Lease, network: Network, stale: tuple[bytes, ...]) -> bytes:
    """An IA_NA holding every lease address, and ``stale`` ones with lifetimes 0."""
    t1, t2 = network.preferred // 2, network.preferred * 4 // 5
    inner = _iaaddrs(lease.addresses, network.preferred, network.valid)
    inner += b"".join(_opt(OPT_IAADDR, a + bytes(8)) for a in stale)
    return _opt(OPT_IA_NA, iaid + struct.pack("!II", t1, t2) + inner)


def _ia_status(code: int, iaid: bytes, status: int) -> bytes:
    return _opt(code, iaid + (bytes(8) if code != OPT_IA_TA else b"") + _status(status))


def _ias(msg: Message, lease: Lease, network: Network) -> tuple[bytes, bool]:
    """The IA options answering ``msg``'s, and whether any holds an address."""
    owned = {a for a, _ in lease.addresses}
    out, given = b"", False
    for code, iaid, named in msg.ias:
        if code == OPT_IA_TA:
            out += _ia_status(code, iaid, NO_ADDRS_AVAIL)
        elif code == OPT_IA_PD:
            out += _ia_status(code, iaid, NO_PREFIX_AVAIL)
        elif not owned:
            out += _ia_status(code, iaid, NO_BINDING if msg.kind in (RENEW, REBIND) else NO_ADDRS_AVAIL)
        elif msg.kind == REQUEST and any(a not in owned for a in named):
            out += _ia_status(code, iaid, NOT_ON_LINK)
        else:
            stale = tuple(a for a in named if a not in owned)[:MAX_STALE] if msg.kind in (RENEW, REBIND) else ()
            out += _ia_na(iaid, lease, network, stale)
            given = True
    return out, given


def _dns_options(network: Network) -> bytes:
    out = b""
    dns = network.dns[:MAX_DNS]
    if dns:
        out += _opt(OPT_DNS_SERVERS, b"".join(dns))
    search = encode_search(network.search)
    if search:
        out += _opt(OPT_DOMAIN_LIST, search)
    return out


def _reply(msg: Message, kind: int, options: bytes, network: Network, server_mac: bytes) -> bytes:
    body = bytes((kind,)) + msg.xid + _opt(OPT_SERVERID, network.server_duid)
    if msg.client_id is not None:
        body += _opt(OPT_CLIENTID, msg.client_id)
    body += options + _dns_options(network)
    udp = _UDP.pack(SERVER_PORT, CLIENT_PORT, _UDP_HLEN + len(body), 0) + body
    return ipv6_frame(msg.src_mac, server_mac, network.server_ip, msg.src_ip, IPPROTO_UDP, udp)


def answer(frame: Frame, lease: Lease, network: Network, server_mac: bytes) -> tuple[Outcome, bytes | None]:
    """The outcome of the client message in ``frame`` and the reply to deliver, if any."""
    msg = parse(frame)
    if msg is None:
        return Outcome.MALFORMED, None
    if msg.server_id is not None and msg.server_id != network.server_duid:
        return Outcome.IGNORED, None
    if msg.kind == INFORMATION_REQUEST:
        return Outcome.INFORMED, _reply(msg, REPLY, b"", network, server_mac)
    if msg.kind in (RELEASE, DECLINE):
        outcome = Outcome.RELEASED if msg.kind == RELEASE else Outcome.DECLINED
        return outcome, _reply(msg, REPLY, _status(SUCCESS), network, server_mac)
    if msg.kind == CONFIRM:
        named = [a for code, _, addrs in msg.ias if code != OPT_IA_PD for a in addrs]
        if not named:
            return Outcome.IGNORED, None  # RFC 8415 §18.3.3: nothing to confirm, no reply
        owned = {a for a, _ in lease.addresses}
        ok = all(a in owned for a in named)
        outcome = Outcome.CONFIRMED if ok else Outcome.REFUSED
        return outcome, _reply(msg, REPLY, _status(SUCCESS if ok else NOT_ON_LINK), network, server_mac)
    ias, given = _ias(msg, lease, network)
    if msg.kind == SOLICIT and not msg.rapid_commit:
        opts = _opt(OPT_PREFERENCE, bytes((PREFERENCE_MAX,))) + ias
        return (Outcome.ADVERTISED if given else Outcome.REFUSED), _reply(msg, ADVERTISE, opts, network, server_mac)
    if msg.kind == SOLICIT:
        ias = _opt(OPT_RAPID_COMMIT, b"") + ias
    return (Outcome.ASSIGNED if given else Outcome.REFUSED), _reply(msg, REPLY, ias, network, server_mac)


__all__ = ["Lease", "Message", "Network", "Outcome", "answer", "duid_ll", "is_client_message", "parse"]
