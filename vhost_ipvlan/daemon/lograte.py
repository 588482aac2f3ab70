"""Rate-limited log lines: a token bucket per key (say, a slave's name).

A front-end that reconnects in a loop after each protocol error, or a process
that keeps connecting to a busy socket, must not flood the log.

Rules:
- Each key may log ``burst`` lines at once, then one more every ``interval``
  seconds; lines beyond that are suppressed and counted.
- The next line logged for that key says how many were suppressed before it.
- A suppressed line still goes to DEBUG, marked "(rate-limited)": with
  ``--log-level debug`` nothing is lost (the operator asked for everything; the
  tests count lines there), at the default level the budget holds.
- At most ``max_keys`` keys are remembered (the least recently used is forgotten),
  so the limiter's memory is bounded whatever the keys.
- A line given no args is text, not a format (as with ``Logger.log``): a ``%`` in it
  is kept as it is, also in the lines this module adds a count or a mark to.
- A limiter given no ``clock`` reads the module's ``_clock`` at each line (a test
  sets it to move every limiter's time at once).
- Which lines go through a limiter: every line a front-end or guest can make the
  daemon log again and again (README, "A hostile front-end"), keyed by the
  slave's name (with the kind of event, or the ring, where one normal connection
  logs several).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

_clock: Callable[[], float] = time.monotonic  # the limiters' clock unless given one


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float
    suppressed: int = 0


class RateLimitedLog:
    """``log(key, level, msg, *args)`` like ``Logger.log``, within a budget per key."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 5,
        interval: float = 10.0,
        max_keys: int = 1024,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def log(self, key: str, level: int, msg: str, *args: object, exc_info: bool = False) -> bool:
        """Log the line if ``key``'s budget allows; True if it was logged at ``level``
        (``exc_info``: with the exception being handled, as ``Logger.exception``)."""
        if not self.logger.isEnabledFor(level):
            return False
        if not args:  # text, not a format: what this module appends must not make it one
            msg, args = "%s", (msg,)
        now = self.clock() if self.clock is not None else _clock()
        with self._lock:  # worker threads share the module-level limiters (daemon/workers.py)
            b = self._buckets.get(key)
            if b is None:
                b = self._buckets[key] = _Bucket(float(self.burst), now)
                while len(self._buckets) > self.max_keys:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
                b.tokens = min(float(self.burst), b.tokens + (now - b.stamp) / self.interval)
                b.stamp = now
            allowed = b.tokens >= 1.0
            if allowed:
                b.tokens -= 1.0
                suppressed, b.suppressed = b.suppressed, 0
            else:
                b.suppressed += 1
        if not allowed:
            if level > logging.DEBUG and self.logger.isEnabledFor(logging.DEBUG):
                self.logger.log(logging.DEBUG, msg + " (rate-limited)", *args)
            return False
        if suppressed:
            msg += " (%d earlier lines suppressed)"
            args = (*args, suppressed)
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True
