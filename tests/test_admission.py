"""The admission logic on the real kube-apiserver samples, copying between real registries."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from tests.admission_helpers import (
    body,
    images_of,
    patched,
    response_of,
    sample,
    with_object,
)
from tests.helpers import make_config
from tests.support import images, skopeo
from tests.support.faultproxy import FaultProxyFactory, delay
from tests.support.registries import Registry, free_port
from webhook.admission.errors import BadReview
from webhook.admission.handler import Admission
from webhook.config import Config
from webhook.engine import open_engine
from webhook.events import EventLog
from webhook.metrics import Metrics
from webhook.reference import MAX_REFERENCE_LENGTH
from webhook.text import quoted

ORIGINALS = "image-backup.io/original-images"


def hub_config(backup: Registry, docker_hub: str, **settings: Any) -> Config:
    """Docker Hub served from a local registry (`endpoint`), a fresh prefix in the backup."""
    config = make_config(
        backup,
        sources=[{"host": "docker.io", "endpoint": docker_hub, "insecure": True}],
        docker_config=backup.docker_config,
        prefix=f"t{secrets.token_hex(4)}",
    )
    return msgspec.structs.replace(config, **settings)


@asynccontextmanager
async def admission(
    config: Config, log_file: Path | None = None
) -> AsyncIterator[tuple[Admission, Metrics]]:
    """The reviewer; with `log_file`, writing its event lines there."""
    metrics = Metrics()
    with ExitStack() as files:
        events = EventLog(files.enter_context(log_file.open("wb")).fileno()) if log_file else None
        async with open_engine(config) as engine:
            yield Admission(engine, config, metrics, events), metrics


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    kind = obj["kind"]
    if kind == "Pod":
        return obj["spec"]  # type: ignore[no-any-return]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return obj["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def backup_repository(reference: str) -> str:
    return reference.split("/", 1)[1].split("@")[0].rsplit(":", 1)[0]


@pytest.mark.parametrize("name", ["deployment-create", "pod-create-bare", "cronjob-create"])
async def test_enforce_backs_up_and_pins_every_image(
    name: str, hub: dict[str, images.Image], plain_registry: Registry, basic_registry: Registry
) -> None:
    review = sample(name)
    config = hub_config(basic_registry, plain_registry.url)
    async with admission(config) as (webhook, metrics):
        response = response_of(await webhook.review(body(review), "enforce"), review)

    assert response["allowed"] is True
    before = review["request"]["object"]
    after = patched(review, response)
    old_images, new_images = images_of(pod_spec(before)), images_of(pod_spec(after))
    assert old_images.keys() == new_images.keys()
    for container, image in new_images.items():
        source = old_images[container]
        expected = hub[f"library/{source}"]  # the samples use official images
        assert image.startswith(
            f"{basic_registry.host}/{config.backup_registry.prefix}/docker.io/library/"
        )
        assert image.endswith(f":{source.split(':')[1]}@{expected.digest}")
        assert (
            skopeo.inspect_raw_digest(
                basic_registry, backup_repository(image) + "@" + expected.digest
            )
            == expected.digest
        )
    # Exactly the image fields and the one annotation changed; nothing in the pod template.
    assert json.loads(after["metadata"]["annotations"][ORIGINALS]) == old_images
    restored = copy.deepcopy(after)
    del restored["metadata"]["annotations"][ORIGINALS]
    for container in pod_spec(restored).get("containers", []):
        container["image"] = old_images[container["name"]]
    assert restored == before
    assert len(response["warnings"]) == len(old_images)
    assert all(len(w) < 256 for w in response["warnings"])
    assert 'result="patched"' in metrics.render()[0].decode()


async def test_reviewing_the_rewritten_object_again_changes_nothing(
    hub: dict[str, images.Image], plain_registry: Registry, basic_registry: Registry
) -> None:
    review = sample("deployment-create")
    async with admission(hub_config(basic_registry, plain_registry.url)) as (webhook, _):
        first = response_of(await webhook.review(body(review), "enforce"), review)
        again = with_object(review, patched(review, first))
        second = response_of(await webhook.review(body(again), "enforce"), again)
        update = with_object(review, patched(review, first), operation="UPDATE")
        third = response_of(await webhook.review(body(update), "enforce"), update)

    for response in (second, third):
        assert response["allowed"] is True
        assert "patch" not in response and "warnings" not in response


async def test_an_update_adds_to_the_recorded_originals(
    hub: dict[str, images.Image], plain_registry: Registry, basic_registry: Registry
) -> None:
    review = sample("deployment-create")
    async with admission(hub_config(basic_registry, plain_registry.url)) as (webhook, _):
        first = response_of(await webhook.review(body(review), "enforce"), review)
        changed = patched(review, first)
        pod_spec(changed)["containers"][0]["image"] = "nginx:1.26"  # a new rollout
        update = with_object(review, changed, operation="UPDATE")
        response = response_of(await webhook.review(body(update), "enforce"), update)

    after = patched(update, response)
    recorded = json.loads(after["metadata"]["annotations"][ORIGINALS])
    assert recorded == {"nginx": "nginx:1.26", "sidecar": "busybox:1.36"}
    assert images_of(pod_spec(after))["nginx"].endswith(hub["library/nginx:1.26"].digest)
    assert images_of(pod_spec(after))["sidecar"] == images_of(pod_spec(changed))["sidecar"]


async def test_cached_backups_answer_without_any_registry(
    hub: dict[str, images.Image],
    plain_registry: Registry,
    basic_registry: Registry,
    fault_proxy: FaultProxyFactory,
) -> None:
    source, target = fault_proxy(plain_registry), fault_proxy(basic_registry)
    config = make_config(
        target,
        sources=[{"host": "docker.io", "endpoint": source.url, "insecure": True}],
        docker_config=target.docker_config,
        prefix=f"t{secrets.token_hex(4)}",
    )
    deployment, pod = sample("deployment-create"), sample("pod-create-bare")
    pod_spec(pod["request"]["object"])["containers"][0]["image"] = "nginx:1.25"
    async with admission(config) as (webhook, metrics):
        await webhook.review(body(deployment), "enforce")
        source.clear_log()
        target.clear_log()
        response = response_of(await webhook.review(body(pod), "enforce"), pod)

    assert source.log == [] and target.log == []
    assert images_of(pod_spec(patched(pod, response)))["main"].endswith(
        hub["library/nginx:1.25"].digest
    )
    assert "image_backup_cache_hits_total 1.0" in metrics.render()[0].decode()


async def test_server_side_dry_run_has_no_side_effects_until_the_backup_exists(
    hub: dict[str, images.Image], plain_registry: Registry, basic_registry: Registry
) -> None:
    dry, real = sample("deployment-create-dryrun"), sample("deployment-create")
    pod_spec(real["request"]["object"])["containers"][0]["image"] = "nginx:1.26"
    config = hub_config(basic_registry, plain_registry.url)
    prefix = config.backup_registry.prefix
    async with admission(config) as (webhook, _):
        before = response_of(await webhook.review(body(dry), "enforce"), dry)
        assert list_backups(basic_registry, prefix) == []  # nothing copied or tagged
        applied = response_of(await webhook.review(body(real), "enforce"), real)
    async with admission(config) as (webhook, _):  # and nothing was cached by the dry run
        after = response_of(await webhook.review(body(dry), "enforce"), dry)

    assert before["allowed"] is True and "patch" not in before
    assert all("would be backed up on a real apply" in w for w in before["warnings"])
    assert after["allowed"] is True
    assert (
        patched(dry, after)["spec"]["template"]["spec"]["containers"][0]["image"]
        == (patched(real, applied)["spec"]["template"]["spec"]["containers"][0]["image"])
    )


def list_backups(registry: Registry, prefix: str) -> list[str]:
    from pathlib import Path

    root = Path(registry.storage_dir) / "docker/registry/v2/repositories" / prefix
    return sorted(str(p) for p in root.rglob("_manifests/tags/*")) if root.exists() else []


async def test_audit_reports_without_copying_or_patching(
    hub: dict[str, images.Image], plain_registry: Registry, basic_registry: Registry
) -> None:
    review = sample("deployment-create")
    config = hub_config(basic_registry, plain_registry.url)
    async with admission(config) as (webhook, metrics):
        response = response_of(await webhook.review(body(review), "audit"), review)

    assert response["allowed"] is True and "patch" not in response
    prefix = f"{basic_registry.host}/{config.backup_registry.prefix}/docker.io/library"
    assert response["warnings"] == [
        f"would back up nginx:1.25 as {prefix}/nginx:1.25",
        f"would back up busybox:1.36 as {prefix}/busybox:1.36",
    ]
    assert json.loads(response["auditAnnotations"]["would-back-up"]) == [
        "nginx:1.25",
        "busybox:1.36",
    ]
    assert list_backups(basic_registry, config.backup_registry.prefix) == []
    assert (
        'image_backup_audit_would_back_up_total{namespace="wh-test"} 2.0'
        in metrics.render()[0].decode()
    )


async def test_a_failed_copy_denies_naming_the_image_and_cause(
    hub: dict[str, images.Image], plain_registry: Registry, basic_registry: Registry
) -> None:
    review = sample("deployment-create")
    pod_spec(review["request"]["object"])["containers"][1]["image"] = "busybox:9.99-missing"
    async with admission(hub_config(basic_registry, plain_registry.url)) as (webhook, _):
        response = response_of(await webhook.review(body(review), "enforce"), review)

    assert response["allowed"] is False
    message = response["status"]["message"]
    assert "busybox:9.99-missing:" in message and "not found" in message
    assert "nginx" not in message  # the image that could be backed up is not blamed


async def test_on_failure_allow_admits_with_warnings(
    hub: dict[str, images.Image], plain_registry: Registry, basic_registry: Registry
) -> None:
    review = sample("deployment-create")
    pod_spec(review["request"]["object"])["containers"][1]["image"] = "busybox:9.99-missing"
    config = hub_config(basic_registry, plain_registry.url, on_failure="allow")
    async with admission(config) as (webhook, metrics):
        response = response_of(await webhook.review(body(review), "enforce"), review)

    assert response["allowed"] is True
    after = images_of(pod_spec(patched(review, response)))
    assert after["sidecar"] == "busybox:9.99-missing"  # left as it was
    assert after["nginx"].endswith(hub["library/nginx:1.25"].digest)  # the rest is pinned
    assert any(
        "admitted without a backup" in w and "busybox:9.99-missing" in w
        for w in response["warnings"]
    )
    assert (
        'image_backup_images_total{outcome="allowed_on_failure"} 1.0'
        in metrics.render()[0].decode()
    )


async def test_copies_outlive_the_budget_and_the_retry_is_fast(
    hub: dict[str, images.Image],
    plain_registry: Registry,
    basic_registry: Registry,
    fault_proxy: FaultProxyFactory,
) -> None:
    source = fault_proxy(plain_registry)
    source.add(delay(1.5, method="GET", path="/blobs/", times=1))
    config = hub_config(basic_registry, source.url, admission_budget_seconds=0.5)
    review = sample("pod-create-bare")
    async with admission(config) as (webhook, _):
        first = response_of(await webhook.review(body(review), "enforce"), review)
        await asyncio.sleep(2)
        retry = with_object(review, review["request"]["object"])
        second = response_of(await webhook.review(body(retry), "enforce"), retry)

    assert first["allowed"] is False and "still copying" in first["status"]["message"]
    assert "alpine:3.19" in first["status"]["message"]
    assert second["allowed"] is True and "patch" in second


@pytest.mark.parametrize(
    ("change", "config_settings"),
    [
        ("namespace", {}),
        ("annotation", {}),
        ("image-glob", {}),
    ],
)
async def test_exclusions_leave_images_alone(
    change: str,
    config_settings: dict[str, Any],
    hub: dict[str, images.Image],
    plain_registry: Registry,
    basic_registry: Registry,
) -> None:
    review = sample("deployment-create")
    config = hub_config(basic_registry, plain_registry.url)
    exclude = config.exclude
    if change == "namespace":
        review["request"]["namespace"] = "kube-system"
    elif change == "annotation":
        review["request"]["object"]["metadata"]["annotations"]["image-backup.io/skip"] = "true"
    else:
        exclude = msgspec.structs.replace(exclude, images=["docker.io/library/*"])
    async with admission(msgspec.structs.replace(config, exclude=exclude)) as (webhook, metrics):
        response = response_of(await webhook.review(body(review), "enforce"), review)
    assert response["allowed"] is True and "patch" not in response
    assert 'image_backup_images_total{outcome="excluded"} 2.0' in metrics.render()[0].decode()


async def test_other_kinds_and_operations_pass_unchanged(basic_registry: Registry) -> None:
    review = sample("deployment-create")
    config_map = with_object(
        review,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}},
        kind={"group": "", "version": "v1", "kind": "ConfigMap"},
    )
    deletion = with_object(review, None, operation="DELETE")  # type: ignore[arg-type]
    async with admission(make_config(basic_registry)) as (webhook, _):
        for request in (config_map, deletion):
            response = response_of(await webhook.review(body(request), "enforce"), request)
            assert response == {"uid": request["request"]["uid"], "allowed": True}


async def test_an_object_with_mistyped_fields_is_denied_saying_where(
    basic_registry: Registry,
) -> None:
    review = sample("deployment-create")
    broken = copy.deepcopy(review["request"]["object"])
    pod_spec(broken)["containers"][1]["image"] = 42
    mistyped = with_object(review, broken)
    # A kind the webhook does not handle may have any shape: it is not read at all.
    custom = with_object(
        review,
        {"kind": "Widget", "spec": {"template": "not an object"}},
        kind={"group": "example.com", "version": "v1", "kind": "Widget"},
    )
    async with admission(make_config(basic_registry)) as (webhook, _):
        denied = response_of(await webhook.review(body(mistyped), "enforce"), mistyped)
        audited = response_of(await webhook.review(body(mistyped), "audit"), mistyped)
        passed = response_of(await webhook.review(body(custom), "enforce"), custom)

    assert denied["allowed"] is False and "patch" not in denied
    message = denied["status"]["message"]
    assert "cannot read this Deployment: " in message
    assert "$.request.object.spec.template.spec.containers[1].image" in message
    assert audited["allowed"] is True and "patch" not in audited
    assert "containers[1].image" in audited["warnings"][0]
    assert passed == {"uid": custom["request"]["uid"], "allowed": True}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "body is not valid JSON"),
        (b"[]", "not an AdmissionReview: Expected `object`, got `array`"),
        (
            b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": '
            b'{"uid": 7, "operation": "CREATE", "kind": {}, "object": {}}}',
            "got `int` - at `$.request.uid`",
        ),
        (
            b'{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}',
            "expected apiVersion",
        ),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}', "has no request"),
        (
            orjson.dumps(
                {
                    "apiVersion": "admission.k8s.io/v1",
                    "kind": "AdmissionReview",
                    "request": {"uid": "u", "operation": "CREATE", "kind": {}},
                }
            ),
            "CREATE request has no object",
        ),
    ],
)
async def test_malformed_reviews_are_refused_with_one_line(
    payload: bytes, reason: str, basic_registry: Registry
) -> None:
    async with admission(make_config(basic_registry)) as (webhook, _):
        with pytest.raises(BadReview) as caught:
            await webhook.review(payload, "enforce")
    assert caught.value.status == 400
    assert reason in caught.value.reason and "\n" not in caught.value.reason


async def test_a_remembered_answer_expires_with_the_tag_it_was_built_on(
    hub: dict[str, images.Image],
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    fault_proxy: FaultProxyFactory,
) -> None:
    source = fault_proxy(plain_registry)
    moving = images.make_image(image_cache, [5_000], seed=950, fmt="oci")
    images.push(plain_registry.backdoor_url, "library/alpine", "edge", hub["library/alpine:3.19"])
    config = hub_config(basic_registry, source.url)
    config = msgspec.structs.replace(
        config, copy_settings=msgspec.structs.replace(config.copy_settings, tag_cache_seconds=2)
    )
    review = sample("pod-create-bare")
    pod_spec(review["request"]["object"])["containers"][0]["image"] = "alpine:edge"
    async with admission(config) as (webhook, metrics):
        first = response_of(await webhook.review(body(review), "enforce"), review)
        source.clear_log()
        again = with_object(review, review["request"]["object"])
        remembered = response_of(await webhook.review(body(again), "enforce"), again)
        assert source.log == []  # answered from memory
        images.push(plain_registry.backdoor_url, "library/alpine", "edge", moving)
        await asyncio.sleep(2.1)
        # Past its lifetime: answered with the old backup while a re-check runs, until the
        # answers made from it end too (within a second).
        answers = []
        for _ in range(100):
            later = with_object(review, review["request"]["object"])
            answers.append(
                (later, response_of(await webhook.review(body(later), "enforce"), later))
            )
            if images_of(pod_spec(patched(*answers[-1])))["main"].endswith(moving.digest):
                break
            await asyncio.sleep(0.05)

    assert remembered["patch"] == first["patch"]
    assert answers[0][1]["patch"] == first["patch"]
    assert images_of(pod_spec(patched(*answers[-1])))["main"].endswith(moving.digest)
    hits = f"image_backup_cache_hits_total {1 + len(answers)}.0"  # no admission waited
    assert hits in metrics.render()[0].decode()


async def test_long_values_from_the_workload_are_quoted_short_everywhere(
    basic_registry: Registry, tmp_path: Path
) -> None:
    """A 100 KB image, a 5 KB container name, a 100 KB object name and uid: the denial, the
    warnings and the log line quote each by its start and size, never whole."""
    image, container = "A" * 100_000, "c" * 5_000
    review = with_object(
        sample("pod-create-bare"),
        {
            "kind": "Pod",
            "metadata": {"name": "n" * 100_000},
            "spec": {"containers": [{"name": container, "image": image}]},
        },
        uid="u" * 100_000,
        name="n" * 100_000,
    )
    log_file = tmp_path / "events.log"
    async with admission(make_config(basic_registry), log_file) as (webhook, _):
        denied = response_of(await webhook.review(body(review), "enforce"), review)
        audited = response_of(await webhook.review(body(review), "audit"), review)
        webhook.flush_records()

    problem = (
        f"{quoted(image)}: invalid image reference: reference is 100000 characters, longer"
        f" than any valid one ({MAX_REFERENCE_LENGTH}: a 255-character name, a 128-character"
        " tag and a digest)"
    )
    assert denied["allowed"] is False
    assert denied["status"]["message"] == f"image-backup: 1 image could not be backed up: {problem}"
    warning = f"could not back up {problem}"
    assert audited["warnings"] == [warning[:254] + "…"]  # a warning is at most 255 characters
    lines = log_file.read_bytes().splitlines()
    assert len(lines) == 2 and all(len(line) < 1_000 for line in lines)
    for line in map(orjson.loads, lines):
        assert line["uid"] == quoted("u" * 100_000)
        assert line["object"] == quoted("wh-test/" + "n" * 100_000)


async def test_made_up_kinds_and_operations_are_counted_as_other(basic_registry: Registry) -> None:
    """A client posting reviews directly cannot add a metric series per request."""
    review = sample("deployment-create")
    async with admission(make_config(basic_registry)) as (webhook, metrics):
        for index in range(3):
            made_up = with_object(
                review,
                {"kind": f"Kind{index}"},
                kind={"group": "x", "version": "v1", "kind": f"Kind{index}"},
                operation=f"OP{index}",
            )
            await webhook.review(body(made_up), "enforce")
        page = metrics.render()[0].decode()
    assert (
        'image_backup_admissions_total{kind="other",mode="enforce",operation="other",'
        'result="allowed"} 3.0' in page
    )
    assert "Kind0" not in page and "OP0" not in page


async def test_answers_from_memory_are_counted_and_logged_with_their_own_operation(
    basic_registry: Registry, tmp_path: Path
) -> None:
    """A CREATE, then UPDATEs of the same object answered from memory: each is an UPDATE in
    the metrics and the log, not the operation of the first request."""
    review = with_object(
        sample("pod-create-bare"),
        {"kind": "Pod", "spec": {"containers": [{"name": "c", "image": "Upper/Case"}]}},
    )
    log_file = tmp_path / "events.log"
    async with admission(make_config(basic_registry), log_file) as (webhook, metrics):
        for operation in ("CREATE", "UPDATE", "UPDATE", "UPDATE"):
            request = with_object(review, review["request"]["object"], operation=operation)
            answer = response_of(await webhook.review(body(request), "enforce"), request)
            assert answer["allowed"] is False
        webhook.flush_records()

    page = metrics.render()[0].decode()
    for operation, count in (("CREATE", 1), ("UPDATE", 3)):
        assert (
            f'image_backup_admissions_total{{kind="Pod",mode="enforce",operation="{operation}",'
            f'result="denied"}} {count}.0' in page
        )
    logged = [orjson.loads(line)["operation"] for line in log_file.read_bytes().splitlines()]
    assert logged == ["CREATE", "UPDATE", "UPDATE", "UPDATE"]


def ephemeral_container_update() -> dict[str, Any]:
    """What `kubectl debug -it bare-pod --image=busybox:1.36 --target=main` sends: an UPDATE
    of the pods/ephemeralcontainers subresource carrying the whole Pod (built from the
    captured Pod; no capture of this request exists)."""
    review = sample("pod-create-bare")
    request = review["request"]
    old = request["object"]
    new = copy.deepcopy(old)
    new["spec"]["ephemeralContainers"] = [
        {
            "name": "debugger-7xk2p",
            "image": "busybox:1.36",
            "targetContainerName": "main",
            "resources": {},
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "imagePullPolicy": "IfNotPresent",
            "stdin": True,
            "tty": True,
        }
    ]
    request.update(
        operation="UPDATE",
        subResource="ephemeralcontainers",
        requestSubResource="ephemeralcontainers",
        object=new,
        oldObject=old,
        options={"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1"},
    )
    return review


async def test_an_ephemeral_container_update_rewrites_only_ephemeral_containers(
    hub: dict[str, images.Image], plain_registry: Registry, basic_registry: Registry
) -> None:
    """The API server keeps only spec.ephemeralContainers from this update: the other
    containers are neither copied, nor patched, nor named in a warning, and no annotation
    (which would be dropped) is added."""
    review = ephemeral_container_update()
    config = hub_config(basic_registry, plain_registry.url)
    async with admission(config) as (webhook, _):
        enforced = response_of(await webhook.review(body(review), "enforce"), review)
        audited = response_of(await webhook.review(body(review), "audit"), review)

    digest = hub["library/busybox:1.36"].digest
    backup = (
        f"{basic_registry.host}/{config.backup_registry.prefix}/docker.io/library/busybox"
        f":1.36@{digest}"
    )
    assert json.loads(base64.b64decode(enforced["patch"])) == [
        {"op": "replace", "path": "/spec/ephemeralContainers/0/image", "value": backup}
    ]
    assert enforced["warnings"] == [f"container 'debugger-7xk2p': busybox:1.36 is now {backup}"]
    backups = list_backups(basic_registry, config.backup_registry.prefix)
    # Only busybox; alpine:3.19, the image of the container "main", was not copied.
    assert backups and all("/docker.io/library/busybox/" in tag for tag in backups)
    assert audited["warnings"] == [f"would back up busybox:1.36 as {backup}"]


async def test_a_denial_names_each_image_once(basic_registry: Registry) -> None:
    """The handler names the image before the registry's reason, which names the registry
    (here: a source registry nothing listens on) but not the image again."""
    image = f"127.0.0.1:{free_port()}/team/app:v1"
    review = with_object(
        sample("pod-create-bare"),
        {"kind": "Pod", "spec": {"containers": [{"name": "app", "image": image}]}},
    )
    config = make_config(basic_registry, sources=[{"host": image.split("/")[0], "insecure": True}])
    async with admission(config) as (webhook, _):
        response = response_of(await webhook.review(body(review), "enforce"), review)

    message = response["status"]["message"]
    assert message.startswith(f"image-backup: 1 image could not be backed up: {image}: ")
    assert message.count("team/app") == 1, message
