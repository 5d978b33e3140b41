"""Load generation for bench.admission: one body POSTed over keep-alive TLS connections.

* ``run_wrk``: ``wrk``, as fast as the server answers (closed loop), for req/s and latency.
* ``run_paced`` (``python -m bench.load``, a process of its own): a constant rate (open loop,
  as wrk2 paces): request i is due at start + i/rate and its latency runs from then, so a
  stalled server shows in the latency of every request that was due meanwhile, not only in
  the one it held (no coordinated omission). It prints one JSON line: requests, errors and
  the latencies' p50, p99 and maximum.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

import uvloop

# wrk runs this in each of its threads; `done` runs once at the end, in the main thread, and
# prints the summary as one JSON line (latencies in microseconds).
_SCRIPT = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local file = assert(io.open([==[{body_file}]==], "rb"))
wrk.body = file:read("*a")
file:close()

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{marker}{{"requests": %d, "duration_us": %d, "socket_errors": %d, "non_2xx": %d, '
      .. '"p50_us": %d, "p99_us": %d}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""
_MARKER = "BENCH-SUMMARY "


@dataclass(frozen=True)
class Load:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def write_script(body_file: str) -> str:
    """A Lua script next to ``body_file`` that POSTs it as JSON; returns its path."""
    script = os.path.splitext(body_file)[0] + ".lua"
    with open(script, "w") as f:
        f.write(_SCRIPT.format(body_file=os.path.abspath(body_file), marker=_MARKER))
    return script


def run_wrk(url: str, script: str, *, connections: int, threads: int, seconds: float) -> Load:
    """One wrk run; raises if any request failed (socket error, timeout or non-2xx status)."""
    argv = ["wrk", "--latency", "-t", str(threads), "-c", str(connections)]
    argv += ["-d", f"{seconds:g}s", "-s", script, url]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(_MARKER)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    summary = json.loads(lines[-1].removeprefix(_MARKER))
    if summary["socket_errors"] or summary["non_2xx"] or not summary["requests"]:
        raise RuntimeError(f"{' '.join(argv)}: failed requests:\n{proc.stdout}")
    return Load(
        requests=summary["requests"],
        seconds=summary["duration_us"] / 1e6,
        p50_ms=summary["p50_us"] / 1e3,
        p99_ms=summary["p99_us"] / 1e3,
    )


@dataclass(frozen=True)
class Paced:
    requests: int
    errors: int  # connection failures, timeouts, and answers other than an allowed 200
    p50_ms: float
    p99_ms: float
    max_ms: float
    first_error: str = ""


def run_paced(
    url: str, body_file: str, ca_file: str, *, rate: float, seconds: float, connections: int
) -> Paced:
    """``python -m bench.load`` in a process of its own (it must not share our CPU time)."""
    argv = [sys.executable, "-m", "bench.load", url, body_file, "--ca-file", ca_file]
    argv += ["--rate", f"{rate:g}", "--seconds", f"{seconds:g}"]
    argv += ["--connections", str(connections)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return Paced(**json.loads(proc.stdout.splitlines()[-1]))


class _Connection:
    """One keep-alive HTTPS connection speaking just enough HTTP/1.1 for POST /mutate."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, request: bytes) -> None:
        self._address = (host, port)
        self._context = context
        self._request = request
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self) -> bytes:
        """The answer's body; raises on a failed exchange (the connection is then dropped)."""
        if self._streams is None:
            host, port = self._address
            self._streams = await asyncio.open_connection(host, port, ssl=self._context)
        reader, writer = self._streams
        try:
            writer.write(self._request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1]
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            answer = await reader.readexactly(length)
        except BaseException:
            self.close()
            raise
        if status != b"200" or b'"allowed":true' not in answer:
            raise RuntimeError(f"HTTP {status.decode()}: {answer[:200]!r}")
        return answer

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


async def _paced(
    url: str, body: bytes, context: ssl.SSLContext, rate: float, seconds: float, connections: int
) -> Paced:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    request = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    due: asyncio.Queue[float | None] = asyncio.Queue()
    latencies: list[float] = []
    errors: list[str] = []

    async def worker() -> None:
        connection = _Connection(parts.hostname or "", parts.port or 443, context, request)
        while (at := await due.get()) is not None:
            try:
                async with asyncio.timeout(10):
                    await connection.post()
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            latencies.append(time.perf_counter() - at)
        connection.close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    total = int(rate * seconds)
    start = time.perf_counter()
    for i in range(total):
        at = start + i / rate
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        due.put_nowait(at)
    for _ in workers:
        due.put_nowait(None)
    await asyncio.gather(*workers)
    ordered = sorted(latencies)
    return Paced(
        requests=len(ordered),
        errors=len(errors),
        p50_ms=ordered[len(ordered) // 2] * 1e3,
        p99_ms=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3,
        max_ms=ordered[-1] * 1e3,
        first_error=errors[0][:300] if errors else "",
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    parser.add_argument("url", help="https://HOST:PORT/PATH")
    parser.add_argument("body_file", help="the JSON body to POST")
    parser.add_argument("--ca-file", required=True)
    parser.add_argument("--rate", type=float, default=1000, help="requests per second")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    context = ssl.create_default_context(cafile=args.ca_file)
    with open(args.body_file, "rb") as f:
        body = f.read()
    paced = uvloop.run(_paced(args.url, body, context, args.rate, args.seconds, args.connections))
    print(json.dumps(asdict(paced)), flush=True)


if __name__ == "__main__":
    main()
