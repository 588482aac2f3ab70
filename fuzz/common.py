"""What the harnesses share: input slicing and the invariant failure."""

from __future__ import annotations

import logging


class InvariantBroken(AssertionError):
    """A harness invariant failed: atheris reports it as a crash."""


def check(cond: bool, what: str) -> None:
    if not cond:
        raise InvariantBroken(what)


def quiet() -> None:
    """Warnings for hostile input are expected by the thousand: keep the output for the fuzzer."""
    logging.disable(logging.CRITICAL)


class Reader:
    """Consume a fuzz input piece by piece; running out yields zeros/empty."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def u8(self) -> int:
        b = self.take(1)
        return b[0] if b else 0

    def u16(self) -> int:
        return int.from_bytes(self.take(2).ljust(2, b"\0"), "little")


class _Timer:
    def cancel(self) -> None:
        pass


class IdleLoop:
    """Just enough of an event loop for the data path (a ``daemon.seams.Loop``) and the
    topology when nothing runs it: readers, callbacks and timers are accepted and never fire."""

    def add_reader(self, *args: object) -> None:
        pass

    def remove_reader(self, *args: object) -> bool:
        return False

    def call_soon(self, *args: object) -> None:
        pass

    def call_later(self, *args: object) -> _Timer:
        return _Timer()


class WireSink:
    """A ``daemon.seams.UplinkPort`` with no wire: nothing arrives, every frame sent is
    kept in ``sent`` and Python sends each one (no batch descriptor for the C path)."""

    master = "fuzz"
    ifindex = 0

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def fileno(self) -> int:
        return -1

    def batch_fd(self) -> int:
        return -1

    def batch_rx(self) -> int:
        return self.batch_fd()

    def recv(self, buf: memoryview) -> int:
        return 0

    def close(self) -> None:
        pass

    def send(self, buf: memoryview, length: int) -> bool:
        self.sent.append(bytes(buf[:length]))
        return True
