"""ImageBackup records: which backups exist, and which webhook replica is making one.

Replicas share no memory, so the API server arbitrates: the replica whose create of a
backup's record succeeds copies it, renewing a heartbeat meanwhile; the others wait for the
record to turn Ready (watching it, not polling) and then copy nothing. A holder that dies
stops renewing; once its heartbeat is ``stale_after`` old (or the copy Failed), any replica
takes the record over with a write conditional on the resourceVersion it read, so exactly
one wins. The records also say when each backup was first and last used, and let a
replica start with the backups already made.

The client is synchronous; its calls run on threads of this module's own, so waits that
stream for seconds never hold up the event loop or its default executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes import client, watch

from ..events import event_message
from ..registry.copy import STILL_COPYING, Stored
from ..registry.referrers import Artifact, Carried
from ..text import one_line
from .client import (
    JSON_PATCH,
    MERGE_PATCH,
    PAGE_SIZE,
    TIMEOUT_SECONDS,
    KubeError,
    pages,
    translated,
    until_written,
)

log = logging.getLogger("image_backup.records")

GROUP, VERSION, PLURAL, KIND = "image-backup.io", "v1alpha1", "imagebackups", "ImageBackup"
COPYING, READY, FAILED = "Copying", "Ready", "Failed"
WATCH_SECONDS = 5  # each watch stream at most: then staleness is judged again
MESSAGE_LIMIT = 1000
STREAM_LABEL_PREFIX = "imagestreams.image-backup.io/"
LABEL_NAME_LIMIT = 63
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_LONG_AGO = datetime.min.replace(tzinfo=UTC)

Object = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ReadyBackup:
    backup_repo: str
    digest: str
    blobs: tuple[str, ...]
    source: str = ""  # the reference that was backed up, as workloads named it
    backup: str = ""  # the pinned backup reference
    since: str = ""  # when it was first used (RFC 3339), "" if not recorded
    # Namespaces whose pull credentials were shown to read the source (spec.readBy): the
    # only ones a backup of a private source may be given to without the source.
    read_by: tuple[str, ...] = ()
    # The ImageStream tags whose history holds it (spec.imageStreamTags): for a restore.
    stream_tags: tuple[StreamTag, ...] = ()


@dataclass(frozen=True, slots=True)
class StreamTag:
    """One history item of an OpenShift ImageStream tag: the tag pointed at the image from
    `created` on (until the next newer item of the same tag, if any)."""

    namespace: str  # the ImageStream's namespace
    image_stream: str  # its name
    tag: str  # the ImageStream tag
    created: str  # the history item's `created` (RFC 3339)


@dataclass(frozen=True, slots=True)
class StreamBackup:
    """A history item of an ImageStream tag, with the record of its image's backup."""

    item: StreamTag
    source: str
    backup: str
    phase: str


def stream_label(namespace: str, image_stream: str) -> str:
    """The label key on the records of an ImageStream's images (value "true"):
    ``imagestreams.image-backup.io/<namespace>.<name>`` when that is a valid label name;
    otherwise a readable truncation and a hash of ``<namespace>/<name>``, so that a long
    name still gets a valid key of its own. (A namespace has no dot: the first dot ends it.)"""
    name = f"{namespace}.{image_stream}"
    if len(name) <= LABEL_NAME_LIMIT and _LABEL_NAME.fullmatch(name):
        return STREAM_LABEL_PREFIX + name
    digest = hashlib.sha256(f"{namespace}/{image_stream}".encode()).hexdigest()[:10]
    readable = re.sub(r"[^-A-Za-z0-9_.]+", "-", name)[: LABEL_NAME_LIMIT - 1 - len(digest)]
    readable = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", readable)
    return STREAM_LABEL_PREFIX + "-".join(part for part in (readable, digest) if part)


def record_name(backup_repo: str, digest: str) -> str:
    """The record's name: readable (the repository's last segment), and unique through a
    hash of the whole repository and the digest's start. A DNS-1123 subdomain of <= 68
    characters, whatever the repository is called."""
    slug = re.sub(r"[^a-z0-9]+", "-", backup_repo.rsplit("/", 1)[-1].lower())
    slug = slug.strip("-")[:40].strip("-")
    repo_hash = hashlib.sha256(backup_repo.encode()).hexdigest()[:10]
    digest_part = re.sub(r"[^a-z0-9]", "", digest.partition(":")[2].lower())[:16]
    return "-".join(part for part in (slug, repo_hash, digest_part) if part)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class BackupRecords:
    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        holder: str,
        *,
        stale_after: float = 60.0,
        heartbeat_every: float = 10.0,
        touch_every: float = 3600.0,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        """`holder` names this replica (its pod); `now` is the wall clock heartbeats and
        use times are written in."""
        self._api = api
        self._custom: Any = client.CustomObjectsApi(api)
        self._namespace = namespace
        self._holder = holder
        self._stale_after = stale_after
        self._heartbeat_every = heartbeat_every
        self._touch_every = timedelta(seconds=touch_every)
        self._now = now
        # Watches get threads of their own: short writes (heartbeats above all) never
        # queue behind them.
        self._requests = ThreadPoolExecutor(8, thread_name_prefix="imagebackup-records")
        self._watches = ThreadPoolExecutor(32, thread_name_prefix="imagebackup-records-watch")
        self._heartbeats: set[asyncio.Task[None]] = set()
        self._noted: dict[tuple[str, str], None] = {}  # used since their last touch
        self._touched: dict[tuple[str, str], datetime] = {}  # within touch_every
        # Namespaces that read a backup's source, not yet written to its readBy / written.
        self._readers: dict[tuple[str, str], set[str]] = {}
        self._read_by: dict[tuple[str, str], frozenset[str]] = {}

    async def exclusive(
        self,
        source: str,
        backup: str,
        backup_repo: str,
        digest: str,
        copy: Callable[[], Awaitable[Stored]],
        *,
        deadline: float,
        present: Callable[[], Awaitable[bool]] | None = None,
    ) -> Stored | None:
        """Run `copy` if this replica holds the record; None when another replica made it Ready.
        `backup` is the pinned backup reference string for spec.backup; deadline is
        time.monotonic()-based and bounds only the wait for the record, not the copy.
        `present` checks a Ready record against the registry: a backup deleted since it was
        recorded is copied again (the record taken over) instead of trusted."""
        name = record_name(backup_repo, digest)
        spec = {"source": source, "backup": backup, "digest": digest}
        if not await self._acquire(name, spec, deadline, present):
            return None
        try:
            with self._heartbeating(name):
                stored = await copy()
        except Exception as exc:
            await self._record_failure(name, exc)
            raise
        await self._record_stored(name, stored)
        return stored

    def used(self, backup_repo: str, digest: str, namespace: str | None = None) -> None:
        """Note a use of the backup, by a workload of `namespace` whose credentials read its
        source; touch_used() writes it down later (a namespace new to the record at once,
        its lastUsed at most every touch_every)."""
        key = (backup_repo, digest)
        self._noted[key] = None
        if namespace and namespace not in self._read_by.get(key, ()):
            self._readers.setdefault(key, set()).add(namespace)

    async def record_of(self, backup_repo: str, digest: str) -> ReadyBackup | None:
        """What the record of that backup says, or None if there is none. Whatever its
        phase: who was shown to read the source (spec.readBy) stays true, and a record
        re-created from an export into a new cluster has no status at all."""
        record = await self._read(record_name(backup_repo, digest))
        return _ready_backup(record) if record is not None else None

    async def touch_used(self) -> None:
        """One pass: set lastUsed of the noted records not touched within touch_every. A
        record that is gone is forgotten; another failure (the API server is likely down)
        ends the pass, logged: the rest are tried in the next one."""
        now = self._now()
        for key, namespaces in list(self._readers.items()):
            try:
                await self._add_readers(record_name(*key), namespaces)
            except KubeError as exc:
                if exc.status != 404:
                    log.warning(event_message("imagebackup_readers_unrecorded", error=str(exc)))
                    return
            self._read_by[key] = self._read_by.get(key, frozenset()) | namespaces
            self._readers.pop(key, None)
        self._touched = {k: at for k, at in self._touched.items() if now - at < self._touch_every}
        for key in [k for k in self._noted if k not in self._touched]:
            name = record_name(*key)
            try:
                await self._request(
                    f"noting the use of {self._what(name)}",
                    self._custom.patch_namespaced_custom_object_status,
                    name,
                    {"status": {"lastUsed": _timestamp(now)}},
                    _content_type=MERGE_PATCH,
                )
            except KubeError as exc:
                if exc.status != 404:
                    log.warning(event_message("imagebackup_touch_failed", error=str(exc)))
                    return
            self._touched[key] = now
            self._noted.pop(key, None)

    async def run_touches(self, interval: float = 60.0) -> None:
        """Forever: touch_used() every `interval` seconds."""
        while True:
            await asyncio.sleep(interval)
            await self.touch_used()

    async def note_stream_tags(
        self,
        *,
        source: str,
        backup: str,
        backup_repo: str,
        digest: str,
        tags: Sequence[StreamTag],
    ) -> None:
        """Record on the ImageBackup of (backup_repo, digest) that it backs up these
        ImageStream tag history items. A missing record is made Ready: the caller has just
        seen the backup in the registry (copied, or there already). One being copied, or
        Failed, gets the items and keeps its phase. A write lost to another writer (a
        409) is made again on what that one wrote, so every writer's items survive."""
        if not tags:
            return
        name = record_name(backup_repo, digest)
        spec = {"source": source, "backup": backup, "digest": digest}
        doing = f"noting ImageStream tags on {self._what(name)}"
        await until_written(doing, lambda: self._add_stream_tags(name, spec, tags, doing))

    async def note_referrers(self, backup_repo: str, digest: str, carried: Carried) -> None:
        """Write on the backup's record what travels with it: spec.referrers, the artifacts
        the backup holds (those recorded before kept: a backup never loses one), and
        status.referrerFailures, what the latest carrying could not carry ([] once all did).
        A backup without a record gets none: its copy was not coordinated."""
        name = record_name(backup_repo, digest)
        doing = f"noting the referrers of {self._what(name)}"
        failures = [_failure_entry(artifact) for artifact in carried.failures]

        async def attempt() -> bool:
            record = await self._read(name)
            if record is None:
                return True
            known = (record.get("spec") or {}).get("referrers") or []
            merged = _merged_referrers(known, carried)
            if merged != known and not await self._patch_as_read(
                record, {"spec": {"referrers": merged}}, doing
            ):
                return False
            if (record.get("status") or {}).get("referrerFailures", []) != failures:
                await self._request(
                    doing,
                    self._custom.patch_namespaced_custom_object_status,
                    name,
                    {"status": {"referrerFailures": failures}},
                    _content_type=MERGE_PATCH,
                )
            return True

        await until_written(doing, attempt)

    async def ready(self) -> list[ReadyBackup]:
        """The backups recorded as Ready: to start with what other replicas made, and to
        say what is protected."""
        return [_ready_backup(r) async for r in self._listed() if _phase(r) == READY]

    async def stream_backups(self, *, namespace: str, image_stream: str) -> list[StreamBackup]:
        """The recorded history items of an ImageStream's tags, newest first, each with its
        backup: from the records the stream's label selects."""
        selector = stream_label(namespace, image_stream)
        # By name: a list restarted after its continue token expired repeats records.
        records = {r["metadata"]["name"]: r async for r in self._listed(label_selector=selector)}
        found = []
        for record in records.values():
            spec = record.get("spec") or {}
            source, backup, phase = (
                spec.get("source") or "",
                spec.get("backup") or "",
                _phase(record),
            )
            for item in _stream_tags(spec.get("imageStreamTags") or ()):
                if (item.namespace, item.image_stream) == (namespace, image_stream):
                    found.append(StreamBackup(item, source, backup, phase))
        found.sort(key=lambda backup: backup.item.tag)
        found.sort(key=lambda backup: _instant(backup.item.created), reverse=True)
        return found

    async def close(self) -> None:
        """Stop heartbeats (their records go stale and are taken over) and the threads."""
        for task in self._heartbeats:
            task.cancel()
        await asyncio.gather(*self._heartbeats, return_exceptions=True)
        self._requests.shutdown(wait=False, cancel_futures=True)
        self._watches.shutdown(wait=False, cancel_futures=True)

    async def _listed(self, *, label_selector: str = "") -> AsyncIterator[Object]:
        """The namespace's records (those the selector selects), read a page at a time:
        there may be tens of thousands."""

        async def fetch(token: str) -> tuple[list[Object], str]:
            listed = await self._request(
                f"listing ImageBackups in {self._namespace}",
                self._custom.list_namespaced_custom_object,
                label_selector=label_selector or None,
                limit=PAGE_SIZE,
                _continue=token or None,
            )
            return listed["items"], (listed.get("metadata") or {}).get("continue") or ""

        async for page in pages(fetch):
            for record in page:
                yield record

    async def _add_readers(self, name: str, namespaces: set[str]) -> None:
        """Add `namespaces` to the record's spec.readBy, a write conditional on the version
        read (another replica adds its own at the same time)."""
        doing = f"noting readers of {self._what(name)}"

        async def attempt() -> bool:
            record = await self._read(name)
            if record is None:
                raise KubeError(f"{doing}: gone", 404, "NotFound")
            known = frozenset((record.get("spec") or {}).get("readBy") or ())
            merged = known | namespaces
            if merged == known:
                return True
            return await self._patch_as_read(record, {"spec": {"readBy": sorted(merged)}}, doing)

        await until_written(doing, attempt)

    async def _patch_as_read(self, record: Object, patch: Object, doing: str) -> bool:
        """Merge `patch` into the record as it was read; False when another writer changed
        (409) or deleted (404) it since."""
        metadata = {
            **patch.get("metadata", {}),
            "resourceVersion": record["metadata"]["resourceVersion"],
        }
        try:
            await self._request(
                doing,
                self._custom.patch_namespaced_custom_object,
                record["metadata"]["name"],
                {**patch, "metadata": metadata},
                _content_type=MERGE_PATCH,
            )
        except KubeError as exc:
            if exc.status not in (404, 409):
                raise
            return False
        return True

    async def _add_stream_tags(
        self, name: str, spec: Object, tags: Sequence[StreamTag], doing: str
    ) -> bool:
        """One try of note_stream_tags; False when the record was made, changed or deleted
        by someone else between this replica's read and its write."""
        labels = {stream_label(tag.namespace, tag.image_stream): "true" for tag in tags}
        record = await self._read(name)
        if record is None:
            spec = {**spec, "imageStreamTags": _merged_stream_tags([], tags)}
            return await self._create(name, spec, labels=labels, ready=True)
        metadata = record["metadata"]
        known = (record.get("spec") or {}).get("imageStreamTags") or []
        merged = _merged_stream_tags(known, tags)
        if merged == known and labels.items() <= (metadata.get("labels") or {}).items():
            return True
        patch = {"metadata": {"labels": labels}, "spec": {"imageStreamTags": merged}}
        return await self._patch_as_read(record, patch, doing)

    async def _acquire(
        self,
        name: str,
        spec: Object,
        deadline: float,
        present: Callable[[], Awaitable[bool]] | None,
    ) -> bool:
        """True once this replica holds the record; False when another one made it Ready."""
        record: Object | None = None
        while True:
            if record is None:
                if await self._create(name, spec):
                    return True
                record = await self._read(name)  # None: deleted meanwhile, create again
                continue
            phase = _phase(record)
            missing = phase == READY and present is not None and not await present()
            if phase == READY and not missing:
                return False
            if time.monotonic() >= deadline:
                raise TimeoutError(STILL_COPYING)
            if missing or phase == FAILED or self._age(record) >= self._stale_after:
                if await self._take_over(record):
                    return True
                record = await self._read(name)
            else:
                record = await self._next_version(record, deadline)

    async def _create(
        self,
        name: str,
        spec: Object,
        *,
        labels: dict[str, str] | None = None,
        ready: bool = False,
    ) -> bool:
        """Whether this replica made the record; False when it exists. The record is this
        replica's to copy (Copying), or with `ready` Ready at once: the backup exists."""
        metadata: Object = {"name": name}
        if labels:
            metadata["labels"] = labels
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": metadata,
            "spec": spec,
        }
        try:
            await self._request(
                f"creating {self._what(name)}", self._custom.create_namespaced_custom_object, body
            )
        except KubeError as exc:
            if exc.status != 409:
                raise
            return False
        # The API server ignores the status of a create: it takes a second write. Until it
        # lands, others count the record as Copying since its creation.
        status: Object = {"phase": READY}
        if not ready:
            now = _timestamp(self._now())
            status = {"phase": COPYING, "holder": self._holder, "heartbeat": now, "firstUsed": now}
        try:
            await self._request(
                f"marking {self._what(name)} Ready" if ready else f"holding {self._what(name)}",
                self._custom.patch_namespaced_custom_object_status,
                name,
                {"status": status},
                _content_type=MERGE_PATCH,
            )
        except KubeError as exc:
            if exc.status != 404:
                raise
            return False
        return True

    async def _take_over(self, record: Object) -> bool:
        """Whether this replica now holds a record another one failed or abandoned. The
        write carries the resourceVersion read: if anyone changed the record since, it fails
        (409) and the caller reads it again."""
        name = record["metadata"]["name"]
        previous = record.get("status") or {}
        now = _timestamp(self._now())
        status = {k: v for k, v in previous.items() if k != "message"}
        status.update(phase=COPYING, holder=self._holder, heartbeat=now)
        status.setdefault("firstUsed", now)
        try:
            await self._request(
                f"taking over {self._what(name)}",
                self._custom.replace_namespaced_custom_object_status,
                name,
                {**record, "status": status},
            )
        except KubeError as exc:
            if exc.status not in (404, 409):
                raise
            return False
        log.info(
            event_message(
                "imagebackup_taken_over",
                record=name,
                previousHolder=str(previous.get("holder", "")),
                previousPhase=_phase(record),
            )
        )
        return True

    async def _read(self, name: str) -> Object | None:
        try:
            record: Object = await self._request(
                f"reading {self._what(name)}", self._custom.get_namespaced_custom_object, name
            )
        except KubeError as exc:
            if exc.status != 404:
                raise
            return None
        return record

    async def _next_version(self, record: Object, deadline: float) -> Object | None:
        """The record once it changes (None: deleted), or as it was after a short watch."""
        remaining = deadline - time.monotonic()
        fresh_for = self._stale_after - self._age(record)
        # The API takes whole seconds; the deadline itself is kept to here.
        seconds = max(1, math.ceil(min(WATCH_SECONDS, remaining, fresh_for)))
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(remaining):
                return await loop.run_in_executor(self._watches, self._watch, record, seconds)
        except TimeoutError:
            raise TimeoutError(STILL_COPYING) from None
        except KubeError as exc:
            if exc.status != 410:
                raise
            # The history since that version is gone: read the record as it is now.
            return await self._read(record["metadata"]["name"])

    def _watch(self, record: Object, seconds: int) -> Object | None:
        """The record's first change within `seconds` (None: deleted), else the record."""
        metadata = record["metadata"]
        events = watch.Watch().stream(  # type: ignore[no-untyped-call]
            self._custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            self._namespace,
            PLURAL,
            field_selector=f"metadata.name={metadata['name']}",
            resource_version=metadata["resourceVersion"],
            timeout_seconds=seconds,
            _request_timeout=seconds + TIMEOUT_SECONDS,
        )
        doing = f"watching {self._what(metadata['name'])}"
        with translated(self._api, doing), contextlib.closing(events):
            event = next(events, None)
        if event is None:
            return record
        return None if event["type"] == "DELETED" else event["object"]

    @contextlib.contextmanager
    def _heartbeating(self, name: str) -> Iterator[None]:
        """Renew the record's heartbeat while the body runs."""
        task = asyncio.create_task(self._renew(name))
        self._heartbeats.add(task)
        try:
            yield
        finally:
            task.cancel()
            self._heartbeats.discard(task)

    async def _renew(self, name: str) -> None:
        """Heartbeats, only while this replica still holds the record. A failed one is
        logged and the copy goes on: at worst another replica takes over and copies too."""
        while True:
            await asyncio.sleep(self._heartbeat_every)
            try:
                await self._patch_as_holder(name, {"heartbeat": _timestamp(self._now())})
            except KubeError as exc:
                if exc.status in (404, 422):  # deleted, or held by another replica now
                    log.warning(event_message("imagebackup_lost", record=name, error=str(exc)))
                    return
                log.warning(
                    event_message("imagebackup_heartbeat_failed", record=name, error=str(exc))
                )

    async def _record_failure(self, name: str, exc: Exception) -> None:
        """Mark the record Failed, so others take over at once; the copy's own exception is
        what the caller gets, so failing to record it is only logged."""
        message = one_line(exc)[:MESSAGE_LIMIT] or type(exc).__name__
        try:
            await self._patch_as_holder(name, {"phase": FAILED, "message": message})
        except KubeError as error:
            log.warning(
                event_message("imagebackup_failure_unrecorded", record=name, error=str(error))
            )

    async def _record_stored(self, name: str, stored: Stored) -> None:
        """What the copy stored, then Ready: whoever holds the record, the backup exists."""
        spec = {"size": stored.size, "platforms": [*stored.platforms], "blobs": [*stored.blobs]}
        try:
            await self._request(
                f"recording what {self._what(name)} stored",
                self._custom.patch_namespaced_custom_object,
                name,
                {"spec": spec},
                _content_type=MERGE_PATCH,
            )
            await self._request(
                f"marking {self._what(name)} Ready",
                self._custom.patch_namespaced_custom_object_status,
                name,
                {"status": {"phase": READY, "message": ""}},
                _content_type=MERGE_PATCH,
            )
        except KubeError as exc:
            if exc.status != 404:
                raise
            log.warning(
                event_message(
                    "imagebackup_vanished", record=name, consequence="copied, but not recorded"
                )
            )

    async def _patch_as_holder(self, name: str, fields: Object) -> None:
        """Set status fields unless another replica holds the record (then: 422)."""
        operations = [{"op": "test", "path": "/status/holder", "value": self._holder}]
        operations += [{"op": "add", "path": f"/status/{k}", "value": v} for k, v in fields.items()]
        await self._request(
            f"updating {self._what(name)}",
            self._custom.patch_namespaced_custom_object_status,
            name,
            operations,
            _content_type=JSON_PATCH,
        )

    async def _request(
        self, doing: str, method: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        """One call of a CustomObjectsApi method on this namespace's records, on a thread."""
        call = functools.partial(
            method,
            GROUP,
            VERSION,
            self._namespace,
            PLURAL,
            *args,
            _request_timeout=TIMEOUT_SECONDS,
            **kwargs,
        )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._requests, _translated, self._api, doing, call)

    def _age(self, record: Object) -> float:
        """Seconds since the record's holder last showed it was alive."""
        return (self._now() - _heartbeat(record)).total_seconds()

    def _what(self, name: str) -> str:
        return f"ImageBackup {self._namespace}/{name}"


def _translated(api: client.ApiClient, doing: str, call: Callable[[], Any]) -> Any:
    with translated(api, doing):
        return call()


def ready_among(records: Iterable[Object]) -> list[ReadyBackup]:
    """The Ready backups among records read elsewhere: an export (`kubectl get imagebackups
    -o yaml`, a cluster backup) keeps their status, which a create into a new cluster drops."""
    return [_ready_backup(record) for record in records if _phase(record) == READY]


def _ready_backup(record: Object) -> ReadyBackup:
    spec, status = record["spec"], record.get("status") or {}
    backup = spec["backup"]
    return ReadyBackup(
        _repository(backup),
        spec["digest"],
        tuple(spec.get("blobs") or ()),
        spec.get("source") or "",
        backup,
        status.get("firstUsed") or "",
        tuple(spec.get("readBy") or ()),
        tuple(_stream_tags(spec.get("imageStreamTags") or ())),
    )


def _phase(record: Object) -> str:
    """A record without a phase yet is its creator's, copying."""
    return str((record.get("status") or {}).get("phase") or COPYING)


def _heartbeat(record: Object) -> datetime:
    """The holder's last heartbeat; a record without one counts from its creation."""
    text = (record.get("status") or {}).get("heartbeat") or record["metadata"].get(
        "creationTimestamp"
    )
    return _instant(text)  # unreadable: as good as abandoned


def _instant(text: object) -> datetime:
    """An RFC 3339 time (without an offset: UTC); an unreadable one is long ago."""
    try:
        at = datetime.fromisoformat(str(text))
    except ValueError:
        return _LONG_AGO
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _stream_tags(items: Iterable[Object]) -> list[StreamTag]:
    """The ImageStream tag history items of a record's spec.imageStreamTags."""
    return [
        StreamTag(
            str(item.get("namespace") or ""),
            str(item.get("imageStream") or ""),
            str(item.get("tag") or ""),
            str(item.get("created") or ""),
        )
        for item in items
    ]


def _merged_stream_tags(known: list[Object], tags: Sequence[StreamTag]) -> list[Object]:
    """spec.imageStreamTags holding the recorded items and `tags`, each once: by namespace,
    ImageStream and tag, newest first within a tag (so, stable for the no-op check)."""
    ordered = sorted({*_stream_tags(known), *tags}, key=lambda item: item.created)
    ordered.sort(key=lambda item: _instant(item.created), reverse=True)
    ordered.sort(key=lambda item: (item.namespace, item.image_stream, item.tag))
    return [
        {
            "namespace": item.namespace,
            "imageStream": item.image_stream,
            "tag": item.tag,
            "created": item.created,
        }
        for item in ordered
    ]


def _merged_referrers(known: list[Object], carried: Carried) -> list[Object]:
    """spec.referrers holding the recorded artifacts and those `carried` holds, each once,
    in a stable order (so, for the no-op check)."""
    entries = {(e.get("subject"), e.get("digest"), e.get("tag", "")): e for e in known}
    for artifact in carried.held:
        entry = {
            "subject": artifact.subject,
            "digest": artifact.digest,
            "artifactType": artifact.artifact_type,
        }
        if artifact.tag:
            entry["tag"] = artifact.tag
        entries.setdefault((artifact.subject, artifact.digest, artifact.tag), entry)
    return sorted(entries.values(), key=lambda e: (str(e.get("subject")), str(e.get("digest"))))


def _failure_entry(artifact: Artifact) -> Object:
    entry = {"subject": artifact.subject, "artifact": artifact.name, "message": artifact.error}
    return {k: v[:MESSAGE_LIMIT] for k, v in entry.items()}


def _timestamp(at: datetime) -> str:
    """RFC 3339 in UTC, as the CRD's date-time fields take it."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _repository(backup: str) -> str:
    """``host[:port]/path`` of a ``host[:port]/path[:tag]@digest`` reference."""
    repository = backup.partition("@")[0]
    head, colon, tag = repository.rpartition(":")
    return head if colon and "/" not in tag else repository
