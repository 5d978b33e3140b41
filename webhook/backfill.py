"""`image-backup backfill`, and the same pass in `serve`: back up what already runs.

Admission guards the moment a workload is written. A namespace labelled today still runs
yesterday's Deployments, and a CronJob made last month keeps starting Jobs, from images
nobody backed up. A pass walks every workload of every namespace labelled
``image-backup.io/mode`` and does for each image what an admission of it would:

* enforce: an image that is neither a backup nor excluded is backed up, with the copy
  engine (and through it the ImageBackup records) and the workload's own pull credentials
  (its imagePullSecrets and its ServiceAccount's). By default nothing else changes, so
  nothing rolls out: the backup exists, and the workload's next update is admitted from
  memory. With backfill.rewrite, top-level workloads (no controller above them) backed up
  in full are then updated through the API server, at most rewritesPerMinute a minute,
  each rewrite being a rollout: the update touches one annotation, and the webhook
  admitting it rewrites the images and records the originals as for any update;
* audit, and any dry run: nothing is copied or changed; the registries are asked
  (read-only) whether each backup exists, and the summary says what enforce would do.

What a pass guarantees: every image of every workload it lists is decided once; a copy that
fails is reported (an ``ImageBackupFailed`` Event on the workload, with the words a denial
uses, and the summary) and never stops the pass, and the next pass tries it again. Copies
run concurrently across images, half of ``copy.concurrency`` at most. In ``serve`` each pass
is a process of its own (``pass_in_a_process``), so it never holds up the event loop that
answers admissions. What it does not guarantee: a workload created while it runs may or may
not be listed (admission covers it).
"""

from __future__ import annotations

import asyncio
import logging
import time
import typing
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from .admission.decisions import BackupUses
from .admission.notices import Notices
from .admission.objects import KubeObject
from .admission.plan import Action, ImagePlan, not_backed_up
from .admission.pods import ImageField, pull_identity, stored_images
from .admission.stored import planned
from .admission.streams import StreamReader
from .config import Config
from .events import event_message
from .imagestreams import HistoryBackup
from .imagestreams import Summary as StreamSummary
from .kube.client import KubeError
from .kube.events import InvolvedObject
from .kube.pullsecrets import PullCredentials
from .kube.workloads import IMMUTABLE_TEMPLATES, Workload, Workloads
from .metrics import Metrics
from .outcomes import (
    BACKED_UP,
    COPIED,
    EXCLUDED,
    FAILED,
    OUTCOMES,
    PROTECTED,
    WOULD_BACK_UP,
    Decider,
    counted,
)
from .registry.copy import CopyEngine
from .registry.credentials import DockerConfig
from .text import quoted

log = logging.getLogger("image_backup.backfill")

# Set on a workload the pass rewrites: the update that makes the webhook rewrite it.
BACKFILLED = "image-backup.io/backfilled"


# How the metric image_backup_workload_images names each outcome.
STATES = {
    COPIED: "backed_up",
    BACKED_UP: "backed_up",
    WOULD_BACK_UP: "unprotected",
    FAILED: "unprotected",
    PROTECTED: "protected",
    EXCLUDED: "excluded",
}


@dataclass
class Summary:
    namespaces: int = 0
    workloads: int = 0
    images: Counter[str] = field(default_factory=Counter)
    by_namespace: dict[str, Counter[str]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # "NS/Kind/name: image: reason"
    rewritten: list[str] = field(default_factory=list)  # "NS/Kind/name"
    streams: StreamSummary | None = None  # the ImageStream pass, where the API has them

    def count(self, namespace: str, outcome: str, images: int = 1) -> None:
        self.images[outcome] += images
        self.by_namespace.setdefault(namespace, Counter())[outcome] += images

    def export(self, metrics: Metrics) -> None:
        """The metric image_backup_workload_images, as this pass found the workloads."""
        metrics.workload_images.clear()  # a namespace no longer opted in drops out
        for namespace, counts in self.by_namespace.items():
            states: Counter[str] = Counter()
            for outcome, images in counts.items():
                states[STATES[outcome]] += images
            for state in set(STATES.values()):
                metrics.workload_images.labels(namespace, state).set(states[state])

    def to_json(self) -> bytes:
        """What `image-backup backfill -o json` prints, and `serve` reads from it."""
        return msgspec.json.encode(self)

    @classmethod
    def from_json(cls, raw: bytes) -> Summary:
        return msgspec.json.decode(raw, type=cls, dec_hook=_counts)

    def every_failure(self) -> list[str]:
        """The workloads' images' and the ImageStream items' that failed."""
        return [*self.failures, *(self.streams.failures if self.streams is not None else ())]

    def lines(self) -> list[str]:
        return [
            f"{self.namespaces} namespaces, {self.workloads} workloads, "
            f"{sum(self.images.values())} images: {counted(self.images)}",
            *(f"rewritten: {workload}" for workload in self.rewritten),
            *(f"failed: {failure}" for failure in self.failures),
            *(self.streams.lines() if self.streams is not None else ()),
        ]


def _counts(kind: Any, value: Any) -> Counter[str]:
    """msgspec decodes no Counter by itself: the summary's counts, checked as counts."""
    if typing.get_origin(kind) is Counter:
        return Counter(msgspec.convert(value, dict[str, int]))
    raise NotImplementedError(kind)


class Backfill:
    def __init__(
        self,
        engine: CopyEngine,
        workloads: Workloads,
        config: Config,
        *,
        pull: PullCredentials | None = None,
        notices: Notices | None = None,
        streams: StreamReader | None = None,
        histories: HistoryBackup | None = None,
        uses: BackupUses | None = None,
    ) -> None:
        """`pull` None: every workload gets the configured credentials; `notices` None:
        no Kubernetes Events; `streams` None: no ImageStreams (not OpenShift);
        `histories`: also a pass over ImageStreams' histories, where the API has them;
        `uses`: told which namespaces' credentials read each backup's source."""
        self._uses = uses
        self._streams = streams
        self._workloads = workloads
        self._pull = pull
        self._notices = notices
        self._histories = histories
        self._decider = Decider(engine, config)
        settings = config.backfill
        self._rewrite = settings.rewrite
        self._rewrite_spacing = 60.0 / settings.rewrites_per_minute

    async def run(
        self,
        *,
        namespaces: Collection[str] = (),
        dry_run: bool = False,
        rewrite: bool | None = None,
        done: Callable[[Workload], None] | None = None,
    ) -> Summary:
        """One pass over the opted-in namespaces (`namespaces`: only these); `rewrite`
        overrides backfill.rewrite; `done` is called after each workload (a progress bar)."""
        summary = Summary()
        slots = asyncio.Semaphore(self._decider.in_flight)
        rewrites: list[Workload] = []
        rewriting = (self._rewrite if rewrite is None else rewrite) and not dry_run

        async def decide(workload: Workload) -> None:
            try:
                if await self._workload(workload, dry_run, summary) and rewriting:
                    rewrites.append(workload)
            finally:
                slots.release()
                if done is not None:
                    done(workload)

        async with asyncio.TaskGroup() as group:
            for namespace, mode in await self._workloads.namespaces(namespaces):
                summary.namespaces += 1
                async for workload in self._workloads.in_namespace(namespace, mode):
                    summary.workloads += 1
                    await slots.acquire()
                    group.create_task(decide(workload))
        for index, workload in enumerate(rewrites):
            if index:  # each rewrite rolls a workload out: at most rewritesPerMinute
                await asyncio.sleep(self._rewrite_spacing)
            await self._rewrite_one(workload, summary)
        if self._histories is not None and await self._histories.available():
            summary.streams = await self._histories.run(namespaces=namespaces, dry_run=dry_run)
        return summary

    async def _rewrite_one(self, workload: Workload, summary: Summary) -> None:
        """Update the workload through the API server, touching only an annotation of its
        own: the webhook, admitting the update, rewrites its images from the backups the
        pass made, and records the originals, exactly as for any other update."""
        where = workload.path
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            stored = await self._workloads.annotate(workload, BACKFILLED, stamp)
        except KubeError as exc:
            summary.failures.append(f"{where}: not rewritten: {exc}")
            return
        _, fields = stored_images(workload.kind.group, workload.kind.kind, stored)
        left = [
            plan.field.image
            for plan in await self._plans(workload, stored, fields, None)
            if plan.action not in (Action.ALREADY_BACKED_UP, Action.EXCLUDED, Action.WAITING)
        ]
        if left:
            summary.failures.append(
                f"{where}: not rewritten: the update was admitted with "
                + ", ".join(quoted(image) for image in left)
                + " unchanged (is the webhook registered for this namespace?)"
            )
            return
        summary.rewritten.append(where)

    async def _workload(self, workload: Workload, dry_run: bool, summary: Summary) -> bool:
        """Whether the workload is one to rewrite: its own (no controller), backed up in
        full, not yet running from its backups."""
        kind = workload.kind.kind
        spec, fields = stored_images(workload.kind.group, kind, workload.obj)
        if spec is None or not fields:
            return False
        if self._decider.exclusions.excludes(workload.namespace, workload.annotations):
            summary.count(workload.namespace, EXCLUDED, len(fields))
            return False
        keyring = None
        if self._pull is not None:
            keyring, _ = await self._pull.keyring(workload.namespace, *pull_identity(spec))
        copy = workload.mode == "enforce" and not dry_run
        plans = await self._plans(workload, workload.obj, fields, keyring)
        outcomes = await asyncio.gather(
            *(self._image(plan, copy, keyring, workload.namespace) for plan in plans)
        )
        copied, failed = [], []
        for plan, (outcome, detail) in zip(plans, outcomes, strict=True):
            summary.count(workload.namespace, outcome)
            image = quoted(plan.field.image)
            if outcome == COPIED:
                copied.append(f"{image} as {detail}")
            elif outcome == FAILED:
                failed.append(f"{image}: {detail}")
        summary.failures.extend(f"{workload.path}: {failure}" for failure in failed)
        if copy and self._notices is not None:
            involved = InvolvedObject(
                workload.kind.api_version, kind, workload.namespace, workload.name, workload.uid
            )
            if copied:
                self._notices.emit(involved, "ImageBackedUp", "; ".join(copied))
            if failed:
                message = not_backed_up(failed)
                self._notices.emit(involved, "ImageBackupFailed", message, warning=True)
        return (
            copy
            and not failed
            and not workload.controlled
            and kind not in IMMUTABLE_TEMPLATES
            and any(outcome in (COPIED, BACKED_UP) for outcome, _ in outcomes)
        )

    async def _plans(
        self,
        workload: Workload,
        obj: KubeObject,
        fields: list[ImageField],
        keyring: DockerConfig | None,
    ) -> list[ImagePlan]:
        return await planned(
            self._decider.planner,
            self._streams,
            group=workload.kind.group,
            kind=workload.kind.kind,
            namespace=workload.namespace,
            obj=obj,
            fields=fields,
            keyring=keyring,
        )

    async def _image(
        self, plan: ImagePlan, copy: bool, keyring: DockerConfig | None, namespace: str
    ) -> tuple[str, str]:
        """(outcome, the backup or why it failed) of one image."""
        outcome, detail, found = await self._decider.decide(plan, copy=copy, keyring=keyring)
        if found is not None and self._uses is not None:
            # Found with the workload's credentials: its namespace may run from the backup.
            self._uses.used(str(found.backup_repository), found.digest, namespace)
        return outcome, detail


async def keep_backfilling(
    run_pass: Callable[[], Awaitable[Summary]], metrics: Metrics, *, interval: float
) -> None:
    """`serve`'s loop: a pass at once, then one `interval` seconds after each ended, for as
    long as it runs (while this replica holds the backfill Lease). A pass that cannot read
    the cluster is logged and counted, and the next one comes as usual."""
    while True:
        started = time.monotonic()
        try:
            summary = await run_pass()
        except KubeError as exc:
            metrics.backfill_passes.labels("failed").inc()
            log.warning(event_message("backfill_failed", error=str(exc)))
        else:
            metrics.backfill_passes.labels("completed").inc()
            metrics.backfill_rewrites.inc(len(summary.rewritten))
            summary.export(metrics)
            for outcome, items in (summary.streams.items if summary.streams else {}).items():
                metrics.stream_items.labels(outcome).inc(items)
            counts = {outcome: str(summary.images[outcome]) for outcome in OUTCOMES}
            log.info(
                event_message(
                    "backfill_pass",
                    namespaces=str(summary.namespaces),
                    workloads=str(summary.workloads),
                    rewritten=str(len(summary.rewritten)),
                    seconds=f"{time.monotonic() - started:.1f}",
                    **counts,
                )
            )
            for failure in summary.every_failure():
                log.warning(event_message("backfill_image_failed", failure=failure))
        metrics.backfill_seconds.observe(time.monotonic() - started)
        await asyncio.sleep(interval)


async def pass_in_a_process(argv: Sequence[str], env: Mapping[str, str]) -> Summary:
    """One pass made by `image-backup backfill -o json` (`argv`), a process of its own: its
    copying, hashing and listing then never hold up the event loop that answers admissions,
    and the operating system shares the CPUs between the two. Cancelled, it ends the process."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, env=dict(env)
    )
    try:
        out, _ = await process.communicate()
    except asyncio.CancelledError:
        with suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    # Exit 1 with a summary: images failed, and the summary says which.
    if process.returncode in (0, 1) and out.strip():
        try:
            return Summary.from_json(out)
        except msgspec.ValidationError:
            pass
    raise KubeError(f"the backfill process exited with {process.returncode} and no summary")
