"""What one admission decided, encoded once and reused, and its bookkeeping: the metrics
and the event line, taken in batches."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson

from ..events import FLUSH_SECONDS, EventLog
from ..metrics import Metrics
from ..text import QUOTE_CHARACTERS, quoted
from .pods import handles
from .review import AdmissionRequest, AdmissionResponse, encode_response

Mode = Literal["enforce", "audit"]
# What the API server sends; anything else is counted as "other", so that a client posting
# made-up kinds and operations cannot add a metric series per request.
OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})
OTHER = "other"


class BackupUses(Protocol):
    def used(self, backup_repo: str, digest: str, namespace: str | None = None) -> None:
        """Note that an admission in `namespace` used this backup, its credentials having
        read the source (a copy, or a backup remembered for those credentials); must not
        block."""
        ...


@dataclass(slots=True)
class Outcome:
    """What one review decided, for the response, the metrics and the log line."""

    rewrites: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    would_back_up: list[str] = field(default_factory=list)
    backed_up: list[str] = field(default_factory=list)  # images this admission backed up
    fell_back: list[str] = field(default_factory=list)  # run from a backup: the source is gone
    used: list[tuple[str, str]] = field(default_factory=list)  # backup repository, digest
    counts: dict[str, int] = field(default_factory=dict)
    cache_hits: int = 0
    # A decision made from memory alone can be reused until its earliest cached backup
    # goes stale; one that needed a registry cannot.
    from_memory: bool = True
    valid_until: float | None = None

    def count(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    def trust_until(self, moment: float | None) -> None:
        if moment is not None and (self.valid_until is None or moment < self.valid_until):
            self.valid_until = moment


@dataclass(frozen=True, slots=True, eq=False)  # identity: grouped per flush
class Summary:
    """What identical admissions share for the metrics and the event line, worked out once
    per decision, so that answering from memory adds only a uid, a name and two times."""

    tally_key: tuple[str, str, str, str]  # mode, kind, operation, decision
    namespace: str
    image_counts: tuple[tuple[str, int], ...]
    cache_hits: int
    audited: int  # images that enforce would back up (audit mode)
    backups: tuple[tuple[str, str], ...]  # backups the admission points at: repository, digest
    event_head: bytes  # the event line's shared fields: a JSON object without its closing brace

    @classmethod
    def of(cls, request: AdmissionRequest, mode: Mode, decision: str, outcome: Outcome) -> Summary:
        kind, operation = request.kind, request.operation
        fields: dict[str, Any] = {
            "event": "admission",
            "mode": mode,
            "kind": quoted(kind),
            "operation": quoted(operation),
            "images": outcome.counts,
            "decision": decision,
        }
        if request.dry_run:
            fields["dryRun"] = True
        if outcome.rewrites:
            fields["rewritten"] = {
                pointer: new for pointer, (_, _, new) in outcome.rewrites.items()
            }
        if outcome.failures:
            fields["failures"] = outcome.failures
        return cls(
            (
                mode,
                kind if handles(request.group, kind) else OTHER,
                operation if operation in OPERATIONS else OTHER,
                decision,
            ),
            request.namespace,
            tuple(outcome.counts.items()),
            outcome.cache_hits,
            outcome.counts.get("would_back_up", 0) if mode == "audit" else 0,
            tuple(outcome.used),
            orjson.dumps(fields)[:-1],
        )


# An admission waiting to be counted and logged: its summary, uid (encoded as JSON), object
# name, and when it started and was answered (time.perf_counter()). A plain tuple: one is
# made for every admission.
Record = tuple[Summary, bytes, str, float, float]


@dataclass(frozen=True, slots=True)
class Decision:
    """A whole answer, encoded around the request's uid; one made from memory is kept."""

    head: bytes
    tail: bytes
    summary: Summary

    @classmethod
    def of(
        cls, request: AdmissionRequest, mode: Mode, answer: AdmissionResponse, outcome: Outcome
    ) -> Decision:
        summary = Summary.of(request, mode, _decision_of(answer), outcome)
        head, tail = encode_response("", answer).split(b'"uid":""', 1)
        return cls(head + b'"uid":', tail, summary)


class Records:
    """Admissions noted for the metrics and the event log, which take them in batches."""

    def __init__(self, metrics: Metrics, events: EventLog | None, uses: BackupUses | None) -> None:
        self._events = events  # None: no event lines (offline review prints manifests instead)
        self._metrics = metrics
        self._uses = uses
        self._tally = metrics.tally
        self._tally.before_collect = self.flush
        self._unrecorded: list[Record] = []

    def record(
        self, summary: Summary, request: AdmissionRequest, uid: bytes, started: float
    ) -> None:
        """Note the admission for the metrics and the event log, which take it in batches.

        Bookkeeping done in one pass every FLUSH_SECONDS costs a fraction of the same
        work scattered between requests; a scrape first takes in what is pending.
        """
        # Only small values are kept until then: holding the parsed request would keep
        # every object of it alive into older garbage-collector generations.
        if len(uid) > QUOTE_CHARACTERS:  # the answer must echo it whole; the log need not
            uid = orjson.dumps(quoted(request.uid))
        record = (summary, uid, quoted(request.display_name), started, time.perf_counter())
        if not self._unrecorded:
            try:
                asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
            except RuntimeError:  # no event loop: nothing would record later
                self._unrecorded.append(record)
                self.flush()
                return
        self._unrecorded.append(record)

    def flush(self) -> None:
        records, self._unrecorded = self._unrecorded, []
        events = self._events
        wall_clock_offset = time.time() - time.perf_counter()
        durations: dict[Summary, list[float]] = {}
        for summary, uid, name, started, answered in records:
            elapsed = answered - started
            if summary in durations:
                durations[summary].append(elapsed)
            else:
                durations[summary] = [elapsed]
            if events is not None:
                events.write(summary.event_head, uid, name, elapsed, wall_clock_offset + answered)
        if events is not None:
            events.flush()
        tally, uses = self._tally, self._uses
        for summary, seconds in durations.items():
            if uses is not None:
                for backup_repo, digest in summary.backups:
                    uses.used(backup_repo, digest, summary.namespace)
            tally.admitted(summary.tally_key, seconds)
            for what, number in summary.image_counts:
                tally.images[what] = tally.images.get(what, 0) + number * len(seconds)
            tally.cache_hits += summary.cache_hits * len(seconds)
            if summary.audited:
                self._metrics.audit_images.labels(summary.namespace).inc(
                    summary.audited * len(seconds)
                )


def _decision_of(answer: AdmissionResponse) -> str:
    return "denied" if not answer.allowed else ("patched" if answer.patch else "allowed")
