"""A workload's pull credentials, as kubelet would present them to a registry.

Kubelet pulls with the pod's imagePullSecrets and its ServiceAccount's; the webhook
copies with the same, followed by its own configured login. Reading them costs API
calls, so they are remembered for a short while and, once stale, refreshed in the
background while the stale ones still answer: admissions never wait on the API server
for a workload seen recently.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import Callable

from kubernetes import client

from ..events import event_message
from ..registry.cache import ExpiringCache, footprint
from ..registry.credentials import CredentialsError, DockerConfig
from ..registry.flight import SingleFlight
from .client import KubeError, translated

log = logging.getLogger("image_backup.pullsecrets")

# Secret types kubelet reads pull credentials from, and the key each keeps them under.
_DOCKER_KEYS = {
    "kubernetes.io/dockerconfigjson": ".dockerconfigjson",
    "kubernetes.io/dockercfg": ".dockercfg",
}
FORBIDDEN_PAUSE = 600.0  # after a 403, use only the configured login for this long
# Per read: an admission waits for these the first time a workload identity is seen, and a
# slow API server must not use up its budget (it then gets the configured login).
READ_TIMEOUT_SECONDS = 5.0
# Workload identities remembered: a pull secret may hold any number of logins of any size.
MAX_IDENTITIES = 4096
CREDENTIAL_CACHE_BYTES = 16 << 20

Identity = tuple[str, str, tuple[str, ...]]  # namespace, ServiceAccount, imagePullSecrets


class PullCredentials:
    def __init__(
        self,
        configured: DockerConfig,
        api: client.ApiClient | None,
        *,
        ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`api` None: not in a cluster, so every workload gets the configured login."""
        self._configured = configured
        self._api = api
        self._ttl = ttl
        self._clock = clock
        # Unused identities are forgotten after ten lifetimes; then a request waits again.
        self._known: ExpiringCache[Identity, tuple[DockerConfig, float]] = ExpiringCache(
            MAX_IDENTITIES, clock, max_bytes=CREDENTIAL_CACHE_BYTES, weigh=footprint
        )
        self._reads: SingleFlight[Identity, DockerConfig] = SingleFlight()
        self._forbidden_until = -float("inf")

    async def keyring(
        self, namespace: str, service_account: str, secret_names: tuple[str, ...]
    ) -> tuple[DockerConfig, float | None]:
        """The credentials for a pod of that identity, and until when (time.monotonic())
        they are fresh; None: for good."""
        if self._api is None:
            return self._configured, None
        identity = (namespace, service_account, secret_names)
        now = self._clock()
        known = self._known.get(identity)
        if known is not None:
            keyring, read_at = known[0]
            if now - read_at < self._ttl:
                return keyring, read_at + self._ttl
            # A failed refresh keeps the stale credentials; _read logged why.
            self._reads.start(identity, lambda: self._read(identity))
            return keyring, now  # stale: good for this answer, not for remembering it
        keyring = await self._reads.run(identity, lambda: self._read(identity))
        return keyring, now + self._ttl

    async def _read(self, identity: Identity) -> DockerConfig:
        read_at = self._clock()
        keyring = await asyncio.to_thread(self._read_blocking, identity)
        if keyring is None:
            # Not readable now (the API server is slow or down): keep using what was read
            # before, and ask again next time rather than remember the failure.
            known = self._known.get(identity)
            return known[0][0] if known is not None else self._configured
        self._known.put(identity, (keyring, read_at), self._ttl * 10)
        return keyring

    def _read_blocking(self, identity: Identity) -> DockerConfig | None:
        """The identity's credentials; None when the API server could not say."""
        namespace, service_account, secret_names = identity
        if self._clock() < self._forbidden_until:
            return self._configured
        assert self._api is not None
        core = client.CoreV1Api(self._api)
        names = list(secret_names)
        try:
            names += [
                name
                for name in self._account_secrets(core, namespace, service_account)
                if name not in names
            ]
            keyring = DockerConfig()
            for name in names:
                keyring = keyring.then(self._secret(core, namespace, name))
        except KubeError as exc:
            if exc.status == 403:
                self._forbidden_until = self._clock() + FORBIDDEN_PAUSE
                log.warning(
                    event_message(
                        "pull_secrets_forbidden",
                        error=str(exc),
                        consequence="using only the configured credentials for 10 minutes",
                    )
                )
                return self._configured
            log.warning(event_message("pull_secrets_unreadable", error=str(exc)))
            return None
        return keyring.then(self._configured)

    def _account_secrets(self, core: client.CoreV1Api, namespace: str, name: str) -> list[str]:
        try:
            with translated(core.api_client, f"reading ServiceAccount {namespace}/{name}"):
                account = core.read_namespaced_service_account(
                    name, namespace, _request_timeout=READ_TIMEOUT_SECONDS
                )
        except KubeError as exc:
            if exc.status == 404:  # not created yet: the pod will wait for it anyway
                return []
            raise
        return [ref.name for ref in account.image_pull_secrets or () if ref.name]

    def _secret(self, core: client.CoreV1Api, namespace: str, name: str) -> DockerConfig:
        """One Secret's credentials; a missing or unusable one is skipped, as kubelet does."""
        where = f"pull secret {namespace}/{name}"
        try:
            with translated(core.api_client, f"reading {where}"):
                secret = core.read_namespaced_secret(
                    name, namespace, _request_timeout=READ_TIMEOUT_SECONDS
                )
        except KubeError as exc:
            if exc.status == 404:
                log.info(event_message("pull_secret_missing", secret=f"{namespace}/{name}"))
                return DockerConfig()
            raise
        key = _DOCKER_KEYS.get(secret.type or "")
        encoded = (secret.data or {}).get(key) if key else None
        if not encoded:
            return DockerConfig()
        try:
            raw = base64.b64decode(encoded, validate=True)
            return DockerConfig.parse(raw, where, legacy=key == ".dockercfg")
        except (binascii.Error, CredentialsError) as exc:
            problem = str(exc) if isinstance(exc, CredentialsError) else f"{where}: not base64"
            log.warning(event_message("pull_secret_unusable", error=problem))
            return DockerConfig()
