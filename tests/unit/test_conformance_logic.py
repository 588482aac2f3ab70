"""The conformance suite's pure parts: counters, observations, the kernel script's
output, departures and verdicts, and the recorded results' consistency."""

from __future__ import annotations

import json
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
    observe,
    parse_counters,
    replied,
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
"""


def snmp(v4: int, v6: int) -> str:
    return SNMP.format(v4=v4, v6=v6)


def test_parse_counters_reads_inechos_both_families() -> None:
    assert parse_counters(snmp(7, 3)) == {"v4": 7, "v6": 3}


def test_parse_counters_refuses_text_without_counters() -> None:
    with pytest.raises(ValueError, match="no ICMP counters"):
        parse_counters("Ip: Forwarding\nIp: 1\n")


@pytest.mark.parametrize(("output", "expected"), [
    ("2 packets transmitted, 2 packets received, 0% packet loss", True),
    ("2 packets transmitted, 0 packets received, 100% packet loss", False),
    ("Sent 2 probe(s) (1 broadcast(s))\nReceived 1 response(s)", True),
    ("Sent 2 probe(s) (2 broadcast(s))\nReceived 0 response(s)", False),
    ("ping: sendto: Network unreachable", False),
])
def test_replied_reads_ping_and_arping(output: str, expected: bool) -> None:
    assert replied(output) is expected


def test_observe_counts_growth_at_everyone_but_the_sender() -> None:
    probe = PROBE_BY_ID["d.mping4"]
    before = {e: {"v4": 1, "v6": 5} for e in ENDPOINTS}
    after = {**before, "s1": {"v4": 9, "v6": 5}, "s3": {"v4": 2, "v6": 5}, "out": {"v4": 3, "v6": 5},
             "host": {"v4": 1, "v6": 7}}
    obs = observe(probe, "2 packets received", before, after)
    assert obs == Observation(True, ("out", "s3"))  # not s1 (sender), not host (v6 grew, v4 did not)


def test_observe_without_counter_records_no_receivers() -> None:
    probe = PROBE_BY_ID["e.arp"]
    same = {e: {"v4": 0, "v6": 0} for e in ENDPOINTS}
    assert observe(probe, "Received 0 response(s)", same, same) == Observation(False, None)


def test_observation_json_round_trip() -> None:
    for obs in (Observation(True, ("host", "s1")), Observation(False, None), Observation(False, ())):
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
        "a.v4": Observation(True, ("s2",)),
        "e.arp": Observation(False, None),
    }


def test_kernel_output_missing_a_probe_is_an_error() -> None:
    with pytest.raises(RuntimeError, match=r"no result for probe a\.v4"):
        parse_kernel_output("@@P a.v4\n2 packets received\n", (PROBE_BY_ID["a.v4"],))


def test_kernel_script_builds_the_mode_and_flag_and_runs_every_probe() -> None:
    script = kernel_script("l3s", "vepa")
    assert script.count("type ipvlan mode l3s vepa") == 3
    for p in PROBES:
        assert f"echo '@@P {p.id}'" in script
    assert "ip netns exec" not in script.split("set +e")[1]  # nsenter: no /sys remount per command


DEP = Departure(("x",), ("l3*-*",), Observation(True, ("host",)), "why", "README row")


@pytest.mark.parametrize(("kernel", "daemon", "verdict"), [
    (Observation(True, ("s2",)), Observation(True, ("s2",)), Verdict.SAME),
    (Observation(True, ("s2",)), Observation(False, ()), Verdict.DIFFERENT),
    (Observation(True, None), Observation(True, ()), Verdict.DIFFERENT),
])
def test_judge_without_departure(kernel: Observation, daemon: Observation, verdict: Verdict) -> None:
    assert judge("l2-bridge", "x", kernel, daemon, (DEP,))[0] is verdict


def test_judge_with_departure() -> None:
    kernel = Observation(False, ())
    assert judge("l3s-private", "x", kernel, Observation(True, ("host",)), (DEP,))[0] is Verdict.DEPARTURE
    # the daemon behaving like the kernel where a departure is documented fails: the list stays honest
    verdict, text = judge("l3-bridge", "x", kernel, kernel, (DEP,))
    assert verdict is Verdict.STALE_DEPARTURE and not verdict.ok and "README row" in text
    # a third behaviour, neither the kernel's nor the documented one
    assert judge("l3-bridge", "x", kernel, Observation(True, ()), (DEP,))[0] is Verdict.DIFFERENT
    # the pattern does not match l2
    assert judge("l2-bridge", "x", kernel, Observation(True, ("host",)), (DEP,))[0] is Verdict.DIFFERENT


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
        assert (not p.pre or p.at in ENDPOINTS) and (not p.down or p.down in SLAVES)
