"""net/dhcp6: the per-guest DHCPv6 server core, with scapy-built client messages
(stateful: SOLICIT/ADVERTISE/REQUEST/REPLY, Rapid Commit, RENEW, REBIND, CONFIRM, RELEASE,
DECLINE; stateless: INFORMATION-REQUEST), and hostile input as MALFORMED."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp6 import (
    DHCP6,
    DUID_LL,
    DHCP6_Advertise,
    DHCP6_Confirm,
    DHCP6_Decline,
    DHCP6_InfoRequest,
    DHCP6_Rebind,
    DHCP6_Release,
    DHCP6_Renew,
    DHCP6_Reply,
    DHCP6_Request,
    DHCP6_Solicit,
    DHCP6OptClientId,
    DHCP6OptDNSDomains,
    DHCP6OptDNSServers,
    DHCP6OptIA_NA,
    DHCP6OptIA_PD,
    DHCP6OptIA_TA,
    DHCP6OptIAAddress,
    DHCP6OptPref,
    DHCP6OptRapidCommit,
    DHCP6OptServerId,
    DHCP6OptStatusCode,
)
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from vhost_ipvlan.net import dhcp6
from vhost_ipvlan.net.addr import eui64_link_local
from vhost_ipvlan.net.dhcp import Lease
from vhost_ipvlan.net.dhcp6 import Network, Outcome

GUEST = "52:54:00:00:00:11"
GUEST_LL = "fe80::5054:ff:fe00:11"
MASTER = bytes.fromhex("020000000001")
ADDR = "fd00::11"
OTHER = "fd00::12"  # another guest's
LEASE = Lease(((ipaddress.IPv6Address(ADDR).packed, 64),), "vm1")
SERVER_DUID = dhcp6.duid_ll(MASTER)
NET = Network(SERVER_DUID, eui64_link_local(MASTER), dns=(ipaddress.IPv6Address("fd00::53").packed,),
              search=("example.org",))
CLIENT_DUID = DUID_LL(lladdr=GUEST)


def client(msg: Packet, *options: Packet, client_id: bool = True) -> bytes:
    opts = (DHCP6OptClientId(duid=CLIENT_DUID) if client_id else Raw(b""))
    for o in options:
        opts = opts / o
    return bytes(Ether(src=GUEST, dst="33:33:00:01:00:02") / IPv6(src=GUEST_LL, dst="ff02::1:2")
                 / UDP(sport=546, dport=547) / msg / opts)


def server_id() -> Packet:
    return DHCP6OptServerId(duid=DUID_LL(lladdr="02:00:00:00:00:01"))


def ia_na(*addrs: str) -> Packet:
    return DHCP6OptIA_NA(iaid=7, ianaopts=[DHCP6OptIAAddress(addr=a) for a in addrs])


def reply_of(frame: bytes | None) -> Packet:
    assert frame is not None
    pkt = Ether(frame)
    again = Ether(frame)
    del again[UDP].chksum
    assert Ether(bytes(again))[UDP].chksum == pkt[UDP].chksum
    assert (pkt.src, pkt.dst) == ("02:00:00:00:00:01", GUEST)
    assert (pkt[IPv6].src, pkt[IPv6].dst) == ("fe80::ff:fe00:1", GUEST_LL)
    assert (pkt[UDP].sport, pkt[UDP].dport) == (547, 546)
    assert bytes(pkt[DHCP6OptServerId].duid) == SERVER_DUID
    assert bytes(pkt[DHCP6OptClientId].duid) == bytes(CLIENT_DUID)
    return pkt


def addrs_of(pkt: Packet) -> list[tuple[str, int, int]]:
    return [(o.addr, o.preflft, o.validlft) for o in pkt[DHCP6OptIA_NA].ianaopts if isinstance(o, DHCP6OptIAAddress)]


def test_solicit_advertise_request_reply() -> None:
    outcome, frame = dhcp6.answer(client(DHCP6_Solicit(trid=0x123456), ia_na()), LEASE, NET, MASTER)
    assert outcome == Outcome.ADVERTISED
    adv = reply_of(frame)
    assert adv.haslayer(DHCP6_Advertise) and adv[DHCP6_Advertise].trid == 0x123456
    assert adv[DHCP6OptPref].prefval == 255
    assert adv[DHCP6OptIA_NA].iaid == 7 and (adv[DHCP6OptIA_NA].T1, adv[DHCP6OptIA_NA].T2) == (43200, 69120)
    assert addrs_of(adv) == [(ADDR, 86400, 86400)]
    assert adv[DHCP6OptDNSServers].dnsservers == ["fd00::53"]
    assert adv[DHCP6OptDNSDomains].dnsdomains == ["example.org."]
    outcome, frame = dhcp6.answer(client(DHCP6_Request(trid=9), server_id(), ia_na(ADDR)), LEASE, NET, MASTER)
    assert outcome == Outcome.ASSIGNED
    rep = reply_of(frame)
    assert rep.haslayer(DHCP6_Reply) and addrs_of(rep) == [(ADDR, 86400, 86400)]


def test_rapid_commit_gets_a_reply() -> None:
    outcome, frame = dhcp6.answer(client(DHCP6_Solicit(), DHCP6OptRapidCommit(), ia_na()), LEASE, NET, MASTER)
    assert outcome == Outcome.ASSIGNED
    rep = reply_of(frame)
    assert rep.haslayer(DHCP6_Reply) and rep.haslayer(DHCP6OptRapidCommit) and addrs_of(rep)[0][0] == ADDR


def test_another_guests_address_is_refused() -> None:
    outcome, frame = dhcp6.answer(client(DHCP6_Request(), server_id(), ia_na(OTHER)), LEASE, NET, MASTER)
    assert outcome == Outcome.REFUSED
    rep = reply_of(frame)
    assert rep[DHCP6OptIA_NA][DHCP6OptStatusCode].statuscode == dhcp6.NOT_ON_LINK
    assert not addrs_of(rep)
    outcome, frame = dhcp6.answer(client(DHCP6_Confirm(), ia_na(OTHER)), LEASE, NET, MASTER)
    assert outcome == Outcome.REFUSED and reply_of(frame)[DHCP6OptStatusCode].statuscode == dhcp6.NOT_ON_LINK
    # RENEW of a foreign address: ours, and the foreign one with lifetimes 0
    outcome, frame = dhcp6.answer(client(DHCP6_Renew(), server_id(), ia_na(OTHER)), LEASE, NET, MASTER)
    assert outcome == Outcome.ASSIGNED
    assert addrs_of(reply_of(frame)) == [(ADDR, 86400, 86400), (OTHER, 0, 0)]


def test_renew_rebind_confirm_release_decline() -> None:
    for msg, sid in ((DHCP6_Renew(), True), (DHCP6_Rebind(), False)):
        opts = (server_id(), ia_na(ADDR)) if sid else (ia_na(ADDR),)
        outcome, frame = dhcp6.answer(client(msg, *opts), LEASE, NET, MASTER)
        assert outcome == Outcome.ASSIGNED and addrs_of(reply_of(frame)) == [(ADDR, 86400, 86400)]
    outcome, frame = dhcp6.answer(client(DHCP6_Confirm(), ia_na(ADDR)), LEASE, NET, MASTER)
    assert outcome == Outcome.CONFIRMED and reply_of(frame)[DHCP6OptStatusCode].statuscode == dhcp6.SUCCESS
    assert dhcp6.answer(client(DHCP6_Confirm(), ia_na()), LEASE, NET, MASTER) == (Outcome.IGNORED, None)
    for done, want in ((DHCP6_Release(), Outcome.RELEASED), (DHCP6_Decline(), Outcome.DECLINED)):
        outcome, frame = dhcp6.answer(client(done, server_id(), ia_na(ADDR)), LEASE, NET, MASTER)
        assert outcome == want and reply_of(frame)[DHCP6OptStatusCode].statuscode == dhcp6.SUCCESS


def test_information_request_is_stateless() -> None:
    outcome, frame = dhcp6.answer(client(DHCP6_InfoRequest()), LEASE, NET, MASTER)
    assert outcome == Outcome.INFORMED
    rep = reply_of(frame)
    assert not rep.haslayer(DHCP6OptIA_NA) and rep[DHCP6OptDNSServers].dnsservers == ["fd00::53"]


def test_ia_ta_and_ia_pd_get_no_addresses_and_a_stateless_lease_none() -> None:
    outcome, frame = dhcp6.answer(client(DHCP6_Solicit(), DHCP6OptIA_TA(iaid=1), DHCP6OptIA_PD(iaid=2)),
                                  LEASE, NET, MASTER)
    rep = reply_of(frame)
    assert outcome == Outcome.REFUSED
    assert rep[DHCP6OptIA_TA][DHCP6OptStatusCode].statuscode == dhcp6.NO_ADDRS_AVAIL
    assert rep[DHCP6OptIA_PD][DHCP6OptStatusCode].statuscode == dhcp6.NO_PREFIX_AVAIL
    stateless = Lease((), "vm1")
    outcome, frame = dhcp6.answer(client(DHCP6_Solicit(), ia_na()), stateless, NET, MASTER)
    assert outcome == Outcome.REFUSED
    assert reply_of(frame)[DHCP6OptIA_NA][DHCP6OptStatusCode].statuscode == dhcp6.NO_ADDRS_AVAIL
    outcome, frame = dhcp6.answer(client(DHCP6_Renew(), server_id(), ia_na(ADDR)), stateless, NET, MASTER)
    assert reply_of(frame)[DHCP6OptIA_NA][DHCP6OptStatusCode].statuscode == dhcp6.NO_BINDING


def test_another_servers_messages_are_ignored() -> None:
    other = DHCP6OptServerId(duid=DUID_LL(lladdr="02:00:00:00:00:99"))
    assert dhcp6.answer(client(DHCP6_Request(), other, ia_na(ADDR)), LEASE, NET, MASTER) == (Outcome.IGNORED, None)


@pytest.mark.parametrize("frame", [
    client(DHCP6_Solicit(), client_id=False),  # no Client Identifier
    client(DHCP6_Solicit(), server_id()),  # a Server Identifier in a SOLICIT
    client(DHCP6_Request(), ia_na()),  # a REQUEST without a Server Identifier
    client(DHCP6_Solicit(), Raw(b"\x00\x03\x00\x20" + bytes(4))),  # an IA_NA running past the end
    client(DHCP6_Solicit(), Raw(b"\x00\x03\x00\x04" + bytes(4))),  # an IA_NA shorter than its fields
    client(DHCP6_Solicit(), DHCP6OptClientId(duid=CLIENT_DUID)),  # two Client Identifiers
    client(DHCP6_Solicit()).replace(b"\x02\x22\x02\x23", b"\x02\x22\x02\x23", 1)[:-3],  # UDP length past the end
    bytes(Ether(src=GUEST) / IPv6(src=GUEST_LL, dst="ff02::1:2") / UDP(sport=546, dport=547) / DHCP6(msgtype=2)),
], ids=["no-client-id", "server-id-in-solicit", "request-without-server-id", "option-past-end", "short-ia",
        "two-client-ids", "truncated", "advertise-from-client"])
def test_malformed(frame: bytes) -> None:
    assert dhcp6.answer(frame, LEASE, NET, MASTER) == (Outcome.MALFORMED, None)


def test_is_client_message() -> None:
    assert dhcp6.is_client_message(client(DHCP6_Solicit()))
    reply = dhcp6.answer(client(DHCP6_Solicit()), LEASE, NET, MASTER)[1]
    assert reply is not None and not dhcp6.is_client_message(reply)
    assert not dhcp6.is_client_message(client(DHCP6_Solicit())[:60])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_hostile_payloads_never_raise(payload: bytes) -> None:
    frame = bytes(Ether(src=GUEST) / IPv6(src=GUEST_LL, dst="ff02::1:2") / UDP(sport=546, dport=547) / Raw(payload))
    outcome, reply = dhcp6.answer(frame, LEASE, NET, MASTER)
    assert (reply is None) == (outcome in (Outcome.MALFORMED, Outcome.IGNORED))
    for cut in (0, 10, 50, 62, 66):
        dhcp6.answer(frame[:cut], LEASE, NET, MASTER)


def test_a_renew_naming_many_foreign_addresses_still_fits_one_reply() -> None:
    """A slave may have MAX_ADDRESSES (256) addresses, each in every IA_NA answered; a
    RENEW of MAX_IAS IA_NAs each naming dozens of foreign addresses made the reply longer
    than a UDP length (struct.error out of ``answer``: an internal error, not an answer).
    The foreign ones echoed with lifetimes 0 are at most ``MAX_STALE`` per IA."""
    lease = Lease(tuple((ipaddress.IPv6Address(f"fd00::{i:x}").packed, 64) for i in range(1, 257)), "vm1")
    ias = [DHCP6OptIA_NA(iaid=k, ianaopts=[DHCP6OptIAAddress(addr=f"fd01::{j:x}") for j in range(1, 63)])
           for k in range(dhcp6.MAX_IAS)]
    outcome, frame = dhcp6.answer(client(DHCP6_Renew(), server_id(), *ias), lease, NET, MASTER)
    assert outcome == Outcome.ASSIGNED and frame is not None
    body = Ether(frame)[DHCP6_Reply].original[4:]  # scapy does not parse IA_NAs this long: by hand
    found = []
    while body:
        code, length = struct.unpack_from("!HH", body)
        if code == dhcp6.OPT_IA_NA:
            inner, lifetimes = body[4 + 12 : 4 + length], []
            while inner:
                sub, sublen = struct.unpack_from("!HH", inner)
                if sub == dhcp6.OPT_IAADDR:
                    lifetimes.append(struct.unpack_from("!I", inner, 4 + 20)[0])
                inner = inner[4 + sublen :]
            found.append((len(lifetimes), lifetimes.count(0)))
        body = body[4 + length :]
    assert found == [(256 + dhcp6.MAX_STALE, dhcp6.MAX_STALE)] * dhcp6.MAX_IAS
