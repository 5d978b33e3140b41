"""Benchmark: a backfill pass against `skopeo copy` of the same images.

``python -m bench.backfill``: a plain-HTTP source registry without auth, a TLS + htpasswd
backup registry (real Distribution, as in bench.copy), and the fake API server of the tests
holding the workloads (the real Kubernetes client talks to it). Two rows:

* new images: 200 Deployments using 100 distinct images (2 x 1 MB each, none backed up):
  one ``image-backup backfill`` (a whole process, as a CronJob runs it) against 100
  sequential ``skopeo copy`` of the same images, in the same run. Bar: <= 0.25x skopeo's
  total. Every backup is checked afterwards.
* nothing new: 1,000 Deployments whose 100 images are all backed up already: one pass.
  Bars: <= 3 s, and the registries asked no more than a fixed number of times per distinct
  image (counted in their access logs), however many workloads use it.
* admissions during a pass: ``image-backup serve`` making its first pass (200 more
  Deployments, 100 more new images) while a paced client sends it 1,000 admissions/s
  answered from memory, then the same load once the pass has ended. Bars: 0 errors, p99
  <= 3 ms while the pass copies (the steady-load bar of bench.admission).
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import yaml

from bench.admission import LOAD_CONNECTIONS, LOAD_RATE, Server, check, containers
from bench.copy import ROOT, Run, install, run_timed, scratch_dir, skopeo_copy
from bench.load import Paced, run_paced
from tests.support.accounts import PUSHER, PUSHER_PASSWORD, TOKEN_POLICY
from tests.support.fakekube import FakeKube
from tests.support.images import make_image, push
from tests.support.registries import Registry, free_port, start_registry
from tests.support.skopeo import inspect_raw_digest
from tests.support.tls import generate_tls
from tests.support.tokenserver import TokenServer
from tests.workloads import create, opt_in, workload

MB = 1 << 20
IMAGES, WORKLOADS, STEADY_WORKLOADS = 100, 200, 1000
NEW_BAR, STEADY_BAR_SECONDS = 0.25, 3.0
# Per distinct image, at most: the source asked for the tag's digest, and for its tags (the
# fallback and cosign tags of what refers to the image: a pass carries what is new); the
# backup registry asked whether the backup exists and whether its tag is in place.
REQUESTS_PER_IMAGE = {"source": 2, "backup": 2}
# Once per registry per pass: the version check, an authentication challenge, whether it has
# the referrers API.
REQUESTS_PER_PASS = 5
DURING_SECONDS, DURING_P99_MS = 3.0, 3.0
SAMPLE = ROOT / "tests" / "data" / "admission" / "deployment-create.json"


def config_file(work: str, source: Registry, target: Registry) -> str:
    path = os.path.join(work, "backfill.yaml")
    document = {
        "backupRegistry": {"host": target.host, "prefix": "backup", "caFile": target.ca_file},
        "registries": [{"host": source.host, "insecure": True}],
        "credentials": {"dockerConfig": target.docker_config},
        # No records to coordinate through: the fake has no webhook replicas to share with.
        "exclude": {"namespaces": ["kube-system"]},
    }
    Path(path).write_text(yaml.safe_dump(document))
    return path


def backfill(python: str, config: str, namespace: str, kubeconfig: str) -> Run:
    argv = [python, "-m", "webhook", "backfill", "--namespace", namespace, "--config", config]
    env = {**os.environ, "KUBECONFIG": kubeconfig}
    return run_timed(argv, env=env, cwd=os.path.dirname(python))


def pass_completed(server: Server) -> bool:
    status, text = server.get("/metrics")
    return (
        status == 200
        and re.search(rb'image_backup_backfill_passes_total\{result="completed"\} [1-9]', text)
        is not None
    )


def admissions_during_a_pass(
    work: str, python: str, config: str, source: Registry, target: Registry
) -> tuple[Paced, Paced, Paced, float]:
    """The paced load while serve's first pass copies, after it, and beside skopeo copying
    the same images; and how long the pass went on after the first load ended (> 0: that
    load ran entirely within the pass)."""
    tls = generate_tls(os.path.join(work, "webhook-tls"))
    port = free_port()
    document = yaml.safe_load(Path(config).read_text())
    document["server"] = {"port": port, "certFile": tls.cert_file, "keyFile": tls.key_file}
    document["backfill"] = {"intervalSeconds": 3600}  # the pass at start, and no other
    path = os.path.join(work, "serve.yaml")
    Path(path).write_text(yaml.safe_dump(document))
    server = Server(
        "ours", [python, "-m", "webhook", "serve", "--config", path], port, tls.ca_file, work
    )
    try:
        server.wait_ready()
        review = orjson.loads(SAMPLE.read_bytes())
        review["request"]["namespace"] = "hot"
        for index, container in enumerate(containers(review)):
            container["image"] = f"{source.host}/src/app-{index}:v1"  # backed up before
        uid, body = review["request"]["uid"], orjson.dumps(review)
        check(server.post(body)[0], uid, patched=True)  # from the registries, then memory
        body_file = os.path.join(work, "during.json")
        Path(body_file).write_bytes(body)
        load = functools.partial(
            run_paced,
            server.url,
            body_file,
            tls.ca_file,
            rate=LOAD_RATE,
            seconds=DURING_SECONDS,
            connections=LOAD_CONNECTIONS,
        )
        during = load()
        ended = time.monotonic()
        while not pass_completed(server):
            if time.monotonic() > ended + 300:
                raise RuntimeError(f"the pass did not end:\n{server.tail()}")
            time.sleep(0.1)
        went_on = time.monotonic() - ended
        after = load()
        # The control: the same load while skopeo copies the same images, so that the
        # registries (on the same two CPUs) are busy, but the webhook is not.
        with ThreadPoolExecutor(1) as pool:
            copying = pool.submit(skopeo_copies, source, target, "busy", work)
            beside = load()
            copying.result()
    finally:
        server.stop()
    return during, after, beside, went_on


def skopeo_copies(source: Registry, target: Registry, prefix: str, work: str) -> float:
    """Copy the images `prefix`-0 ... one after another, as skopeo does: its total time."""
    seconds = 0.0
    for index in range(IMAGES):
        run = skopeo_copy(
            source,
            f"src/{prefix}-{index}:v1",
            target,
            f"skopeo/{prefix}-{index}:v1",
            all_images=False,
            work=work,
        )
        seconds += run.seconds
    return seconds


def requests(registry: Registry) -> int:
    with open(registry.log_file, "rb") as log:
        return sum(1 for line in log if b" /v2/" in line and b" HTTP/" in line)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.backfill",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--auth",
        choices=["basic", "token"],
        default="basic",
        help="the backup registry's: htpasswd (a bcrypt check on every request) or a token "
        "service (default: basic)",
    )
    args = parser.parse_args()
    work = scratch_dir("ibw-bench-backfill-", 4 * IMAGES * 2 * MB + 512 * MB)
    kube = FakeKube.start()
    source = target = tokens = None
    try:
        source = start_registry(
            os.path.join(work, "source"), tls=False, auth="none", access_log=True
        )
        auth: dict[str, Any] = {}
        if args.auth == "token":
            tls_dir = os.path.join(work, "tls")
            tokens = TokenServer.start(
                os.path.join(work, "tokens"),
                users={PUSHER: PUSHER_PASSWORD},
                policy=TOKEN_POLICY,
                tls_dir=tls_dir,
            )
            auth = {"token_server": tokens, "username": PUSHER, "password": PUSHER_PASSWORD}
            auth["tls_dir"] = tls_dir
        target = start_registry(
            os.path.join(work, "target"), tls=True, auth=args.auth, access_log=True, **auth
        )
        kubeconfig = kube.write_kubeconfig(os.path.join(work, "kubeconfig"))
        config = config_file(work, source, target)
        python = install(work)
        print(f"generating and pushing {IMAGES} images of 2 x 1 MB", file=sys.stderr)
        images = os.path.join(work, "images")
        digests = {}
        for index in range(IMAGES):
            made = make_image(images, [MB, MB], seed=5000 + index, fmt="oci")
            digests[index] = push(source.backdoor_url, f"src/app-{index}", "v1", made)
        opt_in(kube, "new", "enforce")
        opt_in(kube, "steady", "enforce")
        for index in range(WORKLOADS):
            image = f"{source.host}/src/app-{index % IMAGES}:v1"
            create(kube, "new", workload("Deployment", f"d{index}", {"main": image}))
        for index in range(STEADY_WORKLOADS):
            image = f"{source.host}/src/app-{index % IMAGES}:v1"
            create(kube, "steady", workload("Deployment", f"d{index}", {"main": image}))

        print(f"skopeo copy x {IMAGES}", file=sys.stderr)
        skopeo_seconds = skopeo_copies(source, target, "app", work)
        print("image-backup backfill (new images)", file=sys.stderr)
        new = backfill(python, config, "new", kubeconfig)
        for index in range(IMAGES):
            backup = f"backup/{source.host.replace(':', '_')}/src/app-{index}:v1"
            if inspect_raw_digest(target, backup) != digests[index]:
                raise RuntimeError(f"{backup} is not {digests[index]}")

        print("image-backup backfill (nothing new)", file=sys.stderr)
        before = {"source": requests(source), "backup": requests(target)}
        steady = backfill(python, config, "steady", kubeconfig)
        asked = {"source": requests(source) - before["source"]}
        asked["backup"] = requests(target) - before["backup"]

        print("admissions during a pass", file=sys.stderr)
        for index in range(IMAGES):  # new ones, for serve's pass to copy
            made = make_image(images, [MB, MB], seed=6000 + index, fmt="oci")
            push(source.backdoor_url, f"src/busy-{index}", "v1", made)
        opt_in(kube, "busy", "enforce")
        for index in range(WORKLOADS):
            image = f"{source.host}/src/busy-{index % IMAGES}:v1"
            create(kube, "busy", workload("Deployment", f"d{index}", {"main": image}))
        os.environ.update(KUBECONFIG=kubeconfig, POD_NAMESPACE="image-backup", POD_NAME="bench")
        during, after, beside, went_on = admissions_during_a_pass(
            work, python, config, source, target
        )
    finally:
        for registry in (source, target):
            if registry is not None:
                registry.close()
        if tokens is not None:
            tokens.stop()
        kube.stop()
        shutil.rmtree(work, ignore_errors=True)

    ratio = new.seconds / skopeo_seconds
    new_ok = ratio <= NEW_BAR
    print(f"\nbackup registry: TLS, {args.auth} auth")
    print(f"backfill, {WORKLOADS} workloads, {IMAGES} new images of 2 x 1 MB:")
    print(
        f"  image-backup backfill {new.seconds:.2f} s (peak RSS {new.rss_mb:.0f} MB), "
        f"{IMAGES} x skopeo copy {skopeo_seconds:.2f} s: ratio {ratio:.3f} "
        f"(bar <= {NEW_BAR}) {'PASS' if new_ok else 'FAIL'}"
    )
    limits = {r: IMAGES * n + REQUESTS_PER_PASS for r, n in REQUESTS_PER_IMAGE.items()}
    steady_ok = steady.seconds <= STEADY_BAR_SECONDS and all(asked[r] <= limits[r] for r in limits)
    print(f"backfill, {STEADY_WORKLOADS} workloads, their {IMAGES} images all backed up:")
    print(
        f"  {steady.seconds:.2f} s (bar <= {STEADY_BAR_SECONDS:.0f} s); registry requests: "
        + ", ".join(f"{r} {asked[r]} (bar <= {limits[r]})" for r in limits)
        + f"  {'PASS' if steady_ok else 'FAIL'}"
    )
    during_ok = during.errors == 0 and during.p99_ms <= DURING_P99_MS and went_on > 0
    print(
        f"admissions at {LOAD_RATE}/s while serve's first pass copies {IMAGES} new images "
        f"({DURING_SECONDS:.0f} s, the pass going on {went_on:.1f} s after):"
    )
    for name, load in (
        ("during the pass", during),
        ("after it", after),
        ("beside skopeo copying the same images (the registries as busy)", beside),
    ):
        print(
            f"  {name}: {load.requests} requests, {load.errors} errors, p50 {load.p50_ms:.2f} "
            f"ms, p99 {load.p99_ms:.2f} ms, max {load.max_ms:.2f} ms"
        )
    print(
        f"  bar: 0 errors, p99 <= {DURING_P99_MS:.0f} ms during  {'PASS' if during_ok else 'FAIL'}"
    )
    print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    return 0 if new_ok and steady_ok and during_ok else 1


if __name__ == "__main__":
    sys.exit(main())
