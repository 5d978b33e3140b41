"""One JSON line per admission on stdout, cheaply enough to sit on every Pod creation.

The stdlib logging machinery costs more per line than reviewing a Pod does, so
admission events are written directly: lines gather in a buffer and go out
together every FLUSH_SECONDS (and at exit), whatever buffering stdout has.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import orjson

FLUSH_SECONDS = 0.1


class EventLog:
    def __init__(self, fd: int | None = None) -> None:
        self._fd = sys.stdout.fileno() if fd is None else fd
        self._pending = bytearray()
        self._second = -1
        self._stamp = ""

    def write(self, head: bytes, fields: dict[str, Any]) -> None:
        """One line: `head`, an encoded JSON object without its closing brace, plus `fields`."""
        fields["time"] = self._now()
        flush_now = False
        if not self._pending:
            try:
                asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
            except RuntimeError:  # no event loop: nothing would flush later
                flush_now = True
        self._pending += head + b"," + orjson.dumps(fields)[1:] + b"\n"
        if flush_now:
            self.flush()

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
