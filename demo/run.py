"""`make demo`: back up images the way the webhook does, with everything local.

Starts two throw-away Distribution registries on loopback (a plain-HTTP source
standing in for Docker Hub, and a backup registry with TLS and a password) and
pushes generated images into the source. Then:
1. `image-backup copy` backs up one image; skopeo confirms the backup's digest;
2. `image-backup serve` runs the webhook over TLS with a generated certificate, and
   a Deployment AdmissionReview goes to /audit and to /mutate: the warnings and
   the JSON patch are printed, and skopeo checks every backup the patch points at;
3. the same review again is answered from memory (the metrics show no copy), and a
   Deployment naming an image the source does not have is denied.
It ends with a one-line summary.
"""

from __future__ import annotations

import base64
import copy
import json
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import images, skopeo  # noqa: E402
from tests.support.registries import Registry, free_port, start_registry  # noqa: E402
from tests.support.tls import generate_tls  # noqa: E402

DEPLOYMENT_REVIEW = {
    "apiVersion": "admission.k8s.io/v1",
    "kind": "AdmissionReview",
    "request": {
        "uid": "6f1c1c1e-demo-4d9e-9a51-000000000001",
        "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
        "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
        "name": "web",
        "namespace": "shop",
        "operation": "CREATE",
        "dryRun": False,
        "object": {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [
                            {"name": "web", "image": "nginx:1.25"},
                            {"name": "sidecar", "image": "busybox:1.36"},
                        ]
                    },
                },
            },
        },
    },
}


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="image-backup-demo-") as work:
        step("starting a source registry (plain HTTP) and a backup registry (TLS + password)")
        source = start_registry(f"{work}/source", tls=False, auth="none")
        backup = start_registry(f"{work}/backup", tls=True, auth="basic")
        try:
            print(f"    source: {source.url}\n    backup: {backup.url} (CA {backup.ca_file})")

            step("pushing a generated two-platform image into the source as demo/app:1.0")
            amd64 = images.make_image(f"{work}/images", [3_000_000, 500_000], seed=1, fmt="oci")
            arm64 = images.make_image(
                f"{work}/images",
                [3_000_000, 400_000],
                seed=2,
                fmt="oci",
                platform=("linux", "arm64"),
            )
            index = images.make_index(f"{work}/images", [amd64, arm64], "oci")
            images.push(source.backdoor_url, "demo/app", "1.0", index)
            print(f"    source digest: {index.digest}")

            config = Path(work, "config.yaml")
            config.write_text(
                yaml.safe_dump(
                    {
                        "backupRegistry": {
                            "host": backup.host,
                            "prefix": "mirror",
                            "caFile": backup.ca_file,
                        },
                        "registries": [{"host": source.host, "insecure": True}],
                        "credentials": {"dockerConfig": backup.docker_config},
                    },
                    sort_keys=False,
                )
            )
            step(f"configuration ({config})")
            print(config.read_text().rstrip())

            command = [
                "image-backup",
                "copy",
                f"{source.host}/demo/app:1.0",
                "--config",
                str(config),
            ]
            step("$ " + " ".join(command))
            done = subprocess.run(
                [sys.executable, "-m", "webhook", *command[1:]],
                stdout=subprocess.PIPE,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                return summary(f"image-backup copy exited {done.returncode}")
            pinned = done.stdout.strip()
            print(pinned)

            step("skopeo inspect of the backup, over TLS with the backup's credentials")
            repository_and_tag = pinned.split("/", 1)[1].split("@")[0]
            cert_dir = Path(work, "skopeo-certs")
            cert_dir.mkdir()
            shutil.copy(backup.ca_file or "", cert_dir / "ca.crt")
            shown = (
                skopeo.run_skopeo(
                    [
                        "inspect",
                        "--cert-dir",
                        str(cert_dir),
                        "--authfile",
                        backup.docker_config,
                        "--format",
                        "{{.Name}} {{.Digest}}",
                        f"docker://{backup.host}/{repository_and_tag}",
                    ]
                )
                .stdout.decode()
                .strip()
            )
            print(f"    {shown}")
            agreed = skopeo.inspect_raw_digest(backup, repository_and_tag) == index.digest
            print(f"    skopeo digest {'==' if agreed else '!='} source digest {index.digest}")
            if not (agreed and pinned.endswith(index.digest)):
                return summary("image-backup copy's backup does not match its source")
            return admission(work, source, backup)
        finally:
            source.close()
            backup.close()


def summary(failure: str | None, done: str = "") -> int:
    """The demo's last line: what it showed, or where it stopped."""
    print(f"\ndemo {'FAILED: ' + failure if failure else 'OK: ' + done}", flush=True)
    return 1 if failure else 0


def admission(work: str, source: Registry, backup: Registry) -> int:
    step("pushing nginx:1.25 and busybox:1.36 into the source, which stands in for Docker Hub")
    for seed, (name, layers) in enumerate(
        {"nginx:1.25": [2_000_000], "busybox:1.36": [700_000]}.items()
    ):
        repository, tag = name.split(":")
        image = images.make_image(f"{work}/images", layers, seed=10 + seed, fmt="docker")
        images.push(source.backdoor_url, f"library/{repository}", tag, image)
    tls = generate_tls(f"{work}/webhook-tls")
    port = free_port()
    config = Path(work, "webhook.yaml")
    config.write_text(
        yaml.safe_dump(
            {
                "server": {"port": port, "certFile": tls.cert_file, "keyFile": tls.key_file},
                "backupRegistry": {
                    "host": backup.host,
                    "prefix": "mirror",
                    "caFile": backup.ca_file,
                },
                "registries": [{"host": "docker.io", "endpoint": source.url, "insecure": True}],
                "credentials": {"dockerConfig": backup.docker_config},
            },
            sort_keys=False,
        )
    )
    step(f"$ image-backup serve --config {config}   (TLS certificate from a throw-away CA)")
    with Path(work, "webhook.log").open("wb") as log:  # the child keeps its own descriptor
        server = subprocess.Popen(
            [sys.executable, "-m", "webhook", "serve", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    context = ssl.create_default_context(cafile=tls.ca_file)
    url = f"https://127.0.0.1:{port}"
    try:
        wait_ready(url, context, server)
        print(f"    {url}/readyz: ready")
        step("POST /audit  (a Deployment using nginx:1.25 and busybox:1.36)")
        audit = post(url + "/audit", DEPLOYMENT_REVIEW, context)
        print(f"    allowed: {audit['allowed']}, patch: {'patch' in audit}")
        for warning in audit.get("warnings", []):
            print(f"    warning: {warning}")
        print(f"    audit annotations: {audit.get('auditAnnotations')}")

        step("POST /mutate (enforce: copies first, then answers)")
        started = time.monotonic()
        mutate = post(url + "/mutate", DEPLOYMENT_REVIEW, context)
        print(f"    answered in {time.monotonic() - started:.2f}s, allowed: {mutate['allowed']}")
        for warning in mutate.get("warnings", []):
            print(f"    warning: {warning}")
        patch = json.loads(base64.b64decode(mutate["patch"]))
        print("    JSON patch:")
        for operation in patch:
            print(f"      {json.dumps(operation)}")

        step("skopeo inspect of every image the patch points at")
        ok = True
        pinned = [operation["value"] for operation in patch if operation["path"].endswith("/image")]
        for reference in pinned:
            repository_and_digest = (
                reference.split("/", 1)[1].split(":", 1)[0] + "@" + reference.split("@")[1]
            )
            digest = skopeo.inspect_raw_digest(backup, repository_and_digest)
            ok &= digest == reference.split("@")[1]
            print(f"    {reference}\n      skopeo: {digest} {'ok' if ok else 'MISMATCH'}")
        if not (ok and mutate["allowed"]):
            return summary("a backup the patch points at does not match its source")

        step("POST /mutate again, another uid: answered from memory, nothing copied")
        before = counters(url, context)
        started = time.monotonic()
        again = post(url + "/mutate", with_uid(DEPLOYMENT_REVIEW, "2"), context)
        took_ms = (time.monotonic() - started) * 1000
        after = counters(url, context)
        hits = after["image_backup_cache_hits_total"] - before["image_backup_cache_hits_total"]
        copies = after["image_backup_copies_total"] - before["image_backup_copies_total"]
        print(
            f"    answered in {took_ms:.1f} ms, allowed: {again['allowed']}, same patch: "
            f"{again.get('patch') == mutate['patch']}"
        )
        print(
            f"    metrics: image_backup_cache_hits_total +{hits:g}, "
            f"image_backup_copies_total +{copies:g}"
        )
        if not (again.get("patch") == mutate["patch"] and hits > 0 and copies == 0):
            return summary("the second admission was not answered from memory")

        step("POST /mutate with nginx:9.99, which the source does not have: denied")
        missing = with_uid(DEPLOYMENT_REVIEW, "3")
        containers = missing["request"]["object"]["spec"]["template"]["spec"]["containers"]
        containers[0]["image"] = "nginx:9.99"
        denied = post(url + "/mutate", missing, context)
        reason = denied.get("status", {}).get("message", "")
        print(f"    allowed: {denied['allowed']}\n    message: {reason}")
        if denied["allowed"]:
            return summary("a Deployment naming a missing image was admitted")
        return summary(
            None,
            f"copied 1 image with the CLI and {len(pinned)} with /mutate, all checked by "
            f"skopeo; the repeat answered from memory in {took_ms:.0f} ms with no copy; "
            "the missing image denied",
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def wait_ready(url: str, context: ssl.SSLContext, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(url + "/readyz", context=context, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("the webhook did not become ready")


def with_uid(review: dict[str, Any], suffix: str) -> dict[str, Any]:
    """The review again, as another request (the API server gives each its own uid)."""
    changed = copy.deepcopy(review)
    changed["request"]["uid"] = review["request"]["uid"][: -len(suffix)] + suffix
    return changed


def counters(url: str, context: ssl.SSLContext) -> dict[str, float]:
    """The server's counters from /metrics, each summed over its labels."""
    with urllib.request.urlopen(url + "/metrics", context=context, timeout=10) as answer:
        lines = answer.read().decode().splitlines()
    found: dict[str, float] = {}
    for line in lines:
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name = series.partition("{")[0]
        if name.endswith("_total"):
            found[name] = found.get(name, 0.0) + float(value)
    return found


def post(url: str, review: dict[str, Any], context: ssl.SSLContext) -> dict[str, Any]:
    body = json.dumps(review).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, context=context, timeout=60) as answer:
        response: dict[str, Any] = json.loads(answer.read())["response"]
        return response


if __name__ == "__main__":
    sys.exit(main())
