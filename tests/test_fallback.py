"""The day the source is gone: admissions run from the backup, to namespaces that may have it.

The source is a real registry behind the fault proxy (stopped, 503, 429, a deleted tag);
the backup registry is real; the ImageBackup records, where a test has them, live in the
fake API server. Each fallback is reviewed by a fresh webhook (a new replica, or a new
cluster): nothing is answered from memory.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from tests.admission_helpers import body, patched, response_of, sample, with_object
from tests.helpers import make_config
from tests.support import images
from tests.support.fakekube import EVENTS, IMAGE_BACKUPS, FakeKube, Query
from tests.support.faultproxy import FaultProxy, FaultProxyFactory, status
from tests.support.registries import Registry
from tests.workloads import create, opt_in, workload
from webhook.admission.handler import Admission
from webhook.cluster import Coordination
from webhook.config import Config
from webhook.engine import open_engine
from webhook.kube.client import api_client
from webhook.kube.events import KubeEvents
from webhook.kube.records import BackupRecords
from webhook.metrics import Metrics

MANIFEST_UNKNOWN = (
    b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":"v1"}]}'
)


def config_for(source: FaultProxy, backup: Registry, **settings: Any) -> Config:
    public = settings.pop("public", False)
    config = make_config(
        backup,
        sources=[{"host": source.host, "insecure": True, "public": public}],
        docker_config=backup.docker_config,
        prefix=f"f{secrets.token_hex(4)}",
    )
    return msgspec.structs.replace(config, **settings)


def pod(image: str, namespace: str = "team", **request: Any) -> dict[str, Any]:
    review = sample("pod-create-bare")
    obj = review["request"]["object"]
    obj["metadata"]["namespace"] = namespace
    obj["spec"]["containers"] = [{**obj["spec"]["containers"][0], "name": "app", "image": image}]
    return with_object(review, obj, namespace=namespace, **request)


@asynccontextmanager
async def webhook(
    config: Config, records: BackupRecords | None = None, notices: KubeEvents | None = None
) -> AsyncIterator[tuple[Admission, Metrics]]:
    """A fresh replica: its own engine, nothing remembered; with `records`, coordinated
    through them as in a cluster (each copy recorded)."""
    metrics = Metrics()
    coordinator = Coordination(records, metrics) if records is not None else None
    async with open_engine(config, coordinator=coordinator) as engine:
        yield (
            Admission(engine, config, metrics, uses=records, recorded=records, notices=notices),
            metrics,
        )


async def admit(hook: Admission, review: dict[str, Any]) -> dict[str, Any]:
    return response_of(await hook.review(body(review), "enforce"), review)


def image_of(review: dict[str, Any], response: dict[str, Any]) -> str:
    image: str = patched(review, response)["spec"]["containers"][0]["image"]
    return image


@pytest.fixture
def source(
    fault_proxy: FaultProxyFactory, plain_registry: Registry, unique_repo: str, image_cache: str
) -> tuple[FaultProxy, str, str]:
    """A source behind the fault proxy holding `repo:v1`: (proxy, image, digest)."""
    proxy = fault_proxy(plain_registry)
    image = images.make_image(image_cache, [30_000], seed=hash(unique_repo) % 10_000, fmt="oci")
    digest = images.push(plain_registry.backdoor_url, unique_repo, "v1", image)
    return proxy, f"{proxy.host}/{unique_repo}:v1", digest


GONE = {
    "stopped": None,
    "503": status(503, body=b"down for maintenance"),
    "429": status(429, {"Retry-After": "3600"}),
    "tag deleted": status(404, {"Content-Type": "application/json"}, MANIFEST_UNKNOWN),
}


@pytest.mark.parametrize("how", list(GONE))
async def test_a_public_source_gone_runs_from_its_backup(
    how: str, source: tuple[FaultProxy, str, str], basic_registry: Registry
) -> None:
    proxy, image, digest = source
    config = config_for(proxy, basic_registry, public=True)
    async with webhook(config) as (hook, _):
        backed_up = image_of(pod(image), await admit(hook, pod(image)))
    rule = GONE[how]
    if rule is None:
        proxy.stop()
    else:
        proxy.add(rule)

    async with webhook(config) as (hook, metrics):
        review = pod(image)
        response = await admit(hook, review)
    assert response["allowed"] is True, response
    assert image_of(review, response) == backed_up
    assert backed_up.endswith(f":v1@{digest}")
    (warning,) = response["warnings"]
    reason = "not_found" if how == "tag deleted" else "unavailable"
    words = "source has no such image" if how == "tag deleted" else "source unreachable"
    assert warning == (f"container 'app': {words}; running from the backup of {image} ({digest})")
    assert f'image_backup_fallbacks_total{{reason="{reason}"}} 1.0' in metrics.render()[0].decode()


async def test_by_digest_the_backup_of_that_digest(
    source: tuple[FaultProxy, str, str], basic_registry: Registry
) -> None:
    proxy, image, digest = source
    pinned = f"{image.rsplit(':', 1)[0]}@{digest}"
    config = config_for(proxy, basic_registry, public=True)
    async with webhook(config) as (hook, _):
        await admit(hook, pod(pinned))
    proxy.stop()
    async with webhook(config) as (hook, _):
        response = await admit(hook, pod(pinned))
    assert image_of(pod(pinned), response).endswith(f"@{digest}")


async def test_no_backup_means_the_denial_stands(
    source: tuple[FaultProxy, str, str], basic_registry: Registry
) -> None:
    proxy, image, _ = source
    proxy.stop()
    async with webhook(config_for(proxy, basic_registry, public=True)) as (hook, metrics):
        response = await admit(hook, pod(image))
    assert response["allowed"] is False
    assert (
        f"{image}: reading tag v1 from the source registry {proxy.host}"
        in (response["status"]["message"])
    )
    assert "image_backup_fallbacks_total{" not in metrics.render()[0].decode()


async def test_fallback_deny_keeps_denying(
    source: tuple[FaultProxy, str, str], basic_registry: Registry
) -> None:
    proxy, image, _ = source
    config = config_for(proxy, basic_registry, public=True, fallback="deny")
    async with webhook(config) as (hook, _):
        await admit(hook, pod(image))
    proxy.stop()
    async with webhook(config) as (hook, _):
        response = await admit(hook, pod(image))
    assert response["allowed"] is False


async def test_a_source_that_refuses_the_credentials_is_not_gone(
    source: tuple[FaultProxy, str, str], basic_registry: Registry
) -> None:
    proxy, image, _ = source
    config = config_for(proxy, basic_registry, public=True)
    async with webhook(config) as (hook, _):
        await admit(hook, pod(image))
    proxy.add(status(401, {"Www-Authenticate": 'Basic realm="x"'}))
    async with webhook(config) as (hook, _):
        response = await admit(hook, pod(image))
    assert response["allowed"] is False
    assert "running from the backup" not in str(response)


async def test_a_dry_run_shows_the_fallback_patch_and_counts_nothing(
    source: tuple[FaultProxy, str, str], basic_registry: Registry
) -> None:
    proxy, image, digest = source
    config = config_for(proxy, basic_registry, public=True)
    async with webhook(config) as (hook, _):
        await admit(hook, pod(image))
    proxy.stop()
    async with webhook(config) as (hook, metrics):
        review = pod(image, dryRun=True)
        response = await admit(hook, review)
    assert image_of(review, response).endswith(f":v1@{digest}")
    assert "image_backup_fallbacks_total{" not in metrics.render()[0].decode()


async def test_a_private_sources_backup_goes_only_to_namespaces_that_read_it(
    source: tuple[FaultProxy, str, str], basic_registry: Registry, fake_kube: FakeKube
) -> None:
    """With records: the namespace that backed the image up runs from it; another, which
    never read the source, is denied with the reason. Without records (a new cluster),
    nobody gets a private source's backup."""
    proxy, image, digest = source
    config = config_for(proxy, basic_registry)
    async with AsyncExitStack() as stack:
        api = stack.enter_context(api_client())
        records = BackupRecords(api, "image-backup", "replica-a")
        stack.push_async_callback(records.close)
        async with webhook(config, records) as (hook, _):
            await admit(hook, pod(image, "team"))
            hook.flush_records()
        await records.touch_used()  # what the background loop writes within a minute
        proxy.stop()
        events = KubeEvents(api, instance="replica-a")
        async with webhook(config, records, events) as (hook, _):
            reader = await admit(hook, pod(image, "team"))
            stranger = await admit(hook, pod(image, "other"))
        await asyncio.to_thread(events.close)  # sends what is queued
    assert reader["allowed"] is True
    assert image_of(pod(image, "team"), reader).endswith(f":v1@{digest}")
    assert " taken 20" in reader["warnings"][0]  # the record's date
    assert stranger["allowed"] is False
    message = stranger["status"]["message"]
    assert "a backup exists" in message and f"@{digest}" in message
    assert f"namespace other was never shown to read {proxy.host}" in message
    (event,) = [
        e
        for e in fake_kube.store.list_objects(Query(EVENTS, "team", [], []))[0]
        if e["reason"] == "ImageBackupFallback"
    ]
    assert event["type"] == "Warning"
    assert f"from the source registry {proxy.host}" in event["message"]
    assert f"running from the backup of {image}" in event["message"]

    async with webhook(config) as (hook, _):  # no records to ask
        response = await admit(hook, pod(image, "team"))
    assert response["allowed"] is False
    assert "namespace team was never shown to read" in response["status"]["message"]


def test_a_backfill_pass_records_the_namespaces_that_read_each_source(
    source: tuple[FaultProxy, str, str],
    basic_registry: Registry,
    fake_kube: FakeKube,
    tmp_path: Path,
) -> None:
    proxy, image, digest = source
    config = config_for(proxy, basic_registry)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(msgspec.to_builtins(config)))
    for namespace in ("team", "other"):
        opt_in(fake_kube, namespace, "enforce")
    create(fake_kube, "team", workload("Deployment", "web", {"app": image}))
    command = [sys.executable, "-m", "webhook", "backfill", "--config", str(path)]
    env = {**os.environ, "POD_NAMESPACE": "image-backup"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    (record,) = fake_kube.store.list_objects(Query(IMAGE_BACKUPS, "image-backup", [], []))[0]
    assert record["spec"]["digest"] == digest
    assert record["spec"]["readBy"] == ["team"]


async def test_records_recreated_from_an_export_say_who_may_run_from_a_backup(
    source: tuple[FaultProxy, str, str], basic_registry: Registry, fake_kube: FakeKube
) -> None:
    """A new cluster: the backup registry holds the image, and the records are created
    again from an export (kubectl create drops their status)."""
    proxy, image, digest = source
    config = config_for(proxy, basic_registry)
    async with AsyncExitStack() as stack:
        api = stack.enter_context(api_client())
        records = BackupRecords(api, "image-backup", "old-cluster")
        stack.push_async_callback(records.close)
        async with webhook(config, records) as (hook, _):
            await admit(hook, pod(image, "team"))
            hook.flush_records()
        await records.touch_used()
        (exported,) = fake_kube.store.list_objects(Query(IMAGE_BACKUPS, "image-backup", [], []))[0]
        fake_kube.store.delete(IMAGE_BACKUPS, "image-backup", exported["metadata"]["name"])
        proxy.stop()
        recreated = {"metadata": {"name": exported["metadata"]["name"]}, "spec": exported["spec"]}
        fake_kube.store.create(IMAGE_BACKUPS, "image-backup", recreated)
        async with webhook(config, records) as (hook, _):
            response = await admit(hook, pod(image, "team"))
    assert response["allowed"] is True, response
    assert image_of(pod(image, "team"), response).endswith(f":v1@{digest}")
