"""Which admissions put Events on which object: the handler with the real Event recorder,
against the fake API server."""

from __future__ import annotations

import copy
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from tests.admission_helpers import body, response_of, sample, with_object
from tests.helpers import make_config
from tests.support import images
from tests.support.fakekube import EVENTS, FakeKube, Query
from tests.support.registries import Registry
from webhook.admission.decisions import Mode
from webhook.admission.handler import Admission
from webhook.config import Config
from webhook.engine import open_engine
from webhook.kube.client import api_client
from webhook.kube.events import KubeEvents
from webhook.metrics import Metrics

NAMESPACE = "wh-test"  # the samples'


def hub_config(backup: Registry, docker_hub: str) -> Config:
    return make_config(
        backup,
        sources=[{"host": "docker.io", "endpoint": docker_hub, "insecure": True}],
        docker_config=backup.docker_config,
        prefix=f"ev{secrets.token_hex(4)}",
    )


@asynccontextmanager
async def recording(config: Config) -> AsyncIterator[tuple[Admission, KubeEvents]]:
    async with open_engine(config) as engine:
        with api_client() as api:
            events = KubeEvents(api, instance="replica-a")
            try:
                yield Admission(engine, config, Metrics(), notices=events), events
            finally:
                events.close()


def events_in(kube: FakeKube) -> list[dict[str, Any]]:
    items, _ = kube.store.list_objects(Query(EVENTS, NAMESPACE, [], []))
    return items


async def admit(hook: Admission, review: dict[str, Any], mode: Mode = "enforce") -> dict[str, Any]:
    return response_of(await hook.review(body(review), mode), review)


def controller_pod(image: str) -> dict[str, Any]:
    """A Pod as a ReplicaSet creates it: no name yet, a controller owner with a uid."""
    review = sample("pod-create-bare")
    pod = copy.deepcopy(review["request"]["object"])
    del pod["metadata"]["name"]
    pod["metadata"]["generateName"] = "web-5d4f8-"
    pod["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": "web-5d4f8",
            "uid": "0b6b3c2e-5c1f-4a57-9d2c-0c1d7f6b2a11",
            "controller": True,
        }
    ]
    pod["spec"]["containers"] = [{"name": "app", "image": image}]
    pod["spec"].pop("initContainers", None)
    return with_object(review, pod, name="")


async def test_a_backup_is_recorded_on_the_object_by_name_and_failures_as_warnings(
    fake_kube: FakeKube,
    hub: dict[str, images.Image],
    plain_registry: Registry,
    basic_registry: Registry,
) -> None:
    config = hub_config(basic_registry, plain_registry.url)
    review = sample("deployment-create")
    missing = with_object(review, copy.deepcopy(review["request"]["object"]))
    missing["request"]["object"]["spec"]["template"]["spec"]["containers"][0]["image"] = (
        "nginx:no-such-tag"
    )
    async with recording(config) as (hook, _):
        assert (await admit(hook, review))["allowed"] is True
        # The same Deployment again: answered from memory, no second Event.
        again = with_object(review, copy.deepcopy(review["request"]["object"]))
        assert (await admit(hook, again))["allowed"] is True
        denied = await admit(hook, missing)
    assert denied["allowed"] is False

    events = events_in(fake_kube)
    backed_up = [e for e in events if e["reason"] == "ImageBackedUp"]
    failed = [e for e in events if e["reason"] == "ImageBackupFailed"]
    assert len(backed_up) == 1 and len(failed) == 1
    (ok,) = backed_up
    assert ok["type"] == "Normal"
    assert ok["involvedObject"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "namespace": NAMESPACE,
        "name": "web",
    }
    assert ok["count"] == 1 and ok["reportingInstance"] == "replica-a"
    for container in review["request"]["object"]["spec"]["template"]["spec"]["containers"]:
        assert f"{container['image']} as {basic_registry.host}/" in ok["message"]
    (bad,) = failed
    assert bad["type"] == "Warning"
    assert bad["message"] == denied["status"]["message"]
    assert "nginx:no-such-tag" in bad["message"]


async def test_an_update_names_the_uid_and_a_controller_pod_goes_on_its_controller(
    fake_kube: FakeKube,
    hub: dict[str, images.Image],
    plain_registry: Registry,
    basic_registry: Registry,
) -> None:
    config = hub_config(basic_registry, plain_registry.url)
    review = sample("deployment-create")
    deployment = copy.deepcopy(review["request"]["object"])
    deployment["metadata"]["uid"] = "7d3f1a52-2b9e-4c1a-8f0e-3a7f5e2c9b10"
    update = with_object(review, deployment, operation="UPDATE")
    async with recording(config) as (hook, _):
        assert (await admit(hook, update))["allowed"] is True
        assert (await admit(hook, controller_pod("busybox:no-such-tag")))["allowed"] is False
    by_reason = {e["reason"]: e for e in events_in(fake_kube)}
    assert by_reason["ImageBackedUp"]["involvedObject"]["uid"] == deployment["metadata"]["uid"]
    failed = by_reason["ImageBackupFailed"]
    assert failed["involvedObject"] == {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "namespace": NAMESPACE,
        "name": "web-5d4f8",
        "uid": "0b6b3c2e-5c1f-4a57-9d2c-0c1d7f6b2a11",
    }
    assert failed["message"].startswith("Pod web-5d4f8-*: image-backup: 1 image could not")


async def test_audit_and_dry_run_record_no_events(
    fake_kube: FakeKube,
    hub: dict[str, images.Image],
    plain_registry: Registry,
    basic_registry: Registry,
) -> None:
    config = hub_config(basic_registry, plain_registry.url)
    async with recording(config) as (hook, _):
        audited = await admit(hook, sample("deployment-create"), "audit")
        dry = await admit(hook, sample("deployment-create-dryrun"))
        failing_dry = sample("deployment-create-dryrun")
        failing_dry["request"]["object"]["spec"]["template"]["spec"]["containers"][0]["image"] = (
            "nginx:no-such-tag"
        )
        refused = await admit(hook, failing_dry)
    assert audited["allowed"] and dry["allowed"]
    assert refused["allowed"] is False
    assert events_in(fake_kube) == []
