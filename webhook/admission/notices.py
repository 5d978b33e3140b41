"""Kubernetes Events about an admission: what was backed up, and what could not be."""

from __future__ import annotations

from typing import Protocol

from ..kube.events import InvolvedObject
from ..text import quoted
from .decisions import Outcome
from .review import AdmissionRequest, AdmissionResponse


class Notices(Protocol):
    def emit(
        self, involved: InvolvedObject, reason: str, message: str, *, warning: bool = False
    ) -> None:
        """Queue a Kubernetes Event; must not block."""
        ...


def notify(
    notices: Notices,
    request: AdmissionRequest,
    answer: AdmissionResponse,
    outcome: Outcome,
) -> None:
    """Events on the object (or, for a Pod named by its controller, on the controller):
    what was backed up, what runs from a backup because its source is gone, and what could
    not be backed up."""
    involved, about = _involved(request)
    if involved is None:
        return
    if outcome.backed_up:
        notices.emit(involved, "ImageBackedUp", about + "; ".join(outcome.backed_up))
    if outcome.fell_back:
        message = about + "; ".join(outcome.fell_back)
        notices.emit(involved, "ImageBackupFallback", message, warning=True)
    if outcome.failures:
        message = answer.message or (
            "admitted without a backup (onFailure: allow): " + "; ".join(outcome.failures)
        )
        notices.emit(involved, "ImageBackupFailed", about + message, warning=True)


def _involved(request: AdmissionRequest) -> tuple[InvolvedObject | None, str]:
    """Whom an Event is about, and how its message starts. A CREATE has no uid yet: the
    Event names the object by kind and name. A Pod named by the API server (generateName)
    has no name either: the Event goes on the controller that creates it."""
    obj, group = request.object, request.group
    metadata = obj.metadata if obj is not None else None
    name = request.name or (metadata.name if metadata is not None else None) or ""
    if name:
        api_version = f"{group}/v1" if group else "v1"
        uid = (metadata.uid if metadata is not None else None) or ""
        return InvolvedObject(api_version, request.kind, request.namespace, name, uid), ""
    owners = metadata.ownerReferences if metadata is not None else None
    for owner in owners or ():
        if owner.controller and owner.apiVersion and owner.kind and owner.name:
            involved = InvolvedObject(
                owner.apiVersion, owner.kind, request.namespace, owner.name, owner.uid or ""
            )
            prefix = metadata.generateName if metadata is not None else None
            return involved, f"{request.kind} {quoted(prefix or '')}*: "
    return None, ""
