"""Structured event lines: one JSON line per admission on stdout, cheaply enough to sit
on every Pod creation, and the message form of the server's rarer events.

The stdlib logging machinery costs more per line than reviewing a Pod does, so
admission events are written directly, in batches: the caller writes lines and
flushes them together (every FLUSH_SECONDS), whatever buffering stdout has.
"""

from __future__ import annotations

import os
import sys
import time

import orjson

FLUSH_SECONDS = 0.02


def event_message(name: str, **fields: str) -> str:
    """A log message that the JSON log formatter merges into its line as fields."""
    return orjson.dumps({"event": name, **fields}).decode()


class Throttle:
    """Yes at most once every `seconds`: for a warning a retry loop would otherwise repeat
    on every try."""

    def __init__(self, seconds: float = 60.0) -> None:
        self._seconds = seconds
        self._last = -float("inf")

    def due(self) -> bool:
        now = time.monotonic()
        if now - self._last < self._seconds:
            return False
        self._last = now
        return True


class EventLog:
    def __init__(self, fd: int | None = None) -> None:
        self._fd = sys.stdout.fileno() if fd is None else fd
        self._pending = bytearray()
        self._second = -1
        self._stamp = b""

    def write(self, head: bytes, uid: bytes, name: str, seconds: float, at: float) -> None:
        """One admission's line.

        `head` holds the fields identical admissions share, encoded once (a JSON object
        without its closing brace); `uid` is encoded already; `at` is the wall-clock time the
        admission was answered.
        """
        second = int(at)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        self._pending += _LINE % (
            head,
            uid,
            orjson.dumps(name),
            seconds * 1000,
            self._stamp,
            int((at - second) * 1000),
        )

    def flush(self) -> None:
        data, self._pending = bytes(self._pending), bytearray()
        while data:
            data = data[os.write(self._fd, data) :]


_LINE = b'%s,"uid":%s,"object":%s,"durationMs":%.3f,"time":"%s.%03dZ"}\n'
