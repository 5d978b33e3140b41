"""Load generation for bench.admission: ``wrk`` POSTing one body over keep-alive connections."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass

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
