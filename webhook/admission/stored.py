"""What admission would plan for an object already stored: backfill and status ask it of
every workload, ImageStreams and image triggers included, so that they decide as an
admission of the same object would."""

from __future__ import annotations

from collections.abc import Sequence

from ..registry.credentials import DockerConfig
from .objects import KubeObject
from .plan import ImagePlan, Planner
from .pods import ImageField
from .streams import StreamReader, resolve, resolves_all_names
from .triggers import triggered


async def planned(
    planner: Planner,
    streams: StreamReader | None,
    *,
    group: str,
    kind: str,
    namespace: str,
    obj: KubeObject,
    fields: Sequence[ImageField],
    keyring: DockerConfig | None = None,
) -> list[ImagePlan]:
    """The plans of the object's images (`fields`), read-only: no re-check is started.
    `streams` None: no ImageStreams (not OpenShift)."""
    resolved = None
    if streams is not None:
        resolved = await resolve(
            streams,
            namespace=namespace,
            fields=fields,
            triggered=triggered(group, kind, obj, fields, namespace),
            resolve_all=resolves_all_names(group, kind, obj),
        )
    return planner.plan(fields, keyring, refresh=False, streams=resolved)
