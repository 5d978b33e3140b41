"""`image-backup status`: what runs unprotected, at a glance.

For every container of every workload in the opted-in namespaces, one row: ``protected``
(it runs from a backup), ``backed-up`` (a backup of its image exists; the workload has not
been updated to it since), ``unprotected`` (no backup is recorded), or ``excluded``, with
the backup and the day it was first used. It reads the cluster and the ImageBackup records
only: no registry is asked and nothing is copied, so it is quick and safe to run with read
access. What it cannot see: a backup made without records (a webhook outside the cluster,
or records that could not be written) counts as missing until a backfill pass records it.

With ``--imagestream NAMESPACE/NAME[:TAG]`` it lists instead which images an OpenShift
ImageStream's tags pointed at and since when, each with its backup: the records' own
history of the stream, found by its label.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass

import orjson

from .admission.exclusion import Exclusions
from .admission.plan import Action, Planner
from .admission.pods import stored_images
from .admission.stored import planned
from .admission.streams import StreamReader
from .kube.records import ReadyBackup, StreamBackup
from .kube.workloads import Workloads
from .reference import Reference

PROTECTED, BACKED_UP, UNPROTECTED, EXCLUDED = "protected", "backed-up", "unprotected", "excluded"
STATES = (PROTECTED, BACKED_UP, UNPROTECTED, EXCLUDED)
COLUMNS = ("NAMESPACE", "WORKLOAD", "CONTAINER", "IMAGE", "STATE", "BACKUP", "SINCE")
HISTORY_COLUMNS = ("TAG", "CREATED", "SOURCE", "BACKUP", "PHASE")


@dataclass(frozen=True, slots=True)
class Row:
    namespace: str
    workload: str  # Kind/name
    container: str
    image: str
    state: str
    backup: str = ""
    since: str = ""  # the day the backup was first used, YYYY-MM-DD


@dataclass(frozen=True, slots=True)
class HistoryRow:
    tag: str
    created: str  # when the tag began to point at the image (RFC 3339)
    source: str
    backup: str
    phase: str


class _Backups:
    """The Ready records, found by what workloads name: the source reference they were
    made from, or (for an image that is a backup) the backup itself."""

    def __init__(self, ready: Sequence[ReadyBackup]) -> None:
        self._by_source: dict[str, ReadyBackup] = {}
        self._by_backup: dict[tuple[str, str], ReadyBackup] = {}
        # Oldest first, so that for a tag backed up again after it moved, the newest wins.
        for backup in sorted(ready, key=lambda b: b.since):
            self._by_source[backup.source] = backup
            self._by_backup[(backup.backup_repo, backup.digest)] = backup

    def of_source(self, source: Reference) -> ReadyBackup | None:
        return self._by_source.get(str(source))

    def of_backup(self, image: Reference) -> ReadyBackup | None:
        if image.digest is None:
            return None
        return self._by_backup.get((f"{image.registry}/{image.repository}", image.digest))


async def rows(
    *,
    workloads: Workloads,
    ready: Sequence[ReadyBackup],
    planner: Planner,
    exclusions: Exclusions,
    namespaces: Collection[str] = (),
    streams: StreamReader | None = None,
) -> list[Row]:
    """`streams` None: no ImageStreams (not OpenShift)."""
    backups = _Backups(ready)
    found = []
    for namespace, mode in await workloads.namespaces(namespaces):
        async for workload in workloads.in_namespace(namespace, mode):
            kind = workload.kind.kind
            _, fields = stored_images(workload.kind.group, kind, workload.obj)
            excluded = exclusions.excludes(namespace, workload.annotations)
            name = f"{kind}/{workload.name}"
            plans = await planned(
                planner,
                streams,
                group=workload.kind.group,
                kind=kind,
                namespace=namespace,
                obj=workload.obj,
                fields=fields,
            )
            for plan in plans:
                state, record = UNPROTECTED, None
                if excluded or plan.action in (Action.EXCLUDED, Action.WAITING):
                    state = EXCLUDED
                elif plan.action is Action.ALREADY_BACKED_UP:
                    assert plan.source is not None
                    state, record = PROTECTED, backups.of_backup(plan.source)
                elif plan.source is not None:
                    record = backups.of_source(plan.source)
                    state = BACKED_UP if record is not None else UNPROTECTED
                backup = record.backup if record else ""
                if state == PROTECTED and not backup:
                    backup = plan.field.image
                since = record.since[:10] if record else ""
                field = plan.field
                found.append(
                    Row(namespace, name, field.container, field.image, state, backup, since)
                )
    return found


def summary(found: Sequence[Row]) -> str:
    counts = Counter(row.state for row in found)
    return f"{len(found)} containers: " + ", ".join(f"{counts[s]} {s}" for s in STATES)


def table(found: Sequence[Row]) -> str:
    cells = [
        (r.namespace, r.workload, r.container, r.image, r.state, r.backup or "-", r.since or "-")
        for r in found
    ]
    return "\n".join([_aligned([COLUMNS, *cells]), "", summary(found)])


def as_json(found: Sequence[Row]) -> str:
    counts = Counter(row.state for row in found)
    document = {"containers": [asdict(r) for r in found], "summary": {s: counts[s] for s in STATES}}
    return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode()


def history(backups: Sequence[StreamBackup], *, tag: str | None = None) -> list[HistoryRow]:
    """One row per history item of the stream's tags (or of `tag`), in the order given:
    newest first."""
    return [
        HistoryRow(b.item.tag, b.item.created, b.source, b.backup, b.phase)
        for b in backups
        if tag is None or b.item.tag == tag
    ]


def history_table(found: Sequence[HistoryRow]) -> str:
    cells = [(r.tag, r.created, r.source, r.backup, r.phase) for r in found]
    return _aligned([HISTORY_COLUMNS, *cells])


def history_json(found: Sequence[HistoryRow]) -> str:
    return orjson.dumps([asdict(r) for r in found], option=orjson.OPT_INDENT_2).decode()


def _aligned(cells: Sequence[Sequence[str]]) -> str:
    """Rows of columns, each as wide as its widest cell."""
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )
