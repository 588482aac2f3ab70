"""The C accelerator is built wherever a compiler is (the setup installs one).

It is optional at install time (a machine without a compiler still gets a working,
slower daemon), so without this test a failed build would only show as a slow bench.
"""

from __future__ import annotations

import os

import pytest

from vhost_ipvlan.daemon import fastpath, host


@pytest.mark.skipif(os.environ.get("VHOST_IPVLAN_PURE") == "1", reason="pure Python requested")
def test_accelerator_is_built() -> None:
    assert fastpath.accelerated(), "vhost_ipvlan._fastpath did not build: see pip's output from scripts/setup"


def test_sigbus_guard_is_built() -> None:
    assert host.guarded(), "vhost_ipvlan._guard did not build: see pip's output from scripts/setup"
