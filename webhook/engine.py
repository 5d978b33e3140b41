"""Assemble a copy engine from the configuration."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from .config import Config
from .registry.client import RegistryClient
from .registry.copy import Coordinator, CopyEngine, Progress, ReferrerObserver
from .registry.credentials import DockerConfig
from .registry.referrers import Carrier
from .registry.transport import Transport


def configured_credentials(config: Config) -> DockerConfig:
    """The webhook's own registry logins (credentials.dockerConfig), or none."""
    path = config.credentials.docker_config
    return DockerConfig.load(path) if path else DockerConfig()


@asynccontextmanager
async def open_engine(
    config: Config,
    progress: Progress | None = None,
    coordinator: Coordinator | None = None,
    *,
    observer: ReferrerObserver | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[CopyEngine]:
    """`clock` times the lifetimes of remembered results; `observer` is told what each
    carrying of referrers did."""
    settings = config.copy_settings
    async with Transport(config.endpoints(), configured_credentials(config)) as transport:
        client = RegistryClient(transport)
        engine = CopyEngine(
            client,
            config.backup_registry.scheme(),
            concurrency=settings.concurrency,
            tag_ttl=settings.tag_cache_seconds,
            timeout=settings.timeout_seconds,
            progress=progress,
            coordinator=coordinator,
            referrers=(
                Carrier(client, artifact_types=settings.artifact_types)
                if settings.referrers
                else None
            ),
            observer=observer,
            clock=clock,
        )
        try:
            yield engine
        finally:
            await engine.close()
