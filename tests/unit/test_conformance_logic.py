"""The conformance suite's pure parts: counters, observations, the kernel script's
output, departures and verdicts, and the recorded results' consistency."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.support.conformance_expect import DEPARTURES, Departure, Verdict, departure_for, judge
from tests.support.conformance_nets import kernel_script, parse_kernel_output
from tests.support.scenarios import (
    COMBOS,
    ENDPOINTS,
    PROBE_BY_ID,
    PROBES,
    SLAVES,
    Observation,
    Probe,
    fill,
    next_combo,
    observe,
    parse_counters,
    replies,
)

ROOT = Path(__file__).resolve().parents[2]

SNMP = """Ip: Forwarding DefaultTTL InReceives
Ip: 2 64 10
Icmp: InMsgs InErrors InCsumErrors InDestUnreachs InTimeExcds InParmProbs InSrcQuenchs InRedirects InEchos InEchoReps
Icmp: 9 0 0 0 0 0 0 0 {v4} 2
IcmpMsg: InType0 OutType8
IcmpMsg: 2 2
Ip6InReceives                   	20
Icmp6InEchos                    	{v6}
Icmp6InEchoReplies              	1
Icmp6InNeighborSolicits         	{ns}
RawIn {raw}
"""


def snmp(v4: int, v6: int, ns: int = 0, raw: int = 0) -> str:
    return SNMP.format(v4=v4, v6=v6, ns=ns, raw=raw)


def test_parse_counters_reads_inechos_both_families_ns_and_raw_frames() -> None:
    assert parse_counters(snmp(7, 3, 4, 5)) == {"v4": 7, "v6": 3, "ns": 4, "raw": 5}


def test_parse_counters_refuses_text_without_raw_count() -> None:
    with pytest.raises(ValueError, match="rawpkt listen"):
        parse_counters(snmp(1, 1).replace("RawIn 0", ""))


def test_parse_counters_refuses_text_without_counters() -> None:
    with pytest.raises(ValueError, match="no ICMP counters"):
        parse_counters("Ip: Forwarding\nIp: 1\n")


@pytest.mark.parametrize(("output", "expected"), [
    ("2 packets transmitted, 2 packets received, 0% packet loss", 2),
    ("2 packets transmitted, 1 packets received, 50% packet loss", 1),  # a lost first packet shows
    ("2 packets transmitted, 0 packets received, 100% packet loss", 0),
    ("Sent 2 probe(s) (1 broadcast(s))\nReceived 1 response(s)", 1),
    ("Sent 2 probe(s) (2 broadcast(s))\nReceived 0 response(s)", 0),
    ("ping: sendto: Network unreachable", 0),
    ("rawpkt: sent 2 of 2", 0),
])
def test_replies_counts_ping_and_arping_answers(output: str, expected: int) -> None:
    assert replies(output) == expected


def test_fill_replaces_placeholders_and_refuses_unknown_ones() -> None:
    assert fill("ping {ll:s1}%{if}", {"ll:s1": "fe80::1", "if": "br0"}) == "ping fe80::1%br0"
    with pytest.raises(KeyError, match="mac:out"):
        fill("rawpkt send {if} {mac:out}", {"if": "eth0"})


def test_next_combo_changes_mode_and_flag_and_cycles() -> None:
    assert next_combo("l2-bridge") == "l3-private"
    assert next_combo("l3s-vepa") == "l2-bridge"
    assert {next_combo(c) for c in COMBOS} == set(COMBOS)


def test_observe_counts_growth_at_everyone_but_the_sender() -> None:
    probe = PROBE_BY_ID["d.mping4"]
    before = {e: {"v4": 1, "v6": 5} for e in ENDPOINTS}
    after = {**before, "s1": {"v4": 9, "v6": 5}, "s3": {"v4": 2, "v6": 5}, "out": {"v4": 3, "v6": 5},
             "host": {"v4": 1, "v6": 7}}
    obs = observe(probe, "2 packets received", before, after)
    assert obs == Observation(2, ("out", "s3"))  # not s1 (sender), not host (v6 grew, v4 did not)


def test_observe_records_the_words_a_probe_looks_for() -> None:
    probe = PROBE_BY_ID["f.dad"]
    same = {e: {"ns": 0} for e in ENDPOINTS}
    out = "inet6 2001:db8::100:0:11/64 scope global tentative"
    assert observe(probe, out, same, same) == Observation(0, (), ("tentative",))
    assert observe(PROBE_BY_ID["a.v4"], out, {e: {"v4": 0} for e in ENDPOINTS},
                   {e: {"v4": 0} for e in ENDPOINTS}).shown is None


def test_observe_without_counter_records_no_receivers() -> None:
    probe = PROBE_BY_ID["e.arp"]
    same = {e: {"v4": 0, "v6": 0} for e in ENDPOINTS}
    assert observe(probe, "Received 0 response(s)", same, same) == Observation(0, None)


def test_observation_json_round_trip() -> None:
    for obs in (Observation(2, ("host", "s1")), Observation(0, None), Observation(0, ()),
                Observation(1, ("s1",), ("tentative",)), Observation(0, (), ())):
        assert Observation.from_json(json.loads(json.dumps(obs.to_json()))) == obs


def test_kernel_output_is_parsed_per_probe() -> None:
    probes = (PROBE_BY_ID["a.v4"], PROBE_BY_ID["e.arp"])
    text = "noise from setup\n"
    for p in probes:
        text += f"@@B {p.id}\n" + "".join(snmp(0, 0) for _ in ENDPOINTS)
        text += f"@@P {p.id}\n" + ("2 packets received\n" if p.id == "a.v4" else "Received 0 response(s)\n")
        after = [snmp(2 if e == "s2" else 0, 0) for e in ENDPOINTS]
        text += f"@@A {p.id}\n" + "".join(after)
    assert parse_kernel_output(text, probes) == {
        "a.v4": Observation(2, ("s2",)),
        "e.arp": Observation(0, None),
    }


def test_kernel_output_missing_a_probe_is_an_error() -> None:
    with pytest.raises(RuntimeError, match=r"no result for probe a\.v4"):
        parse_kernel_output("@@P a.v4\n2 packets received\n", (PROBE_BY_ID["a.v4"],))


def test_kernel_script_builds_the_mode_and_flag_and_runs_every_probe() -> None:
    script = kernel_script("l3s", "vepa")
    assert script.count("name s1 type ipvlan mode l3s vepa") == 1
    assert script.count("type ipvlan mode l3s vepa") == 4  # three slaves, and back after the live change
    for p in PROBES:
        assert f"echo '@@P {p.id}'" in script
    assert "ip netns exec" not in script.split("set +e")[1]  # nsenter: no /sys remount per command
    assert not re.search(r"\{[a-z0-9:]+\}", script)  # every placeholder filled


def test_kernel_script_switches_hairpin_and_the_live_port_around_the_probes_that_ask() -> None:
    probes = (PROBE_BY_ID["a.v4"], PROBE_BY_ID["hp.a.v4"], PROBE_BY_ID["hp.a.v6"], PROBE_BY_ID["j.flip.a"],
              PROBE_BY_ID["x.netconf"])
    lines = kernel_script("l2", "bridge", probes).splitlines()
    at = {line.split()[2].strip("'"): i for i, line in enumerate(lines) if line.startswith("echo '@@P ")}
    hairpin = [i for i, line in enumerate(lines) if "bridge_slave hairpin" in line]
    flips = [i for i, line in enumerate(lines) if "link set dev s1 type ipvlan mode" in line]
    assert [lines[i].split()[-1] for i in hairpin] == ["on", "off"]
    assert at["a.v4"] < hairpin[0] < at["hp.a.v4"] < at["hp.a.v6"] < hairpin[1] < at["j.flip.a"]
    assert lines[flips[0]].endswith("mode l3 private") and lines[flips[1]].endswith("mode l2 bridge")
    assert at["hp.a.v6"] < flips[0] < at["j.flip.a"] < flips[1] < at["x.netconf"]


DEP = Departure(("x",), ("l3*-*",), Observation(2, ("host",)), "why", "README row")


@pytest.mark.parametrize(("kernel", "daemon", "verdict"), [
    (Observation(2, ("s2",)), Observation(2, ("s2",)), Verdict.SAME),
    (Observation(2, ("s2",)), Observation(0, ()), Verdict.DIFFERENT),
    (Observation(2, ("s2",)), Observation(1, ("s2",)), Verdict.DIFFERENT),  # the lost first packet
    (Observation(2, None), Observation(2, ()), Verdict.DIFFERENT),
    (Observation(0, (), ("tentative",)), Observation(0, (), ()), Verdict.DIFFERENT),
])
def test_judge_without_departure(kernel: Observation, daemon: Observation, verdict: Verdict) -> None:
    assert judge("l2-bridge", "x", kernel, daemon, (DEP,))[0] is verdict


def test_judge_with_departure() -> None:
    kernel = Observation(0, ())
    assert judge("l3s-private", "x", kernel, Observation(2, ("host",)), (DEP,))[0] is Verdict.DEPARTURE
    # the daemon behaving like the kernel where a departure is documented fails: the list stays honest
    verdict, text = judge("l3-bridge", "x", kernel, kernel, (DEP,))
    assert verdict is Verdict.STALE_DEPARTURE and not verdict.ok and "README row" in text
    # a third behaviour, neither the kernel's nor the documented one
    assert judge("l3-bridge", "x", kernel, Observation(2, ()), (DEP,))[0] is Verdict.DIFFERENT
    # the pattern does not match l2
    assert judge("l2-bridge", "x", kernel, Observation(2, ("host",)), (DEP,))[0] is Verdict.DIFFERENT


def test_departures_never_overlap_and_name_real_probes() -> None:
    for d in DEPARTURES:
        assert set(d.probes) <= set(PROBE_BY_ID), d
        assert d.reason and d.readme.startswith("README")
    for combo in COMBOS:
        for p in PROBES:
            departure_for(combo, p.id)  # raises if two apply


def test_departures_point_at_readme_sections_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    for d in DEPARTURES:
        section = d.readme.split('"')[1]
        assert f"## {section}" in readme, d.readme


def test_recorded_results_agree_with_todays_departures() -> None:
    """docs/conformance-results.json (written by the suite) judged again with the current list."""
    data = json.loads((ROOT / "docs" / "conformance-results.json").read_text())
    assert set(data["combos"]) == set(COMBOS)
    for combo, entry in data["combos"].items():
        assert set(entry["probes"]) == set(PROBE_BY_ID), combo
        for pid, rec in entry["probes"].items():
            if rec["vhost-ipvlan"] is None:
                assert rec["verdict"] is None
                continue
            kernel = Observation.from_json(rec["kernel"])
            daemon = Observation.from_json(rec["vhost-ipvlan"])
            assert str(judge(combo, pid, kernel, daemon)[0]) == rec["verdict"], (combo, pid)


def test_probe_ids_unique_and_senders_known() -> None:
    assert len(PROBE_BY_ID) == len(PROBES)
    for p in PROBES:
        assert isinstance(p, Probe) and p.sender in ENDPOINTS
        assert all(at in ENDPOINTS for at, _ in (*p.pre, *p.post)) and (not p.down or p.down in SLAVES)
        assert not p.port or p.port == "next"
        assert p.counter in ("v4", "v6", "ns", "raw", None)
