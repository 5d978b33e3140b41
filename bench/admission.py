"""Benchmark: the admission webhook over TLS, hot and cold paths (``python -m bench.admission``).

Set-up: a plain-HTTP source registry serving Docker Hub's names (``registries: [{host:
docker.io, endpoint: http://...}]``), a TLS + htpasswd backup registry (real Distribution,
from tests.support), and the real webhook as a subprocess (``python -m webhook serve``).

Hot path. After one warm-up admission of the sample Deployment (nginx:1.25, busybox:1.36),
which copies both images, wrk POSTs one body over keep-alive TLS connections at each
concurrency, to ours and, side by side, to bench.bare: an aiohttp server with the same TLS
set-up under uvloop that only parses the review and allows it (the ceiling). Bodies:

* ``cached``: the sample as it is, answered from the result cache with a JSON patch (a
  controller re-applying a template whose backups exist);
* ``rewritten``: the sample with the warm-up patch applied, its images pinned backups,
  answered without a patch (every Pod created from an already rewritten template);
* ``trigger``: on OpenShift (ours reading the fake API server, with an ImageStream), the
  image trigger controller's UPDATE of a DeploymentConfig that writes the stream's image
  over the backup the webhook rewrote it to, as the controller does at every ImageStream
  event; answered from memory with the patch back to the backup (no write follows).

Load. The ``cached`` body at a constant 1,000 admissions/s for 60 s (``python -m bench.load``,
a paced client in a process of its own: latency from each request's due time, so a stall
shows in every request due meanwhile), after 5 s of the same load not counted. Backups of
tags live ``copy.tagCacheSeconds`` = 10 s in this run, so the load crosses six lifetimes of
each backup: each is re-checked in the background while admissions are answered from memory.
Reported: errors, p50/p99/max latency, and the server's RSS before and after the 60 s; the
same load on bench.bare first, as what a busy machine adds by itself.

Cold path. One admission of a Deployment whose single image (5x20 MB, fresh content) was
never backed up, timed as the round trip of the POST to /mutate on an open connection,
against ``skopeo copy`` of another fresh image of the same size between the same registries
(a whole process, cold blob-info cache, as bench.copy runs it); the two alternate in order.
The same long-running webhook serves every repetition, as it would in a cluster, and each
repetition admits an image repository of its own with content of its own (its own seed), so
nothing of it is in the result cache, in the engine's knowledge of blob locations or in the
backup registry. Both copies are checked with ``skopeo inspect``.

Exit status 1 if a bar fails. MB are MiB.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import functools
import http.client
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonpatch
import orjson

from bench.copy import scratch_dir, skopeo_copy, stop_on_termination
from bench.load import Load, Paced, run_paced, run_wrk, write_script
from tests.admission_helpers import SAMPLES
from tests.support.fakekube import IMAGE_STREAMS, FakeKube
from tests.support.images import make_image, push
from tests.support.registries import Registry, free_port, start_registry
from tests.support.skopeo import inspect_raw_digest
from tests.support.tls import TLSFiles, generate_tls

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = SAMPLES / "deployment-create.json"
MB = 1 << 20
HOT_IMAGES = {"library/nginx": ("1.25", 101), "library/busybox": ("1.36", 102)}  # tag, seed
COLD_LAYERS = (20 * MB,) * 5
CONCURRENCIES = (16, 64)
WRK_THREADS = 2
# Per concurrency: ours >= this share of bare's req/s, and ours' p99 at most (ms; None: no bar).
BARS: dict[int, tuple[float, float | None]] = {16: (0.8, 5.0), 64: (0.85, None)}
PROFILED_CONCURRENCY = 16
TAG_CACHE_SECONDS = 10
LOAD_RATE, LOAD_SECONDS, LOAD_WARM_SECONDS, LOAD_CONNECTIONS = 1000, 60, 5, 8
BAR_LOAD_P99_MS, BAR_LOAD_MAX_MS, BAR_LOAD_RSS_MB = 3.0, 20.0, 8.0
COLD_SLACK_SECONDS = 0.100
PREFIX = "backup"  # where ours puts backups in the backup registry; skopeo copies elsewhere
OPENSHIFT_OBJECTS = SAMPLES.parent / "openshift"
OPENSHIFT_NAMESPACE = "bench"


@dataclass(frozen=True)
class Medians:
    """Each figure is the median over a row's runs, taken separately: a single disturbed
    run does not decide a row."""

    rate: float
    p50_ms: float
    p99_ms: float

    @classmethod
    def of(cls, loads: list[Load]) -> Medians:
        return cls(
            statistics.median(load.rate for load in loads),
            statistics.median(load.p50_ms for load in loads),
            statistics.median(load.p99_ms for load in loads),
        )


@dataclass(frozen=True)
class HotRow:
    body: str
    concurrency: int
    bare: Medians
    ours: Medians
    bare_cpu_us: float  # the server's CPU time (user + system) per request
    ours_cpu_us: float

    @property
    def ratio(self) -> float:
        return self.ours.rate / self.bare.rate

    def verdict(self) -> str:
        if self.concurrency not in BARS:
            return ""
        ratio, p99_ms = BARS[self.concurrency]
        misses = [
            *(["req/s"] if self.ratio < ratio else []),
            *(["p99"] if p99_ms is not None and self.ours.p99_ms > p99_ms else []),
        ]
        return f"FAIL ({', '.join(misses)})" if misses else "PASS"


@dataclass(frozen=True)
class LoadRow:
    load: Paced
    rss_before_mb: float
    rss_after_mb: float
    bare: Paced  # the same load on the bare server: what the machine itself adds

    def verdict(self) -> str:
        load = self.load
        misses = [
            *(["errors"] if load.errors else []),
            *(["p99"] if load.p99_ms > BAR_LOAD_P99_MS else []),
            *(["max"] if load.max_ms > BAR_LOAD_MAX_MS else []),
            *(["RSS"] if self.rss_after_mb - self.rss_before_mb > BAR_LOAD_RSS_MB else []),
        ]
        return f"FAIL ({', '.join(misses)})" if misses else "PASS"


class Server:
    """An HTTPS server subprocess on 127.0.0.1:``port``, its output in ``work``."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        port: int,
        ca_file: str,
        work: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name, self.port = name, port
        self.url = f"https://127.0.0.1:{port}/mutate"
        self.log_file = os.path.join(work, f"{name}.log")
        self._context = ssl.create_default_context(cafile=ca_file)
        with open(self.log_file, "wb") as log:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
                start_new_session=True,  # Ctrl-C reaches us only; stop() ends it
            )

    def _connection(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self._context, timeout=120
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.tail()}"
                )
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self.get("/readyz")[0] == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s:\n{self.tail()}")
            time.sleep(0.1)

    def get(self, path: str) -> tuple[int, bytes]:
        conn = self._connection()
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def post(self, body: bytes) -> tuple[dict[str, Any], float]:
        """POST /mutate on a fresh connection: the answer and the round trip (TLS set up first)."""
        conn = self._connection()
        try:
            conn.connect()
            start = time.perf_counter()
            conn.request("POST", "/mutate", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            seconds = time.perf_counter() - start
        finally:
            conn.close()
        if resp.status != 200:
            raise RuntimeError(f"{self.name}: /mutate answered {resp.status}: {data[:500]!r}")
        answer: dict[str, Any] = orjson.loads(data)
        return answer, seconds

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"{self.name}: no VmRSS")

    def cpu_seconds(self) -> float:
        """User + system CPU time the server has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def tail(self, limit: int = 4000) -> str:
        return Path(self.log_file).read_text(errors="replace")[-limit:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_ours(
    work: str,
    source: Registry,
    backup: Registry,
    cert: str,
    key: str,
    ca_file: str,
    *,
    name: str = "ours",
    env: dict[str, str] | None = None,
) -> Server:
    assert backup.ca_file is not None
    port = free_port()
    config = {
        "backupRegistry": {"host": backup.host, "prefix": PREFIX, "caFile": backup.ca_file},
        "registries": [{"host": "docker.io", "endpoint": source.url, "insecure": True}],
        "credentials": {"dockerConfig": backup.docker_config},
        "server": {"port": port, "certFile": cert, "keyFile": key},
        "admissionBudgetSeconds": 60,  # the cold admission must finish its copy within it
        # Short, so every run crosses backups' lifetimes: each is re-checked in the
        # background, and no admission waits for that.
        "copy": {"tagCacheSeconds": TAG_CACHE_SECONDS},
        "backfill": {"intervalSeconds": 0},  # admissions only
    }
    path = os.path.join(work, f"{name}.yaml")
    with open(path, "wb") as f:
        f.write(orjson.dumps(config))  # JSON is YAML
    argv = [sys.executable, "-m", "webhook", "serve", "--config", path]
    return Server(name, argv, port, ca_file, work, env)


def start_openshift(
    work: str, stack: contextlib.ExitStack, source: Registry, backup: Registry, tls: TLSFiles
) -> tuple[Server, bytes]:
    """Ours in an OpenShift cluster (the fake API server, ImageStream `app` importing
    nginx:1.25), and the trigger's repeated UPDATE of a DeploymentConfig: the body the image
    trigger controller sends again at every ImageStream event once the webhook has
    rewritten the image it wrote (the hot path of a triggered workload)."""
    kube = FakeKube.start(openshift=True)
    stack.callback(kube.stop)
    kubeconfig = kube.write_kubeconfig(os.path.join(work, "kubeconfig"), OPENSHIFT_NAMESPACE)
    repository, (tag, _) = next(iter(HOT_IMAGES.items()))
    hub = f"docker.io/{repository}"
    digest = inspect_raw_digest(source, f"{repository}:{tag}")
    stream = orjson.loads((OPENSHIFT_OBJECTS / "imagestream-with-history.json").read_bytes())
    stream["metadata"]["namespace"] = OPENSHIFT_NAMESPACE
    stream["spec"]["tags"] = [
        {"name": "v1", "from": {"kind": "DockerImage", "name": f"{hub}:{tag}"}}
    ]
    stream["status"]["tags"] = [
        {"tag": "v1", "items": [{"created": "2026-11-30T17:11:05Z",
         "dockerImageReference": f"{hub}@{digest}", "image": digest, "generation": 1}]}
    ]  # fmt: skip
    kube.store.create(IMAGE_STREAMS, OPENSHIFT_NAMESPACE, stream)
    env = {"KUBECONFIG": kubeconfig, "POD_NAMESPACE": "image-backup", "POD_NAME": "bench"}
    ours = start_ours(
        work, source, backup, tls.cert_file, tls.key_file, tls.ca_file, name="openshift", env=env
    )
    stack.callback(ours.stop)
    ours.wait_ready()
    review = orjson.loads(
        (SAMPLES / "openshift/deploymentconfig-update-by-image-trigger.json").read_bytes()
    )
    request = review["request"]
    request["namespace"] = OPENSHIFT_NAMESPACE
    for obj in (request["object"], request["oldObject"]):
        obj["metadata"]["namespace"] = OPENSHIFT_NAMESPACE
        params = obj["spec"]["triggers"][1]["imageChangeParams"]
        params["from"] = {
            "kind": "ImageStreamTag",
            "namespace": OPENSHIFT_NAMESPACE,
            "name": "app:v1",
        }
    written = f"{hub}@{digest}"
    request["object"]["spec"]["triggers"][1]["imageChangeParams"]["lastTriggeredImage"] = written
    containers(review)[0]["image"] = written
    patch = check(ours.post(orjson.dumps(review))[0], request["uid"], patched=True)
    stored = jsonpatch.apply_patch(request["object"], patch)
    if not containers({"request": {"object": stored}})[0]["image"].endswith(f":{tag}@{digest}"):
        raise RuntimeError(f"the trigger's image was not rewritten to its tagged backup: {stored}")
    request["oldObject"] = stored
    again = orjson.dumps(review)
    if (
        jsonpatch.apply_patch(
            request["object"], check(ours.post(again)[0], request["uid"], patched=True)
        )
        != stored
    ):
        raise RuntimeError("the repeated UPDATE was not answered with the stored object")
    return ours, again


def check(answer: dict[str, Any], uid: str, *, patched: bool) -> list[dict[str, Any]]:
    """The patch of an allowed answer to ``uid`` (raises unless it has one iff ``patched``)."""
    response = answer.get("response") or {}
    if response.get("uid") != uid or response.get("allowed") is not True:
        raise RuntimeError(f"unexpected answer to {uid}: {answer}")
    if patched != ("patch" in response):
        raise RuntimeError(f"expected {'a' if patched else 'no'} patch: {answer}")
    patch: list[dict[str, Any]] = orjson.loads(base64.b64decode(response.get("patch", "W10=")))
    return patch


def warm_up(ours: Server, sample: dict[str, Any]) -> dict[str, bytes]:
    """Copy the sample's images (first admission); the two hot-path bodies, each verified."""
    uid, cached = sample["request"]["uid"], orjson.dumps(sample)
    patch = check(ours.post(cached)[0], uid, patched=True)
    rewritten = copy.deepcopy(sample)
    rewritten["request"]["object"] = jsonpatch.apply_patch(sample["request"]["object"], patch)
    images = [c["image"] for c in containers(rewritten)]
    if not all(f"/{PREFIX}/docker.io/library/" in i and "@sha256:" in i for i in images):
        raise RuntimeError(f"the warm-up did not pin backups: {images}")
    bodies = {"cached": cached, "rewritten": orjson.dumps(rewritten)}
    for name, body in bodies.items():  # as wrk will send them: cached now, so fast
        check(ours.post(body)[0], uid, patched=name == "cached")
    return bodies


def containers(review: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod template's containers of the Deployment in ``review`` (the list itself)."""
    pod: dict[str, Any] = review["request"]["object"]["spec"]["template"]["spec"]
    found: list[dict[str, Any]] = pod["containers"]
    return found


@contextlib.contextmanager
def profiled(server: Server, out: str | None, seconds: float) -> Iterator[None]:
    """py-spy records ``server`` meanwhile, if ``out`` is given."""
    if out is None:
        yield
        return
    argv = [str(Path(sys.executable).with_name("py-spy")), "record", "-r", "250"]
    argv += ["-p", str(server.process.pid), "-d", str(max(1, int(seconds) - 1))]
    argv += ["-f", "raw", "-o", out]
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
        spy.wait(timeout=30)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    done = "" if spy.returncode == 0 and os.path.exists(out) else " FAILED"
    print(f"  profile of {server.name}: {out}{done}", file=sys.stderr)


def hot_path(
    servers: tuple[Server, Server],
    bodies: dict[str, bytes],
    work: str,
    seconds: float,
    reps: int,
    profile: str | None,
) -> list[HotRow]:
    """Each (body, concurrency) `reps` times, the servers alternating; rows hold medians.

    One run says little on a shared 2-CPU machine; each figure of a row is the median of
    its runs.
    """
    rows, runs = [], 0
    for name, body in bodies.items():
        body_file = os.path.join(work, f"{name}.json")
        Path(body_file).write_bytes(body)
        script = write_script(body_file)
        for concurrency in CONCURRENCIES:
            loads: dict[str, list[Load]] = {server.name: [] for server in servers}
            cpu: dict[str, list[float]] = {server.name: [] for server in servers}
            for rep in range(reps):
                for server in servers if runs % 2 == 0 else servers[::-1]:  # alternating order
                    out = None
                    if profile and concurrency == PROFILED_CONCURRENCY and rep == 0:
                        out = os.path.join(profile, f"{server.name}-{name}.txt")
                    with profiled(server, out, seconds):
                        start = server.cpu_seconds()
                        load = run_wrk(
                            server.url,
                            script,
                            connections=concurrency,
                            threads=WRK_THREADS,
                            seconds=seconds,
                        )
                    used = (server.cpu_seconds() - start) / load.requests * 1e6
                    loads[server.name].append(load)
                    cpu[server.name].append(used)
                    print(
                        f"  {name:<9} c={concurrency:<3} {server.name:<4} {load.rate:9.0f} req/s"
                        f"  p50 {load.p50_ms:.2f} ms  p99 {load.p99_ms:.2f} ms"
                        f"  CPU {used:.0f} us/req",
                        file=sys.stderr,
                    )
                runs += 1
            bare, ours = (server.name for server in servers)
            rows.append(
                HotRow(
                    name,
                    concurrency,
                    Medians.of(loads[bare]),
                    Medians.of(loads[ours]),
                    statistics.median(cpu[bare]),
                    statistics.median(cpu[ours]),
                )
            )
    return rows


def admit_cold(
    ours: Server, sample: dict[str, Any], backup: Registry, image: str, digest: str
) -> float:
    """Admit a Deployment of ``image``: the round trip; checks the backup is ``digest``."""
    review = copy.deepcopy(sample)
    uid = review["request"]["uid"] = str(uuid.uuid4())
    containers(review)[:] = [{"name": "app", "image": image}]
    answer, seconds = ours.post(orjson.dumps(review))
    patch = check(answer, uid, patched=True)
    [backup_ref] = [op["value"] for op in patch if op["path"].endswith("/image")]
    tagged, _, pinned = backup_ref.partition("@")
    if pinned != digest or inspect_raw_digest(backup, tagged) != digest:
        raise RuntimeError(f"ours: {backup_ref} is not the source's {digest}")
    return seconds


def skopeo_cold(
    source: Registry, backup: Registry, src: str, dst: str, digest: str, work: str
) -> float:
    """``skopeo copy`` as bench.copy runs it: its wall time; checks the copy is ``digest``."""
    run = skopeo_copy(source, src, backup, dst, all_images=False, work=work)
    if inspect_raw_digest(backup, dst) != digest:
        raise RuntimeError(f"skopeo: {backup.host}/{dst} is not the source's {digest}")
    return run.seconds


def cold_path(
    ours: Server,
    sample: dict[str, Any],
    source: Registry,
    backup: Registry,
    work: str,
    reps: int,
) -> dict[str, list[float]]:
    """Seconds per repetition, of "ours" (admission round trips) and "skopeo" (processes)."""
    cold: dict[str, list[float]] = {"ours": [], "skopeo": []}
    cache = os.path.join(work, "images")
    for rep in range(reps):
        ours_image = make_image(cache, COLD_LAYERS, seed=1000 + 2 * rep, fmt="oci")
        skopeo_image = make_image(cache, COLD_LAYERS, seed=1001 + 2 * rep, fmt="oci")
        push(source.backdoor_url, f"library/cold-{rep}", "v1", ours_image)
        push(source.backdoor_url, f"src/cold-{rep}", "v1", skopeo_image)
        steps = {
            "ours": functools.partial(
                admit_cold, ours, sample, backup, f"cold-{rep}:v1", ours_image.digest
            ),
            "skopeo": functools.partial(
                skopeo_cold,
                source,
                backup,
                f"src/cold-{rep}:v1",
                f"skopeo/cold-{rep}:v1",
                skopeo_image.digest,
                work,
            ),
        }
        for tool in steps if rep % 2 == 0 else reversed(steps):  # alternating order
            seconds = steps[tool]()
            cold[tool].append(seconds)
            print(f"  cold rep {rep + 1} {tool:<6} {seconds:7.3f} s", file=sys.stderr)
    return cold


def report_hot(rows: list[HotRow], seconds: float, reps: int) -> bool:
    """Print the hot-path table; True if every bar passes."""
    print(
        f"\nhot path: wrk --latency, {WRK_THREADS} threads, {seconds:g} s per run, median of "
        f"{reps} alternating runs per row, keep-alive "
        f"TLS connections = concurrency;\nwrk shares the machine's {os.cpu_count()} CPUs with "
        "the server under test (the same for both servers)\n"
    )
    columns = f"{'req/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'CPU us':>6}"
    print(f"{'':<17}{'bare':-^33}  {'ours':-^33}")
    head = f"{'body':<10} {'conc':>4}  {columns}  {columns}  {'ours/bare':>9}  result"
    print(head)
    print("-" * len(head))
    ok = True
    for r in rows:
        verdict = r.verdict()
        ok &= not verdict.startswith("FAIL")
        cells = [
            f"{load.rate:>10.0f} {load.p50_ms:>7.2f} {load.p99_ms:>7.2f} {cpu:>6.0f}"
            for load, cpu in ((r.bare, r.bare_cpu_us), (r.ours, r.ours_cpu_us))
        ]
        print(
            f"{r.body:<10} {r.concurrency:>4}  {cells[0]}  {cells[1]}  {r.ratio:>9.2f}  {verdict}"
        )
    print(
        "bar (each body): "
        + "; ".join(
            f"concurrency {c}: ours >= {ratio}x bare req/s"
            + (f" and ours p99 <= {p99:g} ms" if p99 is not None else "")
            for c, (ratio, p99) in BARS.items()
        )
        + "\nCPU us: the server's CPU time (user + system) "
        "per request, in microseconds"
    )
    return ok


def load_row(servers: tuple[Server, Server], body: bytes, work: str, ca_file: str) -> LoadRow:
    """The paced load on bare, then on ours: each after a warm-up not counted."""
    body_file = os.path.join(work, "load.json")
    Path(body_file).write_bytes(body)
    common = {"rate": LOAD_RATE, "connections": LOAD_CONNECTIONS}
    loads, rss = {}, {}
    for server in servers:
        run_paced(server.url, body_file, ca_file, seconds=LOAD_WARM_SECONDS, **common)
        before = server.rss_mb()
        load = run_paced(server.url, body_file, ca_file, seconds=LOAD_SECONDS, **common)
        loads[server.name], rss[server.name] = load, (before, server.rss_mb())
        print(
            f"  load {server.name:<4} {load.requests} requests, {load.errors} errors, p50"
            f" {load.p50_ms:.2f} ms p99 {load.p99_ms:.2f} ms max {load.max_ms:.2f} ms, RSS"
            f" {before:.1f} -> {server.rss_mb():.1f} MB {load.first_error}",
            file=sys.stderr,
        )
    return LoadRow(loads["ours"], *rss["ours"], bare=loads["bare"])


def report_load(row: LoadRow) -> bool:
    """Print the load row; True if it passes."""
    load, verdict = row.load, row.verdict()
    print(
        f"\nhot path under a steady load: the cached body at {LOAD_RATE}/s for {LOAD_SECONDS} s "
        f"(paced, {LOAD_CONNECTIONS} keep-alive TLS connections), tagCacheSeconds "
        f"{TAG_CACHE_SECONDS}: {LOAD_SECONDS // TAG_CACHE_SECONDS} lifetimes crossed\n"
        f"{'requests':>9} {'errors':>6} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}"
        f" {'RSS before':>10} {'RSS after':>9}  result\n"
        f"{load.requests:>9} {load.errors:>6} {load.p50_ms:>7.2f} {load.p99_ms:>7.2f}"
        f" {load.max_ms:>7.2f} {row.rss_before_mb:>10.1f} {row.rss_after_mb:>9.1f}  {verdict}\n"
        f"the same load on bare (what the machine adds): {row.bare.errors} errors, p50 "
        f"{row.bare.p50_ms:.2f} ms, p99 {row.bare.p99_ms:.2f} ms, max {row.bare.max_ms:.2f} ms\n"
        f"bar (ours): 0 errors, p99 <= {BAR_LOAD_P99_MS:g} ms, max <= {BAR_LOAD_MAX_MS:g} ms,"
        f" RSS grows <= {BAR_LOAD_RSS_MB:g} MB"
    )
    return verdict == "PASS"


def report_cold(cold: dict[str, list[float]]) -> bool:
    """Print the cold-path table; True if the bar passes."""
    ours, sk = statistics.median(cold["ours"]), statistics.median(cold["skopeo"])
    passed = ours <= sk + COLD_SLACK_SECONDS
    reps = " ".join(f"{f'rep {i + 1}':>7}" for i in range(len(cold["ours"])))
    print(
        f"\ncold path: one Deployment, one 5x20MB image not yet backed up (fresh content)\n"
        f"{'':<24}{reps}  {'median':>7}"
    )
    for tool, name in (("ours", "ours: admission RTT s"), ("skopeo", "skopeo copy s")):
        cells = " ".join(f"{s:>7.3f}" for s in cold[tool])
        print(f"{name:<24}{cells}  {statistics.median(cold[tool]):>7.3f}")
    print(
        f"bar: ours <= skopeo + {COLD_SLACK_SECONDS * 1000:.0f} ms: "
        f"{ours:.3f} <= {sk + COLD_SLACK_SECONDS:.3f}  {'PASS' if passed else 'FAIL'}"
    )
    return passed


def bench(args: argparse.Namespace, work: str, stack: contextlib.ExitStack) -> bool:
    sample = orjson.loads(Path(args.sample).read_bytes())
    source = start_registry(os.path.join(work, "source"), tls=False, auth="none")
    stack.callback(source.close)
    backup = start_registry(os.path.join(work, "backup"), tls=True, auth="basic")
    stack.callback(backup.close)
    for repo, (tag, seed) in HOT_IMAGES.items():
        image = make_image(os.path.join(work, "images"), (MB,), seed=seed, fmt="oci")
        push(source.backdoor_url, repo, tag, image)

    tls = generate_tls(os.path.join(work, "webhook-tls"))
    ours = start_ours(work, source, backup, tls.cert_file, tls.key_file, tls.ca_file)
    stack.callback(ours.stop)
    port = free_port()
    bare_argv = [sys.executable, "-m", "bench.bare", "--port", str(port)]
    bare_argv += ["--cert-file", tls.cert_file, "--key-file", tls.key_file]
    bare = Server("bare", bare_argv, port, tls.ca_file, work)
    stack.callback(bare.stop)
    ours.wait_ready()
    bare.wait_ready()
    print(f"ours: pid {ours.process.pid}, bare: pid {bare.process.pid}", file=sys.stderr)

    bodies = warm_up(ours, sample)
    parts = [args.only] if args.only else ["hot", "load", "cold"]
    reports = []
    if "hot" in parts:
        rows = hot_path((bare, ours), bodies, work, args.seconds, args.hot_reps, args.profile)
        openshift, trigger = start_openshift(work, stack, source, backup, tls)
        rows += hot_path(
            (bare, openshift), {"trigger": trigger}, work, args.seconds, args.hot_reps, args.profile
        )
        reports.append(functools.partial(report_hot, rows, args.seconds, args.hot_reps))
    if "load" in parts:
        row = load_row((bare, ours), bodies["cached"], work, tls.ca_file)
        reports.append(functools.partial(report_load, row))
    if "cold" in parts:
        cold = cold_path(ours, sample, source, backup, work, args.reps)
        reports.append(functools.partial(report_cold, cold))
    print("load average at end:   {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    return all([report() for report in reports])


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.admission",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=5, help="per wrk run (default 5)")
    parser.add_argument(
        "--hot-reps", type=int, default=5, help="alternating hot-path runs per row (default 5)"
    )
    parser.add_argument("--reps", type=int, default=3, help="cold repetitions (default 3)")
    parser.add_argument("--sample", default=str(SAMPLE), help="the AdmissionReview to send")
    parser.add_argument(
        "--only", choices=("hot", "load", "cold"), help="run only these rows (default: all)"
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="record both servers with py-spy (raw format) at concurrency "
        f"{PROFILED_CONCURRENCY}, into DIR/SERVER-BODY.txt (perturbs those runs)",
    )
    args = parser.parse_args()
    if args.reps < 1 or args.hot_reps < 1 or args.seconds <= 0:
        parser.error("--reps, --hot-reps and --seconds must be positive")
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    if shutil.which("wrk") is None:
        parser.error("wrk not found (apt-get install wrk)")

    stop_on_termination()
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)
    work = scratch_dir("ibw-bench-admission-", 4 << 30)  # uses < 2 GB
    print(f"registries, images and logs in {work}", file=sys.stderr)
    try:
        with contextlib.ExitStack() as stack:
            ok = bench(args, work, stack)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
