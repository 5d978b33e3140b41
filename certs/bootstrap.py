"""The webhook's certificate, kept in one Secret that every replica shares.

The Secret (type ``kubernetes.io/tls``) holds ``tls.crt`` and ``tls.key`` (the serving pair),
``ca.crt`` and ``ca.key`` (the CA that signs it, kept so that a serving renewal needs no new
CA) and, once the CA has been replaced, ``ca-previous.crt``: the CA before it.

The ``caBundle`` of every webhook of the MutatingWebhookConfiguration is worked out from the
Secret alone: ``ca.crt``, followed by ``ca-previous.crt`` while that is still valid. Right
after a CA renewal, replicas that have not yet picked up the new pair still serve one signed
by the previous CA, and the API server must trust both. Deriving the bundle from the Secret
(rather than from whatever the bundle held before) makes every replica compute the same
one, so they never undo each other's writes, and the old CA drops out on the first check
after it expires.

Replicas race safely: the Secret is created once (409 AlreadyExists: another replica won,
its Secret is read and used) and replaced only with the resourceVersion it was read at (409
Conflict: it is read again and used if valid, else renewed again), a bounded number of
times. The webhook configuration is patched the same way, only when its bundle differs.
The synchronous client is used throughout: async callers run these in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
from kubernetes import client

from webhook.events import event_message
from webhook.kube.client import TIMEOUT_SECONDS, KubeError, translated

from . import SECRET_NAME
from .authority import (
    DEFAULT_VALIDITY,
    KeyPair,
    Validity,
    ca_renewal_reason,
    create_ca,
    issue_serving,
    serving_renewal_reason,
    still_valid,
)
from .files import write_pair

log = logging.getLogger("image_backup.certs")

ATTEMPTS = 5  # rounds of read-and-write lost to other replicas before giving up
T = TypeVar("T")


@dataclass(frozen=True)
class Names:
    """Where the webhook runs and where its certificate is kept."""

    namespace: str
    service: str
    webhook_configuration: str
    secret: str = SECRET_NAME


@dataclass(frozen=True)
class Stored:
    """What the Secret holds."""

    serving: KeyPair
    ca: KeyPair
    previous_ca: bytes | None = None

    def ca_bundle(self, now: datetime.datetime | None = None) -> bytes:
        if self.previous_ca is not None and still_valid(self.previous_ca, now):
            return self.ca.cert + self.previous_ca
        return self.ca.cert


def ensure_certificate(
    api: client.ApiClient, names: Names, validity: Validity = DEFAULT_VALIDITY
) -> Stored:
    """Make the Secret hold a valid pair and the webhook configuration trust its CA.

    Raises KubeError (one line) when the API server cannot be reached, refuses, or other
    replicas keep winning.
    """
    stored = _settle_secret(client.CoreV1Api(api), names, validity)
    _publish_ca_bundle(client.AdmissionregistrationV1Api(api), names, stored.ca_bundle())
    return stored


def ensure_files(
    api: client.ApiClient,
    names: Names,
    cert_file: Path,
    key_file: Path,
    validity: Validity = DEFAULT_VALIDITY,
) -> bool:
    """ensure_certificate, then the serving pair into these files; True if they changed.

    The files come last, so a replica serves a new pair only once the API server trusts it.
    """
    return write_pair(ensure_certificate(api, names, validity).serving, cert_file, key_file)


async def keep_files_current(
    api: client.ApiClient,
    names: Names,
    cert_file: Path,
    key_file: Path,
    *,
    interval: float,
    validity: Validity = DEFAULT_VALIDITY,
) -> None:
    """ensure_files every ``interval`` seconds until cancelled; a failure is logged and the
    next round tries again (the pair being served stays valid for weeks)."""
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(ensure_files, api, names, cert_file, key_file, validity)
        except (KubeError, OSError) as exc:
            log.warning(event_message("certificate_check_failed", error=str(exc)))
        except Exception as exc:  # a bug: keep serving, and keep checking
            log.exception(event_message("certificate_check_failed", error=type(exc).__name__))


def _settle_secret(core: client.CoreV1Api, names: Names, validity: Validity) -> Stored:
    where = f"Secret {names.namespace}/{names.secret}"
    for _ in range(ATTEMPTS):
        secret = _call(core.api_client, f"reading {where}", _read_secret, core, names)
        current = None if secret is None else _stored(secret.data or {})
        renewed, reason = _renewal(current, names, validity)
        if renewed is None:
            assert current is not None
            return current
        try:
            if secret is None:
                _call(core.api_client, f"creating {where}", _create_secret, core, names, renewed)
                log.info(event_message("certificate_created", secret=where))
            else:
                secret.data = _secret_data(renewed)
                _call(core.api_client, f"replacing {where}", _replace_secret, core, names, secret)
                log.info(event_message("certificate_renewed", secret=where, reason=reason))
            return renewed
        except KubeError as exc:
            if exc.status != 409:
                raise
            # Another replica wrote it first: the next round reads and judges theirs.
    raise KubeError(f"replacing {where}: still conflicting after {ATTEMPTS} attempts")


def _renewal(current: Stored | None, names: Names, validity: Validity) -> tuple[Stored | None, str]:
    """The contents to write instead of ``current`` and why, or (None, "") to keep it."""
    if current is None:
        ca = create_ca(validity)
        return _with_serving(ca, None, names, validity), "no usable certificate stored"
    reason = ca_renewal_reason(current.ca, validity)
    if reason is not None:
        previous = current.ca.cert if still_valid(current.ca.cert) else None
        return _with_serving(create_ca(validity), previous, names, validity), reason
    reason = serving_renewal_reason(
        current.serving, current.ca.cert, names.service, names.namespace, validity
    )
    if reason is not None:
        return _with_serving(current.ca, current.previous_ca, names, validity), reason
    return None, ""


def _with_serving(
    ca: KeyPair, previous_ca: bytes | None, names: Names, validity: Validity
) -> Stored:
    return Stored(issue_serving(ca, names.service, names.namespace, validity), ca, previous_ca)


def _publish_ca_bundle(
    admission: client.AdmissionregistrationV1Api, names: Names, bundle: bytes
) -> None:
    """Set the caBundle of every webhook, patching only when one differs."""
    name = names.webhook_configuration
    where = f"MutatingWebhookConfiguration {name}"
    encoded = base64.b64encode(bundle).decode()
    for _ in range(ATTEMPTS):
        configuration = _call(
            admission.api_client, f"reading {where}", _read_webhook_configuration, admission, name
        )
        operations: list[dict[str, Any]] = [
            {"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": encoded}
            for index, webhook in enumerate(configuration.get("webhooks") or [])
            if (webhook.get("clientConfig") or {}).get("caBundle") != encoded
        ]
        if not operations:
            return
        # The resourceVersion read is a precondition: a stale one is a 409 Conflict.
        version = configuration["metadata"]["resourceVersion"]
        precondition = {"op": "replace", "path": "/metadata/resourceVersion", "value": version}
        try:
            _call(
                admission.api_client,
                f"patching {where}",
                admission.patch_mutating_webhook_configuration,
                name,
                [precondition, *operations],
                _request_timeout=TIMEOUT_SECONDS,
            )
        except KubeError as exc:
            if exc.status != 409:
                raise
            continue
        log.info(event_message("ca_bundle_updated", webhookConfiguration=name))
        return
    raise KubeError(f"patching {where}: still conflicting after {ATTEMPTS} attempts")


def _read_secret(core: client.CoreV1Api, names: Names) -> client.V1Secret | None:
    try:
        secret: client.V1Secret = core.read_namespaced_secret(
            names.secret, names.namespace, _request_timeout=TIMEOUT_SECONDS
        )
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return secret


def _create_secret(core: client.CoreV1Api, names: Names, stored: Stored) -> None:
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=names.secret, namespace=names.namespace),
        type="kubernetes.io/tls",
        data=_secret_data(stored),
    )
    core.create_namespaced_secret(names.namespace, body, _request_timeout=TIMEOUT_SECONDS)


def _replace_secret(core: client.CoreV1Api, names: Names, secret: client.V1Secret) -> None:
    """PUT with the resourceVersion the Secret was read at (it is in ``secret.metadata``)."""
    core.replace_namespaced_secret(
        names.secret, names.namespace, secret, _request_timeout=TIMEOUT_SECONDS
    )


def _read_webhook_configuration(
    admission: client.AdmissionregistrationV1Api, name: str
) -> dict[str, Any]:
    # As JSON rather than the client's model, which refuses fields it does not know: only
    # the resourceVersion and the caBundles are needed.
    response: Any = admission.read_mutating_webhook_configuration(
        name, _preload_content=False, _request_timeout=TIMEOUT_SECONDS
    )
    document: dict[str, Any] = orjson.loads(response.data)
    return document


def _call(
    api: client.ApiClient, doing: str, function: Callable[..., T], *args: Any, **kw: Any
) -> T:
    with translated(api, doing):
        return function(*args, **kw)


_KEYS = ("tls.crt", "tls.key", "ca.crt", "ca.key")


def _stored(data: Mapping[str, bytes | str]) -> Stored | None:
    """The Secret's contents, or None when a part is missing or not base64."""
    try:
        tls_crt, tls_key, ca_crt, ca_key = (base64.b64decode(data[k], validate=True) for k in _KEYS)
        previous = data.get("ca-previous.crt")
        previous_ca = base64.b64decode(previous, validate=True) if previous else None
    except (KeyError, ValueError):
        return None
    return Stored(KeyPair(tls_crt, tls_key), KeyPair(ca_crt, ca_key), previous_ca)


def _secret_data(stored: Stored) -> dict[str, bytes | str]:
    parts = [stored.serving.cert, stored.serving.key, stored.ca.cert, stored.ca.key]
    data: dict[str, bytes | str] = {
        key: base64.b64encode(part).decode() for key, part in zip(_KEYS, parts, strict=True)
    }
    if stored.previous_ca is not None:
        data["ca-previous.crt"] = base64.b64encode(stored.previous_ca).decode()
    return data
