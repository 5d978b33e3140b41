"""Building the product's configuration and engine against the test registries."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

from webhook import config as config_module
from webhook.config import Config
from webhook.engine import open_engine
from webhook.registry.copy import CopyEngine


class Endpointish(Protocol):
    @property
    def host(self) -> str: ...
    @property
    def ca_file(self) -> str | None: ...


class WithLogins(Endpointish, Protocol):
    @property
    def docker_config(self) -> str: ...


def plain(registry: Endpointish) -> dict[str, Any]:
    """A per-registry section for a plain-HTTP registry (or a test proxy)."""
    return {"host": registry.host, "insecure": True}


def tls(registry: Endpointish) -> dict[str, Any]:
    return {"host": registry.host, "caFile": registry.ca_file}


def make_config(
    backup: Endpointish,
    *,
    sources: Sequence[dict[str, Any]] = (),
    docker_config: str | None = None,
    prefix: str = "backup",
    path_style: str = "nested",
    backup_insecure: bool | None = None,
    **copy_settings: Any,
) -> Config:
    section: dict[str, Any] = {"host": backup.host, "prefix": prefix, "pathStyle": path_style}
    if backup_insecure or (backup_insecure is None and backup.ca_file is None):
        section["insecure"] = True
    elif backup.ca_file:
        section["caFile"] = backup.ca_file
    document: dict[str, Any] = {"backupRegistry": section, "registries": list(sources)}
    if docker_config:
        document["credentials"] = {"dockerConfig": docker_config}
    if copy_settings:
        document["copy"] = copy_settings
    return config_module.parse(document, "test")


def plain_to(source: Endpointish, backup: WithLogins) -> Config:
    """The common case: a plain-HTTP source, a backup registry with its own credentials."""
    return make_config(backup, sources=[plain(source)], docker_config=backup.docker_config)


@asynccontextmanager
async def engine_for(config: Config) -> AsyncIterator[CopyEngine]:
    async with open_engine(config) as engine:
        yield engine


def deadline(seconds: float = 60) -> float:
    return time.monotonic() + seconds
