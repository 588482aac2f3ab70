"""Filters of the lab playbooks: which connectivity checks the inventory implies, and the report table.

``lab_checks(vms, masters, netns)``: one check per (source, target address):
- guest -> guest, for every two guests with NICs on the same master: reachable only
  when the master's flag is ``bridge`` (``private`` isolates slaves; ``vepa`` sends
  slave-to-slave traffic to the wire, and the lab's outside end does not hairpin it);
- guest -> outside: every NIC reaches its master's outside addresses (same family);
- outside -> guest: the outside namespace reaches every NIC address.
``lab_reached(guest_results, outside_results)``: per check, did the ping get an answer
(the two registered loops of check.yml, each skipping the other's checks).
``lab_table(checks, reached)``: the report, one line per check, ``ok``/``FAIL``.
"""

from __future__ import annotations

from typing import Any

Check = dict[str, Any]


def _ip(cidr: str) -> str:
    return cidr.split("/", 1)[0]


def _family(cidr: str) -> int:
    return 6 if ":" in cidr else 4


def lab_checks(vms: list[dict[str, Any]], masters: list[dict[str, Any]], netns: str) -> list[Check]:
    flags = {m["name"]: m.get("flag", "bridge") for m in masters}
    outside = {m["name"]: list(m.get("outside", [])) for m in masters}
    checks: list[Check] = []
    for vm in vms:
        for nic in vm["nics"]:
            for peer in vms:
                if peer["name"] == vm["name"]:
                    continue
                for pnic in peer["nics"]:
                    if pnic["master"] != nic["master"]:
                        continue
                    for addr in pnic["addresses"]:
                        bridged = flags[nic["master"]] == "bridge"
                        checks.append({"kind": "guest-guest", "src": vm["name"], "dst": peer["name"],
                                       "address": _ip(addr), "via": nic["master"], "expect": bridged,
                                       "why": "bridge" if bridged else f"{flags[nic['master']]}: isolated"})
            for oaddr in outside[nic["master"]]:
                if any(_family(a) == _family(oaddr) for a in nic["addresses"]):
                    checks.append({"kind": "guest-outside", "src": vm["name"], "dst": netns,
                                   "address": _ip(oaddr), "via": nic["master"], "expect": True, "why": "uplink"})
            for addr in nic["addresses"]:
                checks.append({"kind": "outside-guest", "src": netns, "dst": vm["name"],
                               "address": _ip(addr), "via": nic["master"], "expect": True, "why": "uplink"})
    # Reachability first: an isolation check means something only once its guest's NIC works.
    return sorted(checks, key=lambda c: (c["expect"] is False, c["kind"]))


def lab_reached(guest: list[dict[str, Any]], outside: list[dict[str, Any]]) -> list[bool]:
    if len(guest) != len(outside):
        raise ValueError(f"{len(guest)} and {len(outside)} results: the loops differ")
    reached = []
    for g, o in zip(guest, outside, strict=True):
        r = o if g.get("skipped") else g
        reached.append(not r.get("skipped") and r.get("rc") == 0)
    return reached


def lab_table(checks: list[Check], reached: list[bool]) -> list[str]:
    if len(checks) != len(reached):
        raise ValueError(f"{len(checks)} checks but {len(reached)} results")
    rows = [("check", "from", "to", "address", "via", "expected", "got", "result")]
    for c, got in zip(checks, reached, strict=True):
        rows.append((c["kind"], c["src"], c["dst"], c["address"], c["via"],
                     "reach" if c["expect"] else f"no ({c['why']})", "reach" if got else "no",
                     "ok" if got == c["expect"] else "FAIL"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"lab_checks": lab_checks, "lab_reached": lab_reached, "lab_table": lab_table}
