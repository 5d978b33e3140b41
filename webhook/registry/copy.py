"""The copy engine: an image, all its platforms and every blob, into another repository.

Manifests are copied byte for byte so every digest survives; blobs stream from
source to target in one request each, hashed on the way, and the last bytes
are held back until the hash is proven, so a corrupt blob is never committed.
A backup is tagged only after everything under it is stored.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn, Protocol, TypeVar

from yarl import URL

from ..events import event_message
from ..naming import BackupNameError, Scheme
from ..reference import Reference
from ..text import one_line
from .cache import ExpiringCache, footprint
from .client import RegistryClient, Repository, anchor_tag, old_anchor_tag, reading_blob
from .credentials import Credential, DockerConfig
from .errors import (
    CorruptTransfer,
    DeadlineExceeded,
    Operation,
    RegistryError,
    TransientError,
    UnsupportedManifest,
)
from .flight import SingleFlight
from .known import KnownBlobs
from .media import IMAGE_CONFIG_TYPES, INDEX_TYPES, Descriptor, Manifest, platform_of_config
from .referrers import Carried, Carrier, failed
from .retry import retrying

A = TypeVar("A")
B = TypeVar("B")

log = logging.getLogger("image_backup.copy")

# Why an admission cannot use a backup yet: its copy outlasted the wait, here or elsewhere.
STILL_COPYING = "still copying into the backup registry, retry shortly"
MAX_CONFIG_BYTES = 1 << 20
# A tag's remembered backup is re-checked in the background once this share of its
# lifetime is left, and again as often after a check that could not reach a registry.
REFRESH_SHARE = 0.25
# Past its lifetime (a re-check still going or failing), a backup is served one more
# lifetime at most, and an answer made from it is reused for this long at most, so that
# the re-check's outcome is seen soon after it lands.
STALE_ANSWER_SECONDS = 1.0
RESULT_CACHE_BYTES = 32 << 20  # about 10,000 results of ordinary names
# An existing backup's referrers are carried again at its next use once this long has passed
# (new signatures reach the backup), or this soon after a carrying that failed in part.
REFERRERS_EVERY = 600.0
REFERRERS_RETRY = 60.0
# Referrers get this share of the time left to a copy at most: the image's own tag comes
# after them, and they never make it miss its deadline.
REFERRERS_SHARE = 0.5

ResultKey = tuple[Reference, Repository, str | None, Credential | None]


class Progress(Protocol):
    def expect(self, nbytes: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Stored:
    """What a finished copy holds in the backup registry, for whoever keeps records of it."""

    size: int  # bytes of every manifest and blob
    platforms: tuple[str, ...]  # as the index or the image config names them
    blobs: tuple[str, ...]  # every blob digest, all platforms


class ReferrerObserver(Protocol):
    """Told what each carrying of a backup's referrers did (records, metrics)."""

    async def carried(self, backup_repo: Repository, digest: str, carried: Carried) -> None: ...


class Coordinator(Protocol):
    """Shares copies between webhook replicas: at most one copies a given backup."""

    async def exclusive(
        self,
        source: str,
        backup: str,
        backup_repo: str,
        digest: str,
        copy: Callable[[], Awaitable[Stored]],
        *,
        deadline: float,
        present: Callable[[], Awaitable[bool]],
    ) -> Stored | None:
        """Run `copy` if this replica is to make the backup; None when another one made it
        (`present` confirming the registry holds it)."""
        ...


class BlobOutcome(enum.Enum):
    PRESENT = "present"
    MOUNTED = "mounted"
    UPLOADED = "uploaded"


@dataclass(slots=True)
class CopyStats:
    bytes_uploaded: int = 0
    blobs_uploaded: int = 0
    blobs_mounted: int = 0
    blobs_present: int = 0
    manifests_copied: int = 0

    def count(self, outcome: BlobOutcome, size: int) -> None:
        if outcome is BlobOutcome.UPLOADED:
            self.blobs_uploaded += 1
            self.bytes_uploaded += size
        elif outcome is BlobOutcome.MOUNTED:
            self.blobs_mounted += 1
        else:
            self.blobs_present += 1


@dataclass(frozen=True, slots=True)
class CopyResult:
    source: Reference
    backup: Reference  # pinned: the target's tag (if any) and the digest
    stats: CopyStats = field(default_factory=CopyStats)
    already_backed_up: bool = False  # the target held this digest before this copy
    from_cache: bool = False  # answered from memory, no registry asked
    referrers: Carried | None = None  # what this copy carried along (None: none were due)

    @property
    def digest(self) -> str:
        assert self.backup.digest is not None
        return self.backup.digest

    @property
    def backup_repository(self) -> Repository:
        return _repo(self.backup)


@dataclass(frozen=True, slots=True)
class _Tree:
    manifest: Manifest | None  # None: the target already had it
    stats: CopyStats
    referrers: Carried | None = None
    is_index: bool = False  # (what the target said of the one it had)


@dataclass(slots=True)
class _Remembered:
    """A backup found or made, and when to ask the registries about it again."""

    result: CopyResult
    refresh_at: float  # from then on, a use starts a re-check in the background
    fresh_until: float  # past it, served only until the cache drops it (one more lifetime)
    retry_at: float  # no re-check starts before then (one just failed)


class CopyEngine:
    def __init__(
        self,
        client: RegistryClient,
        scheme: Scheme,
        *,
        concurrency: int = 8,
        tag_ttl: float = 60.0,
        timeout: float = 600.0,
        cache_entries: int = 10_000,
        cache_bytes: int = RESULT_CACHE_BYTES,
        progress: Progress | None = None,
        coordinator: Coordinator | None = None,
        referrers: Carrier | None = None,
        observer: ReferrerObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`timeout`: for the re-checks (and the copies they start) nobody waits on.
        `referrers`: what carries each backup's referrers (None: they stay behind)."""
        self._client = client
        self._coordinator = coordinator
        self._carrier = referrers
        self._observer = observer
        self._scheme = scheme
        self._slots = asyncio.Semaphore(concurrency)
        self._tag_ttl = tag_ttl
        self._timeout = timeout
        self._progress = progress
        self._clock = clock
        self._known = KnownBlobs()
        # The digest this process last set each backup tag to. An image named by tag and
        # digest (an ImageStream tag's current image) is remembered for good, but a tag moved
        # back to it must be set again: such a backup is trusted only while its tag is there.
        self._tagged: ExpiringCache[tuple[Repository, str], str] = ExpiringCache(
            cache_entries, clock, max_bytes=cache_bytes // 4, weigh=footprint
        )
        self._trees: SingleFlight[tuple[str, Repository], _Tree] = SingleFlight()
        # Backups whose referrers were carried lately: not due again yet.
        self._carried: ExpiringCache[tuple[Repository, str], None] = ExpiringCache(
            cache_entries, clock, max_bytes=cache_bytes // 4, weigh=footprint
        )
        # Backups whose observer heard last that nothing refers to them: it is told only
        # when that changes (most images have no referrers; a failure it heard of is
        # cleared by the next carrying that finds nothing).
        self._quiet: ExpiringCache[tuple[Repository, str], None] = ExpiringCache(
            cache_entries, clock, max_bytes=cache_bytes // 4, weigh=footprint
        )
        self._blobs: SingleFlight[tuple[str, Repository], BlobOutcome] = SingleFlight()
        self._rechecks: SingleFlight[ResultKey, None] = SingleFlight()
        self._copies: SingleFlight[ResultKey, CopyResult] = SingleFlight()
        # Results are remembered per source credential: a workload is only answered from
        # memory with a backup whose source its own pull credentials were shown to read.
        self._results: ExpiringCache[ResultKey, _Remembered] = ExpiringCache(
            cache_entries, clock, max_bytes=cache_bytes, weigh=footprint
        )

    @property
    def scheme(self) -> Scheme:
        return self._scheme

    @property
    def client(self) -> RegistryClient:
        """The registry client it copies with, for callers that list what to copy."""
        return self._client

    async def close(self) -> None:
        """Stop the re-checks and copies still running."""
        await self._rechecks.close()
        await self._copies.close()

    def know_blobs(self, repo: Repository, digests: Iterable[str]) -> None:
        """Blobs `repo` holds (from records of earlier copies), to mount rather than upload."""
        for digest in digests:
            self._known.add(repo, digest)

    def target_for(self, source: Reference) -> Repository:
        """Where the naming scheme puts the backup of `source`."""
        return Repository(self.scheme.host, self.scheme.repository_for(source))

    def cached(
        self,
        source: Reference,
        target: Repository | None = None,
        keyring: DockerConfig | None = None,
        *,
        refresh: bool = True,
    ) -> tuple[CopyResult, float | None] | None:
        """A cached backup of `source` and until when an answer made from it may be reused
        without asking again (None: for good).

        No I/O and no waiting: this is the admission hot path. A tag's backup near or past
        the end of its lifetime is still answered while one re-check runs in the background
        (started here, on the event loop, unless `refresh` is false: a re-check may copy, and
        audits and dry runs never do); see `_recheck`. `target` saves working out the
        backup name again when the caller knows it.
        """
        key = self._result_key(source, target, source.tag, keyring)
        hit = self._results.get(key)
        if hit is None or not self._tag_holds(key):
            return None
        entry, gone_at = hit
        if gone_at is None:  # a digest's backup: it cannot change
            return entry.result, None
        now = self._clock()
        if now < entry.refresh_at:
            return entry.result, entry.refresh_at
        if refresh and now >= entry.retry_at:
            self._rechecks.start(key, lambda: self._recheck(key, entry, keyring))
        if now < entry.fresh_until:
            return entry.result, entry.fresh_until
        return entry.result, min(now + STALE_ANSWER_SECONDS, gone_at)

    def _result_key(
        self,
        source: Reference,
        target: Repository | None,
        tag: str | None,
        keyring: DockerConfig | None,
    ) -> ResultKey:
        credential = self._client.credential(_repo(source), keyring)
        return (source, target or self.target_for(source), tag, credential)

    async def _recheck(
        self, key: ResultKey, entry: _Remembered, keyring: DockerConfig | None
    ) -> None:
        """Ask the registries again about a remembered backup, as `copy` would, while
        admissions go on being answered with it.

        A backup the backup registry no longer holds is forgotten at once; a tag that moved
        is backed up anew and its entry replaced once that is done. If the source refuses
        (credentials, a tag gone, an image that cannot be backed up), the entry is
        forgotten and the next admission asks for itself. If a registry cannot be reached,
        the backup goes on being served until its entry ends (one lifetime past its own)
        and the re-check is tried again a quarter lifetime later.
        """
        source, target, tag, _ = key
        deadline = time.monotonic() + self._timeout
        try:
            if not await self._holds(target, entry.result.digest, deadline):
                self._forget(key, entry)
            await self._copy_anew(key, source, target, tag, deadline, keyring)
        except (TransientError, DeadlineExceeded) as exc:
            entry.retry_at = self._clock() + self._tag_ttl * REFRESH_SHARE
            consequence = "serving the last backup while it lasts, trying again later"
            self._recheck_failed(source, exc, consequence)
        except Exception as exc:
            self._forget(key, entry)
            self._recheck_failed(source, exc, "forgotten: the next admission asks itself")

    def _forget(self, key: ResultKey, entry: _Remembered) -> None:
        hit = self._results.get(key)
        if hit is not None and hit[0] is entry:
            self._results.discard(key)

    @staticmethod
    def _recheck_failed(source: Reference, exc: Exception, consequence: str) -> None:
        error = one_line(exc) if isinstance(exc, RegistryError) else type(exc).__name__
        log.warning(
            event_message(
                "backup_recheck_failed", image=str(source), error=error, consequence=consequence
            )
        )

    async def backup_registry_answers(self, *, deadline: float) -> bool:
        return await self._client.answers(self.scheme.host, deadline=deadline)

    async def lookup(
        self, source: Reference, *, deadline: float, keyring: DockerConfig | None = None
    ) -> CopyResult | None:
        """The backup of `source` if it already exists, found without writing or caching."""
        cached = self.cached(source, keyring=keyring, refresh=False)
        if cached is not None:
            return cached[0]
        target = self.target_for(source)
        digest = await self.resolve(source, deadline=deadline, keyring=keyring)
        if not await self._holds(target, digest, deadline):
            return None
        backup = Reference(target.host, target.path, source.tag, digest)
        return CopyResult(source, backup, already_backed_up=True)

    async def backup_of(self, source: Reference, *, deadline: float) -> CopyResult | None:
        """The backup the backup registry holds of `source`, asking it alone (the source
        may be gone): by digest, the digest's anchor tag; by tag, the backup repository's
        tag of that name. None if there is none."""
        target = self.target_for(source)
        if source.digest:
            if not await self._holds(target, source.digest, deadline):
                return None
            digest = source.digest
        else:
            assert source.tag is not None
            found = await self._client.head_manifest(
                target, source.tag, deadline=deadline, push=True
            )
            if found is None or not found.digest:
                return None
            digest = found.digest
        backup = Reference(target.host, target.path, source.tag, digest)
        return CopyResult(source, backup, already_backed_up=True)

    async def backup(
        self, source: Reference, *, deadline: float, keyring: DockerConfig | None = None
    ) -> CopyResult:
        target = self.target_for(source)
        return await self.copy(source, target, tag=source.tag, deadline=deadline, keyring=keyring)

    async def carry_referrers(
        self, backup: Reference, *, deadline: float, keyring: DockerConfig | None = None
    ) -> Carried | None:
        """Carry from its source what refers to an existing backup, when due: for workloads
        that run from their backups already, which no copy visits. None when not due, or
        when `backup` is not a pinned reference this backup registry's naming made."""
        dst, digest = Repository(self.scheme.host, backup.repository), backup.digest
        if self._carrier is None or digest is None or self._carried.get((dst, digest)):
            return None
        try:
            source = self.scheme.source_of(backup.repository)
        except BackupNameError:
            return None
        try:
            manifest = await self._client.get_manifest(dst, digest, deadline=deadline, push=True)
        except RegistryError as exc:
            return failed(digest, exc, "reading the backup")
        return await self._carry(_repo(source), dst, digest, manifest, deadline, keyring)

    async def resolve(
        self, ref: Reference, *, deadline: float, keyring: DockerConfig | None = None
    ) -> str:
        """The digest `ref` names, asked of its registry even when `ref` carries it: the
        answer also proves that `keyring`'s credentials may read the image."""
        reference = ref.digest or ref.tag
        assert reference is not None
        return await self._client.resolve(_repo(ref), reference, deadline=deadline, keyring=keyring)

    async def copy(
        self,
        source: Reference,
        target: Repository,
        *,
        tag: str | None,
        deadline: float,
        keyring: DockerConfig | None = None,
    ) -> CopyResult:
        """Copy `source` into the `target` repository, tagged `tag` if given, reading the
        source with `keyring`'s credentials (default: the configured ones)."""
        key = self._result_key(source, target, tag, keyring)
        hit = self._results.get(key)
        if hit is not None and self._clock() < hit[0].fresh_until and self._tag_holds(key):
            return hit[0].result
        # Past its lifetime or missing: ask the registries again rather than trust memory.
        # Callers asking at once with the same source credential (a controller's Pods, the
        # workloads of a backfill pass) share one resolve and one copy.
        return await self._copies.run(
            key, lambda: self._copy_anew(key, source, target, tag, deadline, keyring)
        )

    async def _copy_anew(
        self,
        key: ResultKey,
        source: Reference,
        target: Repository,
        tag: str | None,
        deadline: float,
        keyring: DockerConfig | None,
    ) -> CopyResult:
        # Each caller resolves for itself, so joining another's copy needs read access too.
        digest = await self.resolve(source, deadline=deadline, keyring=keyring)
        if not digest.startswith("sha256:"):
            # Registries address content by sha256; anchor tags could not hold longer digests.
            raise UnsupportedManifest("only sha256 digests can be backed up")
        backup = Reference(target.host, target.path, tag, digest)
        tree = await self._trees.run(
            (digest, target), lambda: self._copy_tree(source, backup, deadline, keyring)
        )
        if tag:
            await self._ensure_tag(target, tag, digest, tree.manifest, deadline)
            self._tagged.put((target, tag), digest, None)
        result = CopyResult(
            source,
            backup,
            tree.stats,
            already_backed_up=tree.manifest is None,
            referrers=tree.referrers,
        )
        remembered = replace(result, from_cache=True, referrers=None)
        self._remember(key, remembered, digest_only=bool(source.digest))
        return result

    def _tag_holds(self, key: ResultKey) -> bool:
        """Whether a remembered backup of an image named by tag and digest still has its tag
        there, as far as this process set it (always true for other backups)."""
        source, target, tag, _ = key
        if tag is None or source.digest is None:
            return True
        set_to = self._tagged.get((target, tag))
        return set_to is not None and set_to[0] == source.digest

    def _remember(self, key: ResultKey, result: CopyResult, *, digest_only: bool) -> None:
        if digest_only:
            self._results.put(key, _Remembered(result, math.inf, math.inf, math.inf), None)
            return
        now, ttl = self._clock(), self._tag_ttl
        refresh_at = now + ttl * (1 - REFRESH_SHARE)
        entry = _Remembered(result, refresh_at, now + ttl, refresh_at)
        self._results.put(key, entry, 2 * ttl)

    async def _copy_tree(
        self,
        source: Reference,
        backup: Reference,
        deadline: float,
        keyring: DockerConfig | None,
    ) -> _Tree:
        """The image's tree and its referrers when they are due: always for a new backup
        (a verifier admitting the rewritten workload looks for them at once), beside its
        blobs; for an existing one at its first use here and every REFERRERS_EVERY after."""
        digest, dst = backup.digest, _repo(backup)
        assert digest is not None
        due = self._carrier is not None and self._carried.get((dst, digest)) is None
        tree = await self._image_tree(source, backup, deadline, keyring, carry=due)
        if due and tree.referrers is None:  # there already, or another replica made it
            manifest = tree.manifest
            if manifest is None and tree.is_index:  # its platforms have referrers too
                manifest = await self._client.get_manifest(
                    dst, digest, deadline=deadline, push=True
                )
            carried = await self._carry(_repo(source), dst, digest, manifest, deadline, keyring)
            tree = replace(tree, referrers=carried)
        return tree

    async def _carry(
        self,
        src: Repository,
        dst: Repository,
        digest: str,
        manifest: Manifest | None,
        deadline: float,
        keyring: DockerConfig | None,
    ) -> Carried:
        """Carry the referrers of the backup's every manifest digest (those of `manifest`,
        None: a single-platform image's), within a share of the time left; what fails is
        reported and tried again REFERRERS_RETRY later."""
        assert self._carrier is not None
        share = (deadline - time.monotonic()) * REFERRERS_SHARE
        # Artifacts are small and mostly new: uploading one costs less than asking first.
        job = _Job(src, dst, time.monotonic() + share, keyring)
        try:
            children = manifest.children if manifest is not None else ()
            subjects = [digest, *(child.digest for child in children)]
            carried = await self._carrier.carry(
                src=job.src,
                dst=job.dst,
                subjects=subjects,
                store=lambda artifact, reference: self._copy_manifest(job, artifact, reference),
                deadline=job.deadline,
                keyring=job.keyring,
            )
        except RegistryError as exc:
            carried = failed(digest, exc, "finding its referrers")
        key = (job.dst, digest)
        self._carried.put(key, None, REFERRERS_RETRY if carried.failures else REFERRERS_EVERY)
        if self._observer is not None and (carried.artifacts or self._quiet.get(key) is None):
            await self._observer.carried(job.dst, digest, carried)
        if carried.artifacts:
            self._quiet.discard(key)
        else:
            self._quiet.put(key, None, None)
        return carried

    async def _image_tree(
        self,
        source: Reference,
        backup: Reference,
        deadline: float,
        keyring: DockerConfig | None,
        *,
        carry: bool,
    ) -> _Tree:
        """The image's own tree, copied unless the target has it; with `carry`, a new copy
        carries the referrers too, at the same time."""
        digest, dst = backup.digest, _repo(backup)
        assert digest is not None
        anchored = await self._anchored(dst, digest, deadline)
        if anchored is not None and anchored[0] == old_anchor_tag(digest):
            # Made before the anchor moved: anchor it anew.
            await self._ensure_tag(dst, anchor_tag(digest), digest, None, deadline)
        if anchored is not None:
            return _Tree(None, CopyStats(), is_index=anchored[1].media_type in INDEX_TYPES)
        job = _Job(_repo(source), dst, deadline, keyring)
        if self._coordinator is None:
            return await self._copy_new(job, digest, carry=carry)
        copied: list[_Tree] = []

        async def copy() -> Stored:
            copied.append(await self._copy_new(job, digest, carry=carry))
            return job.stored()

        async def present() -> bool:
            return await self._holds(dst, digest, deadline)

        await self._coordinator.exclusive(
            str(source), str(backup), str(dst), digest, copy, deadline=deadline, present=present
        )
        # Copied here, or by another replica (and the registry agrees with its record).
        return copied[0] if copied else _Tree(None, CopyStats())

    async def _holds(self, dst: Repository, digest: str, deadline: float) -> bool:
        return await self._anchored(dst, digest, deadline) is not None

    async def _anchored(
        self, dst: Repository, digest: str, deadline: float
    ) -> tuple[str, Descriptor] | None:
        """The anchor tag keeping `digest` in `dst` (the old one for a backup made before
        the anchor moved) and what it holds, or None if it holds no backup of it."""
        for tag in (anchor_tag(digest), old_anchor_tag(digest)):
            # Asking with push scope also sets up the target's authorization once,
            # before blobs fan out.
            present = await self._client.head_manifest(dst, tag, deadline=deadline, push=True)
            if present is not None and present.digest == digest:
                return tag, present
        return None

    async def _copy_new(self, job: _Job, digest: str, *, carry: bool) -> _Tree:
        # A repository that never had a tag holds at most left-overs of an interrupted
        # copy: sending those again costs less than asking about every blob.
        job.check_existing, manifest = await _both(
            self._client.has_tags(job.dst, deadline=job.deadline), self._fetch_manifest(job, digest)
        )
        carried: list[Carried] = []

        async def carry_referrers() -> None:
            carried.append(
                await self._carry(job.src, job.dst, digest, manifest, job.deadline, job.keyring)
            )

        work: list[Coroutine[Any, Any, object]] = [
            self._copy_manifest(job, manifest, anchor_tag(digest))
        ]
        if self._coordinator is not None and not manifest.is_index:
            work.append(self._note_platform(job, manifest.blobs[0]))
        if carry:  # beside the blobs: small requests that would otherwise wait for them
            work.append(carry_referrers())
        await _all(work)
        return _Tree(manifest, job.stats, referrers=carried[0] if carried else None)

    async def _note_platform(self, job: _Job, config: Descriptor) -> None:
        """For the record: a single-platform image names its platform in its config only.
        Configs are small; one that is not, or cannot be read, just goes unnamed."""
        if config.media_type not in IMAGE_CONFIG_TYPES or config.size > MAX_CONFIG_BYTES:
            return
        try:
            async with (
                self._slots,
                self._client.open_blob(
                    job.src, config.digest, deadline=job.deadline, keyring=job.keyring
                ) as chunks,
            ):
                raw = b"".join([chunk async for chunk in chunks])
        except RegistryError:
            return
        platform = platform_of_config(raw)
        if platform:
            job.platforms.append(platform)

    async def _copy_manifest(self, job: _Job, manifest: Manifest, reference: str) -> str:
        """Everything a manifest points at first, then the manifest itself; the
        `OCI-Subject` the target answered ("" if none)."""
        job.manifest_bytes += len(manifest.raw)
        if manifest.is_index:
            job.platforms.extend(child.platform for child in manifest.children if child.platform)
            await _all(self._copy_child(job, child) for child in manifest.children)
        else:
            for blob in manifest.blobs:
                self._known.add(job.src, blob.digest)
                job.blobs[blob.digest] = blob.size
            await _all(self._copy_blob(job, blob) for blob in manifest.blobs)
        async with self._slots:
            announced = await self._client.put_manifest(
                job.dst, reference, manifest, deadline=job.deadline
            )
        job.stats.manifests_copied += 1
        return announced

    async def _copy_child(self, job: _Job, child: Descriptor) -> None:
        manifest = await self._fetch_manifest(job, child.digest)
        await self._copy_manifest(job, manifest, child.digest)

    async def _fetch_manifest(self, job: _Job, digest: str) -> Manifest:
        async with self._slots:
            return await self._client.get_manifest(
                job.src, digest, deadline=job.deadline, keyring=job.keyring
            )

    async def _ensure_tag(
        self, dst: Repository, tag: str, digest: str, manifest: Manifest | None, deadline: float
    ) -> None:
        if manifest is None:
            current = await self._client.head_manifest(dst, tag, deadline=deadline, push=True)
            if current is not None and current.digest == digest:
                return
            manifest = await self._client.get_manifest(dst, digest, deadline=deadline, push=True)
        await self._client.put_manifest(dst, tag, manifest, deadline=deadline)

    async def _copy_blob(self, job: _Job, blob: Descriptor) -> None:
        async def transfer_with_retries() -> BlobOutcome:
            return await retrying(lambda: self._transfer(job, blob), deadline=job.deadline)

        outcome = await self._blobs.run((blob.digest, job.dst), transfer_with_retries)
        job.stats.count(outcome, blob.size)

    async def _transfer(self, job: _Job, blob: Descriptor) -> BlobOutcome:
        client, dst, deadline = self._client, job.dst, job.deadline
        async with self._slots:
            mount_from = self._known.mount_source(blob.digest, dst)
            if mount_from is not None:
                location = await client.start_upload(
                    dst, blob.digest, deadline=deadline, mount_from=mount_from.path
                )
                if location is None:
                    self._known.add(dst, blob.digest)
                    return BlobOutcome.MOUNTED
                await self._upload(job, blob, location)
            elif job.check_existing and await client.blob_exists(
                dst, blob.digest, deadline=deadline
            ):
                self._known.add(dst, blob.digest)
                return BlobOutcome.PRESENT
            else:
                await self._upload(job, blob, None)
            self._known.add(dst, blob.digest)
            return BlobOutcome.UPLOADED

    async def _upload(self, job: _Job, blob: Descriptor, location: URL | None) -> None:
        """Stream the blob from the source into the upload at `location`, or a new one.
        Both ends are opened at once: each is a round trip, and on a busy registry a slow
        one (a password check), so a blob that waits for neither starts streaming sooner."""
        client, dst, deadline = self._client, job.dst, job.deadline
        started: list[URL] = []

        async def start_upload() -> None:
            url = location or await client.start_upload(dst, blob.digest, deadline=deadline)
            assert url is not None  # only a mount answers without one
            started.append(url)

        async with AsyncExitStack() as stack:
            opening = client.open_blob(job.src, blob.digest, deadline=deadline, keyring=job.keyring)
            try:
                _, chunks = await _both(start_upload(), stack.enter_async_context(opening))
                await self._stream(job, blob, started[0], chunks)
            except Exception:
                if started:
                    with suppress(RegistryError):
                        await client.cancel_upload(dst, started[0], deadline=time.monotonic() + 5)
                raise

    async def _stream(
        self, job: _Job, blob: Descriptor, location: URL, chunks: AsyncIterator[bytes]
    ) -> None:
        source = reading_blob(job.src, blob.digest)
        check = _VerifiedStream(chunks, blob, source, self._progress)
        try:
            await self._client.finish_upload(
                job.dst, location, blob, check.chunks(), deadline=job.deadline
            )
        except RegistryError:
            if check.failure is not None:
                raise check.failure from None
            raise
        if check.failure is not None:
            raise check.failure


@dataclass(slots=True)
class _Job:
    """One image tree being copied: where from, where to, by when, and what it did."""

    src: Repository
    dst: Repository
    deadline: float
    keyring: DockerConfig | None  # the source's credentials
    check_existing: bool = False  # ask the target about each blob before uploading it
    stats: CopyStats = field(default_factory=CopyStats)
    blobs: dict[str, int] = field(default_factory=dict)  # digest -> size, every platform
    manifest_bytes: int = 0
    platforms: list[str] = field(default_factory=list)

    def stored(self) -> Stored:
        size = self.manifest_bytes + sum(self.blobs.values())
        return Stored(size, tuple(self.platforms), tuple(self.blobs))


class _VerifiedStream:
    """Pass bytes through while hashing them; the last chunk goes out only once they verify.

    Holding back one chunk means a target never receives a complete body for
    bytes that do not match their digest: the upload fails instead of committing.
    """

    def __init__(
        self,
        source: AsyncIterator[bytes],
        blob: Descriptor,
        reading: Operation,
        progress: Progress | None,
    ) -> None:
        self._source = source
        self._blob = blob
        self._reading = reading
        self._progress = progress
        self.failure: RegistryError | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        blob, progress = self._blob, self._progress
        if progress is not None:
            progress.expect(blob.size)
        # Hashing here, on the event loop, costs less CPU than handing chunks to a
        # thread; while copying, CPU (ours and the registries') is what runs out.
        hasher = hashlib.sha256()
        seen = 0
        held = b""
        async for chunk in self._source:
            seen += len(chunk)
            if seen > blob.size:
                self._fail(f"more bytes than the {blob.size} its descriptor declares")
            hasher.update(chunk)
            if held:
                yield held
                if progress is not None:
                    progress.advance(len(held))
            held = chunk
        if seen != blob.size:
            self._fail(f"{seen} bytes, expected {blob.size}")
        actual = "sha256:" + hasher.hexdigest()
        if actual != blob.digest:
            self._fail(f"content hashes to {actual}")
        if held:
            yield held
            if progress is not None:
                progress.advance(len(held))

    def _fail(self, why: str) -> NoReturn:
        self.failure = CorruptTransfer(f"the registry sent corrupt data ({why})", self._reading)
        raise self.failure


def _repo(ref: Reference) -> Repository:
    return Repository(ref.registry, ref.repository)


async def _all(work: Iterable[Coroutine[Any, Any, object]]) -> None:
    """Run concurrently; on the first failure cancel the rest and raise that failure itself."""
    try:
        async with asyncio.TaskGroup() as group:
            for item in work:
                group.create_task(item)
    except BaseExceptionGroup as grouped:
        raise _first_leaf(grouped) from None


async def _both(first: Coroutine[Any, Any, A], second: Coroutine[Any, Any, B]) -> tuple[A, B]:
    """Both at once, as `_all` runs them: their results."""
    try:
        async with asyncio.TaskGroup() as group:
            a, b = group.create_task(first), group.create_task(second)
    except BaseExceptionGroup as grouped:
        raise _first_leaf(grouped) from None
    return a.result(), b.result()


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
