"""Conformance with the kernel's IPvlan: every scenario of ``tests/support/scenarios.py``,
once against the kernel (namespaces in one TCG guest), once against vhost-ipvlan (QEMU
guests), for every mode x flag the daemon accepts; the observations must be equal
except for the documented departures (``tests/support/conformance_expect.py``).

A combination vhost-ipvlan refuses (``vhost-ipvlan check-config`` says why) is skipped
with that reason; once the daemon accepts it, it runs. Each kernel observation must also
equal the one recorded in ``docs/conformance-results.json`` (the scenario's expected
result); ``pytest tests/conformance --conformance-update`` runs the kernel side for all
nine combinations and rewrites that file (then regenerate docs/policy-matrix.md).

Speed: one kernel guest and three daemon guests boot once per module; the kernel side
runs in a background thread while the daemon side runs, and the daemon's mode and flag
are switched through the control API. Both sides run only the probes and combinations of
the selected tests (``-k``, ``-m``), so deselecting, say, the hairpin variants
(``-m 'not conformance_hairpin'``) also saves their time; ``--conformance-update`` runs all.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.conformance_expect import KNOWN_BUGS, Verdict, judge
from tests.support.conformance_nets import DaemonNet, KernelNet
from tests.support.scenarios import COMBOS, PROBE_BY_ID, PROBES, Observation, Observations, Probe

# A first test of a combination boots guests or waits for the kernel side: far beyond the default 300 s.
pytestmark = [pytest.mark.conformance, pytest.mark.slow, pytest.mark.qemu, pytest.mark.netns, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "conformance-results.json"


def refusal(combo: str, tmp: Path) -> str | None:
    """The daemon's one-line refusal of this mode and flag, or None if it accepts them."""
    mode, flag = combo.split("-")
    cfg = tmp / f"check-{combo}.toml"
    cfg.write_text(f'[[port]]\nmaster = "vim0"\nmode = "{mode}"\nflag = "{flag}"\n')
    proc = subprocess.run([sys.executable, "-m", "vhost_ipvlan.cli", "check-config", str(cfg)],
                          capture_output=True, text=True, timeout=60, check=False)
    return None if proc.returncode == 0 else (proc.stderr.strip() or proc.stdout.strip())


def _mode_flag(combo: str) -> tuple[str, str]:
    mode, flag = combo.split("-")
    return mode, flag


class Suite:
    """Both networks, the kernel side running in a thread, the daemon side on demand."""

    def __init__(self, tmp: Path, update: bool, probes: tuple[Probe, ...] = PROBES,
                 combos: tuple[str, ...] = COMBOS) -> None:
        self.update = update
        self.probes = PROBES if update else probes
        self.refused = {c: refusal(c, tmp) for c in COMBOS}
        self.kernel_combos = [c for c in COMBOS if update or (self.refused[c] is None and c in combos)]
        self.kernel = KernelNet(tmp / "kernel")
        self.daemon = DaemonNet(tmp / "daemon")
        self.kernel_obs: dict[str, Observations | BaseException] = {}
        self.daemon_obs: dict[str, Observations] = {}
        self.cond = threading.Condition()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._kernel_side, daemon=True)
        self.recorded: dict[str, dict[str, dict[str, object]]] = {}
        if RESULTS.exists():
            data = json.loads(RESULTS.read_text())
            self.recorded = {c: v["probes"] for c, v in data["combos"].items()}

    def start(self) -> None:
        self.thread.start()
        if any(r is None for r in self.refused.values()):
            self.daemon.start()

    def _kernel_side(self) -> None:
        try:
            self.kernel.start()
        except BaseException as exc:
            with self.cond:
                self.kernel_obs.update(dict.fromkeys(self.kernel_combos, exc))
                self.cond.notify_all()
            return
        for combo in self.kernel_combos:
            if self.stopping.is_set():
                return
            try:
                result: Observations | BaseException = self.kernel.run(*_mode_flag(combo), self.probes)
            except BaseException as exc:
                result = exc
            with self.cond:
                self.kernel_obs[combo] = result
                self.cond.notify_all()

    def kernel_result(self, combo: str) -> Observations:
        with self.cond:
            if not self.cond.wait_for(lambda: combo in self.kernel_obs, timeout=1200):
                raise TimeoutError(f"kernel side: no result for {combo} within 1200 s")
            result = self.kernel_obs[combo]
        if isinstance(result, BaseException):
            raise result
        return result

    def daemon_result(self, combo: str) -> Observations:
        if combo not in self.daemon_obs:
            self.daemon_obs[combo] = self.daemon.run(*_mode_flag(combo), self.probes)
        return self.daemon_obs[combo]

    def stop(self) -> None:
        self.stopping.set()  # the kernel thread ends after its current combination
        try:
            self.daemon.stop()
        finally:
            self.thread.join(timeout=600)
            self.kernel.stop()

    def document(self) -> dict[str, object]:
        """docs/conformance-results.json: the probes, and per combination what each side showed."""
        combos: dict[str, object] = {}
        for combo in COMBOS:
            kern = self.kernel_obs.get(combo)
            if not isinstance(kern, dict):
                raise RuntimeError(f"kernel side has no result for {combo}: {kern!r}")
            daemon = self.daemon_obs.get(combo)
            probes: dict[str, object] = {}
            for p in PROBES:
                entry: dict[str, object] = {"kernel": kern[p.id].to_json(), "vhost-ipvlan": None, "verdict": None}
                if daemon is not None:
                    verdict, _ = judge(combo, p.id, kern[p.id], daemon[p.id])
                    entry.update({"vhost-ipvlan": daemon[p.id].to_json(), "verdict": str(verdict)})
                probes[p.id] = entry
            combos[combo] = {"refused": self.refused[combo], "probes": probes}
        return {
            "generated_by": "pytest tests/conformance --conformance-update",
            "probes": {p.id: {"what": p.what, "sender": p.sender, "ref": p.ref} for p in PROBES},
            "combos": combos,
        }


def selected(items: list[pytest.Item], param: str) -> set[str]:
    """The values of ``param`` ("combo" or "probe") that at least one selected test needs."""
    return {str(item.callspec.params[param]) for item in items
            if item.name.startswith("test_conformance[") and isinstance(item, pytest.Function)}


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Suite]:
    update = bool(request.config.getoption("--conformance-update", default=False))
    probes = selected(request.session.items, "probe")
    combos = selected(request.session.items, "combo")
    s = Suite(tmp_path_factory.mktemp("conformance"), update, tuple(p for p in PROBES if p.id in probes),
              tuple(c for c in COMBOS if c in combos))
    try:
        s.start()
        yield s
        if update:
            RESULTS.write_text(json.dumps(s.document(), indent=1, sort_keys=False) + "\n")
    finally:
        s.stop()


def _cases() -> Iterator[object]:
    for combo in COMBOS:
        for p in PROBES:
            bug = KNOWN_BUGS.get((combo, p.id))
            marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
            if p.hairpin:
                marks.append(pytest.mark.conformance_hairpin)
            yield pytest.param(combo, p.id, id=f"{combo}/{p.id}", marks=marks)


@pytest.mark.parametrize(("combo", "probe"), list(_cases()))
def test_conformance(suite: Suite, combo: str, probe: str) -> None:
    refused = suite.refused[combo]
    if refused is not None:
        if suite.update:
            suite.kernel_result(combo)  # recorded for the docs
        pytest.skip(f"vhost-ipvlan refuses {combo}: {refused}")
    daemon = suite.daemon_result(combo)[probe]  # meanwhile the kernel side runs in its thread
    kernel = suite.kernel_result(combo)[probe]
    if not suite.update:
        recorded = suite.recorded.get(combo, {}).get(probe)
        assert recorded is not None, f"no recorded kernel observation for {combo} {probe}: run --conformance-update"
        expected = Observation.from_json(recorded["kernel"])  # type: ignore[arg-type]
        assert kernel == expected, (
            f"{PROBE_BY_ID[probe].what}: the kernel showed {kernel}, the scenario expects {expected} "
            f"(docs/conformance-results.json)")
    verdict, text = judge(combo, probe, kernel, daemon)
    assert verdict.ok, f"{combo} {probe} ({PROBE_BY_ID[probe].what}): {verdict}: {text}"
    assert verdict in (Verdict.SAME, Verdict.DEPARTURE)
