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
from typing import Any

import orjson

FLUSH_SECONDS = 0.1


def event_message(name: str, **fields: str) -> str:
    """A log message that the JSON log formatter merges into its line as fields."""
    return orjson.dumps({"event": name, **fields}).decode()


class EventLog:
    def __init__(self, fd: int | None = None) -> None:
        self._fd = sys.stdout.fileno() if fd is None else fd
        self._pending = bytearray()
        self._second = -1
        self._stamp = ""

    def write(self, head: bytes, fields: dict[str, Any]) -> None:
        """One line: `head`, an encoded JSON object without its closing brace, plus `fields`."""
        fields["time"] = self._now()
        self._pending += head + b"," + orjson.dumps(fields)[1:] + b"\n"

    def flush(self) -> None:
        data, self._pending = bytes(self._pending), bytearray()
        while data:
            data = data[os.write(self._fd, data) :]

    def _now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"
