"""Webhook replicas in a cluster: two `image-backup serve` processes sharing one (fake) API
server and real registries. They copy a new image once between them, record it, and put
Events on what they admit."""

from __future__ import annotations

import datetime
import logging
import secrets
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.admission_helpers import body, images_of, patched, response_of, sample, with_object
from tests.helpers import deadline, make_config, plain_to
from tests.support import images, skopeo
from tests.support.fakekube import EVENTS, IMAGE_BACKUPS, Call, FakeKube, KubeError, Query
from tests.support.faultproxy import FaultProxyFactory, delay
from tests.support.registries import Registry, RegistryFactory
from tests.support.tls import TLSFiles
from tests.support.webhooks import Webhook, running_webhook
from webhook.admission.handler import Admission
from webhook.cluster import Coordination
from webhook.engine import open_engine
from webhook.kube.client import api_client
from webhook.kube.records import BackupRecords, record_name
from webhook.metrics import Metrics
from webhook.reference import parse

NAMESPACE = "image-backup"


def uploads(registry: Registry, repository: str) -> list[str]:
    """Completed blob uploads into `repository`, from the registry's access log."""
    with open(registry.log_file) as log:
        return [
            line
            for line in log
            if f'"PUT /v2/{repository}/blobs/uploads/' in line and '" 201 ' in line
        ]


def listed(kube: FakeKube, resource: Any, namespace: str) -> list[dict[str, Any]]:
    items, _ = kube.store.list_objects(Query(resource, namespace, [], []))
    return items


def made_by(metrics: Metrics) -> dict[str, float]:
    """image_backup_coordinated_copies_total, by its label."""
    return {
        sample.labels["by"]: sample.value
        for family in metrics.registry.collect()
        if family.name == "image_backup_coordinated_copies"
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def scraped_made_by(hook: Webhook) -> dict[str, float]:
    status, page = hook.get("/metrics")
    assert status == 200
    found = {}
    for line in page.decode().splitlines():
        if line.startswith("image_backup_coordinated_copies_total{"):
            labels, value = line.rsplit(" ", 1)
            found[labels.split('"')[1]] = float(value)
    return found


def deployment_of(image: str) -> dict[str, Any]:
    review = sample("deployment-create")
    deployment = review["request"]["object"]
    template = deployment["spec"]["template"]["spec"]
    template["containers"] = [{"name": "app", "image": image}]
    template.pop("initContainers", None)
    return with_object(review, deployment)


def replica(
    work: Path, tls_ca: TLSFiles, backup: Registry, docker_hub: str, pod: str, **settings: Any
) -> AbstractContextManager[Webhook]:
    """One replica (`pod`) of the webhook in NAMESPACE: Docker Hub served from `docker_hub`,
    backups under "mirror" in `backup`; `settings` are more top-level configuration keys."""
    config = {
        "backupRegistry": {"host": backup.host, "prefix": "mirror", "caFile": backup.ca_file},
        "registries": [{"host": "docker.io", "endpoint": docker_hub, "insecure": True}],
        "credentials": {"dockerConfig": backup.docker_config},
        **settings,
    }
    return running_webhook(work, config, tls_ca, env={"POD_NAMESPACE": NAMESPACE, "POD_NAME": pod})


def post_together(calls: list[tuple[Webhook, dict[str, Any]]]) -> list[dict[str, Any]]:
    def post(call: tuple[Webhook, dict[str, Any]]) -> dict[str, Any]:
        hook, review = call
        status, answer = hook.post("/mutate", body(review))
        assert status == 200, answer
        return response_of(answer, review)

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(post, calls))


def test_two_replicas_admitting_the_same_new_image_copy_it_once(
    fake_kube: FakeKube,
    registry_factory: RegistryFactory,
    plain_registry: Registry,
    fault_proxy: FaultProxyFactory,
    image_cache: str,
    tls_ca: TLSFiles,
    tmp_path: Path,
) -> None:
    backup = registry_factory(tls=True, auth="basic", access_log=True)
    name = f"shared{secrets.token_hex(3)}"
    made = images.make_image(image_cache, [300_000, 200_000, 100_000], seed=7200, fmt="oci")
    images.push(plain_registry.backdoor_url, f"library/{name}", "1.0", made)
    source = fault_proxy(plain_registry)
    # Slow blob reads: the copy lasts long enough that both replicas ask while it runs.
    source.add(delay(1.0, method="GET", path="/blobs/"))
    with (
        replica(tmp_path, tls_ca, backup, source.url, "replica-a") as a,
        replica(tmp_path, tls_ca, backup, source.url, "replica-b") as b,
    ):
        first, second = deployment_of(f"{name}:1.0"), deployment_of(f"{name}:1.0")
        answers = post_together([(a, first), (b, second)])
        counted = [scraped_made_by(a), scraped_made_by(b)]
        logs = a.log_file.read_text() + b.log_file.read_text()
    for review, answer in zip((first, second), answers, strict=True):
        assert answer["allowed"] is True, answer
        image = images_of(patched(review, answer)["spec"]["template"]["spec"])["app"]
        assert image == f"{backup.host}/mirror/docker.io/library/{name}:1.0@{made.digest}"

    # Exactly one copy: each blob was uploaded once, by one of the two.
    assert len(uploads(backup, f"mirror/docker.io/library/{name}")) == len(made.blobs)
    (record,) = listed(fake_kube, IMAGE_BACKUPS, NAMESPACE)
    assert record["status"]["phase"] == "Ready"
    assert record["status"]["holder"] in ("replica-a", "replica-b")
    assert record["spec"]["digest"] == made.digest
    assert record["spec"]["source"] == f"docker.io/library/{name}:1.0"
    assert set(record["spec"]["blobs"]) == set(made.blobs)
    assert record["spec"]["platforms"] == ["linux/amd64"]
    stored = len(made.manifest_bytes) + sum(blob.size for blob in made.blobs.values())
    assert record["spec"]["size"] == stored
    # The other replica waited on the record instead of copying.
    watches = [
        c for c in fake_kube.calls if c.path.endswith("/imagebackups") and c.query.get("watch")
    ]
    assert watches, "no replica watched the record"
    assert "image_backup_records_unavailable" not in logs
    # One replica says it made the copy, the other that another replica did.
    assert sorted(counted, key=str) == [{"other_replica": 1.0}, {"this_replica": 1.0}]

    # Events on the Deployment, by name (a CREATE has no uid yet).
    backed_up = [e for e in listed(fake_kube, EVENTS, "wh-test") if e["reason"] == "ImageBackedUp"]
    assert backed_up
    for event in backed_up:
        assert event["involvedObject"]["kind"] == "Deployment"
        assert event["involvedObject"]["name"] == first["request"]["name"]
        assert "uid" not in event["involvedObject"]
        assert event["type"] == "Normal"
        assert made.digest in event["message"]


def test_a_restarted_replica_mounts_blobs_it_learned_from_ready_records(
    fake_kube: FakeKube,
    registry_factory: RegistryFactory,
    plain_registry: Registry,
    image_cache: str,
    tls_ca: TLSFiles,
    tmp_path: Path,
) -> None:
    backup = registry_factory(tls=True, auth="basic", access_log=True)
    base = f"base{secrets.token_hex(3)}"
    first = images.make_image(image_cache, [200_000, 10_000], seed=7300, fmt="oci")
    # The same first layer, another image on top: what a shared base image looks like.
    second = images.make_image(image_cache, [200_000, 20_000], seed=7300, fmt="oci")
    shared = first.layers[0].digest
    assert second.layers[0].digest == shared
    images.push(plain_registry.backdoor_url, f"library/{base}-one", "1", first)
    images.push(plain_registry.backdoor_url, f"library/{base}-two", "1", second)
    with replica(tmp_path, tls_ca, backup, plain_registry.url, "replica-a") as hook:
        (answer,) = post_together([(hook, deployment_of(f"{base}-one:1"))])
        assert answer["allowed"] is True
    # A new process: nothing in memory but what the records say.
    with replica(tmp_path, tls_ca, backup, plain_registry.url, "replica-a") as hook:
        (answer,) = post_together([(hook, deployment_of(f"{base}-two:1"))])
        assert answer["allowed"] is True
        log = hook.log_file.read_text()
    warmed = [orjson.loads(line) for line in log.splitlines() if "known_blobs_warmed" in line]
    assert warmed and warmed[0]["records"] == "1"
    # The shared layer was mounted from the first repository, not uploaded again.
    second_uploads = uploads(backup, f"mirror/docker.io/library/{base}-two")
    assert not any(shared in line for line in second_uploads)
    assert len(second_uploads) == len(second.blobs) - 1
    with open(backup.log_file) as registry_log:
        mounts = [line for line in registry_log if f"mount={shared}" in line]
    assert mounts


@pytest.mark.parametrize("stale", [True, False], ids=["stale", "fresh"])
def test_a_record_left_copying_by_a_dead_replica(
    fake_kube: FakeKube,
    registry_factory: RegistryFactory,
    plain_registry: Registry,
    image_cache: str,
    tls_ca: TLSFiles,
    tmp_path: Path,
    stale: bool,
) -> None:
    """A replica died mid-copy. Once its heartbeat is older than staleAfterSeconds another
    takes the record over and copies; before that, admissions wait and are told to retry."""
    backup = registry_factory(tls=True, auth="basic", access_log=True)
    name = f"orphan{secrets.token_hex(3)}"
    made = images.make_image(image_cache, [50_000], seed=7400, fmt="oci")
    images.push(plain_registry.backdoor_url, f"library/{name}", "1.0", made)
    repository = f"mirror/docker.io/library/{name}"
    now = datetime.datetime.now(datetime.UTC)
    heartbeat = (now - datetime.timedelta(minutes=10) if stale else now).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    record_of_the_dead = record_name(f"{backup.host}/{repository}", made.digest)
    fake_kube.store.create(
        IMAGE_BACKUPS,
        NAMESPACE,
        {
            "metadata": {"name": record_of_the_dead},
            "spec": {
                "source": f"docker.io/library/{name}:1.0",
                "backup": f"{backup.host}/{repository}:1.0@{made.digest}",
                "digest": made.digest,
            },
        },
    )
    fake_kube.store.patch(
        IMAGE_BACKUPS,
        NAMESPACE,
        record_of_the_dead,
        {"status": {"phase": "Copying", "holder": "replica-dead", "heartbeat": heartbeat}},
        "application/merge-patch+json",
        status_only=True,
    )
    with replica(
        tmp_path,
        tls_ca,
        backup,
        plain_registry.url,
        "replica-b",
        admissionBudgetSeconds=2,
        records={"staleAfterSeconds": 30, "heartbeatSeconds": 5},
    ) as hook:
        (answer,) = post_together([(hook, deployment_of(f"{name}:1.0"))])
    (record,) = listed(fake_kube, IMAGE_BACKUPS, NAMESPACE)
    if stale:
        assert answer["allowed"] is True, answer
        assert record["status"]["phase"] == "Ready"
        assert record["status"]["holder"] == "replica-b"
        assert len(uploads(backup, repository)) == len(made.blobs)
    else:
        assert answer["allowed"] is False
        assert (
            "still copying into the backup registry, retry shortly" in answer["status"]["message"]
        )
        assert record["status"]["holder"] == "replica-dead"
        assert uploads(backup, repository) == []
        failed = [
            e for e in listed(fake_kube, EVENTS, "wh-test") if e["reason"] == "ImageBackupFailed"
        ]
        assert len(failed) == 1 and failed[0]["type"] == "Warning"
        assert name in failed[0]["message"]


async def test_without_the_crd_each_replica_copies_on_its_own(
    fake_kube: FakeKube,
    registry_factory: RegistryFactory,
    plain_registry: Registry,
    image_cache: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Records save work; they are not a condition for it."""

    def no_crd(call: Call) -> None:
        if "/image-backup.io/" in call.path:
            raise KubeError(404, "NotFound", "the server could not find the requested resource")

    fake_kube.interceptors.append(no_crd)
    backup = registry_factory(tls=True, auth="basic")
    name = f"lonely{secrets.token_hex(3)}"
    made = images.make_image(image_cache, [20_000], seed=7500, fmt="oci")
    images.push(plain_registry.backdoor_url, f"library/{name}", "1.0", made)
    config = make_config(
        backup,
        sources=[{"host": "docker.io", "endpoint": plain_registry.url, "insecure": True}],
        docker_config=backup.docker_config,
    )
    metrics = Metrics()
    with api_client() as api:
        records = BackupRecords(api, NAMESPACE, "replica-a")
        async with open_engine(config, coordinator=Coordination(records, metrics)) as engine:
            hook = Admission(engine, config, metrics)
            review = deployment_of(f"{name}:1.0")
            with caplog.at_level(logging.WARNING, logger="image_backup.cluster"):
                answer = response_of(await hook.review(body(review), "enforce"), review)
        await records.close()
    assert answer["allowed"] is True
    image = images_of(patched(review, answer)["spec"]["template"]["spec"])["app"]
    assert image.endswith(f"@{made.digest}")
    (warning,) = [r for r in caplog.records if "image_backup_records_unavailable" in r.getMessage()]
    assert "404" in warning.getMessage()
    assert made_by(metrics) == {"uncoordinated": 1.0}


async def test_the_record_of_an_index_names_its_platforms_and_every_blob(
    fake_kube: FakeKube,
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
) -> None:
    amd64 = images.make_image(image_cache, [20_000], seed=7600, fmt="oci")
    arm64 = images.make_image(
        image_cache, [30_000], seed=7601, fmt="oci", platform=("linux", "arm64", "v8")
    )
    index = images.make_index(image_cache, [amd64, arm64], "oci")
    images.push(plain_registry.backdoor_url, unique_repo, "multi", index)
    config = plain_to(plain_registry, basic_registry)
    metrics = Metrics()
    with api_client() as api:
        records = BackupRecords(api, NAMESPACE, "replica-a")
        async with open_engine(config, coordinator=Coordination(records, metrics)) as engine:
            source = parse(f"{plain_registry.host}/{unique_repo}:multi")
            result = await engine.backup(source, deadline=deadline())
        await records.close()
    (record,) = listed(fake_kube, IMAGE_BACKUPS, NAMESPACE)
    assert record["spec"]["backup"] == str(result.backup)
    assert record["spec"]["platforms"] == ["linux/amd64", "linux/arm64/v8"]
    assert set(record["spec"]["blobs"]) == set(index.blobs)
    manifests = len(index.manifest_bytes) + len(amd64.manifest_bytes) + len(arm64.manifest_bytes)
    assert record["spec"]["size"] == manifests + sum(b.size for b in index.blobs.values())
    assert made_by(metrics) == {"this_replica": 1.0}


async def test_a_ready_record_whose_backup_is_gone_is_copied_again(
    fake_kube: FakeKube,
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
) -> None:
    """Someone deleted the backup from the registry (or its garbage collection did): the
    record is not trusted over the registry, and the backup is made again."""
    made = images.make_image(image_cache, [15_000], seed=7700, fmt="oci")
    images.push(plain_registry.backdoor_url, unique_repo, "1.0", made)
    config = plain_to(plain_registry, basic_registry)
    source = parse(f"{plain_registry.host}/{unique_repo}:1.0")
    metrics = Metrics()
    with api_client() as api:
        records = BackupRecords(api, NAMESPACE, "replica-a")
        async with open_engine(config, coordinator=Coordination(records, metrics)) as engine:
            target = engine.target_for(source)
            name = record_name(str(target), made.digest)
            fake_kube.store.create(
                IMAGE_BACKUPS,
                NAMESPACE,
                {
                    "metadata": {"name": name},
                    "spec": {"source": str(source), "backup": "gone", "digest": made.digest},
                },
            )
            fake_kube.store.patch(
                IMAGE_BACKUPS,
                NAMESPACE,
                name,
                {"status": {"phase": "Ready", "holder": "replica-gone"}},
                "application/merge-patch+json",
                status_only=True,
            )
            result = await engine.backup(source, deadline=deadline())
        await records.close()
    assert result.stats.blobs_uploaded == len(made.blobs)
    assert skopeo.inspect_raw_digest(basic_registry, f"{target.path}@{made.digest}") == made.digest
    record = fake_kube.store.get(IMAGE_BACKUPS, NAMESPACE, name)
    assert record["status"]["phase"] == "Ready"
    assert record["status"]["holder"] == "replica-a"
    assert made_by(metrics) == {"this_replica": 1.0}
