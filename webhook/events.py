"""One JSON line per admission on stdout, cheaply enough to sit on every Pod creation.

The stdlib logging machinery costs more per line than reviewing a Pod does, so
admission events are written directly; lines written within one event-loop
turn are flushed together.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import IO, Any

import orjson


class EventLog:
    def __init__(self, stream: IO[bytes] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout.buffer
        self._flush_pending = False

    def write(self, fields: dict[str, Any]) -> None:
        line = {"time": _now(), "level": "info", "logger": "image_backup.admission", **fields}
        self._stream.write(orjson.dumps(line) + b"\n")
        if self._flush_pending:
            return
        try:
            asyncio.get_running_loop().call_soon(self._flush)
            self._flush_pending = True
        except RuntimeError:  # no loop: flush now
            self._stream.flush()

    def _flush(self) -> None:
        self._flush_pending = False
        self._stream.flush()


def _now() -> str:
    seconds = time.time()
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        + f".{int(seconds % 1 * 1000):03d}Z"
    )
