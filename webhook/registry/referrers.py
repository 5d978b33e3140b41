"""What refers to an image travels with it: OCI 1.1 referrers and cosign's tags.

Signature verifiers look for an image's signatures beside the image they are told to run,
by its digest. Backups keep every digest, so carrying the artifacts is enough for the same
signatures to verify against the backup, unchanged.

For each manifest digest of a backup (an index and each of its children), and then for each
artifact carried (a signature of an SBOM), up to MAX_DEPTH levels:
- OCI 1.1 referrers, by the source's referrers API, else through its fallback tag
  `sha256-<hex>` (an index listing them);
- cosign's tags `sha256-<hex>.sig`, `.att` and `.sbom`, copied and tagged alike.
The source's tags are listed once per carrying, so a tag that is not there costs nothing.

On the backup side a registry that answers `OCI-Subject` to a push indexes referrers itself;
for any other, the fallback tag index is kept, merged with what it already lists. An old
anchor on that tag (the image itself, from before the anchor moved) is replaced by the index
once the new anchor holds the image.

Guarantees: an artifact is stored whole (its blobs verified) before anything names it; a
failure to carry one never fails the image's backup: it is reported in `Carried` and tried
again at the next carrying. Not guaranteed: that a source lists every artifact (a fallback
index holds what tools pushed there), or that two writers of one fallback index at the same
moment both survive (the next carrying merges again). Artifacts removed at the source stay.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..text import one_line
from .cache import ExpiringCache
from .client import RegistryClient, Repository, anchor_tag, old_anchor_tag
from .credentials import DockerConfig
from .errors import NotFound, RegistryError, TransientError, UnsupportedManifest
from .media import IMAGE_CONFIG_TYPES, OCI_INDEX, Descriptor, Manifest, parse_manifest

COSIGN_SUFFIXES = (".sig", ".att", ".sbom")
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
MAX_DEPTH = 4  # a signature of an attestation of an SBOM of the image, and no further
MAX_ARTIFACTS = 256  # per image: more is a loop or an abuse, not a supply chain
API_MEMORY = 3600.0

# Puts a manifest and everything under it at a reference of the backup repository; returns
# the `OCI-Subject` the registry answered ("" if none).
Store = Callable[[Manifest, str], Awaitable[str]]


class Outcome(enum.Enum):
    CARRIED = "carried"  # copied now
    PRESENT = "present"  # the backup held it already
    SKIPPED = "skipped"  # an artifact type copy.artifactTypes leaves out
    FAILED = "failed"


HELD = frozenset({Outcome.CARRIED, Outcome.PRESENT})  # what the backup holds after


@dataclass(frozen=True, slots=True)
class Artifact:
    """One artifact found referring to a digest of the image, and what became of it."""

    subject: str  # the digest it refers to
    digest: str  # "" when it could not even be read
    artifact_type: str
    outcome: Outcome
    tag: str = ""  # cosign's tag scheme: the tag it goes by
    error: str = ""  # for FAILED, why, in words

    @property
    def name(self) -> str:
        """How a person finds it: its tag, else its digest."""
        return self.tag or self.digest or f"referrers of {self.subject}"


@dataclass(frozen=True, slots=True)
class Carried:
    """What one carrying found and did, for the record, the metrics and `image-backup copy`."""

    artifacts: tuple[Artifact, ...] = ()

    @property
    def held(self) -> tuple[Artifact, ...]:
        """The artifacts the backup holds now."""
        return tuple(a for a in self.artifacts if a.outcome in HELD)

    @property
    def failures(self) -> tuple[Artifact, ...]:
        return tuple(a for a in self.artifacts if a.outcome is Outcome.FAILED)


def failed(subject: str, exc: Exception, doing: str = "") -> Carried:
    """A carrying that could not begin (the image's own manifest unreadable, the deadline)."""
    return Carried((_failure(subject, "", exc, doing=doing),))


class Carrier:
    """Carries the artifacts of an image's digests from its source into its backup."""

    def __init__(self, client: RegistryClient, *, artifact_types: Iterable[str] = ()) -> None:
        """`artifact_types`: those carried (none: all)."""
        self.client = client
        self._types = frozenset(artifact_types)
        # Whether a registry has the referrers API (it answered it, or OCI-Subject to a
        # push; or it answered 404): asked again after API_MEMORY, it may have upgraded.
        self._api: ExpiringCache[str, bool] = ExpiringCache(1024)

    def has_api(self, host: str) -> bool | None:
        """Whether `host` has the referrers API, None if not known (lately)."""
        known = self._api.get(host)
        return None if known is None else known[0]

    def learn(self, host: str, *, api: bool) -> None:
        self._api.put(host, api, API_MEMORY)

    async def carry(
        self,
        *,
        src: Repository,
        dst: Repository,
        subjects: Sequence[str],
        store: Store,
        deadline: float,
        keyring: DockerConfig | None,
    ) -> Carried:
        job = _Carrying(self, src, dst, store, deadline, keyring)
        await job.list_tags()
        seen = set(subjects)
        level = list(subjects)
        for _ in range(MAX_DEPTH):
            await asyncio.gather(*(job.subject(subject) for subject in level))
            # What the backup now holds refers to something too, maybe: the next level.
            held = (a.digest for a in job.artifacts if a.outcome in HELD)
            level = [digest for digest in dict.fromkeys(held) if digest not in seen]
            seen.update(level)
            if not level or len(job.artifacts) >= MAX_ARTIFACTS:
                break
        if len(job.artifacts) >= MAX_ARTIFACTS:
            why = RegistryError(f"more than {MAX_ARTIFACTS} artifacts; the rest stay behind")
            job.artifacts.append(_failure(subjects[0], "", why))
        return Carried(tuple(job.artifacts))

    def wanted(self, artifact_type: str) -> bool:
        return not self._types or artifact_type in self._types


class _Carrying:
    """One image's artifacts being carried: where from, where to, and what was found."""

    def __init__(
        self,
        carrier: Carrier,
        src: Repository,
        dst: Repository,
        store: Store,
        deadline: float,
        keyring: DockerConfig | None,
    ) -> None:
        self._carrier = carrier
        self._client = carrier.client
        self._src, self._dst, self._store = src, dst, store
        self._deadline, self._keyring = deadline, keyring
        self._tags: frozenset[str] | None = None  # None: the source would not list them
        self.artifacts: list[Artifact] = []

    async def list_tags(self) -> None:
        """The source's tags, to look up the fallback and cosign tags without asking for
        each. A source that will not list them (some allow pulls only) is asked per tag."""
        try:
            tags = await self._client.tags(
                self._src, deadline=self._deadline, keyring=self._keyring
            )
        except TransientError:
            raise
        except RegistryError:
            return
        self._tags = frozenset(tags)

    async def subject(self, subject: str) -> None:
        """Carry what refers to `subject`: its OCI referrers, then cosign's tags of it."""
        if len(self.artifacts) >= MAX_ARTIFACTS:
            return
        try:
            referrers = await self._find_referrers(subject)
        except RegistryError as exc:
            referrers = []
            self.artifacts.append(_failure(subject, "", exc, doing="listing its referrers"))
        results = await asyncio.gather(*(self._referrer(subject, d) for d in referrers))
        held = [manifest for manifest in results if manifest is not None]
        if held:
            await self._index(subject, held)
        tags = [old_anchor_tag(subject) + suffix for suffix in COSIGN_SUFFIXES]
        await asyncio.gather(*(self._cosign(subject, tag) for tag in tags if self._listed(tag)))

    def _listed(self, tag: str) -> bool:
        return self._tags is None or tag in self._tags

    async def _find_referrers(self, subject: str) -> list[Descriptor]:
        client, src = self._client, self._src
        if self._carrier.has_api(src.host) is not False:
            found = await client.referrers(
                src, subject, deadline=self._deadline, keyring=self._keyring
            )
            self._carrier.learn(src.host, api=found is not None)
            if found is not None:
                return found
        fallback = old_anchor_tag(subject)
        if not self._listed(fallback):
            return []
        try:
            index = await client.get_manifest(
                src, fallback, deadline=self._deadline, keyring=self._keyring
            )
        except NotFound:
            return []
        # The image itself on that tag is an old anchor (the source is a backup made before
        # the anchor moved), not an index of referrers.
        return list(index.children) if index.is_index and index.digest != subject else []

    async def _referrer(self, subject: str, listed: Descriptor) -> Manifest | None:
        """Carry one OCI referrer; the manifest if the backup holds it (for its index)."""
        if listed.artifact_type and not self._carrier.wanted(listed.artifact_type):
            self.artifacts.append(
                Artifact(subject, listed.digest, listed.artifact_type, Outcome.SKIPPED)
            )
            return None
        kind = listed.artifact_type
        try:
            manifest = await self._client.get_manifest(
                self._src, listed.digest, deadline=self._deadline, keyring=self._keyring
            )
            kind = artifact_type(manifest)
            if subject_of(manifest) != subject:
                return None  # listed by mistake: it refers to something else
            if not self._carrier.wanted(kind):
                self.artifacts.append(Artifact(subject, manifest.digest, kind, Outcome.SKIPPED))
                return None
            outcome = await self._put(manifest, manifest.digest)
        except RegistryError as exc:
            self.artifacts.append(_failure(subject, listed.digest, exc, kind=kind))
            return None
        self.artifacts.append(Artifact(subject, manifest.digest, kind, outcome))
        return manifest

    async def _cosign(self, subject: str, tag: str) -> None:
        """Carry cosign's `tag` of `subject` byte-exact. A backup's tag that held another
        manifest (the source re-signed) keeps that one by its anchor tag."""
        client, dst, deadline = self._client, self._dst, self._deadline
        kind = ""
        try:
            try:
                manifest = await client.get_manifest(
                    self._src, tag, deadline=deadline, keyring=self._keyring
                )
            except NotFound:
                return
            kind = artifact_type(manifest)
            if not self._carrier.wanted(kind):
                self.artifacts.append(
                    Artifact(subject, manifest.digest, kind, Outcome.SKIPPED, tag)
                )
                return
            held = await client.head_manifest(dst, tag, deadline=deadline, push=True)
            if held is not None and held.digest == manifest.digest:
                outcome = Outcome.PRESENT
            else:
                if held is not None and held.digest:
                    await self._keep(held.digest)
                await self._store(manifest, tag)
                outcome = Outcome.CARRIED
        except RegistryError as exc:
            self.artifacts.append(_failure(subject, "", exc, kind=kind, tag=tag))
            return
        self.artifacts.append(Artifact(subject, manifest.digest, kind, outcome, tag))

    async def _keep(self, digest: str) -> None:
        """Anchor a manifest of the backup before a tag moves off it: none is ever lost."""
        client, dst, deadline = self._client, self._dst, self._deadline
        anchored = await client.head_manifest(dst, anchor_tag(digest), deadline=deadline, push=True)
        if anchored is None or anchored.digest != digest:
            manifest = await client.get_manifest(dst, digest, deadline=deadline, push=True)
            await client.put_manifest(dst, anchor_tag(digest), manifest, deadline=deadline)

    async def _put(self, manifest: Manifest, reference: str) -> Outcome:
        client, dst = self._client, self._dst
        present = await client.head_manifest(dst, reference, deadline=self._deadline, push=True)
        if present is not None and present.digest == manifest.digest:
            return Outcome.PRESENT
        announced = await self._store(manifest, reference)
        self._carrier.learn(dst.host, api=bool(announced))
        return Outcome.CARRIED

    async def _index(self, subject: str, held: list[Manifest]) -> None:
        """List the referrers of `subject` the backup holds in its fallback tag index,
        unless the backup registry indexes them itself."""
        try:
            if await self._indexed_by_registry(subject):
                return
            await self._merge_fallback_index(subject, held)
        except RegistryError as exc:
            self.artifacts.append(
                _failure(subject, "", exc, doing="listing them in its referrers index")
            )

    async def _indexed_by_registry(self, subject: str) -> bool:
        known = self._carrier.has_api(self._dst.host)
        if known is None:
            found = await self._client.referrers(
                self._dst, subject, deadline=self._deadline, push=True
            )
            known = found is not None
            self._carrier.learn(self._dst.host, api=known)
        return known

    async def _merge_fallback_index(self, subject: str, held: list[Manifest]) -> None:
        client, dst, deadline = self._client, self._dst, self._deadline
        tag = old_anchor_tag(subject)
        try:
            current: Manifest | None = await client.get_manifest(
                dst, tag, deadline=deadline, push=True
            )
        except NotFound:
            current = None
        if current is not None and current.digest == subject:
            # An old anchor: the image itself. Replaced once the new anchor keeps the image.
            await self._keep(subject)
            current = None
        if current is None:
            document: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX}
            listed: list[Any] = []
        elif current.media_type == OCI_INDEX:
            document = orjson.loads(current.raw)
            listed = list(document.get("manifests") or [])
        else:
            raise UnsupportedManifest(
                f"the backup's tag {tag} holds a {current.media_type}, not a referrers index; "
                "left alone"
            )
        known = {entry.get("digest") for entry in listed if isinstance(entry, dict)}
        added = [index_entry(manifest) for manifest in held if manifest.digest not in known]
        if current is not None and not added:
            return
        document["manifests"] = [*listed, *added]
        raw = orjson.dumps(document)
        await client.put_manifest(dst, tag, parse_manifest(raw, OCI_INDEX), deadline=deadline)


def _failure(
    subject: str, digest: str, exc: Exception, *, doing: str = "", kind: str = "", tag: str = ""
) -> Artifact:
    error = one_line(exc) if isinstance(exc, RegistryError) else type(exc).__name__
    return Artifact(
        subject, digest, kind, Outcome.FAILED, tag, f"{doing}: {error}" if doing else error
    )


def _document(manifest: Manifest) -> dict[str, object]:
    document = orjson.loads(manifest.raw)
    return document if isinstance(document, dict) else {}


def subject_of(manifest: Manifest) -> str:
    """The digest a manifest says it refers to ("" if none)."""
    subject = _document(manifest).get("subject")
    digest = subject.get("digest") if isinstance(subject, dict) else None
    return digest if isinstance(digest, str) else ""


def artifact_type(manifest: Manifest) -> str:
    """What an artifact is: its `artifactType`; else its config's media type when that is
    not an image's config or the empty one (OCI 1.1's rule); else, for cosign's manifests
    (image-shaped), the media type of its first layer (a signature, an attestation, an SBOM)."""
    document = _document(manifest)
    declared = document.get("artifactType")
    if isinstance(declared, str) and declared:
        return declared
    config = document.get("config")
    config_type = config.get("mediaType") if isinstance(config, dict) else None
    if isinstance(config_type, str) and config_type not in IMAGE_CONFIG_TYPES | {EMPTY_CONFIG}:
        return config_type
    layers = document.get("layers")
    first = layers[0] if isinstance(layers, list) and layers else None
    layer_type = first.get("mediaType") if isinstance(first, dict) else None
    return layer_type if isinstance(layer_type, str) else manifest.media_type


def index_entry(manifest: Manifest) -> dict[str, object]:
    """A referrer's descriptor in a referrers index: what the OCI 1.1 spec asks of one."""
    entry: dict[str, object] = {
        "mediaType": manifest.media_type,
        "digest": manifest.digest,
        "size": len(manifest.raw),
        "artifactType": artifact_type(manifest),
    }
    annotations = _document(manifest).get("annotations")
    if isinstance(annotations, dict) and annotations:
        entry["annotations"] = annotations
    return entry
