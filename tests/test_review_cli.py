"""`image-backup review`: the webhook's decisions for manifests on disk."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support import images, skopeo
from tests.support.registries import Registry

CLI = [sys.executable, "-m", "webhook", "review"]

MANIFESTS = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      initContainers: [{name: init, image: "busybox:1.36"}]
      containers: [{name: web, image: "nginx:1.25"}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {image: "nginx:1.25"}
---
apiVersion: v1
kind: List
items:
- apiVersion: batch/v1
  kind: CronJob
  metadata: {name: nightly}
  spec:
    schedule: "0 3 * * *"
    jobTemplate:
      spec:
        template:
          spec:
            restartPolicy: OnFailure
            containers: [{name: job, image: "alpine:3.19"}]
"""


def config_file(tmp_path: Path, hub_registry: Registry, backup: Registry) -> tuple[str, str]:
    prefix = f"r{secrets.token_hex(4)}"
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "backupRegistry": {"host": backup.host, "prefix": prefix, "caFile": backup.ca_file},
                "registries": [
                    {"host": "docker.io", "endpoint": hub_registry.url, "insecure": True}
                ],
                "credentials": {"dockerConfig": backup.docker_config},
            }
        )
    )
    return str(path), prefix


def review(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


def test_enforce_prints_the_manifests_pinned_to_backups(
    hub: dict[str, images.Image],
    plain_registry: Registry,
    basic_registry: Registry,
    tmp_path: Path,
) -> None:
    config, prefix = config_file(tmp_path, plain_registry, basic_registry)
    (tmp_path / "app.yaml").write_text(MANIFESTS)

    done = review("-f", str(tmp_path / "app.yaml"), "--config", config)

    assert done.returncode == 0, done.stderr
    deployment, config_map, listing = list(yaml.safe_load_all(done.stdout))
    original = list(yaml.safe_load_all(MANIFESTS))
    assert config_map == original[1]
    spec = deployment["spec"]["template"]["spec"]
    backup = f"{basic_registry.host}/{prefix}/docker.io/library"
    assert (
        spec["containers"][0]["image"] == f"{backup}/nginx:1.25@{hub['library/nginx:1.25'].digest}"
    )
    assert spec["initContainers"][0]["image"] == (
        f"{backup}/busybox:1.36@{hub['library/busybox:1.36'].digest}"
    )
    assert json.loads(deployment["metadata"]["annotations"]["image-backup.io/original-images"]) == {
        "init": "busybox:1.36",
        "web": "nginx:1.25",
    }
    job = listing["items"][0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    digest = hub["library/alpine:3.19"].digest
    assert job["containers"][0]["image"] == f"{backup}/alpine:3.19@{digest}"
    assert (
        skopeo.inspect_raw_digest(basic_registry, f"{prefix}/docker.io/library/alpine@{digest}")
        == digest
    )
    assert done.stderr.count("is now") == 3  # one note per rewritten image


def test_audit_reports_without_copying(
    hub: dict[str, images.Image],
    plain_registry: Registry,
    basic_registry: Registry,
    tmp_path: Path,
) -> None:
    config, prefix = config_file(tmp_path, plain_registry, basic_registry)
    done = review("-f", "-", "--mode", "audit", "--config", config, stdin=MANIFESTS)

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    hub_backup = f"{basic_registry.host}/{prefix}/docker.io/library"
    assert lines == [
        f"-: Deployment/web: would back up busybox:1.36 as {hub_backup}/busybox:1.36",
        f"-: Deployment/web: would back up nginx:1.25 as {hub_backup}/nginx:1.25",
        f"-: CronJob/nightly: would back up alpine:3.19 as {hub_backup}/alpine:3.19",
    ]
    assert images.tags(basic_registry.backdoor_url, f"{prefix}/docker.io/library/nginx") == []


def test_a_failure_prints_no_manifests(
    hub: dict[str, images.Image],
    plain_registry: Registry,
    basic_registry: Registry,
    tmp_path: Path,
) -> None:
    config, _ = config_file(tmp_path, plain_registry, basic_registry)
    broken = MANIFESTS.replace('"nginx:1.25"', '"nginx:0.0-missing"', 1)
    done = review("--config", config, stdin=broken)

    assert done.returncode == 1 and done.stdout == ""
    assert "Deployment/web" in done.stderr and "nginx:0.0-missing" in done.stderr
    assert "not found" in done.stderr


def test_bad_files_are_reported_in_one_line(tmp_path: Path, basic_registry: Registry) -> None:
    config, _ = config_file(tmp_path, basic_registry, basic_registry)
    (tmp_path / "bad.yaml").write_text("kind: [unclosed")
    unreadable = review("-f", str(tmp_path / "absent.yaml"), "--config", config)
    invalid = review("-f", str(tmp_path / "bad.yaml"), "--config", config)
    for done, expected in ((unreadable, "cannot read"), (invalid, "not valid YAML")):
        assert done.returncode == 2
        assert expected in done.stderr and done.stderr.count("\n") == 1
