"""`image-backup restore`, as an operator runs it on the bad day: real registries, the fake
API server, skopeo to check the digests.

The source registry "came back empty" by name: backups are made of `OLD/...` while the
configuration sends `OLD` to one registry, and restored while it sends `OLD` to another,
empty one."""

from __future__ import annotations

import fcntl
import os
import pty
import secrets
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import images, skopeo
from tests.support.fakekube import IMAGE_BACKUPS, IMAGE_STREAMS, Call, FakeKube, Query
from tests.support.registries import Registry, RegistryFactory
from tests.test_imagestreams import INTERNAL, TEAM, image_stream, one_pass
from tests.workloads import opt_in
from webhook import config as config_module
from webhook.cluster import connect
from webhook.engine import open_engine
from webhook.kube.client import api_client
from webhook.kube.imagestreams import ImageStreams
from webhook.metrics import Metrics
from webhook.reference import parse
from webhook.registry import client as client_module
from webhook.registry.client import Repository, anchor_tag

CLI = [sys.executable, "-m", "webhook", "restore"]
OLD = "registry.old.example:5000"
OTHER = "quay.old.example"


def document(
    backup: Registry,
    prefix: str,
    endpoints: dict[str, Registry],
    *,
    path_style: str = "nested",
) -> dict[str, Any]:
    """A configuration: the backup registry (TLS, basic auth) under `prefix`, and each
    named host served by a plain-HTTP test registry."""
    return {
        "backupRegistry": {
            "host": backup.host,
            "prefix": prefix,
            "pathStyle": path_style,
            "caFile": backup.ca_file,
        },
        "registries": [
            {"host": host, "endpoint": registry.url, "insecure": True}
            for host, registry in endpoints.items()
        ],
        "credentials": {"dockerConfig": backup.docker_config},
    }


def write(tmp_path: Path, doc: dict[str, Any]) -> str:
    path = tmp_path / f"config-{secrets.token_hex(3)}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def restore(config: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args, "--config", config], capture_output=True, text=True, timeout=300, check=False
    )


async def back_up(doc: dict[str, Any], *sources: str, records: bool = True) -> list[str]:
    """Each source backed up as the webhook does (with ImageBackup records if `records`):
    the pinned backups."""
    config = config_module.parse(doc, "test")
    deadline = time.monotonic() + 120
    if not records:
        async with open_engine(config) as engine:
            return [str((await engine.backup(parse(s), deadline=deadline)).backup) for s in sources]
    async with connect(config, Metrics()) as cluster:
        assert cluster is not None
        async with open_engine(config, coordinator=cluster.coordinator) as engine:
            return [str((await engine.backup(parse(s), deadline=deadline)).backup) for s in sources]


def push(registry: Registry, image_cache: str, repository: str, tag: str, seed: int) -> str:
    made = images.make_image(image_cache, [3_000, 5_000], seed=seed, fmt="oci")
    return images.push(registry.backdoor_url, repository, tag, made)


def lines_starting(output: str, start: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(start)]


@pytest.fixture
def prefix() -> str:
    return f"r{secrets.token_hex(4)}"


async def test_a_multi_platform_index_is_restored_digest_for_digest_with_its_tag(
    fake_kube: FakeKube,
    registry_factory: RegistryFactory,
    basic_registry: Registry,
    image_cache: str,
    prefix: str,
    tmp_path: Path,
) -> None:
    lost, empty = registry_factory(), registry_factory()
    platforms = [
        images.make_image(image_cache, [4_000, 2_000], seed=8100 + n, fmt="oci", platform=p)
        for n, p in enumerate([("linux", "amd64"), ("linux", "arm64", "v8")])
    ]
    index = images.make_index(image_cache, platforms, "oci")
    images.push(lost.backdoor_url, "team/app", "v1", index)
    await back_up(document(basic_registry, prefix, {OLD: lost}), f"{OLD}/team/app:v1")

    done = restore(write(tmp_path, document(basic_registry, prefix, {OLD: empty})), "--all")

    assert done.returncode == 0, done.stdout + done.stderr
    mine = [line for line in done.stdout.splitlines() if f"/{prefix}/" in line]
    assert mine == [
        f"copied: {basic_registry.host}/{prefix}/{OLD.replace(':', '_')}/team/app@{index.digest}"
        f" -> {OLD}/team/app@{index.digest} (tags v1)"
    ]
    # The index and every platform by digest, and the tag set again, as skopeo reads them.
    assert skopeo.inspect_raw_digest(empty, "team/app:v1") == index.digest
    for image in platforms:
        assert skopeo.inspect_raw_digest(empty, f"team/app@{image.digest}") == image.digest
    assert images.tags(empty.backdoor_url, "team/app") == sorted(["v1", anchor_tag(index.digest)])


async def test_from_the_backup_registry_alone_every_digest_and_each_tag_where_it_points(
    registry_factory: RegistryFactory,
    basic_registry: Registry,
    image_cache: str,
    prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)  # a new cluster: no records anywhere
    lost, empty = registry_factory(), registry_factory()
    repository = "my-org/web--app"  # dashes: the flat style encodes them
    doc = document(basic_registry, prefix, {OLD: lost}, path_style="flat")
    older = push(lost, image_cache, repository, "v1", 8200)
    await back_up(doc, f"{OLD}/{repository}:v1", records=False)
    newer = push(lost, image_cache, repository, "v1", 8201)  # v1 moved on
    await back_up(doc, f"{OLD}/{repository}:v1", records=False)

    restore_doc = document(basic_registry, prefix, {OLD: empty}, path_style="flat")
    done = restore(write(tmp_path, restore_doc), "--from-backup-registry", "--all")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "restored 2 images into 1 repositories: 2 copied" in done.stdout
    for digest in (older, newer):
        assert skopeo.inspect_raw_digest(empty, f"{repository}@{digest}") == digest
    # The tag only on the digest the backup repository's tag points at.
    assert skopeo.inspect_raw_digest(empty, f"{repository}:v1") == newer
    assert f"@{older} (tags" not in done.stdout


async def test_a_second_run_copies_nothing_and_says_what_was_there(
    fake_kube: FakeKube,
    registry_factory: RegistryFactory,
    basic_registry: Registry,
    image_cache: str,
    prefix: str,
    tmp_path: Path,
) -> None:
    lost, empty = registry_factory(), registry_factory()
    first = push(lost, image_cache, "team/a", "v1", 8300)
    push(lost, image_cache, "team/b", "v2", 8301)
    await back_up(document(basic_registry, prefix, {OLD: lost}), f"{OLD}/team/a:v1")
    config = write(tmp_path, document(basic_registry, prefix, {OLD: empty}))
    # Interrupted after one image: the other is still to come.
    partial = restore(config, "--image", f"{OLD}/team/a*")
    await back_up(document(basic_registry, prefix, {OLD: lost}), f"{OLD}/team/b:v2")

    again = restore(config, "--source-registry", OLD)
    last = restore(config, "--source-registry", OLD)

    assert partial.returncode == again.returncode == last.returncode == 0
    assert "1 copied" in partial.stdout
    assert "restored 2 images into 2 repositories: 1 copied" in again.stdout
    assert ", 1 already there, 0 failed" in again.stdout
    assert "0 copied (0.0 MB uploaded), 2 already there, 0 failed" in last.stdout
    assert skopeo.inspect_raw_digest(empty, "team/a:v1") == first


async def test_a_dry_run_says_where_and_copies_nothing(
    fake_kube: FakeKube,
    registry_factory: RegistryFactory,
    basic_registry: Registry,
    image_cache: str,
    prefix: str,
    tmp_path: Path,
) -> None:
    lost, empty = registry_factory(), registry_factory()
    digest = push(lost, image_cache, "team/app", "v1", 8400)
    await back_up(document(basic_registry, prefix, {OLD: lost}), f"{OLD}/team/app:v1")

    done = restore(
        write(tmp_path, document(basic_registry, prefix, {OLD: empty})),
        "--all",
        "--dry-run",
        "--to-registry",
        f"{OLD}/rescued",
    )

    assert done.returncode == 0, done.stderr
    assert f"would copy: {basic_registry.host}/{prefix}/" in done.stdout
    assert f" -> {OLD}/rescued/team/app@{digest} (tags v1)" in done.stdout
    assert "dry run: would restore" in done.stdout and "nothing was copied" in done.stdout
    assert not images.manifest_exists(empty.backdoor_url, "rescued/team/app", digest)
    assert not images.manifest_exists(empty.backdoor_url, "team/app", digest)


async def test_a_target_that_refuses_is_reported_in_words_and_exits_1(
    fake_kube: FakeKube,
    registry_factory: RegistryFactory,
    basic_registry: Registry,
    image_cache: str,
    prefix: str,
    tmp_path: Path,
) -> None:
    lost = registry_factory()
    refusing = registry_factory(tls=True, auth="basic")  # no login for it is configured
    digest = push(lost, image_cache, "team/app", "v1", 8500)
    await back_up(document(basic_registry, prefix, {OLD: lost}), f"{OLD}/team/app:v1")
    doc = document(basic_registry, prefix, {})
    doc["registries"] = [{"host": OLD, "endpoint": refusing.url, "caFile": refusing.ca_file}]

    done = restore(write(tmp_path, doc), "--image", f"{OLD}/team/app")

    assert done.returncode == 1
    failures = lines_starting(done.stdout, "failed: ")
    assert len(failures) == 1
    assert failures[0].startswith(f"failed: {OLD}/team/app@{digest} -> {OLD}/team/app: ")
    assert f"on the target registry {OLD}: unauthorized" in failures[0]
    assert "1 failed" in done.stdout and "Traceback" not in done.stderr


async def test_selection_by_registry_namespace_and_glob(
    fake_kube: FakeKube,
    registry_factory: RegistryFactory,
    basic_registry: Registry,
    image_cache: str,
    prefix: str,
    tmp_path: Path,
) -> None:
    lost, other = registry_factory(), registry_factory()
    push(lost, image_cache, "shop/web", "v1", 8600)
    push(lost, image_cache, "bank/api", "v1", 8601)
    push(other, image_cache, "tools/cli", "v1", 8602)
    doc = document(basic_registry, prefix, {OLD: lost, OTHER: other})
    await back_up(doc, f"{OLD}/shop/web:v1", f"{OLD}/bank/api:v1", f"{OTHER}/tools/cli:v1")
    # The namespaces whose credentials read bank/api (admissions and passes write readBy).
    records, _ = fake_kube.store.list_objects(Query(IMAGE_BACKUPS, "image-backup", [], []))
    for record in records:
        if record["spec"]["source"] == f"{OLD}/bank/api:v1":
            fake_kube.store.patch(
                IMAGE_BACKUPS,
                "image-backup",
                record["metadata"]["name"],
                {"spec": {"readBy": ["bank"]}},
                "application/merge-patch+json",
            )
    config = write(tmp_path, doc)

    def chosen(*selection: str) -> list[str]:
        done = restore(config, "--dry-run", *selection)
        assert done.returncode == 0, done.stderr
        return sorted(
            line.split(" -> ")[1].split("@")[0]
            for line in lines_starting(done.stdout, "would copy: ")
            if f"/{prefix}/" in line
        )

    assert chosen("--source-registry", OTHER) == [f"{OTHER}/tools/cli"]
    assert chosen("--namespace", "bank") == [f"{OLD}/bank/api"]
    assert chosen("--image", f"{OLD}/shop/*") == [f"{OLD}/shop/web"]
    assert chosen("--image", "*:v1", "--namespace", "nobody") == sorted(
        [f"{OLD}/shop/web", f"{OLD}/bank/api", f"{OTHER}/tools/cli"]
    )
    assert chosen("--image", "*/nothing") == []
    none = restore(config)
    assert none.returncode == 2 and "say which images" in none.stderr
    without_records = restore(config, "--from-backup-registry", "--namespace", "bank")
    assert without_records.returncode == 2 and "--namespace" in without_records.stderr
    bad_map = restore(config, "--all", "--namespace-map", "nonsense")
    assert bad_map.returncode == 2 and "is not OLD=NEW" in bad_map.stderr


async def test_an_imagestream_history_restored_from_exported_records_with_the_stream(
    openshift_kube: FakeKube,
    registry_factory: RegistryFactory,
    basic_registry: Registry,
    image_cache: str,
    prefix: str,
    tmp_path: Path,
) -> None:
    lost, new_internal = registry_factory(), registry_factory()
    repository = f"{TEAM}/app-{secrets.token_hex(3)}"
    v1 = [push(lost, image_cache, repository, "v1", 8700 + n) for n in range(3)][::-1]
    locations = [f"{OLD}/{repository}@{digest}" for digest in v1]
    stream = image_stream(TEAM, "app", [("v1", f"{OLD}/{repository}:v1", locations)])
    opt_in(openshift_kube, TEAM, "enforce")
    openshift_kube.store.create(IMAGE_STREAMS, TEAM, stream)
    backed_up = await one_pass(config_module.parse(document(basic_registry, prefix, {OLD: lost})))
    assert backed_up.items == {"copied": 3}
    doc = document(basic_registry, prefix, {OLD: lost, INTERNAL: new_internal})
    config = write(tmp_path, doc)
    args = ["--image", f"{OLD}/{repository}", "--to-registry", INTERNAL]
    args += ["--namespace-map", f"{TEAM}=prod", "--imagestreams"]

    dry = restore(config, *args, "--dry-run")  # from the cluster's records
    # The cluster dies with its records; an export of them (status included) is what is left.
    exported, _ = openshift_kube.store.list_objects(Query(IMAGE_BACKUPS, "image-backup", [], []))
    for record in exported:
        openshift_kube.store.delete(IMAGE_BACKUPS, "image-backup", record["metadata"]["name"])
    export = tmp_path / "records.yaml"
    export.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": exported}))
    args += ["--records", str(export)]
    done = restore(config, *args)

    restored = f"{INTERNAL}/prod/{repository.split('/')[1]}"
    assert dry.returncode == 0 and f"would set ImageStream prod/app: v1 -> {restored}@{v1[0]}" in (
        dry.stdout
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "restored 3 images into 1 repositories: 3 copied" in done.stdout
    assert f"created ImageStream prod/app: v1 -> {restored}@{v1[0]}" in done.stdout
    assert "not re-created as ImageStream history" in done.stdout
    path = restored.split("/", 1)[1]
    for digest in v1:  # every item of the history, by digest
        assert skopeo.inspect_raw_digest(new_internal, f"{path}@{digest}") == digest
    assert skopeo.inspect_raw_digest(new_internal, f"{path}:v1") == v1[0]
    created = openshift_kube.store.get(IMAGE_STREAMS, "prod", "app")
    assert created["spec"]["tags"] == [
        {
            "name": "v1",
            "from": {"kind": "DockerImage", "name": f"{restored}@{v1[0]}"},
            "referencePolicy": {"type": "Source"},
            "generation": 1,
        }
    ]
    assert "tags" not in created["status"]  # history comes from imports only
    # A second run sets the tag again on the stream that now exists, keeping its other tags.
    keep = {"name": "keep", "from": {"kind": "DockerImage", "name": "quay.io/x/y:1"}}
    openshift_kube.store.patch(
        IMAGE_STREAMS,
        "prod",
        "app",
        {"spec": {"tags": [*created["spec"]["tags"], keep]}},
        "application/merge-patch+json",
    )
    again = restore(config, *args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"set ImageStream prod/app: v1 -> {restored}@{v1[0]}" in again.stdout
    assert "3 already there" in again.stdout
    assert openshift_kube.store.get(IMAGE_STREAMS, "prod", "app")["spec"]["tags"] == [
        *created["spec"]["tags"],
        keep,
    ]


async def test_catalog_and_tag_lists_are_read_page_by_page(
    basic_registry: Registry,
    image_cache: str,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for n, name in enumerate(["a", "b", "c"]):
        for tag in ("v1", "v2", "v3"):
            push(basic_registry, image_cache, f"{prefix}/{name}", tag, 8800 + n)
    config = config_module.parse(document(basic_registry, prefix, {}), "test")
    deadline = time.monotonic() + 60
    async with open_engine(config) as engine:
        client = engine.client
        whole = await client.repositories(basic_registry.host, deadline=deadline)
        monkeypatch.setattr(client_module, "LIST_PAGE", 1)
        paged = await client.repositories(basic_registry.host, deadline=deadline)
        tags = await client.tags(Repository(basic_registry.host, f"{prefix}/b"), deadline=deadline)

    assert paged == whole
    assert [r for r in paged if r.startswith(f"{prefix}/")] == [f"{prefix}/{n}" for n in "abc"]
    assert tags == ["v1", "v2", "v3"]


async def test_an_imagestream_changed_or_created_meanwhile_is_read_and_written_again(
    openshift_kube: FakeKube,
) -> None:
    """Both races of `point_tags`: a stream created between its read (404) and the create,
    and one changed between its read and the update; neither loses the other's tag."""
    theirs = {"name": "theirs", "from": {"kind": "DockerImage", "name": "quay.io/t/t:1"}}
    raced: list[str] = []

    def race(call: Call) -> None:
        if not call.path.endswith(("/imagestreams", "/imagestreams/app")) or raced.count(
            call.method
        ):
            return
        if call.method == "POST":
            raced.append("POST")
            openshift_kube.store.create(
                IMAGE_STREAMS, "prod", {"metadata": {"name": "app"}, "spec": {"tags": [theirs]}}
            )
        elif call.method == "PUT":
            raced.append("PUT")
            openshift_kube.store.patch(
                IMAGE_STREAMS,
                "prod",
                "app",
                {"metadata": {"labels": {"changed": "meanwhile"}}},
                "application/merge-patch+json",
            )

    openshift_kube.interceptors.append(race)
    with api_client() as api:
        created = await ImageStreams(api).point_tags("prod", "app", {"v1": "reg.new/prod/app@x"})

    assert raced == ["POST", "PUT"]
    assert created is False  # someone else created it; ours was an update
    stored = openshift_kube.store.get(IMAGE_STREAMS, "prod", "app")
    assert stored["metadata"]["labels"] == {"changed": "meanwhile"}
    ours = {
        "name": "v1",
        "from": {"kind": "DockerImage", "name": "reg.new/prod/app@x"},
        "referencePolicy": {"type": "Source"},
    }
    assert stored["spec"]["tags"] == [theirs, ours]
    puts = openshift_kube.calls_to("PUT", "/imagestreams/app")
    assert len(puts) == 2  # the first met the change (409), the second was made on it


async def test_a_progress_bar_on_a_terminal(
    fake_kube: FakeKube,
    registry_factory: RegistryFactory,
    basic_registry: Registry,
    image_cache: str,
    prefix: str,
    tmp_path: Path,
) -> None:
    lost, empty = registry_factory(), registry_factory()
    made = images.make_image(image_cache, [2_000_000], seed=8900, fmt="oci")
    images.push(lost.backdoor_url, "team/big", "v1", made)
    await back_up(document(basic_registry, prefix, {OLD: lost}), f"{OLD}/team/big:v1")
    config = write(tmp_path, document(basic_registry, prefix, {OLD: empty}))
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    shown = b""
    try:
        process = subprocess.Popen(
            [*CLI, "--all", "--config", config], stdout=subprocess.PIPE, stderr=terminal
        )
        while True:  # our end stays open while reading, so nothing written is lost
            ready, _, _ = select.select([controller], [], [], 0.1)
            if ready:
                shown += os.read(controller, 65536)
            elif process.poll() is not None:
                break
        stdout, _ = process.communicate(timeout=120)
    finally:
        os.close(terminal)
        os.close(controller)

    assert process.returncode == 0
    assert b"B/s" in shown  # bytes and rate
    assert b"1 copied" in stdout  # the summary stays on standard output
