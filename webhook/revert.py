"""`image-backup revert`: workloads back to the images they ran before the webhook rewrote
them, as recorded in their annotation ``image-backup.io/original-images``: to take a
namespace out of the webhook's hands, or to uninstall it.

Each object of the chosen namespaces (every opted-in one, or those named; all objects, those
a label selector selects, or one) that records originals gets one RFC 6902 JSON patch: each
recorded container whose image is still the backup of its original gets the original back,
and the annotation goes. By default nothing is sent and the patches are printed; with
``apply`` they are sent through the API server, and so through admission, like any update.

What it guarantees:

* nothing changed since it was read is overwritten: the patch tests each image it replaces,
  and the annotation, so a concurrent change fails it whole (the API server writes nothing)
  and the object is reported;
* a container whose image is no longer the backup of its recorded original (someone changed
  it since) is left alone and listed;
* an original is read from its registry, with the workload's own pull credentials, before it
  is put back: one that cannot be read (deleted, moved, a lost login) is listed and the
  container stays on its backup, still recorded, unless ``force``. A bare name on a cluster
  with ImageStreams (``app:v1``) whose backup is not Docker Hub's image of that name was an
  ImageStream's: it goes back as written, unchecked, and OpenShift resolves it again;
* with ``apply``, a namespace still labelled ``image-backup.io/mode=enforce`` is refused:
  the webhook would rewrite every object again at once. Each object is checked as stored
  after admission: an image rewritten again is a failure;
* at most REVERTS_PER_SECOND updates a second: each may roll a workload out;
* running it again carries on where it stopped: a reverted object records nothing more, so
  an API server that could not be read (which ends the run) costs nothing but a rerun.

What it does not do: change what a controller made (a Deployment's ReplicaSets and Pods, a
CronJob's Jobs: their owner is reverted and rolls them) or a Job (its pod template cannot
change; it runs to its end from the backups); delete any backup; revert an image no
annotation records (``image-backup review`` output committed to a repository). Backups are
recognised by the naming of the configuration given: with another backup registry, prefix
or path style than the webhook's, no image is its original's backup and every one is left.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .admission.patch import (
    ORIGINAL_IMAGES,
    ORIGINAL_IMAGES_POINTER,
    originals_value,
    recorded_originals,
)
from .admission.plan import reason
from .admission.pods import pull_identity, stored_images
from .admission.streams import bare_name
from .kube.client import KubeError
from .kube.pullsecrets import PullCredentials
from .kube.workloads import IMMUTABLE_TEMPLATES, Kind, Workload, Workloads
from .naming import BackupNameError
from .reference import InvalidReference, Reference, parse
from .registry.copy import CopyEngine
from .text import quoted

# Each update may roll a workload out: a few a second at most.
REVERTS_PER_SECOND = 5.0

REVERTED = "reverted"
WOULD_REVERT = "would_revert"  # a dry run
CHANGED = "changed_since"  # its image is no longer the backup recorded: left alone
UNREADABLE = "unreadable"  # the original cannot be read: left on its backup (no --force)
SKIPPED = "skipped"  # in an object a controller owns, or a Job
FAILED = "failed"  # the update failed, or was admitted rewritten again
OUTCOMES = (REVERTED, WOULD_REVERT, CHANGED, UNREADABLE, SKIPPED, FAILED)

ENFORCED = (
    "labelled image-backup.io/mode=enforce: the webhook would rewrite every object again at "
    "once; take the namespace out of enforce first: kubectl label namespace {namespace} "
    "image-backup.io/mode- (or image-backup.io/mode=audit --overwrite)"
)


@dataclass(slots=True)
class Container:
    """A recorded container: its image now, its original, what became of it and why."""

    container: str
    image: str
    original: str
    outcome: str
    detail: str = ""


@dataclass(slots=True)
class ObjectRevert:
    path: str  # namespace/Kind/name
    containers: list[Container] = field(default_factory=list)
    patch: list[dict[str, Any]] = field(default_factory=list)  # [] when nothing is to send
    skipped: str = ""  # why the object as a whole is left
    failed: str = ""  # why its update failed

    def lines(self) -> list[str]:
        if self.skipped:
            return [f"{self.path}: skipped: {self.skipped}"]
        lines = [f"{self.path}: {_line(container)}" for container in self.containers]
        if self.failed:
            lines.append(f"{self.path}: failed: {self.failed}")
        return lines


def _line(container: Container) -> str:
    name, original = container.container, quoted(container.original)
    if container.outcome == CHANGED:
        image = quoted(container.image)
        return f"container {name!r}: left alone: {image} is not the backup of {original}"
    if container.outcome == UNREADABLE:
        return (
            f"container {name!r}: not reverted: {original} cannot be read: {container.detail} "
            "(--force reverts it all the same)"
        )
    # Whole: a backup this run recognised, named as the webhook names them, is no longer
    # than a valid reference.
    forced = f" (forced: it cannot be read: {container.detail})" if container.detail else ""
    return f"container {name!r}: {container.image} -> {original}{forced}"


@dataclass
class Summary:
    applied: bool = False
    namespaces: int = 0
    workloads: int = 0  # objects that record originals
    images: Counter[str] = field(default_factory=Counter)  # recorded containers, by outcome
    objects: list[ObjectRevert] = field(default_factory=list)
    enforced: list[str] = field(default_factory=list)  # namespaces refused (or, dry, to be)

    def failed(self) -> bool:
        """Whether something could not be reverted: exit status 1."""
        return self.applied and bool(
            self.enforced or self.images[UNREADABLE] or self.images[FAILED]
        )

    def lines(self) -> list[str]:
        refusal = "refused" if self.applied else "--apply would be refused"
        return [
            *(line for found in self.objects for line in found.lines()),
            *(f"{ns}: {refusal}: {ENFORCED.format(namespace=ns)}" for ns in self.enforced),
            f"{self.namespaces} namespaces, {self.workloads} workloads with recorded images, "
            f"{sum(self.images.values())} images: "
            + ", ".join(f"{self.images[o]} {o.replace('_', ' ')}" for o in OUTCOMES)
            + ("" if self.applied else " (dry run: nothing sent; --apply sends the patches)"),
        ]

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)


class Revert:
    def __init__(
        self,
        engine: CopyEngine,
        workloads: Workloads,
        *,
        pull: PullCredentials | None = None,
        streams: bool = False,
        timeout: float = 60.0,
    ) -> None:
        """`pull` None: originals are read with the configured credentials only; `streams`:
        the API serves ImageStreams (a bare name may be one's); `timeout`: to read one
        original."""
        self._engine = engine
        self._scheme = engine.scheme
        self._workloads = workloads
        self._pull = pull
        self._streams = streams
        self._timeout = timeout
        self._readable: dict[tuple[object, ...], asyncio.Task[str]] = {}  # by original, identity

    async def run(
        self,
        *,
        namespaces: Collection[str] = (),
        selector: str = "",
        one: tuple[Kind, str] | None = None,
        apply: bool = False,
        force: bool = False,
        done: Callable[[Workload], None] | None = None,
    ) -> Summary:
        """`namespaces`: these (opted in or not), else every opted-in one; `selector`: only
        the objects it selects; `one`: only that (kind, name); `force`: revert originals
        that cannot be read too; `done` is called after each object (a progress bar)."""
        summary = Summary(applied=apply)
        sent = 0
        if namespaces:
            chosen = [(ns, await self._workloads.mode(ns)) for ns in dict.fromkeys(namespaces)]
        else:
            chosen = await self._workloads.namespaces()
        for namespace, mode in chosen:
            summary.namespaces += 1
            if mode == "enforce":
                summary.enforced.append(namespace)
                if apply:
                    continue
            async for workload in self._objects(namespace, mode, selector, one):
                found = await self._decide(workload, force)
                if found is not None:
                    summary.workloads += 1
                    summary.objects.append(found)
                    if apply and found.patch:
                        if sent:
                            await asyncio.sleep(1 / REVERTS_PER_SECOND)
                        sent += 1
                        await self._apply(workload, found)
                    summary.images.update(c.outcome for c in found.containers)
                if done is not None:
                    done(workload)
        return summary

    async def _objects(
        self, namespace: str, mode: str, selector: str, one: tuple[Kind, str] | None
    ) -> AsyncIterator[Workload]:
        if one is not None:
            yield await self._workloads.one(namespace, mode, *one)
            return
        async for workload in self._workloads.in_namespace(namespace, mode, selector=selector):
            yield workload

    async def _decide(self, workload: Workload, force: bool) -> ObjectRevert | None:
        """What to do with the object's recorded containers, and the patch that does it;
        None if it records none."""
        recorded = recorded_originals(workload.annotations)
        spec, fields = stored_images(workload.kind.group, workload.kind.kind, workload.obj)
        if not recorded or spec is None:
            return None
        fields = [f for f in fields if f.container in recorded]
        found = ObjectRevert(workload.path)
        found.skipped = _left_whole(workload)
        if found.skipped:
            found.containers = [
                Container(f.container, f.image, recorded[f.container], SKIPPED) for f in fields
            ]
            return found
        # Each original to put back is read, all at once (each once per run and identity).
        identity = (workload.namespace, *pull_identity(spec))
        readings = [self._backup_of(f.image, recorded[f.container]) for f in fields]
        for image_field, reading in zip(fields, readings, strict=True):
            key = (recorded[image_field.container], *identity)
            if reading and key not in self._readable:
                self._readable[key] = asyncio.create_task(self._problem(key[0], identity))
        kept: dict[str, str] = {}
        for image_field, reading in zip(fields, readings, strict=True):
            original = recorded[image_field.container]
            container = Container(image_field.container, image_field.image, original, CHANGED)
            found.containers.append(container)
            if reading is None:
                continue
            container.outcome = WOULD_REVERT
            if reading:
                container.detail = await self._readable[(original, *identity)]
            if container.detail and not force:
                container.outcome = UNREADABLE
                kept[container.container] = original
                continue
            found.patch += [
                {"op": "test", "path": image_field.pointer, "value": image_field.image},
                {"op": "replace", "path": image_field.pointer, "value": original},
            ]
        if found.patch or kept != recorded:
            found.patch += _annotation_ops(workload, kept)
        return found

    def _backup_of(self, image: str, original: str) -> bool | None:
        """Whether `image` is the backup of `original` (True), or of the ImageStream a bare
        `original` named (False: nothing to read at a registry), or neither (None)."""
        try:
            current = parse(image)
        except InvalidReference:
            return None
        if current.digest is None or not self._scheme.is_backup(current):
            return None
        try:
            expected = self._scheme.reference_for(parse(original), current.digest)
        except (InvalidReference, BackupNameError):
            expected = None
        if expected is not None and _same_image(expected, current):
            return True
        # A bare name an ImageStream claimed was backed up from the stream's image, named
        # after where that image is: not Docker Hub's name.
        if self._streams and bare_name(original) is not None:
            return False
        return None

    async def _problem(self, original: str, identity: tuple[str, str, tuple[str, ...]]) -> str:
        """Why the original cannot be read with the credentials of a pod of that identity
        (namespace, ServiceAccount, imagePullSecrets): "" if it can."""
        keyring = None
        if self._pull is not None:
            keyring, _ = await self._pull.keyring(*identity)
        try:
            await self._engine.resolve(
                parse(original), deadline=time.monotonic() + self._timeout, keyring=keyring
            )
        except Exception as exc:  # every failure is the image's, reported: the run goes on
            return reason(exc)
        return ""

    async def _apply(self, workload: Workload, found: ObjectRevert) -> None:
        """Send the patch; then check the object as stored: an admission webhook may have
        rewritten an image again."""
        reverting = [c for c in found.containers if c.outcome == WOULD_REVERT]
        try:
            stored = await self._workloads.json_patch(workload, found.patch)
        except KubeError as exc:
            found.failed = f"not reverted: {exc}"
        else:
            _, fields = stored_images(workload.kind.group, workload.kind.kind, stored)
            now = {f.container: f.image for f in fields}
            again = [c for c in reverting if now.get(c.container) != c.original]
            if again:
                found.failed = (
                    "the update was admitted with "
                    + ", ".join(quoted(now.get(c.container) or "") for c in again)
                    + " (is the namespace enforced again?)"
                )
        for container in reverting:
            container.outcome = FAILED if found.failed else REVERTED


def _left_whole(workload: Workload) -> str:
    """Why the object is not to be reverted at all ("": it is)."""
    owner = workload.controller
    if owner is not None:
        controller = f"{owner.kind} {quoted(owner.name or '')}"
        return f"controlled by {controller}: revert that instead, it rolls this"
    if workload.kind.kind in IMMUTABLE_TEMPLATES:
        return (
            f"a {workload.kind.kind}'s pod template cannot change: it runs from its backups "
            "to its end; re-create it to run the originals"
        )
    return ""


def _same_image(one: Reference, other: Reference) -> bool:
    """The same repository and digest; a tag only names it for readers."""
    return (one.name, one.digest) == (other.name, other.digest)


def _annotation_ops(workload: Workload, kept: dict[str, str]) -> list[dict[str, Any]]:
    """The annotation as read (tested), then dropped, or left with what is `kept`."""
    annotations = workload.annotations or {}
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": ORIGINAL_IMAGES_POINTER, "value": annotations[ORIGINAL_IMAGES]}
    ]
    if kept:
        ops.append(
            {"op": "replace", "path": ORIGINAL_IMAGES_POINTER, "value": originals_value(kept)}
        )
    else:
        ops.append({"op": "remove", "path": ORIGINAL_IMAGES_POINTER})
    return ops
