"""What became of each image a pass decided, and the one step that decides it.

The backfill pass (workloads' images) and the ImageStream pass (every item of every tag's
history) count the same outcomes and back an image up, or look for its backup, the same
way: both take it from here (Decider).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from .admission.exclusion import Exclusions
from .admission.plan import Action, ImagePlan, Planner, reason
from .config import Config
from .registry.copy import CopyEngine, CopyResult
from .registry.credentials import DockerConfig

COPIED = "copied"  # backed up by this pass
BACKED_UP = "backed_up"  # a backup exists; the workload does not run from it (yet)
WOULD_BACK_UP = "would_back_up"  # audit or dry run: enforce would copy it
PROTECTED = "protected"  # the workload runs from a backup already
EXCLUDED = "excluded"
FAILED = "failed"
OUTCOMES = (COPIED, BACKED_UP, WOULD_BACK_UP, PROTECTED, EXCLUDED, FAILED)


def counted(counts: Counter[str]) -> str:
    """``1 copied, 0 backed up, ...``: every outcome, in order, as summaries print them."""
    return ", ".join(f"{counts[outcome]} {outcome.replace('_', ' ')}" for outcome in OUTCOMES)


class Decider:
    """What a pass plans and copies with: the planner and exclusions admission uses, and the
    pass's copy slots. A pass is background work: it copies half of ``copy.concurrency``
    images at once at most, and the registries it shares with admissions keep room for theirs.
    """

    def __init__(self, engine: CopyEngine, config: Config) -> None:
        self.planner = Planner(engine, config.exclude.images)
        self.exclusions = Exclusions(config.exclude.namespaces)
        concurrency = config.copy_settings.concurrency
        # Objects decided at once: enough to keep the copies busy, few enough that a
        # namespace of thousands is never all in memory.
        self.in_flight = 2 * concurrency
        self._engine = engine
        self._copies = asyncio.Semaphore(max(1, concurrency // 2))
        self._seconds = config.copy_settings.timeout_seconds

    async def decide(
        self, plan: ImagePlan, *, copy: bool, keyring: DockerConfig | None
    ) -> tuple[str, str, CopyResult | None]:
        """(outcome, the backup or why it failed, the backup found or made) of one image:
        copied (`copy`) or only looked for (read-only); a failure is returned, never raised."""
        if plan.action in (Action.EXCLUDED, Action.WAITING):  # waiting: a trigger fills it
            return EXCLUDED, "", None
        if plan.action is Action.ALREADY_BACKED_UP:
            if copy and plan.source is not None:  # what refers to it, when due
                async with self._copies:
                    await self._engine.carry_referrers(
                        plan.source, deadline=time.monotonic() + self._seconds, keyring=keyring
                    )
            return PROTECTED, "", None
        if plan.action is Action.INVALID:
            return FAILED, plan.problem or "", None
        if plan.action is Action.REWRITE:
            assert plan.backup is not None
            return BACKED_UP, str(plan.backup.backup), plan.backup
        assert plan.source is not None
        deadline = time.monotonic() + self._seconds
        try:
            result: CopyResult | None
            if copy:
                async with self._copies:
                    result = await self._engine.backup(
                        plan.source, deadline=deadline, keyring=keyring
                    )
            else:
                result = await self._engine.lookup(plan.source, deadline=deadline, keyring=keyring)
        except Exception as exc:  # every failure is the image's, reported: the pass goes on
            return FAILED, reason(exc), None
        if result is None:
            return WOULD_BACK_UP, "", None
        outcome = COPIED if copy and not result.already_backed_up else BACKED_UP
        return outcome, str(result.backup), result
