"""Polling helper used by the tests instead of fixed sleeps."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
    *,
    fatal: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` until it returns a truthy value and return that value.

    Raises ``TimeoutError`` naming ``what`` (and the last exception the predicate raised,
    if any) when ``timeout`` seconds pass first. The predicate is always tried at least
    once, and once more at the deadline. Exceptions of a ``fatal`` type (say, "the
    process being waited on died") are not retried but propagate at once. A predicate
    that consumes something (frames from a ring) must keep it before anything that can
    raise looks at it: the call is retried and what it took would be gone.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        final = time.monotonic() >= deadline
        try:
            result = predicate()
        except fatal:
            raise
        except Exception as exc:
            last_exc = exc
        else:
            if result:
                return result
            last_exc = None
        if final:
            break
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))
    msg = f"timed out after {timeout:g} s waiting for {what}"
    if last_exc is not None:
        msg += f" (last error: {type(last_exc).__name__}: {last_exc})"
        raise TimeoutError(msg) from last_exc
    raise TimeoutError(msg)
