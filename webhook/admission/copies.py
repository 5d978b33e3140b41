"""The copies an admission waits for, and what stands in for those whose source is gone.

The copies of one admission start together and are waited for until its budget ends; a
copy still running then goes on in the background (held here, so it is not garbage
collected), and a retry of the same request finds it done. In a dry run only read-only
lookups run, and those still running at the end are cancelled: a dry run leaves nothing
behind. A source that cannot be read gets the backup the backup registry holds of it, where
its namespace may have it (fallback.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from ..config import Config
from ..metrics import Metrics
from ..reference import Reference
from ..registry.copy import STILL_COPYING, CopyEngine, CopyResult
from ..registry.credentials import DockerConfig
from ..registry.errors import RegistryError
from .fallback import BackupRecordsReader, Fallback, FellBack, gone
from .plan import Action, ImagePlan

# What became of an image that needed a copy: its backup, a failure, None in a dry run
# (no backup yet), or the backup run from because its source is gone.
Found = CopyResult | BaseException | None | FellBack
# A few requests to the backup registry for a fallback, even when the budget is spent (the
# API server waits 30 s, the budget is 25 s by default).
FALLBACK_SECONDS = 3.0


class Copies:
    def __init__(
        self,
        engine: CopyEngine,
        config: Config,
        metrics: Metrics,
        *,
        recorded: BackupRecordsReader | None = None,
    ) -> None:
        """`recorded` None: no ImageBackup records to say who may run from a backup."""
        self._engine = engine
        self._metrics = metrics
        self._copy_timeout = config.copy_settings.timeout_seconds
        self._fallback = (
            Fallback(engine, public=config.public_registries(), records=recorded)
            if config.fallback == "backup"
            else None
        )
        self._background: set[asyncio.Task[CopyResult | None]] = set()

    async def backups(
        self,
        plans: Sequence[ImagePlan],
        *,
        dry_run: bool,
        keyring: DockerConfig | None,
        deadline: float,
        namespace: str,
    ) -> dict[str, Found]:
        """By pointer, what became of each image planned for a copy (or, in a dry run, a
        read-only lookup)."""
        wanted = {p.field.pointer: p.source for p in plans if p.action is Action.BACK_UP}
        if not wanted:
            return {}
        tasks: dict[str, asyncio.Task[CopyResult | None]] = {}
        for pointer, source in wanted.items():
            assert source is not None
            work = (
                self._engine.lookup(source, deadline=deadline, keyring=keyring)
                if dry_run
                else self._copy(source, keyring)
            )
            task = asyncio.ensure_future(work)
            tasks[pointer] = task
            if not dry_run:
                self._background.add(task)
                task.add_done_callback(self._finished_in_background)
        await asyncio.wait(tasks.values(), timeout=max(0.0, deadline - time.monotonic()))
        results: dict[str, Found] = {}
        for pointer, task in tasks.items():
            if not task.done():
                if dry_run:
                    task.cancel()
                results[pointer] = TimeoutError(STILL_COPYING)
            elif task.cancelled():
                results[pointer] = TimeoutError(STILL_COPYING)
            else:
                results[pointer] = task.exception() or task.result()
        if self._fallback is not None:
            await self._fall_back(plans, results, namespace, deadline)
        return results

    async def _fall_back(
        self,
        plans: Sequence[ImagePlan],
        results: dict[str, Found],
        namespace: str,
        deadline: float,
    ) -> None:
        """In `results`, the backups to run from for the sources that are gone."""
        assert self._fallback is not None
        deadline = max(deadline, time.monotonic() + FALLBACK_SECONDS)
        lost = []
        for plan in plans:
            error = results.get(plan.field.pointer)
            why = gone(error)
            if why is not None:
                assert plan.source is not None and isinstance(error, RegistryError)
                lost.append((plan.field.pointer, plan.source, error, why))
        found = await asyncio.gather(
            *(
                self._fallback.backup_for(
                    source, error, why, namespace=namespace, deadline=deadline
                )
                for _, source, error, why in lost
            )
        )
        for (pointer, *_), backup in zip(lost, found, strict=True):
            if backup is not None:
                results[pointer] = backup

    def _finished_in_background(self, task: asyncio.Task[CopyResult | None]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # counted in the metrics already; the next request reports it

    async def _copy(self, source: Reference, keyring: DockerConfig | None) -> CopyResult:
        started = time.monotonic()
        try:
            result = await self._engine.backup(
                source, deadline=started + self._copy_timeout, keyring=keyring
            )
        except Exception:
            self._metrics.copies.labels("failed").inc()
            raise
        self._metrics.copied(
            time.monotonic() - started,
            already_present=result.already_backed_up,
            uploaded=result.stats.bytes_uploaded,
        )
        return result
