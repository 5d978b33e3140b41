"""Backfill: a pass over what already runs, through the fake API server (the real client)
and real registries; and `image-backup status`, which reports on the same workloads."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
import yaml

from tests.admission_helpers import SAMPLE_IMAGES, patched
from tests.helpers import make_config, tls
from tests.support import images, skopeo
from tests.support.fakekube import (
    DEPLOYMENTS,
    EVENTS,
    IMAGE_BACKUPS,
    LEASES,
    SECRETS,
    FakeKube,
    Query,
)
from tests.support.registries import Registry, RegistryFactory
from tests.support.tls import TLSFiles
from tests.support.webhooks import Webhook, register_webhook, running_webhook
from tests.workloads import KUBERNETES_KINDS, RESOURCES, create, opt_in, pull_secret, workload
from webhook.admission.patch import ORIGINAL_IMAGES
from webhook.backfill import BACKFILLED, Backfill, Summary
from webhook.cluster import Cluster, connect
from webhook.config import Config
from webhook.engine import open_engine
from webhook.kube.client import api_client
from webhook.kube.workloads import Workloads
from webhook.metrics import Metrics
from webhook.reference import parse

TEAM, WATCH, OTHER = "team", "watch", "other"


@pytest.fixture
def private(registry_factory: RegistryFactory, image_cache: str) -> tuple[Registry, str]:
    """A private source registry (TLS, htpasswd) the webhook has no login for, and an image
    in it, readable only with a workload's pull secret."""
    registry = registry_factory(tls=True, auth="basic", username="puller")
    made = images.make_image(image_cache, [30_000], seed=7300, fmt="oci")
    images.push(registry.backdoor_url, "team/private", "1.0", made)
    return registry, f"{registry.host}/team/private:1.0"


@pytest.fixture
def audit_only(plain_registry: Registry, image_cache: str) -> str:
    """An image only the audit namespace runs (so what audit did not copy can be checked)."""
    made = images.make_image(image_cache, [20_000], seed=7301, fmt="oci")
    name = f"library/audit-only-{secrets.token_hex(3)}"
    images.push(plain_registry.backdoor_url, name, "1", made)
    return f"{name}:1"


def config_for(backup: Registry, hub: Registry, private: Registry, **settings: Any) -> Config:
    config = make_config(
        backup,
        sources=[{"host": "docker.io", "endpoint": hub.url, "insecure": True}, tls(private)],
        docker_config=backup.docker_config,
        prefix=f"b{secrets.token_hex(4)}",
    )
    exclude = msgspec.structs.replace(config.exclude, images=["docker.io/library/alpine:*"])
    return msgspec.structs.replace(config, exclude=exclude, **settings)


def populate(
    kube: FakeKube, *, backup: str, private: tuple[Registry, str], audit_image: str
) -> None:
    """Namespace `team` (enforce): one object of every kind, an image already a backup, one
    excluded, one missing at the source, one private. `watch` (audit), `other` (not opted
    in), and kube-system (enforce, but excluded by the default configuration)."""
    hub = [f"docker.io/{name}" for name in SAMPLE_IMAGES]  # nginx 1.25, 1.26, busybox, alpine
    opt_in(kube, TEAM, "enforce")
    for index, kind in enumerate(KUBERNETES_KINDS):
        create(kube, TEAM, workload(kind, f"w{index}", {"main": hub[index % 3]}))
    create(kube, TEAM, workload("Deployment", "excluded", {"main": hub[3]}))
    create(kube, TEAM, workload("Deployment", "pinned", {"main": backup}))
    create(kube, TEAM, workload("DaemonSet", "broken", {"main": "docker.io/library/ghost:0"}))
    registry, private_image = private
    kube.store.create(SECRETS, TEAM, pull_secret(registry))
    pulled_with = {"imagePullSecrets": [{"name": "private-pull"}]}
    create(kube, TEAM, workload("Job", "private", {"main": private_image}, **pulled_with))
    opt_in(kube, WATCH, "audit")
    create(kube, WATCH, workload("Deployment", "audited", {"main": audit_image}))
    opt_in(kube, OTHER, None)
    create(kube, OTHER, workload("Deployment", "ignored", {"main": audit_image}))
    opt_in(kube, "kube-system", "enforce")
    create(kube, "kube-system", workload("Pod", "system", {"main": audit_image}))


@asynccontextmanager
async def cluster_for(config: Config) -> AsyncIterator[Cluster]:
    async with connect(config, Metrics()) as cluster:
        assert cluster is not None
        yield cluster


async def backfill(config: Config, **run: Any) -> Summary:
    async with (
        cluster_for(config) as cluster,
        open_engine(config, coordinator=cluster.coordinator) as engine,
    ):
        backfill = Backfill(
            engine, cluster.workloads, config, pull=cluster.pull, notices=cluster.events
        )
        return await backfill.run(**run)


def events_in(kube: FakeKube, namespace: str) -> list[dict[str, Any]]:
    items, _ = kube.store.list_objects(Query(EVENTS, namespace, [], []))
    return items


def workload_writes(kube: FakeKube) -> list[str]:
    """Writes to workloads through the API (the test's own setup goes to the store)."""
    plurals = {resource.plural for resource in RESOURCES.values()}
    return [
        f"{call.method} {call.path}"
        for call in kube.calls
        if call.method != "GET" and call.path.rstrip("/").split("/")[-2:][0] in plurals
    ]


def holds(backup: Registry, config: Config, image: str) -> bool:
    """Whether the backup registry has any tag in the repository `image` is backed up to."""
    repository = config.backup_registry.scheme().repository_for(parse(image))
    return bool(images.tags(backup.backdoor_url, repository))


def backup_of(config: Config, image: str, digest: str) -> str:
    """The pinned backup reference, as the naming scheme makes it."""
    return str(config.backup_registry.scheme().reference_for(parse(image), digest))


@pytest.fixture
def populated(
    fake_kube: FakeKube,
    hub: dict[str, images.Image],
    plain_registry: Registry,
    basic_registry: Registry,
    private: tuple[Registry, str],
    audit_only: str,
) -> Config:
    """The cluster of `populate`, and the configuration that backs it up."""
    config = config_for(basic_registry, plain_registry, private[0])
    pinned = backup_of(config, "docker.io/library/nginx:1.25", hub["library/nginx:1.25"].digest)
    populate(fake_kube, backup=pinned, private=private, audit_image=audit_only)
    return config


async def test_a_pass_backs_up_what_enforce_namespaces_run_and_changes_nothing(
    populated: Config,
    fake_kube: FakeKube,
    hub: dict[str, images.Image],
    basic_registry: Registry,
    private: tuple[Registry, str],
    audit_only: str,
) -> None:
    config = populated

    summary = await backfill(config)

    # Every kind in `team`, the audit namespace and kube-system (excluded); not `other`.
    assert (summary.namespaces, summary.workloads) == (3, len(KUBERNETES_KINDS) + 6)
    # nginx 1.25 and 1.26, busybox and the private image are copied, once each; the kinds
    # that share an image and were decided while its copy ran joined it ("copied" too).
    copied = summary.images.pop("copied")
    assert copied + summary.images.pop("backed_up", 0) == len(KUBERNETES_KINDS) + 1
    assert copied >= 4
    assert summary.images == {
        "protected": 1,
        "excluded": 2,  # alpine (by image), kube-system's Pod (by namespace)
        "would_back_up": 1,  # audit
        "failed": 1,
    }
    [failure] = summary.failures
    assert failure.startswith("team/DaemonSet/broken: docker.io/library/ghost:0: ")
    assert "not found" in failure
    for name in ("library/nginx:1.25", "library/nginx:1.26", "library/busybox:1.36"):
        repository = config.backup_registry.scheme().repository_for(parse(f"docker.io/{name}"))
        tag = name.split(":")[1]
        assert skopeo.inspect_raw_digest(basic_registry, f"{repository}:{tag}") == hub[name].digest
    assert not holds(basic_registry, config, f"docker.io/{audit_only}")
    assert workload_writes(fake_kube) == []  # nothing rolls out
    records, _ = fake_kube.store.list_objects(Query(IMAGE_BACKUPS, "image-backup", [], []))
    assert sorted(r["spec"]["source"] for r in records if r["status"]["phase"] == "Ready") == (
        sorted([*(f"docker.io/{n}" for n in list(SAMPLE_IMAGES)[:3]), private[1]])
    )
    events = {(e["involvedObject"]["name"], e["reason"]): e for e in events_in(fake_kube, TEAM)}
    assert "docker.io/library/ghost:0" in events["broken", "ImageBackupFailed"]["message"]
    assert events["broken", "ImageBackupFailed"]["type"] == "Warning"
    assert private[1] in events["private", "ImageBackedUp"]["message"]


async def test_audit_and_dry_run_copy_nothing(
    populated: Config,
    fake_kube: FakeKube,
    basic_registry: Registry,
    private: tuple[Registry, str],
    audit_only: str,
) -> None:
    config = populated

    summary = await backfill(config, dry_run=True)

    assert summary.images["copied"] == 0 and summary.images["backed_up"] == 0
    assert summary.images["would_back_up"] == len(KUBERNETES_KINDS) + 1 + 1  # + private, audit
    for name in [*SAMPLE_IMAGES, audit_only]:
        assert not holds(basic_registry, config, f"docker.io/{name}")
    assert not holds(basic_registry, config, private[1])
    assert events_in(fake_kube, TEAM) == []
    assert fake_kube.store.list_objects(Query(IMAGE_BACKUPS, "image-backup", [], []))[0] == []


async def test_a_namespace_can_be_named_and_pages_are_followed(
    fake_kube: FakeKube,
    hub: dict[str, images.Image],
    plain_registry: Registry,
    basic_registry: Registry,
    private: tuple[Registry, str],
) -> None:
    config = config_for(basic_registry, plain_registry, private[0])
    opt_in(fake_kube, TEAM, "enforce")
    opt_in(fake_kube, WATCH, "audit")
    for index in range(7):
        create(fake_kube, TEAM, workload("Pod", f"p{index}", {"main": "busybox:1.36"}))
        create(fake_kube, WATCH, workload("Pod", f"p{index}", {"main": "busybox:1.36"}))
    with api_client() as api:
        workloads = Workloads(api, page_size=3)  # several pages of one kind
        async with open_engine(config) as engine:
            summary = await Backfill(engine, workloads, config).run(namespaces=[TEAM])
    assert (summary.namespaces, summary.workloads) == (1, 7)
    assert summary.images["copied"] + summary.images["backed_up"] == 7
    pods = [c for c in fake_kube.calls if c.path.endswith(f"/namespaces/{TEAM}/pods")]
    assert [c.query.get("limit") for c in pods] == ["3", "3", "3"]
    assert [bool(c.query.get("continue")) for c in pods] == [False, True, True]


async def test_deploymentconfigs_where_the_api_has_them(
    hub: dict[str, images.Image],
    plain_registry: Registry,
    basic_registry: Registry,
    private: tuple[Registry, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kube = FakeKube.start(openshift=True)
    try:
        monkeypatch.setenv("KUBECONFIG", kube.write_kubeconfig(tmp_path / "kubeconfig"))
        config = config_for(basic_registry, plain_registry, private[0])
        opt_in(kube, TEAM, "enforce")
        create(kube, TEAM, workload("DeploymentConfig", "dc", {"main": "nginx:1.26"}))
        summary = await backfill(config)
    finally:
        kube.stop()
    assert (summary.workloads, summary.images) == (1, {"copied": 1})


def test_the_cli_pass_and_status(
    populated: Config,
    fake_kube: FakeKube,
    basic_registry: Registry,
    tmp_path: Path,
) -> None:
    config = populated
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_document(config)))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "webhook", *args, "--config", str(path)]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)

    before = cli("status", "-o", "json")
    done = cli("backfill", "--namespace", TEAM)
    after = cli("status")

    assert before.returncode == 0, before.stderr
    assert orjson.loads(before.stdout)["summary"] == {
        "protected": 1,
        "backed-up": 0,
        "unprotected": len(KUBERNETES_KINDS) + 1 + 1 + 1,  # + broken, private, audited
        "excluded": 2,
    }
    assert done.returncode == 1  # the missing image
    first = re.fullmatch(
        r"1 namespaces, (\d+) workloads, (\d+) images: (\d+) copied, (\d+) backed up, "
        r"0 would back up, 1 protected, 1 excluded, 1 failed",
        done.stdout.splitlines()[0],
    )
    assert first is not None, done.stdout
    workloads, total, copied, backed_up = map(int, first.groups())
    assert workloads == total == len(KUBERNETES_KINDS) + 4
    assert copied + backed_up == len(KUBERNETES_KINDS) + 1 and copied >= 4
    assert done.stdout.splitlines()[1].startswith("failed: team/DaemonSet/broken: ")
    assert after.returncode == 0, after.stderr
    rows = after.stdout.splitlines()
    assert rows[0].split() == [
        "NAMESPACE",
        "WORKLOAD",
        "CONTAINER",
        "IMAGE",
        "STATE",
        "BACKUP",
        "SINCE",
    ]
    web = next(row.split() for row in rows if " Deployment/w" in row)
    assert web[4] == "backed-up" and web[5].startswith(basic_registry.host) and web[6] != "-"
    assert rows[-1] == (
        f"{len(KUBERNETES_KINDS) + 6} containers: 1 protected, {len(KUBERNETES_KINDS) + 1} "
        "backed-up, 2 unprotected, 2 excluded"
    )


def config_document(config: Config) -> dict[str, Any]:
    document: dict[str, Any] = msgspec.to_builtins(config)
    return document


def completed_passes(hook: Webhook) -> int:
    status, text = hook.get("/metrics")
    assert status == 200
    found = re.search(rb'image_backup_backfill_passes_total\{result="completed"\} (\S+)', text)
    return int(float(found[1])) if found else 0


def test_only_the_lease_holder_makes_the_passes(
    fake_kube: FakeKube,
    hub: dict[str, images.Image],
    plain_registry: Registry,
    basic_registry: Registry,
    private: tuple[Registry, str],
    tmp_path: Path,
    tls_ca: TLSFiles,
) -> None:
    config = config_for(basic_registry, plain_registry, private[0])
    document = config_document(config)
    document["backfill"] = {"intervalSeconds": 0.2}
    opt_in(fake_kube, TEAM, "enforce")
    create(fake_kube, TEAM, workload("Deployment", "web", {"main": "nginx:1.25"}))
    create(fake_kube, TEAM, workload("CronJob", "report", {"main": "busybox:1.36"}))
    env = {"POD_NAMESPACE": "image-backup"}
    with (
        running_webhook(tmp_path, document, tls_ca, env={**env, "POD_NAME": "replica-a"}) as a,
        running_webhook(tmp_path, document, tls_ca, env={**env, "POD_NAME": "replica-b"}) as b,
    ):
        hooks = {"replica-a": a, "replica-b": b}
        give_up = time.monotonic() + 30
        while sum(completed_passes(hook) for hook in hooks.values()) < 3:
            assert time.monotonic() < give_up, a.log_file.read_text() + b.log_file.read_text()
            time.sleep(0.1)
        lease = fake_kube.store.get(LEASES, "image-backup", "image-backup-backfill")
        passes = {name: completed_passes(hook) for name, hook in hooks.items()}
        leader = lease["spec"]["holderIdentity"]
        metrics = hooks[leader].get("/metrics")[1].decode()
    [other] = set(hooks) - {leader}
    assert passes[leader] >= 3 and passes[other] == 0
    for state, images_now in [("backed_up", 2), ("unprotected", 0), ("protected", 0)]:
        line = f'image_backup_workload_images{{namespace="team",state="{state}"}} {images_now}.0'
        assert line in metrics.splitlines()
    for name in ("library/nginx:1.25", "library/busybox:1.36"):
        assert holds(basic_registry, config, f"docker.io/{name}")


def test_a_rewrite_goes_through_the_webhook_and_is_what_an_admission_makes(
    fake_kube: FakeKube,
    hub: dict[str, images.Image],
    plain_registry: Registry,
    basic_registry: Registry,
    private: tuple[Registry, str],
    tmp_path: Path,
    tls_ca: TLSFiles,
) -> None:
    config = config_for(basic_registry, plain_registry, private[0])
    document = config_document(config)
    document["backfill"] = {"intervalSeconds": 0, "rewritesPerMinute": 600}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    opt_in(fake_kube, TEAM, "enforce")
    web = {"nginx": "nginx:1.25", "sidecar": "busybox:1.36"}
    deployment = create(fake_kube, TEAM, workload("Deployment", "web", web))
    owned = workload("ReplicaSet", "web-1", {"nginx": "nginx:1.25"})
    owned["metadata"]["ownerReferences"] = [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "controller": True,
         "uid": deployment["metadata"]["uid"]}
    ]  # fmt: skip
    for obj in (owned, workload("Job", "once", {"main": "nginx:1.26"})):
        create(fake_kube, TEAM, obj)
    create(fake_kube, TEAM, workload("CronJob", "report", {"main": "nginx:1.26"}))
    before = {kind: fake_kube.store.get(RESOURCES[kind], TEAM, name) for kind, name in
              [("ReplicaSet", "web-1"), ("Job", "once")]}  # fmt: skip
    env = {"POD_NAMESPACE": "image-backup", "POD_NAME": "hook"}
    with running_webhook(tmp_path, document, tls_ca, env=env) as hook:
        register_webhook(fake_kube, hook, tls_ca)
        command = [sys.executable, "-m", "webhook", "backfill", "--rewrite", "--config", str(path)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)

    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(done.stdout.splitlines()[1:]) == [
        "rewritten: team/CronJob/report",
        "rewritten: team/Deployment/web",
    ]
    # The update the pass made, as the webhook saw it and answered it: the stored object is
    # that update with the webhook's patch applied, nothing else.
    [call] = [c for c in fake_kube.admission_calls if c.review["request"]["name"] == "web"]
    request = call.review["request"]
    assert (request["operation"], call.webhook) == ("UPDATE", "enforce.image-backup.io")
    assert request["object"]["metadata"]["annotations"][BACKFILLED]
    assert request["object"]["spec"] == request["oldObject"]["spec"]  # only the annotation
    expected = patched(call.review, call.answer["response"])
    stored = fake_kube.store.get(DEPLOYMENTS, TEAM, "web")
    assert stored["spec"] == expected["spec"]
    assert stored["metadata"]["annotations"] == expected["metadata"]["annotations"]
    containers = stored["spec"]["template"]["spec"]["containers"]
    prefix = f"{basic_registry.host}/{config.backup_registry.prefix}/docker.io/library/"
    assert [c["image"].split("@")[0] for c in containers] == [
        f"{prefix}nginx:1.25",
        f"{prefix}busybox:1.36",
    ]
    assert orjson.loads(stored["metadata"]["annotations"][ORIGINAL_IMAGES]) == {
        "nginx": "nginx:1.25",
        "sidecar": "busybox:1.36",
    }
    # Not rewritten: what a controller made (its Deployment is), a Job (immutable template).
    for kind, obj in before.items():
        assert fake_kube.store.get(RESOURCES[kind], TEAM, obj["metadata"]["name"]) == obj


async def test_a_list_whose_continue_token_expired_is_read_again_whole(
    fake_kube: FakeKube,
) -> None:
    opt_in(fake_kube, TEAM, "enforce")
    for index in range(5):
        create(fake_kube, TEAM, workload("Pod", f"p{index}", {"main": "busybox:1.36"}))
    with api_client() as api:
        workloads = Workloads(api, page_size=2)
        seen = []
        async for found in workloads.in_namespace(TEAM, "enforce"):
            seen.append(found.name)
            if len(seen) == 2:  # after the first page: writes, then the API server compacts
                opt_in(fake_kube, OTHER, None)
                fake_kube.store.compact()
    # The second page's token had expired (410): the list began again, so the first two
    # come twice, and none is missed.
    assert seen == ["p0", "p1", "p0", "p1", "p2", "p3", "p4"]
    pods = [c for c in fake_kube.calls if c.path.endswith(f"/namespaces/{TEAM}/pods")]
    assert [bool(c.query.get("continue")) for c in pods] == [False, True, False, True, True]
