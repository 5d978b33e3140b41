"""On OpenShift: ImageStream names, image triggers and OpenShift's own Pods, at admission
and in backfill and status.

The reviews and the ImageStream are the ones captured from a real OpenShift 4.15
openshift-apiserver (tests/data); their loopback registry 127.0.0.1:25000 and its image
digests are replaced by a local registry and images pushed to it. ImageStreams are read
from the fake API server over HTTP, as in a cluster.
"""

from __future__ import annotations

import asyncio
import copy
import json
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from tests.admission_helpers import SAMPLES, body, patched, response_of, sample, with_object
from tests.helpers import make_config
from tests.support import images, skopeo
from tests.support.fakekube import (
    IMAGE_STREAMS,
    Call,
    FakeKube,
    KubeError,
)
from tests.support.registries import Registry
from tests.support.tls import TLSFiles
from tests.support.webhooks import register_webhook, running_webhook
from tests.workloads import api_write, create, opt_in, workload
from webhook.admission.handler import Admission
from webhook.admission.pods import image_fields, pod_spec
from webhook.admission.review import parse_review
from webhook.admission.streams import bare_name
from webhook.admission.triggers import StreamTagName, triggered
from webhook.config import Config
from webhook.engine import open_engine
from webhook.kube.client import KubeError as WebhookKubeError
from webhook.kube.client import api_client
from webhook.kube.imagestreams import ImageStreams, StreamLookup
from webhook.metrics import Metrics

OPENSHIFT_OBJECTS = Path(__file__).resolve().parent / "data" / "openshift"
MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"
OVERLAY_CONFIG = MANIFESTS / "overlays/openshift/openshift.yaml"
CAPTURED_REGISTRY = "127.0.0.1:25000"
# The captured digests, and the images of ours that stand for them.
NEWEST_V1 = "sha256:da31fa05ba8a7eb1e3bff34bc4b6072b503cee1fdac1132f286b0dec74c837b2"
OLDER_V1 = "sha256:846867e3e58423c2a4b87df6ccab3dd83b2794d5c76e958680e192c8c7ed75fa"
CURRENT_V2 = "sha256:8d685bea3b992527e5ba447459e08badb193195d0b53e79a546e6c768d6f3e47"
NAMESPACE = "os-samples"


class Stand:
    """The captured world on local parts: images pushed, text relocated."""

    def __init__(self, registry: Registry, pushed: dict[str, images.Image]) -> None:
        self.registry = registry
        self.pushed = pushed
        self._digests = {
            NEWEST_V1: pushed["samples/app:v1"].digest,
            OLDER_V1: pushed["samples/app:old"].digest,
            CURRENT_V2: pushed["samples/app-c:v1"].digest,
        }

    def relocated(self, document: Any) -> Any:
        text = json.dumps(document).replace(CAPTURED_REGISTRY, self.registry.host)
        for captured, ours in self._digests.items():
            text = text.replace(captured, ours)
        return json.loads(text)

    def digest(self, captured: str) -> str:
        return self._digests[captured]


@pytest.fixture(scope="module")
def stand(plain_registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Stand:
    cache = str(tmp_path_factory.mktemp("openshift-images"))
    pushed = {}
    for seed, name in enumerate(("samples/app:v1", "samples/app:old", "samples/app-c:v1"), 700):
        repository, tag = name.split(":")
        image = images.make_image(cache, [40_000 + seed], seed=seed, fmt="oci")
        images.push(plain_registry.backdoor_url, repository, tag, image)
        pushed[name] = image
    return Stand(plain_registry, pushed)


def stream_object(stand: Stand, **changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = stand.relocated(
        json.loads((OPENSHIFT_OBJECTS / "imagestream-with-history.json").read_text())
    )
    if "local" in changes:
        obj["spec"]["lookupPolicy"]["local"] = changes["local"]
    return obj


def openshift_sample(name: str, stand: Stand) -> dict[str, Any]:
    review: dict[str, Any] = stand.relocated(
        json.loads((SAMPLES / "openshift" / f"{name}.json").read_text())
    )
    return review


def config_for(stand: Stand, backup: Registry, hub: Registry | None = None, **extra: Any) -> Config:
    sources: list[dict[str, Any]] = [{"host": stand.registry.host, "insecure": True}]
    if hub is not None:
        sources.append({"host": "docker.io", "endpoint": hub.url, "insecure": True})
    config = make_config(
        backup,
        sources=sources,
        docker_config=backup.docker_config,
        prefix=f"t{secrets.token_hex(4)}",
    )
    return msgspec.structs.replace(config, **extra)


@asynccontextmanager
async def reviewer(
    config: Config, clock: Callable[[], float] = time.monotonic
) -> AsyncIterator[tuple[Admission, Metrics]]:
    """The reviewer, reading ImageStreams from the fake API server; `clock`: the stream
    cache's."""
    metrics = Metrics()
    with api_client() as api:
        lookup = StreamLookup(ImageStreams(api), ttl=10, clock=clock)
        async with open_engine(config) as engine:
            yield Admission(engine, config, metrics, streams=lookup), metrics


async def review(webhook: Admission, document: dict[str, Any]) -> dict[str, Any]:
    return response_of(await webhook.review(body(document), "enforce"), document)


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]
    return spec["containers"]  # type: ignore[no-any-return]


def backup_repo_of(image: str) -> str:
    return image.split("/", 1)[1].split("@")[0].rsplit(":", 1)[0]


def as_kind(kind: str, image: str) -> dict[str, Any]:
    """A review of `kind` in NAMESPACE whose one container names `image`."""
    if kind == "DeploymentConfig":
        document = sample_openshift_raw("deploymentconfig-create")
    elif kind == "Deployment":
        document = sample("deployment-create")
    else:
        document = sample("pod-create-bare")
    obj = copy.deepcopy(document["request"]["object"])
    obj["metadata"]["namespace"] = NAMESPACE
    containers(obj)[:] = [{"name": "app", "image": image}]
    return with_object(document, obj, namespace=NAMESPACE)


def sample_openshift_raw(name: str) -> dict[str, Any]:
    review: dict[str, Any] = json.loads((SAMPLES / "openshift" / f"{name}.json").read_text())
    return review


@pytest.mark.parametrize("kind", ["Pod", "Deployment", "DeploymentConfig"])
async def test_a_bare_name_is_the_local_lookup_streams_current_image(
    kind: str, stand: Stand, openshift_kube: FakeKube, basic_registry: Registry
) -> None:
    openshift_kube.store.create(IMAGE_STREAMS, NAMESPACE, stream_object(stand))
    config = config_for(stand, basic_registry)
    document = as_kind(kind, "app:v1")
    async with reviewer(config) as (webhook, _):
        response = await review(webhook, document)
    assert response["allowed"] is True, response
    (container,) = containers(patched(document, response))
    current = stand.pushed["samples/app:v1"].digest
    prefix = f"{basic_registry.host}/{config.backup_registry.prefix}/"
    assert (
        container["image"]
        == f"{prefix}{stand.registry.host.replace(':', '_')}/samples/app:v1@{current}"
    )
    assert "from ImageStream app:v1" in response["warnings"][0]
    # The backup repository's tag follows the tag the stream imports from.
    repo = backup_repo_of(container["image"])
    assert skopeo.inspect_raw_digest(basic_registry, f"{repo}:v1") == current


async def test_the_captured_pod_naming_an_imagestream(
    stand: Stand, openshift_kube: FakeKube, basic_registry: Registry
) -> None:
    openshift_kube.store.create(IMAGE_STREAMS, NAMESPACE, stream_object(stand))
    document = openshift_sample("pod-create-imagestream-name", stand)
    async with reviewer(config_for(stand, basic_registry)) as (webhook, _):
        response = await review(webhook, document)
    (container,) = containers(patched(document, response))
    assert container["image"].endswith(f"/samples/app:v1@{stand.pushed['samples/app:v1'].digest}")


@pytest.mark.parametrize(
    ("kind", "where"),
    [("Pod", "object"), ("Deployment", "template"), ("DeploymentConfig", "template")],
)
async def test_the_resolve_names_annotation_resolves_through_any_stream(
    kind: str,
    where: str,
    stand: Stand,
    openshift_kube: FakeKube,
    basic_registry: Registry,
    plain_registry: Registry,
) -> None:
    openshift_kube.store.create(IMAGE_STREAMS, NAMESPACE, stream_object(stand, local=False))
    config = config_for(stand, basic_registry, hub=plain_registry)
    plain = as_kind(kind, "app:v2")
    annotated = copy.deepcopy(plain)
    obj = annotated["request"]["object"]
    metadata = obj["metadata"] if where == "object" else obj["spec"]["template"]["metadata"]
    metadata.setdefault("annotations", {})["alpha.image.policy.openshift.io/resolve-names"] = "*"
    async with reviewer(config) as (webhook, _):
        resolved = await review(webhook, annotated)
        unresolved = await review(webhook, plain)
    (container,) = containers(patched(annotated, resolved))
    assert container["image"].endswith(f"@{stand.pushed['samples/app-c:v1'].digest}")
    assert "/samples/app-c:v1@" in container["image"]
    # Without it, and without local lookup, the name is Docker Hub's (which has no such image).
    assert unresolved["allowed"] is False
    assert (
        "app:v2: reading tag v2 from the source registry docker.io: not found"
        in (unresolved["status"]["message"])
    )


async def test_a_tag_without_an_image_is_a_failure_naming_the_tag(
    stand: Stand, openshift_kube: FakeKube, basic_registry: Registry
) -> None:
    stream = stream_object(stand)
    stream["spec"]["tags"].append({"name": "v3", "from": {"kind": "DockerImage", "name": "x/y:z"}})
    stream["status"]["tags"].append(
        {
            "tag": "v3",
            "items": None,
            "conditions": [
                {
                    "type": "ImportSuccess",
                    "status": "False",
                    "reason": "NotFound",
                    "message": 'dockerimage.image.openshift.io "x/y:z" not found',
                    "generation": 4,
                }
            ],
        }
    )
    openshift_kube.store.create(IMAGE_STREAMS, NAMESPACE, stream)
    async with reviewer(config_for(stand, basic_registry)) as (webhook, _):
        missing_image = await review(webhook, as_kind("Pod", "app:v3"))
        missing_tag = await review(webhook, as_kind("Pod", "app:v9"))
    assert missing_image["allowed"] is False
    message = missing_image["status"]["message"]
    assert "ImageStream app:v3 has no image" in message and '"x/y:z" not found' in message
    assert missing_tag["allowed"] is False
    assert (
        "ImageStream app:v9 has no image: the ImageStream has no such tag"
        in (missing_tag["status"]["message"])
    )


async def test_a_bare_name_without_a_stream_is_still_docker_hubs(
    stand: Stand,
    openshift_kube: FakeKube,
    basic_registry: Registry,
    plain_registry: Registry,
    hub: dict[str, images.Image],
) -> None:
    config = config_for(stand, basic_registry, hub=plain_registry)
    async with reviewer(config) as (webhook, _):
        response = await review(webhook, as_kind("Pod", "nginx:1.25"))
    (container,) = containers(patched(as_kind("Pod", "nginx:1.25"), response))
    assert "/docker.io/library/nginx:1.25@" + hub["library/nginx:1.25"].digest in container["image"]


@pytest.mark.parametrize(
    ("created_by", "filled_by"),
    [
        ("deploymentconfig-create-imagechange-trigger", "deploymentconfig-update-by-image-trigger"),
        ("deployment-create-triggers-annotation", "deployment-update-by-image-trigger"),
    ],
)
async def test_a_triggered_workload_waits_for_its_trigger_then_converges(
    created_by: str,
    filled_by: str,
    stand: Stand,
    openshift_kube: FakeKube,
    basic_registry: Registry,
) -> None:
    openshift_kube.store.create(IMAGE_STREAMS, NAMESPACE, stream_object(stand))
    create = openshift_sample(created_by, stand)
    update = openshift_sample(filled_by, stand)
    async with reviewer(config_for(stand, basic_registry)) as (webhook, metrics):
        created = await review(webhook, create)
        assert created["allowed"] is True and "patch" not in created
        assert "left for its trigger from ImageStreamTag app:v1" in created["warnings"][0]

        filled = await review(webhook, update)
        stored = patched(update, filled)
        (container,) = containers(stored)
        # The trigger wrote an older item of the tag: backed up by digest, the tag not moved.
        older = stand.digest(OLDER_V1)
        assert container["image"].startswith(basic_registry.host)
        assert container["image"].endswith(f"/samples/app@{older}")
        copies = metrics.copies.labels("copied")._value.get()

        # The controller writes the stream's reference again over the rewritten object.
        again = copy.deepcopy(update)
        again["request"]["oldObject"] = stored
        again["request"]["uid"] = "again"
        repeated = await review(webhook, again)
        assert patched(again, repeated) == stored
        assert metrics.copies.labels("copied")._value.get() == copies


async def test_a_triggered_current_image_refreshes_the_backup_tag(
    stand: Stand, openshift_kube: FakeKube, basic_registry: Registry
) -> None:
    openshift_kube.store.create(IMAGE_STREAMS, NAMESPACE, stream_object(stand))
    update = openshift_sample("deploymentconfig-update-by-image-trigger", stand)
    current = stand.pushed["samples/app:v1"].digest
    containers(update["request"]["object"])[0]["image"] = (
        f"{stand.registry.host}/samples/app@{current}"
    )
    async with reviewer(config_for(stand, basic_registry)) as (webhook, _):
        response = await review(webhook, update)
    (container,) = containers(patched(update, response))
    assert container["image"].endswith(f"/samples/app:v1@{current}")
    assert (
        skopeo.inspect_raw_digest(basic_registry, f"{backup_repo_of(container['image'])}:v1")
        == current
    )


@pytest.mark.parametrize(
    "image",
    [
        "quay.io/openshift/origin-deployer:4.15",
        "quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:" + "ab" * 32,
        "quay.io/openshift/okd-content@sha256:" + "cd" * 32,
    ],
)
async def test_openshifts_deployer_and_builder_pods_are_admitted_as_they_are(
    image: str, stand: Stand, openshift_kube: FakeKube, basic_registry: Registry
) -> None:
    exclusions = yaml.safe_load(OVERLAY_CONFIG.read_text())["exclude"]["images"]
    config = config_for(stand, basic_registry)
    config = msgspec.structs.replace(
        config, exclude=msgspec.structs.replace(config.exclude, images=exclusions)
    )
    document = as_kind("Pod", image)
    document["request"]["object"]["metadata"]["annotations"] = {
        "openshift.io/deployment-config.name": "app",
        "openshift.io/deployment.name": "app-1",
    }
    async with reviewer(config) as (webhook, _):
        response = await review(webhook, document)
        user_image = await review(webhook, as_kind("Pod", "quay.io/someone/app:1"))
    assert response["allowed"] is True and "patch" not in response
    assert user_image["allowed"] is False  # only the payload's repositories are excluded


async def test_an_imagestream_update_is_not_held_up(
    stand: Stand, openshift_kube: FakeKube, basic_registry: Registry
) -> None:
    document = openshift_sample("imagestream-update", stand)
    async with reviewer(config_for(stand, basic_registry)) as (webhook, _):
        response = await review(webhook, document)
    assert response == {"uid": document["request"]["uid"], "allowed": True}


def fields_of(document: dict[str, Any]) -> tuple[Any, list[Any]]:
    request = parse_review(body(document))
    assert request.object is not None
    spec = pod_spec(request.group, request.kind, request.object)
    assert spec is not None
    return request, image_fields(request.group, request.kind, spec, sub_resource="")


@pytest.mark.parametrize(
    "field_path",
    [
        'spec.template.spec.containers[?(@.name=="app")].image',
        "spec.template.spec.containers[?(@.name=='app')].image",
        "spec.template.spec.containers[1].image",
    ],
)
def test_the_triggers_annotation_names_its_container(field_path: str) -> None:
    document = sample_openshift_raw("deployment-create-triggers-annotation")
    obj = document["request"]["object"]
    obj["spec"]["template"]["spec"]["containers"].insert(0, {"name": "side", "image": "side:1"})
    trigger = [{"from": {"kind": "ImageStreamTag", "name": "app:v1"}, "fieldPath": field_path}]
    obj["metadata"]["annotations"]["image.openshift.io/triggers"] = json.dumps(trigger)
    request, fields = fields_of(document)
    found = triggered(request.group, request.kind, request.object, fields, NAMESPACE)
    assert found == {
        "/spec/template/spec/containers/1/image": StreamTagName(NAMESPACE, "app", "v1")
    }


@pytest.mark.parametrize(
    "annotation",
    ["not json", "{}", '[{"from": {"kind": "DockerImage", "name": "a:b"}, "fieldPath": "x"}]'],
)
def test_an_unusable_triggers_annotation_names_nothing(annotation: str) -> None:
    document = sample_openshift_raw("deployment-create-triggers-annotation")
    document["request"]["object"]["metadata"]["annotations"]["image.openshift.io/triggers"] = (
        annotation
    )
    request, fields = fields_of(document)
    assert triggered(request.group, request.kind, request.object, fields, NAMESPACE) == {}


def test_only_bare_names_may_name_an_imagestream() -> None:
    assert bare_name("app") == ("app", "latest")
    assert bare_name("app:v1") == ("app", "v1")
    for image in ("library/app:v1", "quay.io/app:v1", "app@sha256:" + "a" * 64, " ", "App:v1"):
        assert bare_name(image) is None, image


def test_the_captured_openshift_workflow_through_serve(
    stand: Stand,
    openshift_kube: FakeKube,
    basic_registry: Registry,
    tmp_path: Path,
    tls_ca: TLSFiles,
) -> None:
    """`serve` registered as the openshift overlay registers it: a triggered
    DeploymentConfig is created, filled by its trigger, updated again by the controller
    (no write), and a Pod naming the ImageStream is stored pinned to its backup."""
    config = config_for(stand, basic_registry)
    opt_in(openshift_kube, NAMESPACE, "enforce")
    openshift_kube.store.create(IMAGE_STREAMS, NAMESPACE, stream_object(stand))
    document = msgspec.to_builtins(config)
    document["backfill"] = {"intervalSeconds": 0}  # admission alone
    with running_webhook(tmp_path, document, tls_ca, env={"POD_NAMESPACE": "image-backup"}) as hook:
        register_webhook(openshift_kube, hook, tls_ca, openshift=True)

        dcs = f"/apis/apps.openshift.io/v1/namespaces/{NAMESPACE}/deploymentconfigs"
        created_dc = openshift_sample("deploymentconfig-create-imagechange-trigger", stand)
        dc = created_dc["request"]["object"]
        for field in ("uid", "resourceVersion", "creationTimestamp", "generation"):
            dc["metadata"].pop(field, None)
        stored = api_write(openshift_kube, "POST", dcs, dc)
        assert containers(stored)[0]["image"] == " "

        trigger = openshift_sample("deploymentconfig-update-by-image-trigger", stand)
        filled = copy.deepcopy(stored)
        filled["spec"] = trigger["request"]["object"]["spec"]
        rewritten = api_write(openshift_kube, "PUT", f"{dcs}/{dc['metadata']['name']}", filled)
        image = containers(rewritten)[0]["image"]
        assert image.startswith(basic_registry.host) and image.endswith(stand.digest(OLDER_V1))

        again = copy.deepcopy(rewritten)
        again["spec"] = trigger["request"]["object"]["spec"]  # the controller's next UPDATE
        answered = api_write(openshift_kube, "PUT", f"{dcs}/{dc['metadata']['name']}", again)
        assert answered["metadata"]["resourceVersion"] == rewritten["metadata"]["resourceVersion"]
        assert answered == rewritten

        pod = openshift_sample("pod-create-imagestream-name", stand)["request"]["object"]
        for field in ("uid", "resourceVersion", "creationTimestamp"):
            pod["metadata"].pop(field, None)
        stored_pod = api_write(openshift_kube, "POST", f"/api/v1/namespaces/{NAMESPACE}/pods", pod)
    current = stand.pushed["samples/app:v1"].digest
    assert containers(stored_pod)[0]["image"].endswith(f"/samples/app:v1@{current}")


async def test_streams_are_remembered_and_refreshed_off_the_hot_path(
    stand: Stand, openshift_kube: FakeKube
) -> None:
    now = [0.0]
    reads = "/apis/image.openshift.io/v1/namespaces/os-samples/imagestreams/app"
    with api_client() as api:
        lookup = StreamLookup(ImageStreams(api), ttl=10, clock=lambda: now[0])
        assert await lookup.stream(NAMESPACE, "app") == (None, 10.0)  # none: remembered too
        openshift_kube.store.create(IMAGE_STREAMS, NAMESPACE, stream_object(stand))
        assert (await lookup.stream(NAMESPACE, "app"))[0] is None
        assert len(openshift_kube.calls_to("GET", reads)) == 1
        now[0] = 11.0  # stale: answered at once, read again in the background
        stale, fresh_until = await lookup.stream(NAMESPACE, "app")
        assert stale is None and fresh_until == 11.0
        for _ in range(100):
            await asyncio.sleep(0.02)
            found, _ = await lookup.stream(NAMESPACE, "app")
            if found is not None:
                break
        assert found is not None and found.local_lookup
        assert len(openshift_kube.calls_to("GET", reads)) == 2


FORBIDDEN = r'403 imagestreams\.image\.openshift\.io "app" is forbidden'


async def test_a_forbidden_stream_read_is_not_asked_again_for_a_while(
    openshift_kube: FakeKube,
) -> None:
    def forbid(call: Call) -> None:
        if "/imagestreams/" in call.path:
            raise KubeError(403, "Forbidden", 'imagestreams.image.openshift.io "app" is forbidden')

    openshift_kube.interceptors.append(forbid)
    with api_client() as api:
        lookup = StreamLookup(ImageStreams(api), ttl=10)
        for name in ("app", "other"):
            with pytest.raises(WebhookKubeError, match=FORBIDDEN):
                await lookup.stream(NAMESPACE, name)
    assert len([c for c in openshift_kube.calls if "/imagestreams/" in c.path]) == 1


async def test_audit_and_dry_run_resolve_names_and_copy_nothing(
    stand: Stand, openshift_kube: FakeKube, basic_registry: Registry
) -> None:
    openshift_kube.store.create(IMAGE_STREAMS, NAMESPACE, stream_object(stand))
    config = config_for(stand, basic_registry)
    document = as_kind("Pod", "app:v1")
    dry_run = copy.deepcopy(document)
    dry_run["request"]["dryRun"] = True
    async with reviewer(config) as (webhook, metrics):
        audit = response_of(await webhook.review(body(document), "audit"), document)
        dry = await review(webhook, dry_run)
    current = stand.pushed["samples/app:v1"].digest
    assert "patch" not in audit
    assert audit["warnings"] == [
        f"would back up app:v1 (from ImageStream app:v1) as {basic_registry.host}/"
        f"{config.backup_registry.prefix}/{stand.registry.host.replace(':', '_')}/samples/app"
        f"@{current}"
    ]
    assert dry["allowed"] is True and "patch" not in dry
    assert "would be backed up on a real apply" in dry["warnings"][0]
    assert metrics.copies.labels("copied")._value.get() == 0
    repo = f"{config.backup_registry.prefix}/{stand.registry.host.replace(':', '_')}/samples/app"
    with pytest.raises(skopeo.SkopeoError, match="manifest unknown"):
        skopeo.inspect_raw_digest(basic_registry, f"{repo}@{current}")


def test_backfill_and_status_decide_as_admission_does(
    stand: Stand, openshift_kube: FakeKube, basic_registry: Registry, tmp_path: Path
) -> None:
    """A Deployment naming an ImageStream is backed up from the stream's image; a
    DeploymentConfig waiting for its trigger is no failure; status says both."""
    config = config_for(stand, basic_registry)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(msgspec.to_builtins(config)))
    opt_in(openshift_kube, NAMESPACE, "enforce")
    openshift_kube.store.create(IMAGE_STREAMS, NAMESPACE, stream_object(stand))
    create(openshift_kube, NAMESPACE, workload("Deployment", "web", {"app": "app:v1"}))
    waiting = openshift_sample("deploymentconfig-create-imagechange-trigger", stand)
    create(openshift_kube, NAMESPACE, waiting["request"]["object"])

    def image_backup(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "webhook", *args, "-o", "json", "--config", str(path)]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    done = image_backup("backfill")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout)
    assert (summary["images"], summary["failures"]) == ({"copied": 1, "excluded": 1}, [])
    current = stand.pushed["samples/app:v1"].digest
    source_host = stand.registry.host.replace(":", "_")
    repo = f"{config.backup_registry.prefix}/{source_host}/samples/app"
    assert skopeo.inspect_raw_digest(basic_registry, f"{repo}:v1") == current

    shown = image_backup("status")
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)["containers"]
    states = {(row["workload"], row["state"], row["backup"]) for row in rows}
    assert states == {
        ("Deployment/web", "backed-up", f"{basic_registry.host}/{repo}:v1@{current}"),
        ("DeploymentConfig/dc-trig", "excluded", ""),
    }


async def test_a_tag_moved_back_to_an_earlier_image_is_moved_back_in_the_backup_too(
    stand: Stand, openshift_kube: FakeKube, basic_registry: Registry
) -> None:
    """The tag goes v1 -> newer -> v1 again upstream; each time the trigger writes the
    stream's current image, the backup repository's tag follows, also back to an image the
    webhook had already backed up (and remembers)."""
    stream = stream_object(stand)
    openshift_kube.store.create(IMAGE_STREAMS, NAMESPACE, stream)
    first, newer = stand.pushed["samples/app:v1"].digest, stand.pushed["samples/app:old"].digest
    update = openshift_sample("deploymentconfig-update-by-image-trigger", stand)
    repo = ""

    def point_tag_at(digest: str) -> None:
        current = openshift_kube.store.get(IMAGE_STREAMS, NAMESPACE, "app")
        items = current["status"]["tags"][0]["items"]
        reference = f"{stand.registry.host}/samples/app@{digest}"
        items.insert(0, {**items[0], "dockerImageReference": reference, "image": digest})
        openshift_kube.store.replace(IMAGE_STREAMS, NAMESPACE, "app", current)

    now = [0.0]
    async with reviewer(config_for(stand, basic_registry), lambda: now[0]) as (webhook, _):
        for step, digest in enumerate((first, newer, first)):
            if step:
                point_tag_at(digest)
                now[0] += 1000  # the stream as it is now, not as remembered
            written = copy.deepcopy(update)
            written["request"]["uid"] = f"step-{step}"
            image = f"{stand.registry.host}/samples/app@{digest}"
            containers(written["request"]["object"])[0]["image"] = image
            response = await review(webhook, written)
            (container,) = containers(patched(written, response))
            assert container["image"].endswith(f"/samples/app:v1@{digest}"), step
            repo = backup_repo_of(container["image"])
            assert skopeo.inspect_raw_digest(basic_registry, f"{repo}:v1") == digest, step
