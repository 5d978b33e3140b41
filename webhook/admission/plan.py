"""What to do with each image: leave it, rewrite it from memory, or back it up first.

Deciding costs no I/O, so every Pod a controller creates from an already
rewritten template is answered without touching a registry.
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from ..naming import BackupNameError, Scheme
from ..reference import MAX_REFERENCE_LENGTH, InvalidReference, Reference, parse
from ..registry.client import Repository
from ..registry.copy import STILL_COPYING, CopyEngine, CopyResult
from ..registry.credentials import DockerConfig
from ..registry.errors import RegistryError
from ..text import one_line
from .pods import ImageField
from .streams import Resolved


class Action(enum.Enum):
    EXCLUDED = "excluded"
    ALREADY_BACKED_UP = "already_backed_up"
    REWRITE = "rewrite"  # the backup is known: rewrite without copying
    BACK_UP = "back_up"  # copy first, then rewrite
    INVALID = "invalid"  # cannot be backed up: the reference or its backup name is invalid
    WAITING = "awaiting_trigger"  # an image trigger fills it: its update is reviewed


@dataclass(frozen=True, slots=True)
class ImagePlan:
    field: ImageField
    action: Action
    source: Reference | None = None
    backup: CopyResult | None = None  # for REWRITE
    problem: str | None = None  # for INVALID
    valid_until: float | None = None  # for REWRITE: when the cached backup goes stale
    via: str | None = None  # the ImageStream tag the image was found through


@dataclass(frozen=True, slots=True)
class _Reading:
    """What an image string means, independent of any registry state."""

    source: Reference | None
    action: Action | None  # decided already (excluded, a backup, invalid), or None
    problem: str | None = None
    target: Repository | None = None  # where its backup goes


class Planner:
    def __init__(self, engine: CopyEngine, excluded_images: Sequence[str]) -> None:
        self._engine = engine
        self._scheme: Scheme = engine.scheme
        self._excluded_images = tuple(excluded_images)
        # The same few image strings arrive again and again: read each once. Only strings
        # that may be references are kept, which bounds the cache in bytes too; a longer
        # one is refused by its length alone, as cheaply as it would be looked up.
        self._read_cached = lru_cache(maxsize=4096)(self._read_uncached)

    def plan(
        self,
        fields: Sequence[ImageField],
        keyring: DockerConfig | None = None,
        *,
        refresh: bool = True,
        streams: Resolved | None = None,
    ) -> list[ImagePlan]:
        """`keyring`: the workload's pull credentials; a backup is only known for those.
        `refresh`: whether a backup due for a re-check may start one (CopyEngine.cached).
        `streams`: what ImageStreams made of the images (streams.resolve)."""
        plans = []
        for field in fields:
            image, via = field.image, None
            if streams is not None and field.pointer in streams.images:
                found = streams.images[field.pointer]
                reading, via = self._read_source(found.reference), found.via
            elif streams is not None and field.pointer in streams.waiting:
                trigger = f"ImageStreamTag {streams.waiting[field.pointer]}"
                plans.append(ImagePlan(field, Action.WAITING, via=trigger))
                continue
            elif streams is not None and field.pointer in streams.problems:
                problem = streams.problems[field.pointer]
                plans.append(ImagePlan(field, Action.INVALID, problem=problem))
                continue
            elif len(image) <= MAX_REFERENCE_LENGTH:
                reading = self._read_cached(image)
            else:
                reading = self._read_uncached(image)
            if reading.action is not None:
                plans.append(
                    ImagePlan(field, reading.action, reading.source, None, reading.problem, via=via)
                )
                continue
            assert reading.source is not None
            cached = self._engine.cached(reading.source, reading.target, keyring, refresh=refresh)
            if cached is not None:
                result, valid_until = cached
                plans.append(
                    ImagePlan(field, Action.REWRITE, reading.source, result, None, valid_until, via)
                )
            else:
                plans.append(ImagePlan(field, Action.BACK_UP, reading.source, via=via))
        return plans

    def _read_uncached(self, image: str) -> _Reading:
        try:
            source = parse(image)
        except InvalidReference as exc:  # the image is named by whoever reports the problem
            return _Reading(None, Action.INVALID, f"invalid image reference: {exc.problem}")
        return self._read_source(source)

    def _read_source(self, source: Reference) -> _Reading:
        if any(fnmatch.fnmatchcase(str(source), pattern) for pattern in self._excluded_images):
            return _Reading(source, Action.EXCLUDED)
        if self._scheme.is_backup(source):
            return _Reading(source, Action.ALREADY_BACKED_UP)
        try:
            target = self._engine.target_for(source)
        except BackupNameError as exc:
            return _Reading(source, Action.INVALID, str(exc))
        return _Reading(source, None, target=target)


def reason(error: object) -> str:
    """Why an image has no backup, in the words a denial, a warning and an Event use."""
    if isinstance(error, TimeoutError):
        return str(error) or STILL_COPYING
    if isinstance(error, RegistryError | ValueError):
        return one_line(error)
    return f"unexpected error ({type(error).__name__})"


def not_backed_up(failures: list[str]) -> str:
    """A denial's words, and those of an Event about a workload: each `image: reason`."""
    count = len(failures)
    return (
        f"image-backup: {count} image{'s' if count > 1 else ''} could not be backed up: "
        + "; ".join(failures)
    )
