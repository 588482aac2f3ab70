"""The lab's check plan and report (ansible/filter_plugins/lab.py): pure functions, no lab needed."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from tests.lab.lab import ANSIBLE

_spec = importlib.util.spec_from_file_location("lab_filters", ANSIBLE / "filter_plugins" / "lab.py")
assert _spec is not None and _spec.loader is not None
lab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lab)

MASTERS = [
    {"name": "br", "flag": "bridge", "outside": ["192.0.2.1/24", "2001:db8::1/64"]},
    {"name": "pr", "flag": "private", "outside": ["198.51.100.1/24"]},
    {"name": "ve", "flag": "vepa", "outside": []},
]


def vm(name: str, *nics: tuple[str, list[str]]) -> dict[str, Any]:
    return {"name": name, "nics": [{"mac": "52:54:00:00:00:01", "master": m, "addresses": a} for m, a in nics]}


def test_expectations_follow_the_flag() -> None:
    vms = [vm("a", ("br", ["192.0.2.10/24"]), ("pr", ["198.51.100.10/24"]), ("ve", ["203.0.113.10/24"])),
           vm("b", ("br", ["192.0.2.11/24"]), ("pr", ["198.51.100.11/24"]), ("ve", ["203.0.113.11/24"]))]
    checks = lab.lab_checks(vms, MASTERS, "out")
    gg = {(c["src"], c["address"]): c["expect"] for c in checks if c["kind"] == "guest-guest"}
    assert gg == {("a", "192.0.2.11"): True, ("b", "192.0.2.10"): True,
                  ("a", "198.51.100.11"): False, ("b", "198.51.100.10"): False,
                  ("a", "203.0.113.11"): False, ("b", "203.0.113.10"): False}
    # isolation checks come last: they mean something only once reachability has been shown
    kinds = [c["expect"] for c in checks]
    assert kinds == sorted(kinds, reverse=True)


def test_outside_checks_match_the_address_family() -> None:
    checks = lab.lab_checks([vm("a", ("br", ["192.0.2.10/24"]))], MASTERS, "out")
    out = [(c["kind"], c["address"]) for c in checks if c["kind"] != "guest-guest"]
    assert out == [("guest-outside", "192.0.2.1"), ("outside-guest", "192.0.2.10")]


def test_guests_on_different_masters_are_not_paired() -> None:
    checks = lab.lab_checks([vm("a", ("br", ["192.0.2.10/24"])), vm("b", ("pr", ["198.51.100.11/24"]))],
                            MASTERS, "out")
    assert not [c for c in checks if c["kind"] == "guest-guest"]


def test_reached_and_table() -> None:
    checks = lab.lab_checks([vm("a", ("pr", ["198.51.100.10/24"])), vm("b", ("pr", ["198.51.100.11/24"]))],
                            MASTERS, "out")
    guest = [{"skipped": True} if c["kind"] == "outside-guest" else {"rc": 1 if not c["expect"] else 0}
             for c in checks]
    outside = [{"rc": 0} if c["kind"] == "outside-guest" else {"skipped": True} for c in checks]
    reached = lab.lab_reached(guest, outside)
    assert reached == [c["expect"] for c in checks]
    table = lab.lab_table(checks, reached)
    assert table[0].split()[0] == "check" and all(line.endswith(" ok") for line in table[1:])
    wrong = lab.lab_table(checks, [not r for r in reached])
    assert all(line.endswith("FAIL") for line in wrong[1:])


def test_mismatched_results_are_refused() -> None:
    with pytest.raises(ValueError, match="loops differ"):
        lab.lab_reached([{"rc": 0}], [])
    with pytest.raises(ValueError, match="1 checks but 0 results"):
        lab.lab_table([{"kind": "x"}], [])
