"""What an admission says in words: the audit answer (what enforce would do, changing
nothing) and the warnings both modes give, cut to what the API server shows."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import orjson

from ..reference import Reference
from ..registry.client import Repository
from ..text import quoted
from .decisions import Outcome
from .plan import Action, ImagePlan
from .review import AdmissionResponse

# The API server prefixes audit annotation keys with the webhook's name and drops keys
# that are not qualified names; a webhook named image-backup.io yields the audit
# annotation "image-backup.io/would-back-up".
WOULD_BACK_UP = "would-back-up"
MAX_WARNING = 255


def audit(
    plans: Sequence[ImagePlan], outcome: Outcome, target_for: Callable[[Reference], Repository]
) -> AdmissionResponse:
    """What enforce would do, without copying or patching anything."""
    for plan in plans:
        if plan.action in (Action.BACK_UP, Action.REWRITE):
            assert plan.source is not None
            outcome.trust_until(plan.valid_until)
            if plan.action is Action.BACK_UP:
                outcome.from_memory = False  # its answer changes once the copy exists
            target = (
                str(plan.backup.backup)
                if plan.backup is not None
                else _unpinned(target_for(plan.source), plan.source)
            )
            outcome.would_back_up.append(plan.field.image)
            outcome.warnings.append(
                warning(f"would back up {quoted(plan.field.image)}{through(plan)} as {target}")
            )
            outcome.count("would_back_up")
        elif plan.action is Action.INVALID:
            outcome.warnings.append(
                warning(f"could not back up {quoted(plan.field.image)}: {plan.problem}")
            )
            outcome.count("failed")
        elif plan.action is Action.WAITING:
            outcome.warnings.append(waiting(plan))
            outcome.count(plan.action.value)
        else:
            outcome.count(plan.action.value)
    annotations = (
        {WOULD_BACK_UP: orjson.dumps(outcome.would_back_up).decode()}
        if outcome.would_back_up
        else None
    )
    return AdmissionResponse(warnings=outcome.warnings or None, audit_annotations=annotations)


def _unpinned(target: Repository, source: Reference) -> str:
    if source.digest:
        return f"{target}@{source.digest}"
    return f"{target}:{source.tag}"


def through(plan: ImagePlan) -> str:
    """How the image was found, when an ImageStream said what it is."""
    return f" (from {plan.via})" if plan.via else ""


def waiting(plan: ImagePlan) -> str:
    container = quoted(plan.field.container)
    return warning(
        f"container {container!r}: left for its trigger from {plan.via} to fill;"
        " the image it writes is backed up then"
    )


def warning(text: str) -> str:
    return text if len(text) <= MAX_WARNING else text[: MAX_WARNING - 1] + "…"
