"""The day the source is gone: admit with the backup the backup registry holds.

A source that cannot be read (unreachable, 5xx, 429 past the budget, or the tag or digest
deleted there) would deny every admission naming it, although the backup registry may hold
exactly that image. Then the backup is used instead, found by asking the backup registry
alone (so it works in a new cluster without ImageBackup records): by digest, the digest's
anchor tag; by tag, the backup repository's tag of that name.

A namespace never gets an image it could not have pulled: a backup is given only to a
namespace whose credentials were shown to read the source (the record's ``readBy``), or to
any namespace when the source registry is marked ``public: true``. Otherwise the denial
says that a backup exists and why it was not used. A source that refused the credentials
(401/403) is not gone: nothing falls back then. Nor does a copy still running when the
budget ends: the source answers, slowly.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from ..reference import Reference
from ..registry.copy import CopyEngine, CopyResult
from ..registry.errors import DeadlineExceeded, NotFound, RegistryError, Side, TransientError
from ..text import one_line

# Why a source is gone, as the metric image_backup_fallbacks_total{reason} names it.
NOT_FOUND, UNAVAILABLE = "not_found", "unavailable"


class Recorded(Protocol):
    """What a backup's record says (kube.records.ReadyBackup)."""

    @property
    def since(self) -> str: ...  # first used (RFC 3339), "" if not recorded
    @property
    def read_by(self) -> tuple[str, ...]: ...  # namespaces shown to read the source


class BackupRecordsReader(Protocol):
    async def record_of(self, backup_repo: str, digest: str) -> Recorded | None: ...


# How a warning says why, in a few words: the Event and the log carry the whole error.
WORDS = {NOT_FOUND: "source has no such image", UNAVAILABLE: "source unreachable"}


@dataclass(frozen=True, slots=True)
class FellBack:
    """A backup used in place of a source that is gone."""

    result: CopyResult
    reason: str  # NOT_FOUND or UNAVAILABLE
    error: str  # the source's failure, in words
    taken: str  # when the backup was first used (YYYY-MM-DD), "" if not recorded

    @property
    def running(self) -> str:
        taken = f" taken {self.taken}" if self.taken else ""
        return f"running from the backup of {self.result.source}{taken} ({self.result.digest})"

    @property
    def short(self) -> str:
        """For a warning, which has little room: why in a few words, and which backup."""
        return f"{WORDS[self.reason]}; {self.running}"

    @property
    def note(self) -> str:
        """For the Event: the source's failure as it was, and which backup."""
        return f"{self.error}; {self.running}"


class Withheld(ValueError):
    """A backup exists, but this namespace may not have it: the denial says so."""


def gone(error: object) -> str | None:
    """Why the source cannot be read (NOT_FOUND, UNAVAILABLE), or None if it is not gone."""
    if not isinstance(error, RegistryError) or error.side is not Side.SOURCE:
        return None
    if isinstance(error, NotFound):
        return NOT_FOUND
    if isinstance(error, TransientError | DeadlineExceeded):
        return UNAVAILABLE
    return None


class Fallback:
    def __init__(
        self,
        engine: CopyEngine,
        *,
        public: Collection[str],
        records: BackupRecordsReader | None,
    ) -> None:
        """`public`: source registries anyone may pull from; `records` None: none to ask
        (outside a cluster), so only public sources' backups are given."""
        self._engine = engine
        self._public = frozenset(public)
        self._records = records

    async def backup_for(
        self,
        source: Reference,
        error: RegistryError,
        reason: str,
        *,
        namespace: str,
        deadline: float,
    ) -> FellBack | Withheld | None:
        """The backup to run from, why it is withheld, or None if there is none (or the
        backup registry cannot say: the original error then stands)."""
        try:
            found = await self._engine.backup_of(source, deadline=deadline)
        except RegistryError:
            return None
        if found is None:
            return None
        record = None
        if self._records is not None:
            try:
                record = await self._records.record_of(str(found.backup_repository), found.digest)
            except Exception:  # the records are a bonus: without them only public sources
                record = None
        why = one_line(error)
        if source.registry not in self._public and (
            record is None or namespace not in record.read_by
        ):
            return Withheld(
                f"{why}; a backup exists ({found.backup}) but namespace {namespace} was never"
                f" shown to read {source.registry}, so it is not used (a registry anyone may"
                " pull from can be marked public: true)"
            )
        taken = record.since[:10] if record is not None else ""
        return FellBack(found, reason, why, taken)
