"""Prometheus metrics: one registry per webhook instance, so tests and replicas stay apart."""

from __future__ import annotations

from functools import lru_cache

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25)
_COPY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.admissions = Counter(
            "image_backup_admissions_total",
            "Admission reviews answered, by kind, operation and result.",
            ["mode", "kind", "operation", "result"],
            registry=self.registry,
        )
        self.admission_seconds = Histogram(
            "image_backup_admission_duration_seconds",
            "Time to answer an admission review.",
            ["mode"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter(
            "image_backup_images_total",
            "Images seen in admitted objects, by what was done with them.",
            ["outcome"],  # rewritten, excluded, already_backed_up, failed, allowed_on_failure
            registry=self.registry,
        )
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
        self.cache_hits = Counter(
            "image_backup_cache_hits_total",
            "Images answered from the result cache, without asking a registry.",
            registry=self.registry,
        )

    def children(self) -> Children:
        return Children(self)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Children:
    """Labelled series looked up once each: `labels()` costs more than the increment."""

    def __init__(self, metrics: Metrics) -> None:
        self.admission = lru_cache(maxsize=1024)(metrics.admissions.labels)
        self.latency = lru_cache(maxsize=8)(metrics.admission_seconds.labels)
        self.image = lru_cache(maxsize=64)(metrics.images.labels)
        self.cache_hit = metrics.cache_hits
