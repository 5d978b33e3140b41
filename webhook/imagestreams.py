"""`image-backup imagestreams`, the same pass within backfill, and the watch in `serve`:
every ImageStream tag backed up with its history (OpenShift).

An ImageStream tag is what OpenShift workloads run (image triggers, ``lookupPolicy.local``)
and its history is what a rollback runs: ``oc tag app:v1 app@sha256:...`` goes back to an
older item. So every item of ``status.tags[].items`` is backed up, not only the current one,
from the image's actual location (``dockerImageReference``: an external registry, or the
internal one, read with its configured ``tokenFile``), under that location's backup name. The
copy engine keeps each digest by its anchor tag; a tag's current item also sets the backup
repository's tag of the same name as the location's (the ``spec.tags[].from`` pull spec's
tag, or for an image pushed to the internal registry the ImageStream tag's name), and older
items never move a tag back. Each item's ImageStream tags are given to the ImageBackup
records (``note_stream_tags``), so a restore finds every item. Items are read with the
configured credentials and the namespace's ``default`` ServiceAccount pull secrets, as the
imports were made.

In opted-in namespaces (``image-backup.io/mode``) enforce copies; audit, and any dry run,
only ask the registries (read-only) whether each backup exists. Excluded namespaces, the
skip annotation on an ImageStream and ``exclude.images`` apply as for workloads.

What it guarantees: a pass decides every item of every tag of every ImageStream it lists;
a failure is reported (the summary, the log) and never stops the pass or the watch, and the
next pass tries it again; copies run concurrently, half of ``copy.concurrency`` at most. In
``serve``, the replica holding the backfill Lease also watches ImageStreams and backs up
the items of each change within seconds; ImageStreams never hold up an admission. What it
does not guarantee: a history item the API server prunes (``oc adm prune images``) before a
pass or the watch reads it is never backed up, and an image already gone from its location
cannot be.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field

import msgspec

from .admission.pods import ImageField
from .admission.streams import located_tag
from .config import Config
from .events import Throttle, event_message
from .kube.client import KubeError
from .kube.imagestreams import ImageStream, ImageStreams
from .kube.pullsecrets import PullCredentials
from .kube.records import BackupRecords, StreamTag
from .kube.workloads import Workloads
from .metrics import Metrics
from .outcomes import COPIED, EXCLUDED, FAILED, Decider, counted
from .reference import InvalidReference, Reference, parse
from .registry.cache import ExpiringCache, footprint
from .registry.copy import CopyEngine, CopyResult
from .registry.credentials import DockerConfig
from .text import quoted

log = logging.getLogger("image_backup.imagestreams")

# Each watch stream at most, then the ImageStreams are listed again (a list re-reads which
# namespaces opted in, and catches what a broken stream missed).
WATCH_SECONDS = 300
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 60.0  # between tries while the API server fails
# Items this process decided, and the ImageStream versions the watch saw, remembered so
# that a change or a list repeating them asks no registry again: the least recently used
# are forgotten first (and then cost only a lookup).
REMEMBERED = 65536
REMEMBERED_BYTES = 32 << 20
PULL_ACCOUNT = "default"  # the ServiceAccount whose pull secrets image imports use


@dataclass
class Summary:
    namespaces: int = 0
    streams: int = 0
    items: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)  # "NS/ImageStream/name:tag: image: reason"

    def to_json(self) -> bytes:
        """What `image-backup imagestreams -o json` prints."""
        return msgspec.json.encode(self)

    def lines(self) -> list[str]:
        total = sum(self.items.values())
        return [
            f"{self.namespaces} namespaces, {self.streams} image streams, {total} items: "
            + counted(self.items),
            *(f"failed: {failure}" for failure in self.failures),
        ]


@dataclass(frozen=True, slots=True)
class Item:
    """One history item of one tag, as it is backed up."""

    where: str  # "NS/ImageStream/name:tag", as failures name it
    # To its dockerImageReference: not part of what was decided, as it moves with each
    # new item of the tag.
    pointer: str = field(compare=False)
    image: str  # its location; for a tag's current item, with the tag to set
    tags: tuple[StreamTag, ...]  # the stream's tags whose history has this digest there


@dataclass(frozen=True, slots=True)
class _Located:
    where: str
    tag: str
    pointer: str
    created: str
    source: Reference | None  # None: dockerImageReference is no image reference
    text: str  # dockerImageReference as written


def history(stream: ImageStream) -> list[Item]:
    """Every item of every tag of the stream, newest first within each tag."""
    located = []
    for t, named in enumerate(stream.status.tags or ()):
        where = f"{stream.namespace}/ImageStream/{stream.name}:{named.tag}"
        for i, event in enumerate(named.items or ()):
            pointer = f"/status/tags/{t}/items/{i}/dockerImageReference"
            location = _repository_of(event.dockerImageReference)
            source = None
            if location is not None:
                tag = located_tag(stream, named.tag, location.with_tag(None)) if i == 0 else None
                digest = location.digest or event.image
                source = Reference(location.registry, location.repository, tag, digest)
            located.append(
                _Located(
                    where, named.tag, pointer, event.created, source, event.dockerImageReference
                )
            )
    alike: dict[tuple[str, str, str | None], list[StreamTag]] = {}
    for found in located:
        if found.source is not None:
            alike.setdefault(_image_key(found.source), []).append(
                StreamTag(stream.namespace, stream.name, found.tag, found.created)
            )
    return [
        Item(found.where, found.pointer, found.text, ())
        if found.source is None  # the planner says why it is not one, in its words
        else Item(
            found.where, found.pointer, str(found.source), tuple(alike[_image_key(found.source)])
        )
        for found in located
    ]


def _image_key(source: Reference) -> tuple[str, str, str | None]:
    return source.registry, source.repository, source.digest


def _repository_of(text: str) -> Reference | None:
    try:
        return parse(text) if text else None
    except InvalidReference:
        return None


class HistoryBackup:
    """Backs up ImageStreams' items: a pass over namespaces, or one ImageStream at a time
    (the watch); what it decided is remembered for as long as the process runs."""

    def __init__(
        self,
        engine: CopyEngine,
        streams: ImageStreams,
        workloads: Workloads,
        config: Config,
        *,
        pull: PullCredentials | None = None,
        records: BackupRecords | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """`pull` None: the configured credentials only; `records` None: no ImageBackup
        records; `metrics` None: items are counted in summaries only."""
        self._streams = streams
        self._workloads = workloads
        self._pull = pull
        self._records = records
        self._metrics = metrics
        self._decider = Decider(engine, config)
        self.in_flight = self._decider.in_flight  # ImageStreams decided at once
        self._done: ExpiringCache[tuple[Item, bool], None] = ExpiringCache(
            REMEMBERED, max_bytes=REMEMBERED_BYTES, weigh=footprint
        )
        self._unrecorded = Throttle()

    async def available(self) -> bool:
        """Whether the API serves ImageStreams (an OpenShift cluster)."""
        return await self._streams.available()

    async def run(self, *, namespaces: Collection[str] = (), dry_run: bool = False) -> Summary:
        """One pass over the opted-in namespaces' ImageStreams (`namespaces`: only these)."""
        summary = Summary()
        slots = asyncio.Semaphore(self.in_flight)

        async def decide_stream(stream: ImageStream, mode: str) -> None:
            try:
                await self.back_up(stream, mode, dry_run=dry_run, summary=summary)
            finally:
                slots.release()

        async with asyncio.TaskGroup() as group:
            for namespace, mode in await self._workloads.namespaces(namespaces):
                summary.namespaces += 1
                async for stream in self._streams.in_namespace(namespace):
                    summary.streams += 1
                    await slots.acquire()
                    group.create_task(decide_stream(stream, mode))
        return summary

    async def back_up(
        self,
        stream: ImageStream,
        mode: str,
        *,
        dry_run: bool = False,
        summary: Summary | None = None,
    ) -> None:
        """Every item of the stream this process has not decided yet, in a namespace of
        that `mode`; counted in `summary` and the metrics, failures logged without one."""
        copy = mode == "enforce" and not dry_run
        items = [item for item in history(stream) if self._done.get((item, copy)) is None]
        if not items:
            return
        if self._decider.exclusions.excludes(stream.namespace, stream.metadata.annotations):
            outcomes = [(EXCLUDED, "")] * len(items)
        else:
            keyring = None
            if self._pull is not None:
                keyring, _ = await self._pull.keyring(stream.namespace, PULL_ACCOUNT, ())
            outcomes = await asyncio.gather(*(self._item(item, copy, keyring) for item in items))
        for item, (outcome, detail) in zip(items, outcomes, strict=True):
            if self._metrics is not None:
                self._metrics.stream_items.labels(outcome).inc()
            if summary is not None:
                summary.items[outcome] += 1
            if outcome != FAILED:
                self._done.put((item, copy), None, None)
                continue
            failure = f"{item.where}: {quoted(item.image)}: {detail}"
            if summary is not None:
                summary.failures.append(failure)
            else:
                log.warning(event_message("imagestream_item_failed", failure=failure))

    async def _item(self, item: Item, copy: bool, keyring: DockerConfig | None) -> tuple[str, str]:
        field = ImageField(item.pointer, item.where, item.image)
        [plan] = self._decider.planner.plan([field], keyring, refresh=False)
        outcome, detail, result = await self._decider.decide(plan, copy=copy, keyring=keyring)
        if copy and result is not None and item.tags:
            await self._note(result, item.tags)
        if outcome == COPIED:
            log.info(event_message("imagestream_item_backed_up", item=item.where, backup=detail))
        return outcome, detail

    async def _note(self, result: CopyResult, tags: tuple[StreamTag, ...]) -> None:
        """Which ImageStream tags had the image, on its record. Records save a restore
        searching; the backup exists without them, so failing to write one is only logged."""
        if self._records is None:
            return
        try:
            await self._records.note_stream_tags(
                source=str(result.source),
                backup=str(result.backup),
                backup_repo=str(result.backup_repository),
                digest=result.digest,
                tags=tags,
            )
        except KubeError as exc:
            if self._unrecorded.due():
                log.warning(event_message("imagestream_tags_unrecorded", error=str(exc)))


async def keep_watching(
    backup: HistoryBackup,
    streams: ImageStreams,
    workloads: Workloads,
    *,
    watch_seconds: int = WATCH_SECONDS,
) -> None:
    """`serve`'s watch, while this replica holds the backfill Lease (returning at once where
    the API serves no ImageStreams). Every ImageStream is listed, then changes are watched
    from the list's resourceVersion: each ADDED or MODIFIED ImageStream of an opted-in
    namespace has the items this process has not decided yet backed up as it comes. At the
    end of each stream, or when the API server has forgotten the version (410 Gone), it lists
    again, and backs up the ImageStreams that changed meanwhile; while the API server fails,
    it waits, longer each time. The first list only notes versions: the backfill pass the
    Lease holder makes at once covers what exists (in a process of its own)."""
    slots = asyncio.Semaphore(backup.in_flight)
    delay = BACKOFF_FIRST
    versions: ExpiringCache[str, str] = ExpiringCache(REMEMBERED)  # uid: resourceVersion
    listed = False
    async with asyncio.TaskGroup() as group:

        async def changed(stream: ImageStream, mode: str) -> None:
            await slots.acquire()

            async def run() -> None:
                try:
                    await backup.back_up(stream, mode)
                except Exception as exc:  # a failure of one ImageStream's: the watch goes on
                    log.warning(
                        event_message(
                            "imagestream_failed",
                            imagestream=f"{stream.namespace}/{stream.name}",
                            error=str(exc) if isinstance(exc, KubeError) else repr(exc),
                        )
                    )
                finally:
                    slots.release()

            group.create_task(run())

        while True:
            try:
                if not await streams.available():
                    return  # not OpenShift: there is nothing to watch
                modes = dict(await workloads.namespaces())
                version = ""
                async for page, listed_at in streams.everywhere():
                    version = listed_at
                    for stream in page:
                        meta = stream.metadata
                        seen = versions.get(meta.uid)
                        versions.put(meta.uid, meta.resourceVersion, None)
                        new = seen is None or seen[0] != meta.resourceVersion
                        if listed and new and stream.namespace in modes:
                            await changed(stream, modes[stream.namespace])
                listed = True
                async for kind, stream in streams.watch(version, timeout_seconds=watch_seconds):
                    versions.put(stream.metadata.uid, stream.metadata.resourceVersion, None)
                    if kind in ("ADDED", "MODIFIED") and stream.namespace in modes:
                        await changed(stream, modes[stream.namespace])
            except KubeError as exc:
                if exc.status == 410:  # the history since that version is gone: list again
                    continue
                log.warning(
                    event_message("imagestream_watch_failed", error=str(exc), retry=f"{delay}s")
                )
                await asyncio.sleep(delay)
                delay = min(2 * delay, BACKOFF_MAX)
            else:
                delay = BACKOFF_FIRST
