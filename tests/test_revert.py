"""`image-backup revert`: workloads the webhook itself rewrote (admitted through a running
`serve` by the fake API server) are put back to the originals they record, by the command
as an operator runs it, against real registries."""

from __future__ import annotations

import itertools
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
import yaml

from tests.helpers import make_config, tls
from tests.support import images
from tests.support.fakekube import IMAGE_STREAMS, NAMESPACES, SECRETS, Call, FakeKube
from tests.support.registries import Registry, RegistryFactory
from tests.support.tls import TLSFiles
from tests.support.webhooks import register_webhook, running_webhook
from tests.workloads import (
    RESOURCES,
    admit,
    api_write,
    collection,
    opt_in,
    pull_secret,
    workload,
)
from webhook.admission.patch import ORIGINAL_IMAGES
from webhook.admission.pods import POD_SPEC_PATHS

TEAM = "team"
MODE = "image-backup.io/mode"
WEB = {"nginx": "nginx:1.25", "sidecar": "busybox:1.36"}
MERGE = "application/merge-patch+json"
Object = dict[str, Any]


@pytest.fixture(params=["kubernetes"])
def kube(request: pytest.FixtureRequest) -> FakeKube:
    """The fake API server: a plain cluster, or (parametrized "openshift") OpenShift's."""
    name = "openshift_kube" if request.param == "openshift" else "fake_kube"
    found: FakeKube = request.getfixturevalue(name)
    return found


@dataclass
class Stand:
    """A running webhook registered with the fake API server, namespace `team` in enforce,
    and the configuration file both it and the command read."""

    kube: FakeKube
    config: Path
    backup: Registry

    def admit(self, obj: Object) -> Object:
        """Created through the API server: the webhook rewrites it and records originals."""
        stored = admit(self.kube, TEAM, obj)
        assert all(image.startswith(self.backup.host) for image in images_of(stored).values())
        return stored

    def mode(self, mode: str) -> None:
        body = {"metadata": {"labels": {MODE: mode}}}
        self.kube.store.patch(NAMESPACES, "", TEAM, body, MERGE)

    def get(self, kind: str, name: str) -> Object:
        stored: Object = self.kube.store.get(RESOURCES[kind], TEAM, name)
        return stored

    def revert(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "webhook", "revert", *args, "--config", str(self.config)]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)

    def patches(self) -> list[Call]:
        """The PATCH requests sent to workloads (the test's own writes go to the store)."""
        plurals = {resource.plural for resource in RESOURCES.values()}
        return [
            c for c in self.kube.calls if c.method == "PATCH" and c.path.split("/")[-2] in plurals
        ]


@pytest.fixture(params=[False])
def private(
    request: pytest.FixtureRequest, registry_factory: RegistryFactory, image_cache: str
) -> tuple[Registry, str] | None:
    """(parametrized True) A private source registry, whose login the webhook lacks (a
    workload's pull secret has it), and an image in it."""
    if not request.param:
        return None
    registry = registry_factory(tls=True, auth="basic", username="puller")
    made = images.make_image(image_cache, [30_000], seed=7402, fmt="oci")
    images.push(registry.backdoor_url, "team/private", "1.0", made)
    return registry, f"{registry.host}/team/private:1.0"


@pytest.fixture
def stand(
    kube: FakeKube,
    private: tuple[Registry, str] | None,
    hub: dict[str, images.Image],
    plain_registry: Registry,
    basic_registry: Registry,
    tmp_path: Path,
    tls_ca: TLSFiles,
) -> Iterator[Stand]:
    config = make_config(
        basic_registry,
        sources=[
            {"host": "docker.io", "endpoint": plain_registry.url, "insecure": True},
            {"host": plain_registry.host, "insecure": True},  # where ImageStreams' images are
            *([tls(private[0])] if private else []),
        ],
        docker_config=basic_registry.docker_config,
        prefix=f"r{secrets.token_hex(4)}",
    )
    document = msgspec.to_builtins(config)
    document["backfill"] = {"intervalSeconds": 0}  # admission alone
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    opt_in(kube, TEAM, "enforce")
    env = {"POD_NAMESPACE": "image-backup", "POD_NAME": "hook"}
    with running_webhook(tmp_path, document, tls_ca, env=env) as hook:
        register_webhook(kube, hook, tls_ca, openshift=kube.openshift)
        yield Stand(kube, path, basic_registry)


def spec_of(obj: Object) -> Object:
    kind = obj["kind"]
    group = RESOURCES[kind].group
    spec: Object = obj
    for name in POD_SPEC_PATHS[group, kind]:
        spec = spec[name]
    return spec


def images_of(obj: Object) -> dict[str, str]:
    return {c["name"]: c["image"] for c in spec_of(obj)["containers"]}


def recorded(obj: Object) -> dict[str, str] | None:
    value = (obj["metadata"].get("annotations") or {}).get(ORIGINAL_IMAGES)
    return None if value is None else dict(orjson.loads(value))


def touch(stand: Stand, obj: Object) -> Object:
    """An update through the API server (an annotation of our own), admitted as any."""
    path = f"{collection(RESOURCES[obj['kind']], TEAM)}/{obj['metadata']['name']}"
    body = {"metadata": {"annotations": {"touched": "yes"}}}
    return api_write(stand.kube, "PATCH", path, body, content_type=MERGE)


def revert_ops(pointer: str, before: Object, after: dict[str, str]) -> list[Object]:
    """The patch revert sends for containers 0.. of `pointer`'s list, then the annotation."""
    ops: list[Object] = []
    for index, (name, image) in enumerate(images_of(before).items()):
        path = f"{pointer}/{index}/image"
        ops += [
            {"op": "test", "path": path, "value": image},
            {"op": "replace", "path": path, "value": after[name]},
        ]
    annotation = "/metadata/annotations/image-backup.io~1original-images"
    value = before["metadata"]["annotations"][ORIGINAL_IMAGES]
    return [
        *ops,
        {"op": "test", "path": annotation, "value": value},
        {"op": "remove", "path": annotation},
    ]


@pytest.mark.parametrize("kube", ["openshift"], indirect=True)
def test_every_kind_goes_back_to_its_originals_and_an_audit_admission_keeps_them(
    stand: Stand,
) -> None:
    admitted = {kind: stand.admit(workload(kind, kind.lower(), WEB)) for kind in RESOURCES}
    assert all(recorded(obj) == WEB for obj in admitted.values())  # the webhook's own record
    stand.mode("audit")
    sent_at: list[float] = []
    stand.kube.interceptors.append(
        lambda call: sent_at.append(time.monotonic()) if call.method == "PATCH" else None
    )

    done = stand.revert("--apply")

    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    reverted = [kind for kind in RESOURCES if kind != "Job"]
    # A few a second at most: each update may roll a workload out.
    assert len(sent_at) == len(reverted)
    assert all(b - a >= 0.15 for a, b in itertools.pairwise(sent_at))
    for kind in reverted:
        stored = stand.get(kind, kind.lower())
        assert images_of(stored) == WEB, kind
        assert recorded(stored) is None, kind
        for container, image in images_of(admitted[kind]).items():
            where = f"{TEAM}/{kind}/{kind.lower()}"
            assert f"{where}: container {container!r}: {image} -> {WEB[container]}" in lines
    # A Job's pod template cannot change: left as the webhook made it, and said so.
    assert stand.get("Job", "job") == admitted["Job"]
    assert f"{TEAM}/Job/job: skipped: a Job's pod template cannot change" in done.stdout
    assert lines[-1] == (
        f"1 namespaces, {len(RESOURCES)} workloads with recorded images, {2 * len(RESOURCES)} "
        f"images: {2 * len(reverted)} reverted, 0 would revert, 0 changed since, 0 unreadable, "
        "2 skipped, 0 failed"
    )
    # One JSON patch per object, testing each image it replaces and the annotation.
    sent = stand.patches()
    assert len(sent) == len(reverted)
    assert {c.content_type for c in sent} == {"application/json-patch+json"}
    [deployment] = [c for c in sent if c.path.endswith("/deployments/deployment")]
    pointer = "/spec/template/spec/containers"
    assert deployment.body == revert_ops(pointer, admitted["Deployment"], WEB)
    # The audit webhook saw each update and patched nothing; nor does it on the next one.
    for kind in reverted:
        touched = touch(stand, stand.get(kind, kind.lower()))
        assert images_of(touched) == WEB and recorded(touched) is None
        assert touched["metadata"]["annotations"]["touched"] == "yes"
    updates = [
        call
        for call in stand.kube.admission_calls
        if call.review["request"]["operation"] == "UPDATE"
    ]
    assert len(updates) == 2 * len(reverted)
    assert {call.webhook for call in updates} == {"audit.image-backup.io"}
    assert all(call.answer["response"].get("patch") is None for call in updates)


def test_a_dry_run_prints_the_patches_and_apply_is_refused_while_enforced(stand: Stand) -> None:
    web = stand.admit(workload("Deployment", "web", WEB))
    backups = images_of(web)

    dry = stand.revert()
    as_json = stand.revert("-o", "json")
    refused = stand.revert("--apply")

    enforced = (
        "labelled image-backup.io/mode=enforce: the webhook would rewrite every object again at "
        f"once; take the namespace out of enforce first: kubectl label namespace {TEAM} "
        "image-backup.io/mode- (or image-backup.io/mode=audit --overwrite)"
    )
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        f"{TEAM}/Deployment/web: container 'nginx': {backups['nginx']} -> nginx:1.25",
        f"{TEAM}/Deployment/web: container 'sidecar': {backups['sidecar']} -> busybox:1.36",
        f"{TEAM}: --apply would be refused: {enforced}",
        "1 namespaces, 1 workloads with recorded images, 2 images: 0 reverted, 2 would revert, "
        "0 changed since, 0 unreadable, 0 skipped, 0 failed "
        "(dry run: nothing sent; --apply sends the patches)",
    ]
    assert as_json.returncode == 0, as_json.stderr
    [found] = orjson.loads(as_json.stdout)["objects"]
    assert found["path"] == f"{TEAM}/Deployment/web"
    assert found["patch"] == revert_ops("/spec/template/spec/containers", web, WEB)
    assert refused.returncode == 1
    assert refused.stdout.splitlines()[0] == f"{TEAM}: refused: {enforced}"
    assert stand.patches() == []
    assert stand.get("Deployment", "web") == web


def test_an_original_that_cannot_be_read_stays_on_its_backup_unless_forced(
    stand: Stand, plain_registry: Registry, image_cache: str
) -> None:
    name = f"gone-{secrets.token_hex(3)}"
    made = images.make_image(image_cache, [20_000], seed=7400, fmt="oci")
    digest = images.push(plain_registry.backdoor_url, f"library/{name}", "1", made)
    originals = {"app": f"{name}:1", "sidecar": "busybox:1.36"}
    web = stand.admit(workload("Deployment", "web", originals))
    assert images.delete_manifest(plain_registry.backdoor_url, f"library/{name}", digest)
    stand.mode("audit")

    skipped = stand.revert("--apply")
    kept = stand.get("Deployment", "web")
    forced = stand.revert("--apply", "--force")

    assert skipped.returncode == 1, skipped.stdout + skipped.stderr
    [line] = [line for line in skipped.stdout.splitlines() if "'app'" in line]
    assert line.startswith(
        f"{TEAM}/Deployment/web: container 'app': not reverted: {name}:1 cannot be read: "
    )
    assert "not found" in line and line.endswith("(--force reverts it all the same)")
    assert images_of(kept) == {"app": images_of(web)["app"], "sidecar": "busybox:1.36"}
    assert recorded(kept) == {"app": f"{name}:1"}  # still recorded, for a later --force
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert f"container 'app': {images_of(web)['app']} -> {name}:1 (forced: " in forced.stdout
    final = stand.get("Deployment", "web")
    assert images_of(final) == originals and recorded(final) is None


def test_a_container_changed_since_and_what_a_controller_owns_are_left_alone(
    stand: Stand,
) -> None:
    web = stand.admit(workload("Deployment", "web", WEB))
    owned = workload("ReplicaSet", "web-1", WEB)
    owned["metadata"]["ownerReferences"] = [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "controller": True,
         "uid": web["metadata"]["uid"]}
    ]  # fmt: skip
    replica_set = stand.admit(owned)
    stand.mode("audit")
    # Someone moves the sidecar on, in audit: nothing is rewritten, the record stays.
    path = f"{collection(RESOURCES['Deployment'], TEAM)}/web"
    sidecar = "/spec/template/spec/containers/1/image"
    change = [{"op": "replace", "path": sidecar, "value": "busybox:1.37"}]
    api_write(stand.kube, "PATCH", path, change, content_type="application/json-patch+json")

    done = stand.revert("--apply")

    assert done.returncode == 0, done.stdout + done.stderr
    final = stand.get("Deployment", "web")
    assert images_of(final) == {"nginx": "nginx:1.25", "sidecar": "busybox:1.37"}
    assert recorded(final) is None
    assert (
        f"{TEAM}/Deployment/web: container 'sidecar': left alone: busybox:1.37 is not the "
        "backup of busybox:1.36"
    ) in done.stdout.splitlines()
    assert stand.get("ReplicaSet", "web-1") == replica_set
    assert (
        f"{TEAM}/ReplicaSet/web-1: skipped: controlled by Deployment web: revert that instead, "
        "it rolls this"
    ) in done.stdout.splitlines()
    assert done.stdout.splitlines()[-1] == (
        "1 namespaces, 2 workloads with recorded images, 4 images: 1 reverted, 0 would revert, "
        "1 changed since, 0 unreadable, 2 skipped, 0 failed"
    )


def test_a_change_made_while_reverting_fails_the_patch_and_is_kept(stand: Stand) -> None:
    web = stand.admit(workload("Deployment", "web", WEB))
    stand.mode("audit")
    nginx = "/spec/template/spec/containers/0/image"
    meanwhile = [{"op": "replace", "path": nginx, "value": "nginx:1.26"}]

    def someone_else(call: Call) -> None:
        if call.method == "PATCH" and call.path.endswith("/deployments/web"):
            stand.kube.store.patch(
                RESOURCES["Deployment"], TEAM, "web", meanwhile, "application/json-patch+json"
            )

    stand.kube.interceptors.append(someone_else)
    done = stand.revert("--apply")

    assert done.returncode == 1, done.stdout + done.stderr
    [failure] = [line for line in done.stdout.splitlines() if ": failed: " in line]
    assert failure.startswith(
        f"{TEAM}/Deployment/web: failed: not reverted: updating Deployment {TEAM}/web: 422 "
    )
    final = stand.get("Deployment", "web")
    # The other change stands, and nothing of the patch was written.
    assert images_of(final) == {"nginx": "nginx:1.26", "sidecar": images_of(web)["sidecar"]}
    assert recorded(final) == WEB
    assert done.stdout.splitlines()[-1].endswith(
        "0 reverted, 0 would revert, 0 changed since, 0 unreadable, 0 skipped, 2 failed"
    )


def test_a_selector_or_one_object(stand: Stand) -> None:
    labelled = workload("Deployment", "web", WEB)
    labelled["metadata"]["labels"] = {"tier": "front"}
    stand.admit(labelled)
    other = stand.admit(workload("Deployment", "other", WEB))
    stand.mode("audit")

    before = len(stand.kube.calls)
    selected = stand.revert("--apply", "-l", "tier=front")
    selecting = stand.kube.calls[before:]
    untouched = stand.get("Deployment", "other")
    one = stand.revert("--apply", "--namespace", TEAM, "--kind", "deployments", "--name", "other")
    half = stand.revert("--kind", "Deployment", "--name", "other")
    unknown = stand.revert("--namespace", TEAM, "--kind", "Gadget", "--name", "other")
    absent = stand.revert("--namespace", TEAM, "--kind", "Deployment", "--name", "absent")
    nowhere = stand.revert("--namespace", "nowhere")

    assert selected.returncode == 0, selected.stdout + selected.stderr
    assert images_of(stand.get("Deployment", "web")) == WEB
    assert untouched == other
    lists = [c for c in selecting if c.method == "GET" and c.path.endswith(f"/{TEAM}/deployments")]
    assert lists and all(c.query.get("labelSelector") == "tier=front" for c in lists)
    assert one.returncode == 0, one.stdout + one.stderr
    final = stand.get("Deployment", "other")
    assert images_of(final) == WEB and recorded(final) is None
    assert (half.returncode, half.stderr) == (
        2,
        "image-backup: error: --kind and --name name one object: give both, exactly one "
        "--namespace, no --selector\n",
    )
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("image-backup: error: --kind Gadget: not one of ")
    # Read by lists, which is all the webhook's own ClusterRole grants: no GET of one object.
    assert not [c for c in stand.kube.calls if c.method == "GET" and "/other" in c.path]
    assert (absent.returncode, absent.stderr) == (
        1,
        f"image-backup: error: Deployment {TEAM}/absent not found\n",
    )
    assert (nowhere.returncode, nowhere.stderr) == (
        1,
        "image-backup: error: namespace nowhere not found\n",
    )


def test_an_object_the_webhook_rewrites_again_is_a_failure(stand: Stand) -> None:
    web = stand.admit(workload("Deployment", "web", WEB))
    stand.mode("audit")

    def enforced_again(call: Call) -> None:
        if call.method == "PATCH" and call.path.endswith("/deployments/web"):
            stand.mode("enforce")

    stand.kube.interceptors.append(enforced_again)
    done = stand.revert("--apply")

    assert done.returncode == 1, done.stdout + done.stderr
    [failure] = [line for line in done.stdout.splitlines() if ": failed: " in line]
    rewritten = f"{TEAM}/Deployment/web: failed: the update was admitted with {stand.backup.host}/"
    assert failure.startswith(rewritten) and failure.endswith("(is the namespace enforced again?)")
    assert images_of(stand.get("Deployment", "web")) == images_of(web)


@pytest.mark.parametrize("kube", ["openshift"], indirect=True)
def test_an_imagestream_name_goes_back_as_written_unchecked_at_docker_hub(
    stand: Stand, plain_registry: Registry, image_cache: str
) -> None:
    made = images.make_image(image_cache, [20_000], seed=7401, fmt="oci")
    repository = f"samples/app-{secrets.token_hex(3)}"
    digest = images.push(plain_registry.backdoor_url, repository, "v1", made)
    item = {"created": "2026-11-30T17:11:05Z", "generation": 1, "image": digest,
            "dockerImageReference": f"{plain_registry.host}/{repository}@{digest}"}  # fmt: skip
    stream = {
        "metadata": {"name": "app"},
        "spec": {"lookupPolicy": {"local": True}},
        "status": {"tags": [{"tag": "v1", "items": [item]}]},
    }
    stand.kube.store.create(IMAGE_STREAMS, TEAM, stream)
    web = stand.admit(workload("Deployment", "web", {"app": "app:v1"}))
    backup = images_of(web)["app"]
    assert backup.endswith(f"/{repository}@{digest}")  # the stream's image, not Docker Hub's
    stand.mode("audit")

    done = stand.revert("--apply")

    # docker.io/library/app does not exist: had it been checked, it would be unreadable.
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{TEAM}/Deployment/web: container 'app': {backup} -> app:v1" in done.stdout
    final = stand.get("Deployment", "web")
    assert images_of(final) == {"app": "app:v1"} and recorded(final) is None


@pytest.mark.parametrize("private", [True], indirect=True)
def test_an_original_is_read_with_the_workloads_own_pull_secret(
    stand: Stand, private: tuple[Registry, str]
) -> None:
    registry, image = private
    stand.kube.store.create(SECRETS, TEAM, pull_secret(registry))
    pulled_with = {"imagePullSecrets": [{"name": "private-pull"}]}
    stand.admit(workload("Deployment", "web", {"app": image}, **pulled_with))
    stand.mode("audit")

    done = stand.revert("--apply")

    # The configured login cannot read it: only the pull secret shows it is still there.
    assert done.returncode == 0, done.stdout + done.stderr
    final = stand.get("Deployment", "web")
    assert images_of(final) == {"app": image} and recorded(final) is None
