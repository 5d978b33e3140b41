"""End to end: `image-backup serve` over TLS, real registries, patches applied, backups checked."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import orjson
import pytest

from tests.admission_helpers import body, images_of, patched, response_of, sample
from tests.support import images, skopeo
from tests.support.registries import Registry
from tests.support.tls import TLSFiles
from tests.support.webhooks import Webhook, running_webhook

PREFIX = f"e2e{secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def webhook(
    hub: dict[str, images.Image],
    plain_registry: Registry,
    basic_registry: Registry,
    tls_ca: TLSFiles,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Webhook]:
    config = {
        "backupRegistry": {
            "host": basic_registry.host,
            "prefix": PREFIX,
            "caFile": basic_registry.ca_file,
        },
        "registries": [{"host": "docker.io", "endpoint": plain_registry.url, "insecure": True}],
        "credentials": {"dockerConfig": basic_registry.docker_config},
    }
    with running_webhook(tmp_path_factory.mktemp("e2e"), config, tls_ca) as hook:
        yield hook


def test_mutate_a_deployment_over_tls(
    webhook: Webhook, hub: dict[str, images.Image], basic_registry: Registry
) -> None:
    review = sample("deployment-create")
    status, answer = webhook.post("/mutate", body(review))
    assert status == 200
    response = response_of(answer, review)
    after = images_of(patched(review, response)["spec"]["template"]["spec"])
    for container, source in (("nginx", "nginx:1.25"), ("sidecar", "busybox:1.36")):
        digest = hub[f"library/{source}"].digest
        repository = f"{PREFIX}/docker.io/library/{source.split(':')[0]}"
        assert (
            after[container]
            == f"{basic_registry.host}/{repository}:{source.split(':')[1]}@{digest}"
        )
        assert skopeo.inspect_raw_digest(basic_registry, f"{repository}@{digest}") == digest
        images.read_back(basic_registry.backdoor_url, repository, digest)


def test_audit_and_dry_run_over_tls(webhook: Webhook) -> None:
    review = sample("cronjob-create")
    status, answer = webhook.post("/audit", body(review))
    assert status == 200
    audit = response_of(answer, review)
    assert audit["allowed"] and "patch" not in audit
    assert len(audit["warnings"]) == 1
    assert audit["warnings"][0].startswith("would back up busybox:1.36 as ")
    # Backed up by the Deployment before: audit names the pinned backup enforce would use.
    assert f"/{PREFIX}/docker.io/library/busybox:1.36@sha256:" in audit["warnings"][0]
    dry = sample("deployment-create-dryrun")
    status, answer = webhook.post("/mutate", body(dry))
    assert status == 200 and response_of(answer, dry)["allowed"]


def test_bad_input_gets_4xx_with_one_line(webhook: Webhook) -> None:
    for payload, expected in (
        (b"{nope", 400),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}', 400),
    ):
        status, answer = webhook.post("/mutate", payload)
        assert status == expected
        assert answer.count(b"\n") <= 1 and b"Traceback" not in answer
    status, _ = webhook.post("/mutate", b"x" * (4 * 1024 * 1024))
    assert status == 413


def test_metrics_and_one_json_log_line_per_admission(
    webhook: Webhook, basic_registry: Registry
) -> None:
    review = sample("pod-create-bare")
    webhook.post("/mutate", body(review))
    status, metrics = webhook.get("/metrics")
    assert status == 200
    text = metrics.decode()
    assert (
        'image_backup_admissions_total{kind="Pod",mode="enforce",operation="CREATE",result="patched"}'
        in text
    )
    assert "image_backup_copied_bytes_total" in text
    time.sleep(0.2)
    lines = [
        orjson.loads(line)
        for line in webhook.log_file.read_text().splitlines()
        if line.startswith("{")
    ]
    mine = [line for line in lines if line.get("uid") == review["request"]["uid"]]
    assert len(mine) == 1
    assert mine[0]["decision"] == "patched" and mine[0]["object"] == "wh-test/bare-pod"
    assert basic_registry.password and basic_registry.password not in webhook.log_file.read_text()
