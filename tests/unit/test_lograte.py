"""Rate-limited log lines: a burst, then one per interval, and a count of what was suppressed."""

from __future__ import annotations

import logging

import pytest

from vhost_ipvlan.daemon.lograte import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_suppressed_then_counted(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("t.lograte"), burst=3, interval=10, clock=clock)
    with caplog.at_level(logging.WARNING, "t.lograte"):
        logged = [limited.log("vm1", logging.WARNING, "line %d", i) for i in range(100)]
        assert logged.count(True) == 3
        assert limited.log("vm2", logging.WARNING, "another key")  # its own budget
        clock.now = 10.0
        assert limited.log("vm1", logging.WARNING, "after a while")
        assert not limited.log("vm1", logging.WARNING, "too soon")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["line 0", "line 1", "line 2", "another key", "after a while (97 earlier lines suppressed)"]


def test_keys_are_bounded() -> None:
    limited = RateLimitedLog(logging.getLogger("t.lograte"), max_keys=4, clock=Clock())
    for i in range(100):
        limited.log(f"k{i}", logging.WARNING, "x")
    assert len(limited._buckets) == 4


def test_traceback_within_the_budget(caplog: pytest.LogCaptureFixture) -> None:
    """``exc_info=True`` logs the exception being handled, as ``Logger.exception`` does."""
    limited = RateLimitedLog(logging.getLogger("t.lograte"), burst=1, clock=Clock())
    with caplog.at_level(logging.ERROR, "t.lograte"):
        for _ in range(3):
            try:
                raise ValueError("boom")
            except ValueError:
                limited.log("vm1", logging.ERROR, "unexpected", exc_info=True)
    assert len(caplog.records) == 1 and caplog.records[0].exc_info is not None
    assert caplog.records[0].exc_info[0] is ValueError


def test_suppressed_lines_go_to_debug(caplog: pytest.LogCaptureFixture) -> None:
    """With DEBUG on (``--log-level debug``) a suppressed line is logged there, marked,
    without its traceback; at the default level it is gone."""
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("t.lograte"), burst=2, interval=10, clock=clock)
    with caplog.at_level(logging.DEBUG, "t.lograte"):
        for i in range(4):
            limited.log("vm1", logging.INFO, "slave vm1: up %d", i)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "slave vm1: up 0"), (logging.INFO, "slave vm1: up 1"),
        (logging.DEBUG, "slave vm1: up 2 (rate-limited)"), (logging.DEBUG, "slave vm1: up 3 (rate-limited)")]
    caplog.clear()
    with caplog.at_level(logging.INFO, "t.lograte"):
        assert not limited.log("vm1", logging.INFO, "slave vm1: up %d", 4)
    assert caplog.records == []


def test_a_percent_in_a_line_without_args_is_text(caplog: pytest.LogCaptureFixture) -> None:
    """A line given no args is text (as with ``Logger.log``): the count this module adds
    to it, or its DEBUG mark, must not make a ``%`` in it a format (``% f`` takes the
    count, then the count's own ``%d`` has nothing left: a logging error, the line lost)."""
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("t.lograte"), burst=1, interval=10, clock=clock)
    with caplog.at_level(logging.DEBUG, "t.lograte"):
        for _ in range(3):
            limited.log("vm1", logging.WARNING, "ring 100% full")
        clock.now = 10.0
        limited.log("vm1", logging.WARNING, "ring 100% full")
    assert [r.getMessage() for r in caplog.records] == [
        "ring 100% full", "ring 100% full (rate-limited)", "ring 100% full (rate-limited)",
        "ring 100% full (2 earlier lines suppressed)"]
