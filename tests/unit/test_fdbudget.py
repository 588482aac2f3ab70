"""The file descriptor budget (issue 12): the soft limit raised at start, a slave refused
on one line when it would not fit with its guest connected."""

from __future__ import annotations

import resource

import pytest

from vhost_ipvlan.daemon import fdbudget
from vhost_ipvlan.errors import FdBudget


def test_a_connected_guest_costs_its_socket_eventfds_and_one_message_of_fds() -> None:
    # connection socket + kick, call, err for rx and tx + SET_MEM_TABLE's 8 memory fds in flight
    assert fdbudget.GUEST_FDS == 1 + 6 + 8
    assert fdbudget.need(1, 1000) == fdbudget.RESERVE + fdbudget.PORT_FDS + 1000 * 16


def test_every_queue_pair_beyond_the_first_costs_its_eventfds() -> None:
    assert fdbudget.PAIR_FDS == 6
    assert fdbudget.need(1, 10, extra_pairs=15) == fdbudget.need(1, 10) + 15 * 6
    limit = fdbudget.need(1, 10)
    fdbudget.check("params", "vm10", 1, 10, limit)
    with pytest.raises(FdBudget, match="6 per further queue pair"):
        fdbudget.check("params", "vm10", 1, 10, limit, extra_pairs=1)


def test_a_slave_within_the_limit_is_accepted() -> None:
    limit = fdbudget.need(1, 60)
    fdbudget.check("params", "vm60", 1, 60, limit)
    assert fdbudget.slaves_within(limit, 1) == 60


def test_a_slave_beyond_the_limit_is_refused_on_one_line() -> None:
    limit = fdbudget.need(1, 60)
    with pytest.raises(FdBudget) as e:
        fdbudget.check("port[0].slave[60]", "vm61", 1, 61, limit)
    msg = str(e.value)
    assert "\n" not in msg and e.value.code == "fd_budget"
    assert msg.startswith("port[0].slave[60].name: slave 'vm61' refused: 61 slaves")
    assert f"need {fdbudget.need(1, 61)} file descriptors" in msg and f"(RLIMIT_NOFILE) is {limit}" in msg


def test_the_soft_limit_is_raised_to_the_hard_one(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = [(1024, 524288)]
    monkeypatch.setattr(resource, "getrlimit", lambda _: limits[-1])
    monkeypatch.setattr(resource, "setrlimit", lambda _, new: limits.append(new))
    assert fdbudget.raise_limit() == 524288
    assert limits[-1] == (524288, 524288)
    assert fdbudget.raise_limit() == 524288  # already there: nothing to do
    assert len(limits) == 2


def test_worker_threads_count_in_the_budget() -> None:
    """Each worker thread's loop holds an epoll and a self-pipe (found by review: 64
    workers opened 198 descriptors, beyond RESERVE)."""
    assert fdbudget.need(1, 10, workers=64) == fdbudget.need(1, 10) + 64 * fdbudget.WORKER_FDS
    limit = fdbudget.need(1, 10)
    fdbudget.check("params", "vm10", 1, 10, limit)
    with pytest.raises(FdBudget, match="per worker thread"):
        fdbudget.check("params", "vm10", 1, 10, limit, workers=2)
