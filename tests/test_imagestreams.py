"""ImageStreams backed up with their history: the pass, the watch and the command, through
the fake API server (an OpenShift one: it serves image.openshift.io) and real registries.

ImageStreams are the captured ``tests/data/openshift/imagestream-with-history.json`` with
their ``dockerImageReference``s and ``spec.tags[].from`` pointed at local registries."""

from __future__ import annotations

import asyncio
import copy
import json
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

from tests.helpers import make_config, plain
from tests.support import images, skopeo
from tests.support.fakekube import (
    IMAGE_BACKUPS,
    IMAGE_STREAMS,
    LEASES,
    Call,
    FakeKube,
    KubeError,
    Query,
)
from tests.support.registries import Registry
from tests.support.tls import TLSFiles
from tests.support.tokenserver import TokenServer
from tests.support.webhooks import running_webhook
from tests.workloads import opt_in
from webhook.backfill import Backfill, keep_backfilling
from webhook.backfill import Summary as BackfillSummary
from webhook.cluster import Cluster, connect
from webhook.config import Config
from webhook.engine import open_engine
from webhook.imagestreams import HistoryBackup, Summary, keep_watching
from webhook.kube.records import StreamTag
from webhook.metrics import Metrics
from webhook.reference import Reference, parse
from webhook.registry.client import anchor_tag
from webhook.registry.copy import CopyEngine

DATA = Path(__file__).resolve().parent / "data" / "openshift"
SAMPLE = json.loads((DATA / "imagestream-with-history.json").read_text())
INTERNAL = "image-registry.openshift-image-registry.svc:5000"
TEAM, WATCH = "team", "watch"
Noted = list[dict[str, Any]]


def image_stream(namespace: str, name: str, tags: list[tuple[str, str | None, list[str]]]) -> Any:
    """The captured ImageStream as `name` in `namespace`, with `tags`: (tag, the DockerImage
    it is imported from or None for pushes, its items' locations newest first)."""
    stream = copy.deepcopy(SAMPLE)
    stream["metadata"] = {
        "name": name,
        "namespace": namespace,
        "annotations": SAMPLE["metadata"]["annotations"],
    }
    spec_template, item_template = (
        SAMPLE["spec"]["tags"][0],
        SAMPLE["status"]["tags"][0]["items"][0],
    )
    stream["spec"]["tags"] = []
    stream["status"]["dockerImageRepository"] = f"{INTERNAL}/{namespace}/{name}"
    stream["status"]["tags"] = []
    for tag, origin, locations in tags:
        if origin is not None:
            spec = {**copy.deepcopy(spec_template), "name": tag}
            spec["from"]["name"] = origin
            stream["spec"]["tags"].append(spec)
        items = [
            {
                **item_template,
                "created": f"2026-11-30T17:{59 - index:02d}:05Z",
                "dockerImageReference": location,
                "image": location.split("@")[1],
                "generation": len(locations) - index,
            }
            for index, location in enumerate(locations)
        ]
        stream["status"]["tags"].append({"tag": tag, "items": items})
    return stream


def push(registry: Registry, image_cache: str, repository: str, tag: str, seed: int) -> str:
    """A new image pushed as `repository:tag` (the tag moves to it): its digest."""
    made = images.make_image(image_cache, [4_000, 6_000], seed=seed, fmt="oci")
    return images.push(registry.backdoor_url, repository, tag, made)


@pytest.fixture
def history(plain_registry: Registry, image_cache: str) -> dict[str, Any]:
    """`samples/app:v1` re-pointed twice (three images, newest first) and `samples/app-c:v1`,
    and the ImageStream that imported them: tag v1 from app:v1 with three items, tag v2 from
    app-c:v1 with one."""
    repo, other = f"samples/app-{secrets.token_hex(3)}", f"samples/c-{secrets.token_hex(3)}"
    seed = 7400 + secrets.randbelow(10_000)
    v1 = [push(plain_registry, image_cache, repo, "v1", seed + n) for n in range(3)][::-1]
    v2 = push(plain_registry, image_cache, other, "v1", seed + 3)
    host = plain_registry.host
    stream = image_stream(
        TEAM,
        "app",
        [
            ("v1", f"{host}/{repo}:v1", [f"{host}/{repo}@{digest}" for digest in v1]),
            ("v2", f"{host}/{other}:v1", [f"{host}/{other}@{v2}"]),
        ],
    )
    return {"repo": repo, "other": other, "v1": v1, "v2": v2, "stream": stream}


def missing_image(registry: Registry) -> Any:
    """ImageStream `gone`, whose one item is no longer where it was imported from."""
    location = f"{registry.host}/nothing/here@sha256:{'0' * 64}"
    return image_stream(TEAM, "gone", [("v1", None, [location])])


def config_for(backup: Registry, *sources: dict[str, Any]) -> Config:
    return make_config(
        backup,
        sources=list(sources),
        docker_config=backup.docker_config,
        prefix=f"b{secrets.token_hex(4)}",
    )


@asynccontextmanager
async def backing_up(
    config: Config, noted: Noted, metrics: Metrics | None = None
) -> AsyncIterator[tuple[HistoryBackup, Cluster, CopyEngine]]:
    """A HistoryBackup on the real cluster objects; the calls it makes to the ImageBackup
    records' note_stream_tags are appended to `noted` (and then made)."""
    async with connect(config, Metrics()) as cluster:
        assert cluster is not None
        records = cluster.records
        real = records.note_stream_tags

        async def note_stream_tags(**call: Any) -> None:
            noted.append(call)
            await real(**call)

        records.note_stream_tags = note_stream_tags  # type: ignore[method-assign]
        async with open_engine(config, coordinator=cluster.coordinator) as engine:
            yield (
                HistoryBackup(
                    engine,
                    cluster.image_streams,
                    cluster.workloads,
                    config,
                    pull=cluster.pull,
                    records=records,
                    metrics=metrics,
                ),
                cluster,
                engine,
            )


async def one_pass(config: Config, noted: Noted | None = None, **run: Any) -> Summary:
    async with backing_up(config, [] if noted is None else noted) as (backup, _, _):
        return await backup.run(**run)


def backup_repository(config: Config, location: str) -> str:
    return config.backup_registry.scheme().repository_for(parse(location))


def tags_of(registry: Registry, repository: str) -> list[str]:
    return images.tags(registry.backdoor_url, repository)


async def test_every_item_of_every_tag_is_backed_up_and_the_current_one_sets_the_tag(
    openshift_kube: FakeKube, plain_registry: Registry, basic_registry: Registry, history: Any
) -> None:
    config = config_for(basic_registry, plain(plain_registry))
    opt_in(openshift_kube, TEAM, "enforce")
    openshift_kube.store.create(IMAGE_STREAMS, TEAM, history["stream"])
    noted: Noted = []

    summary = await one_pass(config, noted)

    assert (summary.namespaces, summary.streams, summary.failures) == (1, 1, [])
    assert summary.items == {"copied": 4}
    host = plain_registry.host
    app = backup_repository(config, f"{host}/{history['repo']}")
    other = backup_repository(config, f"{host}/{history['other']}")
    # Every digest by its anchor tag, so a restore finds each item; the current items also
    # by the location's tag: app's v1 is the newest of the three, app-c's is its v1 (the
    # pull spec's tag, not the ImageStream tag v2).
    for digest in history["v1"]:
        assert skopeo.inspect_raw_digest(basic_registry, f"{app}:{anchor_tag(digest)}") == digest
    assert skopeo.inspect_raw_digest(basic_registry, f"{app}:v1") == history["v1"][0]
    assert tags_of(basic_registry, app) == sorted(
        ["v1", *(anchor_tag(digest) for digest in history["v1"])]
    )
    assert tags_of(basic_registry, other) == sorted(["v1", anchor_tag(history["v2"])])
    assert skopeo.inspect_raw_digest(basic_registry, f"{other}:v1") == history["v2"]
    # Each item's record: the copy engine's (Ready, by digest), and its ImageStream tags.
    records, _ = openshift_kube.store.list_objects(Query(IMAGE_BACKUPS, "image-backup", [], []))
    ready = {r["spec"]["digest"] for r in records if r["status"]["phase"] == "Ready"}
    assert ready == {*history["v1"], history["v2"]}
    items = history["stream"]["status"]["tags"][0]["items"]
    by_digest = {call["digest"]: call for call in noted}
    assert len(noted) == 4 and set(by_digest) == ready
    for index, (digest, item) in enumerate(zip(history["v1"], items, strict=True)):
        call = by_digest[digest]
        assert call["tags"] == (StreamTag(TEAM, "app", "v1", item["created"]),)
        assert call["backup_repo"] == f"{basic_registry.host}/{app}"
        tag = "v1" if index == 0 else None  # never moves a tag back
        assert parse(call["backup"]) == Reference(basic_registry.host, app, tag, digest)
        assert parse(call["source"]).digest == digest
    # What a restore reads: every item of the stream's history, each with its backup.
    async with connect(config, Metrics()) as cluster:
        assert cluster is not None
        found = await cluster.records.stream_backups(namespace=TEAM, image_stream="app")
    v2 = history["stream"]["status"]["tags"][1]["items"][0]
    pairs = zip(items, history["v1"], strict=True)
    expected = [(item["created"], "v1", digest) for item, digest in pairs]
    expected.append((v2["created"], "v2", history["v2"]))
    assert sorted((b.item.created, b.item.tag, parse(b.backup).digest) for b in found) == sorted(
        expected
    )
    assert {b.phase for b in found} == {"Ready"}


async def test_a_digest_two_tags_share_is_noted_with_both(
    openshift_kube: FakeKube, plain_registry: Registry, basic_registry: Registry, history: Any
) -> None:
    config = config_for(basic_registry, plain(plain_registry))
    opt_in(openshift_kube, TEAM, "enforce")
    host, repo, newest = plain_registry.host, history["repo"], history["v1"][0]
    stream = image_stream(
        TEAM,
        "app",
        [
            ("v1", f"{host}/{repo}:v1", [f"{host}/{repo}@{newest}"]),
            ("latest", f"{host}/{repo}:v1", [f"{host}/{repo}@{newest}"]),
        ],
    )
    openshift_kube.store.create(IMAGE_STREAMS, TEAM, stream)
    noted: Noted = []

    summary = await one_pass(config, noted)

    assert summary.items["copied"] + summary.items["backed_up"] == 2
    created = stream["status"]["tags"][0]["items"][0]["created"]
    assert {call["tags"] for call in noted} == {
        (StreamTag(TEAM, "app", "v1", created), StreamTag(TEAM, "app", "latest", created))
    }


async def test_the_internal_registry_is_read_with_the_token_file(
    openshift_kube: FakeKube,
    token_registry: Registry,
    token_server: TokenServer,
    basic_registry: Registry,
    image_cache: str,
    tmp_path: Path,
) -> None:
    repository = f"{TEAM}/pushed-{secrets.token_hex(3)}"
    first = push(token_registry, image_cache, repository, "latest", 7500)
    second = push(token_registry, image_cache, repository, "latest", 7501)
    service = token_registry.service
    assert service is not None
    token_file = tmp_path / "token"
    token_file.write_text(token_server.issue("reader", service, [f"repository:{repository}:pull"]))
    internal = {
        "host": INTERNAL,
        "endpoint": token_registry.url,
        "caFile": token_registry.ca_file,
        "tokenFile": str(token_file),
    }
    config = config_for(basic_registry, internal)
    opt_in(openshift_kube, TEAM, "enforce")
    name = repository.split("/")[1]
    # Pushed to the internal registry (`oc push`, a build): no spec tag, no DockerImage.
    locations = [f"{INTERNAL}/{repository}@{digest}" for digest in (second, first)]
    openshift_kube.store.create(
        IMAGE_STREAMS, TEAM, image_stream(TEAM, name, [("prod", None, locations)])
    )

    summary = await one_pass(config)

    assert (summary.items, summary.failures) == ({"copied": 2}, [])
    backup = backup_repository(config, f"{INTERNAL}/{repository}")
    assert INTERNAL.split(":")[0] in backup  # named after the internal registry, not 127.0.0.1
    # The current item by the ImageStream tag's name: that is its tag in the internal registry.
    assert skopeo.inspect_raw_digest(basic_registry, f"{backup}:prod") == second
    assert skopeo.inspect_raw_digest(basic_registry, f"{backup}:{anchor_tag(first)}") == first
    assert token_server.requests_for(service) == []  # the file's token, as it is


async def test_audit_and_dry_run_copy_nothing(
    openshift_kube: FakeKube, plain_registry: Registry, basic_registry: Registry, history: Any
) -> None:
    config = config_for(basic_registry, plain(plain_registry))
    opt_in(openshift_kube, WATCH, "audit")
    opt_in(openshift_kube, TEAM, "enforce")
    audited = copy.deepcopy(history["stream"])
    audited["metadata"]["namespace"] = WATCH
    openshift_kube.store.create(IMAGE_STREAMS, WATCH, audited)
    openshift_kube.store.create(IMAGE_STREAMS, TEAM, history["stream"])
    noted: Noted = []

    audit = await one_pass(config, noted, namespaces=[WATCH])
    dry = await one_pass(config, noted, dry_run=True)

    assert (audit.streams, audit.items) == (1, {"would_back_up": 4})
    assert (dry.namespaces, dry.streams, dry.items) == (2, 2, {"would_back_up": 8})
    for repository in (history["repo"], history["other"]):
        assert (
            tags_of(
                basic_registry, backup_repository(config, f"{plain_registry.host}/{repository}")
            )
            == []
        )
    assert openshift_kube.store.list_objects(Query(IMAGE_BACKUPS, "image-backup", [], []))[0] == []
    assert noted == []
    writes = [c for c in openshift_kube.calls if c.method != "GET"]
    assert writes == []


async def test_the_watch_backs_up_a_new_item_without_a_new_pass(
    openshift_kube: FakeKube,
    plain_registry: Registry,
    basic_registry: Registry,
    history: Any,
    image_cache: str,
) -> None:
    config = config_for(basic_registry, plain(plain_registry))
    opt_in(openshift_kube, TEAM, "enforce")
    openshift_kube.store.create(IMAGE_STREAMS, TEAM, history["stream"])
    app = backup_repository(config, f"{plain_registry.host}/{history['repo']}")
    assert (await one_pass(config)).items == {"copied": 4}  # as serve's backfill, at once
    metrics = Metrics()
    noted: Noted = []

    def stream_items(outcome: str) -> float | None:
        sample = {"outcome": outcome}
        return metrics.registry.get_sample_value("image_backup_imagestream_items_total", sample)

    async with backing_up(config, noted, metrics) as (backup, cluster, _):
        watching = asyncio.create_task(
            keep_watching(backup, cluster.image_streams, cluster.workloads, watch_seconds=60)
        )
        try:
            await until(lambda: watch_calls(openshift_kube))
            # The first list only noted versions: what exists is the pass's.
            assert stream_items("copied") is stream_items("backed_up") is None
            # The tag is re-pointed again and re-imported: a fifth item, now the current one.
            newest = push(plain_registry, image_cache, history["repo"], "v1", 7600)
            stream = openshift_kube.store.get(IMAGE_STREAMS, TEAM, "app")
            items = stream["status"]["tags"][0]["items"]
            location = f"{plain_registry.host}/{history['repo']}@{newest}"
            item = {**items[0], "dockerImageReference": location, "image": newest}
            items.insert(0, {**item, "created": "2026-11-30T18:00:00Z"})
            openshift_kube.store.replace(IMAGE_STREAMS, TEAM, "app", stream)
            await until(lambda: anchor_tag(newest) in tags_of(basic_registry, app))
            await until(lambda: skopeo.inspect_raw_digest(basic_registry, f"{app}:v1") == newest)
        finally:
            watching.cancel()
            with pytest.raises(asyncio.CancelledError):
                await watching

    lists = [c for c in openshift_kube.calls if c.path.endswith("/imagestreams")]
    # The pass's list, the watch's, then the change came by the watch.
    assert ["watch" in c.query for c in lists] == [False, False, True]
    [call] = [call for call in noted if call["digest"] == newest]
    assert call["tags"] == (StreamTag(TEAM, "app", "v1", "2026-11-30T18:00:00Z"),)
    # This process had decided nothing of the stream: the new item is copied, the others
    # (the pass's) found backed up.
    assert (stream_items("copied"), stream_items("backed_up")) == (1, 4)


async def test_the_watch_lists_again_after_410_and_waits_after_errors(
    openshift_kube: FakeKube, plain_registry: Registry, basic_registry: Registry, history: Any
) -> None:
    config = config_for(basic_registry, plain(plain_registry))
    opt_in(openshift_kube, TEAM, "enforce")
    openshift_kube.store.create(IMAGE_STREAMS, TEAM, history["stream"])
    failures = [
        KubeError(410, "Expired", "too old resource version: 1 (2)"),
        KubeError(500, "InternalError", "etcdserver: request timed out"),
    ]

    def fail_watches(call: Call) -> None:
        if call.path.endswith("/imagestreams") and "watch" in call.query and failures:
            if len(failures) == 2:  # a change the watch never delivers: the list finds it
                stream = openshift_kube.store.get(IMAGE_STREAMS, TEAM, "app")
                stream["metadata"]["annotations"]["changed"] = "while not watched"
                openshift_kube.store.replace(IMAGE_STREAMS, TEAM, "app", stream)
            raise failures.pop(0)

    openshift_kube.interceptors.append(fail_watches)
    app = backup_repository(config, f"{plain_registry.host}/{history['repo']}")
    async with backing_up(config, []) as (backup, cluster, _):
        watching = asyncio.create_task(
            keep_watching(backup, cluster.image_streams, cluster.workloads, watch_seconds=60)
        )
        try:
            await until(lambda: len(watch_calls(openshift_kube)) == 3)
            await until(lambda: len(tags_of(basic_registry, app)) == 4)
        finally:
            watching.cancel()
            with pytest.raises(asyncio.CancelledError):
                await watching
    lists = [c for c in openshift_kube.calls if c.path.endswith("/imagestreams")]
    # 410: listed again at once; 500: listed again after a wait; then the watch held.
    assert ["watch" in c.query for c in lists] == [False, True, False, True, False, True]


def test_serve_watches_imagestreams_on_the_replica_holding_the_lease(
    openshift_kube: FakeKube,
    plain_registry: Registry,
    basic_registry: Registry,
    history: Any,
    image_cache: str,
    tmp_path: Path,
    tls_ca: TLSFiles,
) -> None:
    config = config_for(basic_registry, plain(plain_registry))
    document: dict[str, Any] = msgspec.to_builtins(config)
    document["backfill"] = {"intervalSeconds": 3600}  # one pass at start, then only the watch
    opt_in(openshift_kube, TEAM, "enforce")
    openshift_kube.store.create(IMAGE_STREAMS, TEAM, history["stream"])
    app = backup_repository(config, f"{plain_registry.host}/{history['repo']}")
    env = {"POD_NAMESPACE": "image-backup"}
    with (
        running_webhook(tmp_path, document, tls_ca, env={**env, "POD_NAME": "replica-a"}) as a,
        running_webhook(tmp_path, document, tls_ca, env={**env, "POD_NAME": "replica-b"}) as b,
    ):
        asyncio.run(until(lambda: len(tags_of(basic_registry, app)) == 4))
        newest = push(plain_registry, image_cache, history["repo"], "v1", 7700)
        stream = openshift_kube.store.get(IMAGE_STREAMS, TEAM, "app")
        items = stream["status"]["tags"][0]["items"]
        location = f"{plain_registry.host}/{history['repo']}@{newest}"
        items.insert(0, {**items[0], "dockerImageReference": location, "image": newest})
        openshift_kube.store.replace(IMAGE_STREAMS, TEAM, "app", stream)
        asyncio.run(until(lambda: anchor_tag(newest) in tags_of(basic_registry, app)))
        leader = openshift_kube.store.get(LEASES, "image-backup", "image-backup-backfill")
        hooks = {"replica-a": a, "replica-b": b}
        holder = leader["spec"]["holderIdentity"]
        metrics = {name: hook.get("/metrics")[1].decode() for name, hook in hooks.items()}
    watches = [
        c for c in openshift_kube.calls if c.path.endswith("/imagestreams") and "watch" in c.query
    ]
    assert len(watches) == 1  # the Lease holder's, and no other replica's
    # Counted where decided: the Lease holder's pass (read from its process) and watch.
    [other] = set(hooks) - {holder}
    assert 'image_backup_imagestream_items_total{outcome="copied"}' in metrics[holder]
    assert "image_backup_imagestream_items_total{" not in metrics[other]


def watch_calls(kube: FakeKube) -> list[Call]:
    return [c for c in kube.calls if c.path.endswith("/imagestreams") and "watch" in c.query]


async def until(done: Any) -> None:
    """Wait (the registries and the API server in threads) until `done()` is true."""
    give_up = time.monotonic() + 60
    while not await asyncio.to_thread(done):
        assert time.monotonic() < give_up
        await asyncio.sleep(0.1)


def test_the_command_prints_its_summary_as_json(
    openshift_kube: FakeKube,
    plain_registry: Registry,
    basic_registry: Registry,
    history: Any,
    tmp_path: Path,
) -> None:
    config = config_for(basic_registry, plain(plain_registry))
    opt_in(openshift_kube, TEAM, "enforce")
    openshift_kube.store.create(IMAGE_STREAMS, TEAM, history["stream"])
    openshift_kube.store.create(IMAGE_STREAMS, TEAM, missing_image(plain_registry))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(msgspec.to_builtins(config)))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "webhook", "imagestreams", *args, "--config", str(path)]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)

    dry = cli("--dry-run", "-o", "json")
    done = cli("-o", "json", "--namespace", TEAM)
    again = cli()

    assert dry.returncode == 1, dry.stderr  # the missing image fails even to be looked up
    assert orjson.loads(dry.stdout)["items"] == {"would_back_up": 4, "failed": 1}
    assert done.returncode == 1, done.stderr
    summary = orjson.loads(done.stdout)
    assert (summary["namespaces"], summary["streams"]) == (1, 2)
    assert summary["items"] == {"copied": 4, "failed": 1}
    [failure] = summary["failures"]
    assert failure.startswith(f"{TEAM}/ImageStream/gone:v1: {plain_registry.host}/nothing/here@")
    assert "not found" in failure
    assert again.stdout.splitlines()[0] == (
        "1 namespaces, 2 image streams, 5 items: 0 copied, 4 backed up, 0 would back up, "
        "0 protected, 0 excluded, 1 failed"
    )


async def test_a_backfill_pass_makes_the_imagestream_pass_too(
    openshift_kube: FakeKube, plain_registry: Registry, basic_registry: Registry, history: Any
) -> None:
    config = config_for(basic_registry, plain(plain_registry))
    opt_in(openshift_kube, TEAM, "enforce")
    openshift_kube.store.create(IMAGE_STREAMS, TEAM, history["stream"])
    openshift_kube.store.create(IMAGE_STREAMS, TEAM, missing_image(plain_registry))
    async with backing_up(config, []) as (histories, cluster, engine):
        backfill = Backfill(engine, cluster.workloads, config, histories=histories)
        summary = await backfill.run()

    assert summary.streams is not None
    assert (summary.streams.streams, summary.streams.items) == (2, {"copied": 4, "failed": 1})
    assert BackfillSummary.from_json(summary.to_json()) == summary  # as `serve` reads it
    [failure] = summary.every_failure()  # the command's exit status, serve's log
    assert failure.startswith(f"{TEAM}/ImageStream/gone:v1: ")
    assert summary.lines()[-2:] == [
        "1 namespaces, 2 image streams, 5 items: 4 copied, 0 backed up, 0 would back up, "
        "0 protected, 0 excluded, 1 failed",
        f"failed: {failure}",
    ]
    metrics = Metrics()
    passes = iter([summary])

    async def one() -> BackfillSummary:
        try:
            return next(passes)
        except StopIteration:
            await asyncio.Event().wait()  # no second pass
            raise

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(keep_backfilling(one, metrics, interval=0), 0.5)
    sample = {"outcome": "copied"}
    assert metrics.registry.get_sample_value("image_backup_imagestream_items_total", sample) == 4


def test_without_imagestreams_the_command_says_so(
    fake_kube: FakeKube, basic_registry: Registry, tmp_path: Path
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(msgspec.to_builtins(config_for(basic_registry))))
    command = [sys.executable, "-m", "webhook", "imagestreams", "--config", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1
    assert "serves no ImageStreams" in done.stderr
