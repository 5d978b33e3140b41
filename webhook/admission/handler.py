"""Answering one AdmissionReview: request -> plan -> copy -> patch -> response."""

from __future__ import annotations

import time
from typing import Protocol

import orjson

from ..config import Config
from ..events import EventLog
from ..metrics import Metrics
from ..registry.cache import ExpiringCache, footprint
from ..registry.copy import CopyEngine, CopyResult
from ..registry.credentials import DockerConfig
from ..text import quoted
from .audit import audit, through, waiting, warning
from .copies import Copies, Found
from .decisions import BackupUses, Decision, Mode, Outcome, Records
from .exclusion import Exclusions
from .fallback import BackupRecordsReader, FellBack
from .notices import Notices, notify
from .objects import ObjectMeta
from .patch import ORIGINAL_IMAGES, build_patch
from .plan import Action, ImagePlan, Planner, not_backed_up, reason
from .pods import (
    EPHEMERAL_CONTAINERS,
    ImageField,
    handles,
    image_fields,
    pod_spec,
    pull_identity,
)
from .review import OPERATIONS_WITH_OBJECT, AdmissionRequest, AdmissionResponse, parse_review
from .streams import StreamReader, resolve, resolves_all_names
from .triggers import StreamTagName, triggered

# Whose pull credentials a pod gets: namespace, ServiceAccount, imagePullSecrets.
Identity = tuple[str, str, tuple[str, ...]]


class PullKeyrings(Protocol):
    async def keyring(
        self, namespace: str, service_account: str, secret_names: tuple[str, ...]
    ) -> tuple[DockerConfig, float | None]:
        """The pod's registry credentials, and until when (time.monotonic()) they are
        fresh; None: for good."""
        ...


# Answers kept: by count, and by bytes, since a workload's image names may be of any size.
ANSWER_CACHE_ENTRIES = 4096
ANSWER_CACHE_BYTES = 16 * 1024 * 1024


class Admission:
    def __init__(
        self,
        engine: CopyEngine,
        config: Config,
        metrics: Metrics,
        events: EventLog | None = None,
        *,
        pull: PullKeyrings | None = None,
        notices: Notices | None = None,
        uses: BackupUses | None = None,
        streams: StreamReader | None = None,
        recorded: BackupRecordsReader | None = None,
    ) -> None:
        """Without a cluster: `pull` None uses only the configured credentials, `notices`
        None sends no Kubernetes Events, `uses` None records no use of backups; `streams`
        None: no ImageStreams (not OpenShift), so no name is resolved through one; `recorded`
        None: no ImageBackup records to say who may run from a backup (only public sources'
        backups are given when their source is gone)."""
        self._engine = engine
        self._pull = pull
        self._streams = streams
        self._notices = notices
        self._metrics = metrics
        self._budget = config.admission_budget_seconds
        self._allow_on_failure = config.on_failure == "allow"
        self._exclusions = Exclusions(config.exclude.namespaces)
        self._planner = Planner(engine, config.exclude.images)
        self._copies = Copies(engine, config, metrics, recorded=recorded)
        self._records = Records(metrics, events, uses)
        # Controllers create Pod after Pod from one template: the same images, the same
        # answer. Keyed by everything the answer depends on besides the uid.
        self._decisions: ExpiringCache[tuple[object, ...], Decision] = ExpiringCache(
            ANSWER_CACHE_ENTRIES, max_bytes=ANSWER_CACHE_BYTES, weigh=footprint
        )

    def flush_records(self) -> None:
        """Count and log the admissions still pending (at shutdown)."""
        self._records.flush()

    async def backup_registry_answers(self) -> bool:
        return await self._engine.backup_registry_answers(deadline=time.monotonic() + 5)

    async def review(self, body: bytes, mode: Mode) -> bytes:
        started = time.perf_counter()
        request = parse_review(body)
        if request.operation not in OPERATIONS_WITH_OBJECT or not handles(
            request.group, request.kind
        ):
            return self._answered(request, mode, AdmissionResponse(), Outcome(), started)
        obj = request.object
        if obj is None:
            return self._unreadable(request, mode, started)
        spec = pod_spec(request.group, request.kind, obj)
        fields = (
            image_fields(request.group, request.kind, spec, sub_resource=request.sub_resource)
            if spec is not None
            else []
        )
        if spec is None or not fields:
            return self._answered(request, mode, AdmissionResponse(), Outcome(), started)
        metadata = obj.metadata
        annotations = metadata.annotations if metadata is not None else None
        if self._exclusions.excludes(request.namespace, annotations):
            outcome = Outcome(counts={Action.EXCLUDED.value: len(fields)})
            return self._answered(request, mode, AdmissionResponse(), outcome, started)
        recorded = annotations.get(ORIGINAL_IMAGES) if annotations is not None else None
        account, pull_secrets = pull_identity(spec)
        # On OpenShift, triggers and the resolve-names annotation change what images mean.
        openshift = (
            (
                triggered(request.group, request.kind, obj, fields, request.namespace),
                resolves_all_names(request.group, request.kind, obj),
            )
            if self._streams is not None
            else None
        )
        # Everything an answer made from memory depends on, the uid aside; the shape of
        # the metadata decides how the patch adds the annotation. The operation does not
        # change the answer, but the log line and the metrics name it.
        key = (
            mode,
            request.operation,
            request.sub_resource,
            request.dry_run,
            request.group,
            request.kind,
            request.namespace,
            metadata is not None,
            annotations is not None,
            recorded,
            account,
            pull_secrets,
            tuple(fields),
            None if openshift is None else (tuple(openshift[0].items()), openshift[1]),
        )
        known = self._decisions.get(key)
        if known is not None:
            return self._reply(known[0], request, started)
        outcome = Outcome()
        answer = await self._answer(
            request,
            mode,
            metadata,
            (request.namespace, account, pull_secrets),
            fields,
            outcome,
            openshift,
        )
        decision = Decision.of(request, mode, answer, outcome)
        if self._notices is not None and mode == "enforce" and not request.dry_run:
            notify(self._notices, request, answer, outcome)
        if outcome.from_memory:
            ttl = None if outcome.valid_until is None else outcome.valid_until - time.monotonic()
            self._decisions.put(key, decision, ttl)
        return self._reply(decision, request, started)

    def _answered(
        self,
        request: AdmissionRequest,
        mode: Mode,
        answer: AdmissionResponse,
        outcome: Outcome,
        started: float,
    ) -> bytes:
        return self._reply(Decision.of(request, mode, answer, outcome), request, started)

    def _reply(self, decision: Decision, request: AdmissionRequest, started: float) -> bytes:
        """The encoded answer with this request's uid spliced in, noted for the records."""
        uid = orjson.dumps(request.uid)
        self._records.record(decision.summary, request, uid, started)
        return decision.head + uid + decision.tail

    def _unreadable(self, request: AdmissionRequest, mode: Mode, started: float) -> bytes:
        """An object the API server would not have sent: its images cannot be known, so
        enforce denies it (unless onFailure is allow) and audit says so."""
        reason = f"cannot read this {request.kind}: {request.unreadable}"
        outcome = Outcome(failures=[reason])
        if mode == "audit" or self._allow_on_failure:
            answer = AdmissionResponse(warnings=[warning(f"image-backup: {reason}")])
        else:
            answer = AdmissionResponse(allowed=False, message=f"image-backup: {reason}")
        return self._answered(request, mode, answer, outcome, started)

    async def _answer(
        self,
        request: AdmissionRequest,
        mode: Mode,
        metadata: ObjectMeta | None,
        identity: Identity,
        fields: list[ImageField],
        outcome: Outcome,
        openshift: tuple[dict[str, StreamTagName], bool] | None,
    ) -> AdmissionResponse:
        deadline = time.monotonic() + self._budget
        keyring = None
        if self._pull is not None:
            keyring, fresh_until = await self._pull.keyring(*identity)
            outcome.trust_until(fresh_until)
        streams = None
        if self._streams is not None and openshift is not None:
            streams = await resolve(
                self._streams,
                namespace=request.namespace,
                fields=fields,
                triggered=openshift[0],
                resolve_all=openshift[1],
            )
            outcome.trust_until(streams.valid_until)
            outcome.from_memory = outcome.from_memory and not streams.uncertain
        # Only an admission that may copy may start a re-check, which may copy a moved tag.
        refresh = mode == "enforce" and not request.dry_run
        plans = self._planner.plan(fields, keyring, refresh=refresh, streams=streams)
        if mode == "audit":
            return audit(plans, outcome, self._engine.target_for)
        results: dict[str, Found] = {}
        if any(plan.action is Action.BACK_UP for plan in plans):
            outcome.from_memory = False
            results = await self._copies.backups(
                plans,
                dry_run=request.dry_run,
                keyring=keyring,
                deadline=deadline,
                namespace=request.namespace,
            )
        for plan in plans:
            self._settle(plan, results.get(plan.field.pointer), request.dry_run, outcome)
        return self._response(
            metadata, outcome, record_originals=request.sub_resource != EPHEMERAL_CONTAINERS
        )

    def _settle(
        self,
        plan: ImagePlan,
        result: Found,
        dry_run: bool,
        outcome: Outcome,
    ) -> None:
        # Both come from the workload: any length.
        image, container = quoted(plan.field.image), quoted(plan.field.container)
        if plan.action in (Action.EXCLUDED, Action.ALREADY_BACKED_UP):
            outcome.count(plan.action.value)
            return
        if plan.action is Action.WAITING:
            outcome.warnings.append(waiting(plan))
            outcome.count(plan.action.value)
            return
        if plan.action is Action.REWRITE:
            assert plan.backup is not None
            outcome.cache_hits += 1
            outcome.trust_until(plan.valid_until)
            result = plan.backup
        elif plan.action is Action.INVALID:
            result = ValueError(plan.problem)
        if isinstance(result, FellBack):
            backup = str(result.result.backup)
            outcome.rewrites[plan.field.pointer] = (container, image, backup)
            outcome.warnings.append(warning(f"container {container!r}: {result.short}"))
            outcome.fell_back.append(f"{image}: {result.note}")
            outcome.count("fallback")
            if not dry_run:
                self._metrics.fallbacks.labels(result.reason).inc()
        elif isinstance(result, CopyResult):
            backup = str(result.backup)
            outcome.used.append((str(result.backup_repository), result.digest))
            if plan.action is Action.BACK_UP and not dry_run:
                outcome.backed_up.append(f"{image} as {backup}")
            outcome.rewrites[plan.field.pointer] = (container, image, backup)
            outcome.warnings.append(
                warning(f"container {container!r}: {image}{through(plan)} is now {backup}")
            )
            outcome.count("rewritten")
        elif dry_run and result is None:
            outcome.warnings.append(
                warning(f"container {container!r}: {image} would be backed up on a real apply")
            )
            outcome.count("would_back_up")
        else:
            outcome.failures.append(f"{image}: {reason(result)}")
            outcome.count("failed")

    def _response(
        self, metadata: ObjectMeta | None, outcome: Outcome, *, record_originals: bool
    ) -> AdmissionResponse:
        if outcome.failures and not self._allow_on_failure:
            return AdmissionResponse(allowed=False, message=not_backed_up(outcome.failures))
        warnings = outcome.warnings
        if outcome.failures:
            warnings = warnings + [
                warning(f"admitted without a backup (onFailure: allow): {failure}")
                for failure in outcome.failures
            ]
            outcome.counts["allowed_on_failure"] = len(outcome.failures)
        return AdmissionResponse(
            patch=build_patch(metadata, outcome.rewrites, record_originals=record_originals)
            or None,
            warnings=warnings or None,
        )
