from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--conformance-update", action="store_true", default=False,
        help="conformance suite: run the kernel side for every mode x flag (also those vhost-ipvlan refuses) "
             "and rewrite docs/conformance-results.json with what was observed",
    )
