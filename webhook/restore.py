"""`image-backup restore`: the backups given back to registries, on the day a registry or a
whole cluster is lost.

Which backups: the Ready ImageBackup records of the cluster, or of an export of them
(``--records``: ``kubectl get -o yaml`` keeps their status); or, for a cluster that has none
(the old one died with them), the backup registry itself: every repository of its
catalog under the prefix, decoded back to its source repository by the naming scheme, with
every digest it keeps (its anchor tags ``backup-sha256-…``, or an older backup's
``sha256-…``) and every named tag. Where to: each image's own repository (its registry came
back empty), or the same path under another registry (``--to-registry``; ``--namespace-map``
renames the first path component, an OpenShift namespace). ``--imagestreams`` then points
each backed-up ImageStream tag of the records at its restored newest image.

What it guarantees: each image is copied by the copy engine, so digest for digest, with
every platform of an index, and tagged only once everything under it is stored; a tag of
the backup repository is set again on the target only where it points at that digest; a
digest the target already holds (by its anchor tag, which the restore writes too) is not
copied again, so an interrupted restore is resumed by running it again; every failure is
reported with the image, the registry and the cause, and never stops the others.

What it does not: it recreates no ImageStream history (OpenShift writes a tag's history only
by importing or by a push: the older items are restored into the registry, findable by
digest and by their records, but the ImageStream starts again from its newest image); it
restores no ImageBackup records; a backup made without records has no namespaces (readBy)
or ImageStream tags to select or recreate by; and it reads nothing from the source
registries, which are the ones being restored.
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from .kube.client import KubeError
from .kube.imagestreams import ImageStreams
from .kube.records import ReadyBackup, StreamTag
from .naming import BackupNameError, Scheme, same_registry
from .reference import InvalidReference, Reference, parse
from .registry.client import ANCHOR_TAG, COSIGN_TAG, RegistryClient, Repository
from .registry.copy import CopyEngine
from .registry.errors import RegistryError, Side

T = TypeVar("T")

COPIED, THERE, WOULD, FAILED = "copied", "already there", "would copy", "failed"
HISTORY_NOTE = (
    "older items of their histories are restored into the registry (by digest) but not"
    " re-created as ImageStream history: OpenShift writes history only by importing"
)


@dataclass(frozen=True, slots=True)
class Image:
    """One backed-up image: a digest in a backup repository, and where it came from."""

    source: Reference  # the source repository (the default tag: `tags` are the real ones)
    backup: Repository
    digest: str
    recorded: str = ""  # the source as its record names it ("" without a record)
    read_by: tuple[str, ...] = ()
    stream_tags: tuple[StreamTag, ...] = ()
    tags: tuple[str, ...] = ()  # tags of the backup repository that point at this digest

    @property
    def pinned(self) -> Reference:
        return Reference(self.backup.host, self.backup.path, digest=self.digest)


@dataclass(frozen=True, slots=True)
class Selection:
    """Which images: any of the given conditions, all of them (`everything`) or none."""

    source_registries: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()  # spec.readBy holds one of them
    globs: tuple[str, ...] = ()  # fnmatch on the source reference
    everything: bool = False

    def wants(self, image: Image) -> bool:
        if self.everything:
            return True
        name = image.source.name
        named = [name, f"{name}@{image.digest}", *(f"{name}:{tag}" for tag in image.tags)]
        if image.recorded:
            named.append(image.recorded)
        return (
            any(same_registry(image.source.registry, host) for host in self.source_registries)
            or any(namespace in image.read_by for namespace in self.namespaces)
            or any(fnmatch.fnmatchcase(text, glob) for glob in self.globs for text in named)
        )


@dataclass(frozen=True, slots=True)
class Target:
    """Where an image goes back to: its own repository, or the same path under `registry`
    (`HOST[/PREFIX]`), the first path component renamed by `namespaces`."""

    registry: str | None = None
    namespaces: Mapping[str, str] = field(default_factory=dict)

    def repository_for(self, source: Reference) -> Repository:
        """Raises InvalidReference when the new name is not a valid one."""
        first, slash, rest = source.repository.partition("/")
        path = f"{self.namespaces.get(first, first)}{slash}{rest}"
        if self.registry is None:
            host = source.registry
        else:
            host, _, prefix = self.registry.partition("/")
            path = f"{prefix}/{path}" if prefix else path
        checked = Reference(host, path)  # validates the name
        return Repository(checked.registry, checked.repository)


@dataclass(frozen=True, slots=True)
class Outcome:
    image: Image
    target: Repository
    result: str  # COPIED, THERE, WOULD or FAILED
    error: str = ""
    uploaded: int = 0  # bytes

    @property
    def restored(self) -> Reference:
        return Reference(self.target.host, self.target.path, digest=self.image.digest)

    def line(self) -> str:
        tags = f" (tags {', '.join(self.image.tags)})" if self.image.tags else ""
        if self.result == FAILED:
            image = f"{self.image.source.name}@{self.image.digest}"
            return f"failed: {image} -> {self.target}: {self.error}"
        return f"{self.result}: {self.image.pinned} -> {self.restored}{tags}"


@dataclass(slots=True)
class Summary:
    outcomes: list[Outcome] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # backup registry repositories, why
    streams: list[str] = field(default_factory=list)  # ImageStream tags set, or to set
    stream_failures: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def failed(self) -> bool:
        return bool(self.stream_failures) or any(o.result == FAILED for o in self.outcomes)

    def lines(self) -> list[str]:
        counts = Counter(outcome.result for outcome in self.outcomes)
        repositories = len({outcome.target for outcome in self.outcomes})
        images = f"{len(self.outcomes)} images into {repositories} repositories"
        lines = [o.line() for o in self.outcomes if o.result != FAILED]
        lines += [f"skipped {why}" for why in self.skipped]
        lines += self.streams
        if self.dry_run:
            lines.append(f"dry run: would restore {images}; nothing was copied")
        else:
            uploaded = sum(outcome.uploaded for outcome in self.outcomes)
            lines.append(
                f"restored {images}: {counts[COPIED]} copied ({_megabytes(uploaded)} uploaded),"
                f" {counts[THERE]} already there, {counts[FAILED]} failed"
            )
        if self.streams:
            lines.append(f"ImageStreams: {HISTORY_NOTE}")
        lines += [o.line() for o in self.outcomes if o.result == FAILED]
        lines += [f"failed: {failure}" for failure in self.stream_failures]
        return lines


def exported(documents: Iterable[Any]) -> list[dict[str, Any]]:
    """The ImageBackup objects of YAML documents: each one, or the items of a List."""
    found = []
    for document in documents:
        if not isinstance(document, dict):
            continue
        if str(document.get("kind")).endswith("List"):
            found += exported(document.get("items") or ())
        elif document.get("kind") == "ImageBackup":
            found.append(document)
    return found


def from_records(ready: Iterable[ReadyBackup]) -> tuple[list[Image], list[str]]:
    """The images of the Ready records (their tags are read from the registry later); and
    the records whose references cannot be read, with why."""
    images, skipped = [], []
    for record in ready:
        try:
            backup, source = parse(record.backup), parse(record.source)
        except InvalidReference as exc:
            skipped.append(f"the record of {record.backup or record.digest}: {exc}")
            continue
        images.append(
            Image(
                Reference(source.registry, source.repository),
                Repository(backup.registry, backup.repository),
                record.digest,
                record.source,
                record.read_by,
                record.stream_tags,
            )
        )
    return images, skipped


class Restore:
    """Restores images with one copy engine (without records: nothing is coordinated or
    recorded), `concurrency` images at a time (the engine bounds the transfers)."""

    def __init__(self, engine: CopyEngine, *, timeout: float, concurrency: int) -> None:
        self._engine = engine
        self._client: RegistryClient = engine.client
        self._timeout = timeout
        self._slots = asyncio.Semaphore(concurrency)

    async def from_registry(self, scheme: Scheme) -> tuple[list[Image], list[str]]:
        """Every image the backup registry keeps under the scheme's prefix, each with its
        tags; and the repositories there that are no backup names, with why."""
        deadline = time.monotonic() + self._timeout
        repositories = await self._client.repositories(scheme.host, deadline=deadline)
        sources, skipped = {}, []
        for path in repositories:
            if scheme.prefix and not path.startswith(f"{scheme.prefix}/"):
                continue
            try:
                sources[path] = scheme.source_of(path)
            except BackupNameError as exc:
                skipped.append(f"{scheme.host}/{path}: {exc}")
        backups = [Repository(scheme.host, path) for path in sources]
        listed = await self._bounded(self._tagged(backup, deadline) for backup in backups)
        images = [
            Image(sources[backup.path], backup, digest, tags=tuple(tags))
            for backup, by_digest in zip(backups, listed, strict=True)
            for digest, tags in by_digest.items()
        ]
        return images, skipped

    async def with_tags(self, images: Sequence[Image]) -> list[Image]:
        """`images` with the named tags their backup repositories point at them."""
        deadline = time.monotonic() + self._timeout
        backups = sorted({image.backup for image in images}, key=str)
        listed = await self._bounded(self._tagged(backup, deadline) for backup in backups)
        tags = dict(zip(backups, listed, strict=True))
        return [
            replace(image, tags=tuple(tags[image.backup].get(image.digest, ()))) for image in images
        ]

    async def _tagged(self, backup: Repository, deadline: float) -> dict[str, list[str]]:
        """Each digest the backup repository keeps (by anchor tag or named tag), with the
        named tags pointing at it."""
        by_digest: dict[str, list[str]] = {}
        named: list[str] = []
        old: list[tuple[str, str]] = []  # old anchors' tags, and the digest each names
        for tag in await self._client.tags(backup, deadline=deadline):
            anchored = ANCHOR_TAG.fullmatch(tag)
            if anchored and anchored[1]:
                by_digest.setdefault(f"sha256:{anchored[2]}", [])
            elif anchored:
                old.append((tag, f"sha256:{anchored[2]}"))
            elif not COSIGN_TAG.fullmatch(tag):  # cosign's tags travel with their image
                named.append(tag)
        for tag, digest in old:
            # An old anchor holds the image it names; OCI's referrers index of that digest,
            # under the same tag, does not (the referrers travel with the image).
            found = await self._client.head_manifest(backup, tag, deadline=deadline)
            if found is not None and found.digest == digest:
                by_digest.setdefault(digest, [])
        for tag in sorted(named):
            found = await self._client.head_manifest(backup, tag, deadline=deadline)
            if found is not None and found.digest:
                by_digest.setdefault(found.digest, []).append(tag)
        return by_digest

    async def run(self, images: Sequence[Image], target: Target, *, dry_run: bool) -> list[Outcome]:
        return await self._bounded(self._one(image, target, dry_run) for image in images)

    async def _one(self, image: Image, target: Target, dry_run: bool) -> Outcome:
        try:
            repository = target.repository_for(image.source)
        except InvalidReference as exc:
            return Outcome(image, Repository(image.source.registry, "?"), FAILED, exc.problem)
        if dry_run:
            return Outcome(image, repository, WOULD)
        deadline = time.monotonic() + self._timeout
        try:
            first = await self._engine.copy(
                image.pinned, repository, tag=next(iter(image.tags), None), deadline=deadline
            )
            for tag in image.tags[1:]:
                await self._engine.copy(image.pinned, repository, tag=tag, deadline=deadline)
        except RegistryError as exc:
            return Outcome(image, repository, FAILED, in_restore_words(exc))
        result = THERE if first.already_backed_up else COPIED
        return Outcome(image, repository, result, uploaded=first.stats.bytes_uploaded)

    async def _bounded(self, work: Iterable[Awaitable[T]]) -> list[T]:
        async def one(item: Awaitable[T]) -> T:
            async with self._slots:
                return await item

        return list(await asyncio.gather(*(one(item) for item in work)))


async def point_image_streams(
    streams: ImageStreams,
    outcomes: Sequence[Outcome],
    namespaces: Mapping[str, str],
    *,
    dry_run: bool,
) -> tuple[list[str], list[str]]:
    """Each ImageStream tag the restored images' records name, pointed at the restored
    newest image of its history: (what was or would be done, failures)."""
    newest: dict[tuple[str, str], dict[str, tuple[str, Outcome]]] = defaultdict(dict)
    for outcome in outcomes:
        for item in outcome.image.stream_tags:
            stream = (namespaces.get(item.namespace, item.namespace), item.image_stream)
            known = newest[stream].get(item.tag)
            if known is None or _later(item.created, known[0]):
                newest[stream][item.tag] = (item.created, outcome)
    done, failures = [], []
    for (namespace, name), tags in sorted(newest.items()):
        where = f"ImageStream {namespace}/{name}"
        unrestored = sorted(tag for tag, (_, o) in tags.items() if o.result == FAILED)
        pointed = {
            tag: str(outcome.restored)
            for tag, (_, outcome) in sorted(tags.items())
            if outcome.result != FAILED
        }
        failures += [f"{where} tag {tag}: its newest image was not restored" for tag in unrestored]
        if not pointed:
            continue
        listed = ", ".join(f"{tag} -> {image}" for tag, image in pointed.items())
        if dry_run:
            done.append(f"would set {where}: {listed}")
            continue
        try:
            created = await streams.point_tags(namespace, name, pointed)
        except KubeError as exc:
            failures.append(str(exc))
            continue
        done.append(f"{'created' if created else 'set'} {where}: {listed}")
    return done, failures


def in_restore_words(exc: RegistryError) -> str:
    """A copy engine error with the registries named for their part in a restore: what
    the engine reads is the backup registry, what it writes is the target."""
    operation = exc.operation
    if operation is None or operation.side is None:
        return str(exc)
    if operation.side is Side.SOURCE:
        return f"{operation.doing} from the backup registry {operation.host}: {exc.reason}"
    place = f" in {operation.repository}" if operation.repository else ""
    return f"{operation.doing}{place} on the target registry {operation.host}: {exc.reason}"


def _later(created: str, than: str) -> bool:
    """Whether one history item's `created` (RFC 3339) is after another's."""
    return _instant(created) > _instant(than)


def _instant(text: str) -> datetime:
    """An RFC 3339 time (UTC without an offset); an unreadable one is long ago."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _megabytes(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB"
