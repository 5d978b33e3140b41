"""What became of each image a pass decided, and the one step that decides it.

The backfill pass (workloads' images) and the ImageStream pass (every item of every tag's
history) count the same outcomes and back an image up, or look for its backup, the same
way: both take it from here.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from .admission.plan import Action, ImagePlan, reason
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


async def decide(
    engine: CopyEngine,
    plan: ImagePlan,
    *,
    copy: bool,
    keyring: DockerConfig | None,
    copies: asyncio.Semaphore,
    seconds: float,
) -> tuple[str, str, CopyResult | None]:
    """(outcome, the backup or why it failed, the backup found or made) of one image:
    copied (`copy`, holding one of `copies`) or only looked for (read-only); a failure is
    returned, never raised. `seconds`: the copy's time limit."""
    if plan.action in (Action.EXCLUDED, Action.WAITING):  # waiting: an image trigger fills it
        return EXCLUDED, "", None
    if plan.action is Action.ALREADY_BACKED_UP:
        return PROTECTED, "", None
    if plan.action is Action.INVALID:
        return FAILED, plan.problem or "", None
    if plan.action is Action.REWRITE:
        assert plan.backup is not None
        return BACKED_UP, str(plan.backup.backup), plan.backup
    assert plan.source is not None
    deadline = time.monotonic() + seconds
    try:
        result: CopyResult | None
        if copy:
            async with copies:
                result = await engine.backup(plan.source, deadline=deadline, keyring=keyring)
        else:
            result = await engine.lookup(plan.source, deadline=deadline, keyring=keyring)
    except Exception as exc:  # every failure is the image's, reported: the pass goes on
        return FAILED, reason(exc), None
    if result is None:
        return WOULD_BACK_UP, "", None
    outcome = COPIED if copy and not result.already_backed_up else BACKED_UP
    return outcome, str(result.backup), result
