"""Prometheus metrics: one registry per webhook instance, so tests and replicas stay apart.

What happens once per admission is tallied in plain dictionaries and handed to
the Prometheus client when it is scraped (a custom collector): the client's own
counters take a lock on every increment, which costs more than reviewing a Pod
from memory does.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .registry.client import Repository
    from .registry.referrers import Carried

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25)
_COPY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)
_PASS_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)


class AdmissionTally(Collector):
    """Per-admission counts: admissions, their latency, images by outcome, cache hits."""

    def __init__(self) -> None:
        self.before_collect: Callable[[], None] = lambda: None  # takes in pending records
        self.admissions: dict[tuple[str, str, str, str], int] = {}  # mode, kind, operation, result
        self.images: dict[str, int] = {}  # outcome
        self.cache_hits = 0
        self._latency: dict[str, list[int]] = {}  # mode -> count per bucket (+Inf last)
        self._latency_sum: dict[str, float] = {}

    def admitted(self, key: tuple[str, str, str, str], durations: list[float]) -> None:
        """Admissions alike in `key`, one duration (seconds) each."""
        self.admissions[key] = self.admissions.get(key, 0) + len(durations)
        mode = key[0]
        buckets = self._latency.get(mode)
        if buckets is None:
            buckets = self._latency[mode] = [0] * (len(LATENCY_BUCKETS) + 1)
            self._latency_sum[mode] = 0.0
        for seconds in durations:
            buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._latency_sum[mode] += sum(durations)

    def collect(self) -> Iterator[Metric]:
        self.before_collect()
        admissions = CounterMetricFamily(
            "image_backup_admissions",
            "Admission reviews answered, by kind, operation and result.",
            labels=["mode", "kind", "operation", "result"],
        )
        for labels, count in self.admissions.items():
            admissions.add_metric(list(labels), count)
        yield admissions
        latency = HistogramMetricFamily(
            "image_backup_admission_duration_seconds",
            "Time to answer an admission review.",
            labels=["mode"],
        )
        for mode, counts in self._latency.items():
            cumulative, running = [], 0
            for bound, count in zip([*map(str, LATENCY_BUCKETS), "+Inf"], counts, strict=True):
                running += count
                cumulative.append((bound, running))
            latency.add_metric([mode], cumulative, self._latency_sum[mode])
        yield latency
        images = CounterMetricFamily(
            "image_backup_images",
            "Images seen in admitted objects, by what was done with them.",
            labels=["outcome"],
        )
        for outcome, count in self.images.items():
            images.add_metric([outcome], count)
        yield images
        yield CounterMetricFamily(
            "image_backup_cache_hits",
            "Images answered from the result cache, without asking a registry.",
            value=self.cache_hits,
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.tally = AdmissionTally()
        self.registry.register(self.tally)
        self.audit_images = Counter(
            "image_backup_audit_would_back_up_total",
            "Images that enforce mode would back up, by namespace (audit mode).",
            ["namespace"],
            registry=self.registry,
        )
        self.copies = Counter(
            "image_backup_copies_total",
            "Image copies into the backup registry, by result.",
            ["result"],  # copied, already_present, failed
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "image_backup_fallbacks",
            "Images admitted from their backup because the source could not be read, by why.",
            ["reason"],  # not_found, unavailable
            registry=self.registry,
        )
        self.copied_bytes = Counter(
            "image_backup_copied_bytes_total",
            "Bytes uploaded into the backup registry.",
            registry=self.registry,
        )
        self.copy_seconds = Histogram(
            "image_backup_copy_duration_seconds",
            "Time to copy one image into the backup registry.",
            buckets=_COPY_BUCKETS,
            registry=self.registry,
        )

        self.workload_images = Gauge(
            "image_backup_workload_images",
            "Images of the workloads in opted-in namespaces, by state, as the last backfill "
            "pass found them.",
            ["namespace", "state"],  # protected, backed_up, unprotected, excluded
            registry=self.registry,
        )
        self.backfill_passes = Counter(
            "image_backup_backfill_passes_total",
            "Backfill passes, by result (completed: every workload decided; failed: the "
            "cluster could not be read).",
            ["result"],
            registry=self.registry,
        )
        self.backfill_seconds = Histogram(
            "image_backup_backfill_duration_seconds",
            "Time one backfill pass took.",
            buckets=_PASS_BUCKETS,
            registry=self.registry,
        )
        self.backfill_rewrites = Counter(
            "image_backup_backfill_rewrites_total",
            "Workloads a backfill pass updated to run from their backups.",
            registry=self.registry,
        )
        self.stream_items = Counter(
            "image_backup_imagestream_items_total",
            "ImageStream history items decided, by outcome (copied, backed_up, would_back_up, "
            "protected, excluded, failed): by each backfill pass, and by the ImageStream watch "
            "for the items it had not decided yet.",
            ["outcome"],
            registry=self.registry,
        )
        self.referrers = Counter(
            "image_backup_referrers_total",
            "Artifacts referring to backed-up images (signatures, attestations, SBOMs), by "
            "what carrying them did: carried, present (held already), skipped (an artifact "
            "type copy.artifactTypes leaves out), failed (tried again later).",
            ["result"],
            registry=self.registry,
        )
        self.coordinated = Counter(
            "image_backup_coordinated_copies_total",
            "Copies needed by this replica, by who made them (ImageBackup records).",
            ["by"],  # this_replica, other_replica, uncoordinated (records unavailable)
            registry=self.registry,
        )

    def copied(self, seconds: float, *, already_present: bool, uploaded: int) -> None:
        """One copy an admission made."""
        self.copy_seconds.observe(seconds)
        if already_present:
            self.copies.labels("already_present").inc()
        else:
            self.copies.labels("copied").inc()
            self.copied_bytes.inc(uploaded)

    async def carried(self, backup_repo: Repository, digest: str, carried: Carried) -> None:
        """What one carrying of a backup's referrers did (the copy engine's observer)."""
        for artifact in carried.artifacts:
            self.referrers.labels(artifact.outcome.value).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
