"""ImageBackup records: replicas agree on who copies a backup, through the fake API server
with the real client."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson
import pytest
from kubernetes import client

from tests.support.fakekube import IMAGE_BACKUPS, Call, FakeKube, KubeError
from webhook.kube import records as records_module
from webhook.kube.client import CONFLICT_RETRIES, api_client
from webhook.kube.client import KubeError as ClientError
from webhook.kube.records import (
    BackupRecords,
    ReadyBackup,
    StreamBackup,
    StreamTag,
    record_name,
    stream_label,
)
from webhook.registry.copy import Stored

NS = "image-backup"
DIGEST = "sha256:" + "ab" * 32
REPO = "127.0.0.1:5000/backup/docker.io/library/nginx"
BACKUP = f"{REPO}:1.25@{DIGEST}"
SOURCE = "docker.io/library/nginx:1.25"
NAME = record_name(REPO, DIGEST)
STORED = Stored(
    1234, ("linux/amd64", "linux/arm64"), ("sha256:" + "01" * 32, "sha256:" + "02" * 32)
)
JSON_PATCH = "application/json-patch+json"
STILL_COPYING = "still copying into the backup registry, retry shortly"


class Opener(Protocol):
    def __call__(self, holder: str, **options: Any) -> BackupRecords: ...


@pytest.fixture
def api(fake_kube: FakeKube) -> Iterator[client.ApiClient]:
    with api_client() as api:
        yield api


@pytest.fixture
async def open_records(api: client.ApiClient) -> AsyncIterator[Opener]:
    """``open_records(holder, **options)``: a replica's records, closed after the test."""
    opened: list[BackupRecords] = []

    def opener(holder: str, **options: Any) -> BackupRecords:
        records = BackupRecords(api, NS, holder, **options)
        opened.append(records)
        return records

    yield opener
    for records in opened:
        await records.close()


class Copier:
    """A copy callable that counts its runs, takes `seconds`, and raises `error` if given."""

    def __init__(self, seconds: float = 0.0, error: Exception | None = None) -> None:
        self.seconds = seconds
        self.error = error
        self.runs = 0
        self.finished_at = 0.0

    async def __call__(self) -> Stored:
        self.runs += 1
        await asyncio.sleep(self.seconds)
        self.finished_at = time.monotonic()
        if self.error is not None:
            raise self.error
        return STORED


async def exclusive(
    records: BackupRecords, copy: Callable[[], Awaitable[Stored]], *, seconds: float = 5.0
) -> Stored | None:
    """exclusive() on the test's backup."""
    return await records.exclusive(
        SOURCE, BACKUP, REPO, DIGEST, copy, deadline=time.monotonic() + seconds
    )


async def timed(
    records: BackupRecords, copy: Callable[[], Awaitable[Stored]]
) -> tuple[Stored | None, float]:
    """exclusive(), and when it returned."""
    return await exclusive(records, copy), time.monotonic()


def timestamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ago(seconds: float) -> str:
    return timestamp(datetime.now(UTC) - timedelta(seconds=seconds))


def seed(
    kube: FakeKube,
    status: dict[str, Any] | None,
    *,
    repo: str = REPO,
    backup: str = BACKUP,
    digest: str = DIGEST,
    namespace: str = NS,
    **spec: Any,
) -> str:
    """A record as another replica left it (the fake keeps the status given to a create)."""
    name = record_name(repo, digest)
    body: dict[str, Any] = {
        "metadata": {"name": name},
        "spec": {"source": SOURCE, "backup": backup, "digest": digest, **spec},
    }
    if status is not None:
        body["status"] = status
    kube.store.create(IMAGE_BACKUPS, namespace, body)
    return name


def status_of(kube: FakeKube, name: str = NAME) -> dict[str, Any]:
    status: dict[str, Any] = kube.store.get(IMAGE_BACKUPS, NS, name)["status"]
    return status


def heartbeats(kube: FakeKube) -> list[str]:
    """The heartbeats written to the test's record, in order."""
    return [
        operation["value"]
        for call in kube.calls_to("PATCH", f"/{NAME}/status")
        if call.content_type == JSON_PATCH
        for operation in call.body
        if operation["path"] == "/status/heartbeat"
    ]


def watches(kube: FakeKube) -> list[Call]:
    return [
        call
        for call in kube.calls_to("GET", "/namespaces/image-backup/imagebackups")
        if call.query.get("watch", "").lower() == "true"
    ]


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(3):
        while not condition():
            await asyncio.sleep(0.01)


async def test_the_creator_copies_renewing_its_heartbeat_then_records_what_it_stored(
    fake_kube: FakeKube, open_records: Opener
) -> None:
    records = open_records("replica-a", heartbeat_every=0.05)
    copier = Copier(seconds=0.3)
    before = timestamp(datetime.now(UTC))
    assert await exclusive(records, copier) == STORED
    assert copier.runs == 1

    record = fake_kube.store.get(IMAGE_BACKUPS, NS, NAME)
    assert record["spec"] == {
        "source": SOURCE,
        "backup": BACKUP,
        "digest": DIGEST,
        "size": 1234,
        "platforms": ["linux/amd64", "linux/arm64"],
        "blobs": ["sha256:" + "01" * 32, "sha256:" + "02" * 32],
    }
    status = record["status"]
    assert (status["phase"], status["message"], status["holder"]) == ("Ready", "", "replica-a")
    assert before <= status["firstUsed"] <= status["heartbeat"] <= timestamp(datetime.now(UTC))
    (create,) = fake_kube.calls_to("POST", f"/namespaces/{NS}/imagebackups")
    assert "status" not in create.body  # it would be ignored: the holder is a status write

    renewed = heartbeats(fake_kube)
    assert len(renewed) >= 2
    assert renewed == sorted(set(renewed))  # each later than the one before
    assert renewed[-1] == status["heartbeat"]
    await asyncio.sleep(0.15)
    assert heartbeats(fake_kube) == renewed  # none once the copy ended


async def test_of_two_replicas_one_copies_and_the_other_watches_until_it_is_ready(
    fake_kube: FakeKube, open_records: Opener
) -> None:
    copier = Copier(seconds=0.3)
    a = open_records("replica-a", heartbeat_every=0.05)
    b = open_records("replica-b", heartbeat_every=0.05)
    outcomes = await asyncio.gather(timed(a, copier), timed(b, copier))

    assert copier.runs == 1
    assert sorted(stored is None for stored, _ in outcomes) == [False, True]
    (waited_until,) = [at for stored, at in outcomes if stored is None]
    assert waited_until >= copier.finished_at
    assert status_of(fake_kube)["phase"] == "Ready"
    assert len(fake_kube.calls_to("POST", f"/namespaces/{NS}/imagebackups")) == 2
    seen = watches(fake_kube)
    assert seen
    assert {call.query["fieldSelector"] for call in seen} == {f"metadata.name={NAME}"}
    assert all(call.query["resourceVersion"] for call in seen)


async def test_a_failed_copy_is_recorded_and_another_replica_takes_over(
    fake_kube: FakeKube, open_records: Opener
) -> None:
    error = RuntimeError("pushing blob:\n   500   Internal Server Error\n" + "x" * 2000)
    with pytest.raises(RuntimeError) as caught:
        await exclusive(open_records("replica-a"), Copier(error=error))
    assert caught.value is error
    failed = status_of(fake_kube)
    prefix = "pushing blob: 500 Internal Server Error "
    assert failed["phase"] == "Failed"
    assert failed["message"] == prefix + "x" * (1000 - len(prefix))

    copier = Copier()
    assert await exclusive(open_records("replica-b"), copier) == STORED
    assert copier.runs == 1
    status = status_of(fake_kube)
    assert (status["phase"], status["holder"], status["message"]) == ("Ready", "replica-b", "")
    assert status["firstUsed"] == failed["firstUsed"]
    (take_over,) = fake_kube.calls_to("PUT", f"/{NAME}/status")
    assert take_over.body["metadata"]["resourceVersion"]  # the precondition


async def test_a_stale_copying_record_is_taken_over(
    fake_kube: FakeKube, open_records: Opener
) -> None:
    first_used = ago(600)
    seed(
        fake_kube,
        {"phase": "Copying", "holder": "gone", "heartbeat": ago(61), "firstUsed": first_used},
    )
    copier = Copier()
    assert await exclusive(open_records("replica-b", stale_after=60), copier) == STORED
    assert copier.runs == 1
    status = status_of(fake_kube)
    assert (status["phase"], status["holder"], status["firstUsed"]) == (
        "Ready",
        "replica-b",
        first_used,
    )
    assert not watches(fake_kube)


async def test_of_two_take_overs_only_one_wins_and_the_other_waits(
    fake_kube: FakeKube, open_records: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(fake_kube, {"phase": "Copying", "holder": "gone", "heartbeat": ago(120)})
    # Both replicas write only after both have read the stale record: one write must lose.
    both_read = threading.Barrier(2, timeout=5)
    replace = client.CustomObjectsApi.replace_namespaced_custom_object_status

    def after_both_read(self: Any, *args: Any, **kwargs: Any) -> Any:
        both_read.wait()
        return replace(self, *args, **kwargs)

    monkeypatch.setattr(
        client.CustomObjectsApi, "replace_namespaced_custom_object_status", after_both_read
    )
    copier = Copier(seconds=0.2)
    a = open_records("replica-a", heartbeat_every=0.05)
    b = open_records("replica-b", heartbeat_every=0.05)
    outcomes = await asyncio.gather(timed(a, copier), timed(b, copier))

    assert copier.runs == 1
    assert sorted(stored is None for stored, _ in outcomes) == [False, True]
    first, second = fake_kube.calls_to("PUT", f"/{NAME}/status")
    assert first.body["metadata"]["resourceVersion"] == second.body["metadata"]["resourceVersion"]
    assert watches(fake_kube)  # the loser waited for the winner
    assert status_of(fake_kube)["phase"] == "Ready"


async def test_waiting_on_a_fresh_copy_ends_at_the_deadline(
    fake_kube: FakeKube, open_records: Opener
) -> None:
    seed(fake_kube, {"phase": "Copying", "holder": "busy", "heartbeat": ago(0)})
    copier = Copier()
    started = time.monotonic()
    with pytest.raises(TimeoutError) as caught:
        await exclusive(open_records("replica-b"), copier, seconds=0.3)
    assert str(caught.value) == STILL_COPYING
    assert 0.25 <= time.monotonic() - started < 0.9
    assert copier.runs == 0
    assert status_of(fake_kube)["holder"] == "busy"
    assert watches(fake_kube)


@pytest.mark.parametrize("minutes_later", [0, 2], ids=["fresh", "stale"])
async def test_a_record_without_status_counts_as_copying_since_its_creation(
    fake_kube: FakeKube, open_records: Opener, minutes_later: int
) -> None:
    seed(fake_kube, None)

    def later() -> datetime:
        return datetime.now(UTC) + timedelta(minutes=minutes_later)

    records = open_records("replica-b", now=later)
    copier = Copier()
    if minutes_later:
        assert await exclusive(records, copier, seconds=0.3) == STORED
        assert copier.runs == 1
    else:
        with pytest.raises(TimeoutError):
            await exclusive(records, copier, seconds=0.3)
        assert copier.runs == 0


@pytest.mark.parametrize("change", ["fails", "is-deleted"])
async def test_a_waiting_replica_copies_once_the_holder_fails_or_the_record_goes(
    fake_kube: FakeKube, open_records: Opener, change: str
) -> None:
    seed(fake_kube, {"phase": "Copying", "holder": "busy", "heartbeat": ago(0)})
    copier = Copier()
    waiting = asyncio.create_task(exclusive(open_records("replica-b"), copier))
    await until(lambda: bool(watches(fake_kube)))
    if change == "fails":
        failed = {"status": {"phase": "Failed", "message": "no space left"}}
        fake_kube.store.patch(
            IMAGE_BACKUPS, NS, NAME, failed, "application/merge-patch+json", status_only=True
        )
    else:
        fake_kube.store.delete(IMAGE_BACKUPS, NS, NAME)
    assert await waiting == STORED
    assert copier.runs == 1
    assert (status_of(fake_kube)["phase"], status_of(fake_kube)["holder"]) == ("Ready", "replica-b")


async def test_a_cancelled_copy_leaves_the_record_copying_and_stops_its_heartbeat(
    fake_kube: FakeKube, open_records: Opener
) -> None:
    async def endless() -> Stored:
        await asyncio.Event().wait()
        return STORED

    records = open_records("replica-a", heartbeat_every=0.05)
    copying = asyncio.create_task(exclusive(records, endless))
    await until(lambda: len(heartbeats(fake_kube)) >= 2)
    copying.cancel()
    with pytest.raises(asyncio.CancelledError):
        await copying
    await asyncio.sleep(0.05)  # a heartbeat already on its way may still land
    renewed = heartbeats(fake_kube)
    await asyncio.sleep(0.2)
    assert heartbeats(fake_kube) == renewed
    status = status_of(fake_kube)
    assert (status["phase"], status["holder"]) == ("Copying", "replica-a")


async def test_failed_heartbeats_are_logged_and_the_copy_goes_on(
    fake_kube: FakeKube, open_records: Opener, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse_heartbeats(call: Call) -> None:
        if call.content_type == JSON_PATCH and "heartbeat" in str(call.body):
            raise KubeError(500, "InternalError", "etcd is unwell")

    fake_kube.interceptors.append(refuse_heartbeats)
    copier = Copier(seconds=0.2)
    with caplog.at_level(logging.WARNING, logger="image_backup.records"):
        assert await exclusive(open_records("replica-a", heartbeat_every=0.05), copier) == STORED
    assert status_of(fake_kube)["phase"] == "Ready"
    failures = [r.getMessage() for r in caplog.records if "heartbeat_failed" in r.getMessage()]
    assert len(failures) >= 2  # it kept trying
    assert all("etcd is unwell" in message and "\n" not in message for message in failures)


async def test_a_replica_that_lost_its_record_stops_renewing_but_records_the_copy(
    fake_kube: FakeKube, open_records: Opener, caplog: pytest.LogCaptureFixture
) -> None:
    async def usurped() -> Stored:
        await until(lambda: len(heartbeats(fake_kube)) >= 1)
        usurper = {"status": {"holder": "replica-b", "heartbeat": ago(0)}}
        fake_kube.store.patch(
            IMAGE_BACKUPS, NS, NAME, usurper, "application/merge-patch+json", status_only=True
        )
        await asyncio.sleep(0.3)
        return STORED

    with caplog.at_level(logging.WARNING, logger="image_backup.records"):
        assert await exclusive(open_records("replica-a", heartbeat_every=0.05), usurped) == STORED
    assert any("imagebackup_lost" in r.getMessage() for r in caplog.records)
    # After the refused one, no more: five would fit in the time the copy went on.
    assert len(heartbeats(fake_kube)) <= 3
    status = status_of(fake_kube)
    assert (status["phase"], status["holder"]) == ("Ready", "replica-b")


async def test_uses_are_written_to_last_used_at_most_once_per_touch_every(
    fake_kube: FakeKube, open_records: Opener
) -> None:
    seed(fake_kube, {"phase": "Ready"})
    clock = [datetime(2024, 5, 1, tzinfo=UTC)]
    records = open_records("replica-a", touch_every=3600, now=lambda: clock[0])
    unrecorded = record_name("elsewhere/app", DIGEST)

    def touches(name: str) -> int:
        return len(fake_kube.calls_to("PATCH", f"/{name}/status"))

    records.used(REPO, DIGEST)
    records.used(REPO, DIGEST)
    records.used("elsewhere/app", DIGEST)  # no record: nothing to note it in
    await records.touch_used()
    assert status_of(fake_kube)["lastUsed"] == "2024-05-01T00:00:00.000000Z"
    assert (touches(NAME), touches(unrecorded)) == (1, 1)

    clock[0] += timedelta(minutes=30)
    records.used(REPO, DIGEST)
    await records.touch_used()
    assert touches(NAME) == 1  # touched within the hour

    clock[0] += timedelta(minutes=31)
    await records.touch_used()  # the use 30 minutes ago is due now
    assert status_of(fake_kube)["lastUsed"] == "2024-05-01T01:01:00.000000Z"
    await records.touch_used()
    assert (touches(NAME), touches(unrecorded)) == (2, 1)


async def test_a_failed_touch_ends_the_pass_and_the_next_pass_tries_again(
    fake_kube: FakeKube, open_records: Opener, caplog: pytest.LogCaptureFixture
) -> None:
    other = "r.example/app"
    names = [seed(fake_kube, {"phase": "Ready"}), seed(fake_kube, {"phase": "Ready"}, repo=other)]

    def unavailable(call: Call) -> None:
        if call.method == "PATCH":
            raise KubeError(503, "ServiceUnavailable", "the API server is shutting down")

    records = open_records("replica-a")
    records.used(REPO, DIGEST)
    records.used(other, DIGEST)
    fake_kube.interceptors.append(unavailable)
    with caplog.at_level(logging.WARNING, logger="image_backup.records"):
        await records.touch_used()
    assert len(fake_kube.calls_to("PATCH", "/status")) == 1  # not one timeout per record
    assert any("shutting down" in r.getMessage() for r in caplog.records)

    fake_kube.interceptors.remove(unavailable)
    await records.touch_used()
    assert all("lastUsed" in status_of(fake_kube, name) for name in names)


async def test_run_touches_writes_uses_in_the_background(
    fake_kube: FakeKube, open_records: Opener
) -> None:
    seed(fake_kube, {"phase": "Ready"})
    records = open_records("replica-a")
    records.used(REPO, DIGEST)
    touching = asyncio.create_task(records.run_touches(0.02))
    try:
        await until(lambda: "lastUsed" in status_of(fake_kube))
    finally:
        touching.cancel()


async def test_ready_lists_the_ready_backups_with_what_was_backed_up_and_since_when(
    fake_kube: FakeKube, open_records: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = ["sha256:" + "01" * 32, "sha256:" + "02" * 32]
    seed(fake_kube, {"phase": "Ready", "firstUsed": "2026-11-02T10:00:00.000000Z"}, blobs=blobs)
    other = "sha256:" + "cd" * 32
    seed(
        fake_kube,
        {"phase": "Ready"},
        repo="localhost:5000/app",
        backup=f"localhost:5000/app@{other}",
        digest=other,
    )
    for phase, repo in [("Copying", "r.example/copying"), ("Failed", "r.example/failed")]:
        seed(fake_kube, {"phase": phase}, repo=repo, backup=f"{repo}:1@{DIGEST}")
    seed(fake_kube, {"phase": "Ready"}, namespace="elsewhere", repo="r.example/elsewhere")

    monkeypatch.setattr(records_module, "PAGE_SIZE", 2)  # several pages
    ready = await open_records("replica-a").ready()
    lists = [c for c in fake_kube.calls if c.method == "GET" and c.path.endswith("/imagebackups")]
    assert [c.query.get("limit") for c in lists] == ["2", "2"]  # the namespace's 4 records
    assert [bool(c.query.get("continue")) for c in lists] == [False, True]
    assert sorted(ready, key=lambda backup: backup.backup_repo) == [
        ReadyBackup(REPO, DIGEST, tuple(blobs), SOURCE, BACKUP, "2026-11-02T10:00:00.000000Z"),
        ReadyBackup("localhost:5000/app", other, (), SOURCE, f"localhost:5000/app@{other}"),
    ]


DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@pytest.mark.parametrize(
    "repo",
    [
        REPO,
        "registry.example/" + "Very_Long.Name-" * 30,
        "host:5000/team/___",
        "host/UPPER/Mixed__Case..Name-",
        "h/x",
    ],
)
def test_record_names_are_dns_subdomains(repo: str) -> None:
    name = record_name(repo, DIGEST)
    assert DNS_SUBDOMAIN.fullmatch(name), name
    assert len(name) <= 253
    assert record_name(repo, DIGEST) == name


def test_record_names_are_readable_and_distinct() -> None:
    assert NAME.startswith("nginx-") and NAME.endswith("-" + "ab" * 8)
    assert record_name("a.example/team/nginx", DIGEST) != record_name(
        "b.example/team/nginx", DIGEST
    )
    assert record_name(REPO, DIGEST) != record_name(REPO, "sha256:" + "cd" * 32)


# ImageStream tags: which history items of which OpenShift ImageStream tags a backup is.

SHOP_LABEL = "imagestreams.image-backup.io/shop.myapp"
LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


def item(tag: str, created: str, namespace: str = "shop", stream: str = "myapp") -> dict[str, str]:
    return {"namespace": namespace, "imageStream": stream, "tag": tag, "created": created}


def stream_tag(tag: str, created: str, namespace: str = "shop", stream: str = "myapp") -> StreamTag:
    return StreamTag(namespace, stream, tag, created)


async def note(records: BackupRecords, *tags: StreamTag, digest: str = DIGEST) -> None:
    """note_stream_tags() on the test's backup (or on the backup of `digest`)."""
    backup = f"{REPO}:1.25@{digest}"
    await records.note_stream_tags(
        source=SOURCE, backup=backup, backup_repo=REPO, digest=digest, tags=tags
    )


def spec_writes(kube: FakeKube, name: str = NAME) -> list[Call]:
    return kube.calls_to("PATCH", f"/imagebackups/{name}")


async def test_stream_tags_are_merged_into_the_record_once_each_and_sorted(
    fake_kube: FakeKube, open_records: Opener
) -> None:
    blobs = ["sha256:" + "01" * 32]
    seed(
        fake_kube,
        {"phase": "Ready", "firstUsed": "2026-11-02T10:00:00.000000Z"},
        blobs=blobs,
        imageStreamTags=[item("prod", "2026-11-01T09:00:00Z")],
    )
    records = open_records("replica-a")
    await note(
        records,
        stream_tag("v1", "2026-10-01T00:00:00Z"),
        stream_tag("prod", "2026-11-01T09:00:00Z"),  # recorded already
        # Later than 2026-11-01T09:00:00Z, though it sorts before it as text.
        stream_tag("prod", "2026-11-01T08:30:00-02:00"),
        stream_tag("prod", "2026-11-01T09:00:00Z", namespace="ci"),  # imported there too
        stream_tag("latest", "2026-11-05T12:00:00Z", stream="base"),
    )

    record = fake_kube.store.get(IMAGE_BACKUPS, NS, NAME)
    assert record["spec"] == {
        "source": SOURCE,
        "backup": BACKUP,
        "digest": DIGEST,
        "blobs": blobs,
        "imageStreamTags": [
            item("prod", "2026-11-01T09:00:00Z", namespace="ci"),
            item("latest", "2026-11-05T12:00:00Z", stream="base"),
            item("prod", "2026-11-01T08:30:00-02:00"),
            item("prod", "2026-11-01T09:00:00Z"),
            item("v1", "2026-10-01T00:00:00Z"),
        ],
    }
    assert record["metadata"]["labels"] == {
        SHOP_LABEL: "true",
        "imagestreams.image-backup.io/shop.base": "true",
        "imagestreams.image-backup.io/ci.myapp": "true",
    }
    assert record["status"] == {"phase": "Ready", "firstUsed": "2026-11-02T10:00:00.000000Z"}
    (write,) = spec_writes(fake_kube)
    assert write.body["metadata"]["resourceVersion"]  # the precondition

    await note(records, stream_tag("v1", "2026-10-01T00:00:00Z"))
    assert len(spec_writes(fake_kube)) == 1  # nothing new: nothing written


async def test_a_missing_record_is_made_ready_with_the_stream_tags(
    fake_kube: FakeKube, open_records: Opener
) -> None:
    records = open_records("replica-a")
    await note(records)
    assert fake_kube.calls == []  # nothing to note: no record is made for it
    await note(records, stream_tag("prod", "2026-11-01T09:00:00Z"))

    record = fake_kube.store.get(IMAGE_BACKUPS, NS, NAME)
    assert record["spec"] == {
        "source": SOURCE,
        "backup": BACKUP,
        "digest": DIGEST,
        "imageStreamTags": [item("prod", "2026-11-01T09:00:00Z")],
    }
    assert record["metadata"]["labels"] == {SHOP_LABEL: "true"}
    assert record["status"] == {"phase": "Ready"}
    # Ready, so that a replica admitting the image copies nothing, and warm() knows it.
    assert await exclusive(open_records("replica-b"), Copier()) is None
    assert [backup.digest for backup in await records.ready()] == [DIGEST]


@pytest.mark.parametrize("phase", ["Copying", "Failed"])
async def test_a_record_being_copied_or_failed_gets_the_stream_tags_and_keeps_its_phase(
    fake_kube: FakeKube, open_records: Opener, phase: str
) -> None:
    status = {"phase": phase, "holder": "replica-b", "heartbeat": ago(0)}
    seed(fake_kube, status)
    await note(open_records("replica-a"), stream_tag("prod", "2026-11-01T09:00:00Z"))
    record = fake_kube.store.get(IMAGE_BACKUPS, NS, NAME)
    assert record["spec"]["imageStreamTags"] == [item("prod", "2026-11-01T09:00:00Z")]
    assert record["status"] == status


@pytest.mark.parametrize("exists", [True, False], ids=["record", "no-record"])
async def test_concurrent_writers_of_stream_tags_all_survive(
    fake_kube: FakeKube, open_records: Opener, monkeypatch: pytest.MonkeyPatch, exists: bool
) -> None:
    """Both read before either writes (the record, or that there is none): one write loses
    (409) and is made again on what the other wrote."""
    if exists:
        seed(fake_kube, {"phase": "Ready"})
    method = "patch_namespaced_custom_object" if exists else "create_namespaced_custom_object"
    both_read = threading.Barrier(2, timeout=5)
    first_writes = iter(range(2))
    write = getattr(client.CustomObjectsApi, method)

    def after_both_read(self: Any, *args: Any, **kwargs: Any) -> Any:
        if next(first_writes, None) is not None:  # the retry goes ahead alone
            both_read.wait()
        return write(self, *args, **kwargs)

    monkeypatch.setattr(client.CustomObjectsApi, method, after_both_read)
    a, b = open_records("replica-a"), open_records("replica-b")
    await asyncio.gather(
        note(a, stream_tag("v1", "2026-11-01T09:00:00Z")),
        note(b, stream_tag("latest", "2026-11-01T09:00:00Z")),
    )
    record = fake_kube.store.get(IMAGE_BACKUPS, NS, NAME)
    assert record["spec"]["imageStreamTags"] == [
        item("latest", "2026-11-01T09:00:00Z"),
        item("v1", "2026-11-01T09:00:00Z"),
    ]
    assert record["status"]["phase"] == "Ready"
    creates = fake_kube.calls_to("POST", f"/namespaces/{NS}/imagebackups")
    if exists:
        assert (len(creates), len(spec_writes(fake_kube))) == (0, 3)
    else:  # the loser adds its tags (again, if the winner's status write came in between)
        assert len(creates) == 2 and spec_writes(fake_kube)


async def test_stream_tags_give_up_after_a_few_conflicts(
    fake_kube: FakeKube, open_records: Opener
) -> None:
    seed(fake_kube, {"phase": "Ready"})

    def always_changed(call: Call) -> None:
        if call.method == "PATCH" and call.path.endswith(f"/imagebackups/{NAME}"):
            raise KubeError(409, "Conflict", "the object has been modified")

    fake_kube.interceptors.append(always_changed)
    with pytest.raises(ClientError) as caught:
        await note(open_records("replica-a"), stream_tag("prod", "2026-11-01T09:00:00Z"))
    assert caught.value.status == 409
    assert len(spec_writes(fake_kube)) == CONFLICT_RETRIES


@pytest.mark.parametrize(
    ("namespace", "stream", "readable", "hashed"),
    [
        ("shop", "myapp", "shop.myapp", False),
        ("n" * 30, "s" * 32, "n" * 30 + "." + "s" * 32, False),  # 63 characters
        ("n" * 30, "s" * 33, "n" * 30 + "." + "s" * 21, True),
        (
            "team-" * 12 + "abc",
            "registry.example.com.mirror." * 9 + "app",
            "team-" * 10 + "te",
            True,
        ),
        ("shop", "my-app.", "shop.my-app", True),  # a label name cannot end in a dot
        ("x", "-" * 70, "x", True),
    ],
)
def test_stream_labels_are_valid_label_keys(
    namespace: str, stream: str, readable: str, hashed: bool
) -> None:
    key = stream_label(namespace, stream)
    prefix, _, name = key.partition("/")
    assert prefix == "imagestreams.image-backup.io"
    assert LABEL_NAME.fullmatch(name), name
    assert len(name) <= 63
    assert re.fullmatch(re.escape(readable) + ("-[0-9a-f]{10}" if hashed else ""), name), name
    assert stream_label(namespace, stream) == key


def test_long_stream_labels_are_distinct() -> None:
    """Names whose readable parts agree get labels of their own."""
    namespace, stream = "n" * 30, "s" * 40
    assert stream_label(namespace, stream + "x") != stream_label(namespace, stream)
    assert stream_label(namespace, stream + ".") != stream_label(namespace, stream + "-")


async def test_stream_backups_are_the_streams_history_newest_first(
    fake_kube: FakeKube, open_records: Opener
) -> None:
    other = "sha256:" + "cd" * 32
    long_stream = "registry.example.com.mirror." * 9 + "app"
    records = open_records("replica-a")
    await note(
        records,
        stream_tag("prod", "2026-11-01T09:00:00Z"),
        stream_tag("prod", "2026-11-01T09:00:00Z", stream=long_stream),
        stream_tag("prod", "2026-11-02T09:00:00Z", namespace="ci"),
    )
    await note(records, stream_tag("prod", "2026-11-20T10:00:00Z"), digest=other)
    seed(fake_kube, {"phase": "Ready"}, repo="r.example/unrelated")

    history = await records.stream_backups(namespace="shop", image_stream="myapp")
    assert history == [
        StreamBackup(
            stream_tag("prod", "2026-11-20T10:00:00Z"), SOURCE, f"{REPO}:1.25@{other}", "Ready"
        ),
        StreamBackup(stream_tag("prod", "2026-11-01T09:00:00Z"), SOURCE, BACKUP, "Ready"),
    ]
    (listed,) = [c for c in fake_kube.calls if c.method == "GET" and c.path.endswith("s")]
    assert listed.query["labelSelector"] == SHOP_LABEL  # the server picks the records
    long_history = await records.stream_backups(namespace="shop", image_stream=long_stream)
    assert [backup.item.image_stream for backup in long_history] == [long_stream]


def image_backup(*args: str) -> subprocess.CompletedProcess[str]:
    """The `image-backup` command, as an operator runs it (KUBECONFIG: the fake)."""
    command = [sys.executable, "-m", "webhook", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


async def test_status_of_an_imagestream_lists_its_history_newest_first(
    fake_kube: FakeKube, open_records: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)  # the records' namespace: image-backup
    records = open_records("replica-a")
    old, new, broken = ("sha256:" + c * 64 for c in "abc")

    def backup(digest: str) -> str:
        return f"{REPO}:1.25@{digest}"

    failed = {"phase": "Failed", "message": "no space left"}
    seed(fake_kube, failed, digest=broken, backup=backup(broken))
    history = {
        old: [("prod", "2026-11-01T09:00:00Z"), ("v1", "2026-11-01T09:00:00Z")],
        new: [("prod", "2026-11-20T10:00:00Z"), ("latest", "2026-11-19T08:00:00Z")],
        broken: [("latest", "2026-11-25T07:00:00Z")],
    }
    for digest, items in history.items():
        await note(records, *(stream_tag(tag, created) for tag, created in items), digest=digest)
    await note(records, stream_tag("prod", "2026-11-30T00:00:00Z", namespace="ci"), digest=old)

    every = image_backup("status", "--imagestream", "shop/myapp")
    assert every.returncode == 0, every.stderr
    assert [line.split() for line in every.stdout.splitlines()] == [
        ["TAG", "CREATED", "SOURCE", "BACKUP", "PHASE"],
        ["latest", "2026-11-25T07:00:00Z", SOURCE, backup(broken), "Failed"],
        ["prod", "2026-11-20T10:00:00Z", SOURCE, backup(new), "Ready"],
        ["latest", "2026-11-19T08:00:00Z", SOURCE, backup(new), "Ready"],
        ["prod", "2026-11-01T09:00:00Z", SOURCE, backup(old), "Ready"],
        ["v1", "2026-11-01T09:00:00Z", SOURCE, backup(old), "Ready"],
    ]
    header, first = every.stdout.splitlines()[:2]
    assert first.index("2026-11-25") == header.index("CREATED")  # aligned columns

    prod = image_backup("status", "--imagestream", "shop/myapp:prod", "-o", "json")
    assert prod.returncode == 0, prod.stderr
    assert orjson.loads(prod.stdout) == [
        {
            "tag": "prod",
            "created": created,
            "source": SOURCE,
            "backup": backup(digest),
            "phase": "Ready",
        }
        for digest, created in [(new, "2026-11-20T10:00:00Z"), (old, "2026-11-01T09:00:00Z")]
    ]

    none = image_backup("status", "--imagestream", "shop/other", "-o", "json")
    assert (none.returncode, orjson.loads(none.stdout)) == (0, [])
    none = image_backup("status", "--imagestream", "shop/other")
    assert (none.returncode, none.stdout.split()) == (
        0,
        ["TAG", "CREATED", "SOURCE", "BACKUP", "PHASE"],
    )
    assert none.stderr == "no backup of ImageStream shop/other is recorded\n"
    bad = image_backup("status", "--imagestream", "myapp:prod")
    assert bad.returncode == 2
    assert "'myapp:prod' is not NAMESPACE/NAME[:TAG]" in bad.stderr
