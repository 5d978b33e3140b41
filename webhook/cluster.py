"""What the webhook uses of the cluster it serves: workloads' pull credentials.

Outside a cluster (no service account, no KUBECONFIG) the webhook still works: every
workload gets the configured registry logins.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from .config import Config
from .events import event_message
from .kube.client import api_client, available
from .kube.pullsecrets import PullCredentials
from .registry.credentials import DockerConfig

log = logging.getLogger("image_backup.cluster")


@dataclass(frozen=True, slots=True)
class Cluster:
    pull: PullCredentials


@asynccontextmanager
async def connect(config: Config, configured: DockerConfig) -> AsyncIterator[Cluster | None]:
    if not available():
        log.info(
            event_message(
                "no_kubernetes_api",
                consequence="pull secrets are not read; only credentials.dockerConfig is used",
            )
        )
        yield None
        return
    with api_client() as api:
        ttl = config.credentials.pull_secrets_cache_seconds
        yield Cluster(PullCredentials(configured, api, ttl=ttl))
