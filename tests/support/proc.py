"""Stopping the processes the tests start."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Any


def stop_process(
    proc: subprocess.Popen[Any],
    timeout: float,
    *,
    kill_timeout: float = 10,
    group: bool = False,
) -> None:
    """SIGTERM ``proc`` and wait up to ``timeout`` s; then SIGKILL, wait ``kill_timeout`` s.

    Nothing happens if it has already exited. ``group`` signals its whole process
    group (for processes started with ``start_new_session=True``). Raises
    ``subprocess.TimeoutExpired`` if it outlives the SIGKILL wait.
    """
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, kill_timeout)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            if sig == signal.SIGKILL:
                raise
