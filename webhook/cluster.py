"""What the webhook uses of the cluster it serves: workloads' pull credentials, Events on
the objects it admits, the ImageBackup records through which replicas share copies, and
the workloads that already run (for backfill and status).

Outside a cluster (no service account, no KUBECONFIG) the webhook still works alone:
every workload gets the configured registry logins, and nothing is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from .config import DEFAULT_NAMESPACE, Config, own_namespace
from .engine import configured_credentials
from .events import Throttle, event_message
from .kube.client import KubeError, api_client, available
from .kube.events import KubeEvents
from .kube.imagestreams import ImageStreams, StreamLookup
from .kube.lease import LeaderLease
from .kube.pullsecrets import PullCredentials
from .kube.records import BackupRecords
from .kube.workloads import Workloads
from .metrics import Metrics
from .registry.client import Repository
from .registry.copy import CopyEngine, Stored
from .registry.referrers import Carried

log = logging.getLogger("image_backup.cluster")

BACKFILL_LEASE = "image-backup-backfill"
# How long admissions trust an ImageStream read: a tag moved since is seen this much later.
STREAM_TTL = 10.0


@dataclass(frozen=True, slots=True)
class Cluster:
    pull: PullCredentials
    events: KubeEvents
    records: BackupRecords
    coordinator: Coordination
    workloads: Workloads
    backfill_lease: LeaderLease  # held by the one replica that makes backfill passes
    image_streams: ImageStreams
    stream_names: StreamLookup | None  # None where the API serves no ImageStreams


class Coordination:
    """The copy engine's coordinator, on ImageBackup records.

    Records are a way to save work, not a condition for it: when they cannot be written
    (the CRD is missing, the API server is unreachable) the copy goes ahead without them,
    and the log says why once a minute.
    """

    def __init__(self, records: BackupRecords, metrics: Metrics) -> None:
        self._records = records
        self._metrics = metrics
        self._made_by = metrics.coordinated
        self._warnings = Throttle()

    async def exclusive(
        self,
        source: str,
        backup: str,
        backup_repo: str,
        digest: str,
        copy: Callable[[], Awaitable[Stored]],
        *,
        deadline: float,
        present: Callable[[], Awaitable[bool]],
    ) -> Stored | None:
        stored: list[Stored] = []

        async def tracked() -> Stored:
            stored.append(await copy())
            return stored[0]

        try:
            result = await self._records.exclusive(
                source, backup, backup_repo, digest, tracked, deadline=deadline, present=present
            )
        except KubeError as exc:
            # A failed copy raises its own error, never this one: the records failed either
            # before the copy began, or after it finished (only its record is missing).
            self._warn(exc)
            if not stored:
                self._made_by.labels("uncoordinated").inc()
                return await copy()
            result = stored[0]
        self._made_by.labels("this_replica" if stored else "other_replica").inc()
        return result

    async def carried(self, backup_repo: Repository, digest: str, carried: Carried) -> None:
        """Count what a carrying of referrers did, and write it on the backup's record."""
        await self._metrics.carried(backup_repo, digest, carried)
        try:
            await self._records.note_referrers(str(backup_repo), digest, carried)
        except KubeError as exc:
            self._warn(exc)

    def _warn(self, exc: KubeError) -> None:
        if self._warnings.due():
            log.warning(
                event_message(
                    "image_backup_records_unavailable",
                    error=str(exc),
                    consequence="copying without coordination between replicas",
                )
            )


@asynccontextmanager
async def connect(config: Config, metrics: Metrics) -> AsyncIterator[Cluster | None]:
    if not available():
        log.info(
            event_message(
                "no_kubernetes_api",
                consequence="pull secrets are not read; only credentials.dockerConfig is used",
            )
        )
        yield None
        return
    holder = os.environ.get("POD_NAME") or socket.gethostname()
    settings = config.records
    namespace = own_namespace() or DEFAULT_NAMESPACE
    with api_client() as api:
        records = BackupRecords(
            api,
            namespace,
            holder,
            stale_after=settings.stale_after_seconds,
            heartbeat_every=settings.heartbeat_seconds,
        )
        events = KubeEvents(api, instance=holder)
        pull = PullCredentials(
            configured_credentials(config), api, ttl=config.credentials.pull_secrets_cache_seconds
        )
        touching = asyncio.create_task(records.run_touches(), name="imagebackup-last-used")
        try:
            coordination = Coordination(records, metrics)
            lease = LeaderLease(api, namespace=namespace, name=BACKFILL_LEASE, holder=holder)
            streams = ImageStreams(api)
            names = StreamLookup(streams, ttl=STREAM_TTL) if await _serves(streams) else None
            yield Cluster(
                pull, events, records, coordination, Workloads(api), lease, streams, names
            )
        finally:
            touching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await touching
            await records.close()
            await asyncio.to_thread(events.close)


async def _serves(streams: ImageStreams) -> bool:
    """Whether to read ImageStreams: where discovery cannot tell, they are read anyway (a
    cluster without them answers 404, which means no ImageStream names the image)."""
    try:
        return await streams.available()
    except KubeError as exc:
        log.warning(event_message("imagestreams_discovery_failed", error=str(exc)))
        return True


async def warm(cluster: Cluster, engine: CopyEngine) -> None:
    """Seed the known-blob index from the Ready records, so a restarted replica mounts
    blobs the backup registry holds instead of uploading them again."""
    try:
        ready = await cluster.records.ready()
    except KubeError as exc:
        log.warning(event_message("image_backup_records_unreadable", error=str(exc)))
        return
    for backup in ready:
        host, _, path = backup.backup_repo.partition("/")
        engine.know_blobs(Repository(host, path), backup.blobs)
    log.info(event_message("known_blobs_warmed", records=str(len(ready))))
