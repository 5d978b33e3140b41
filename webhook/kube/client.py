"""A configured Kubernetes API client, and errors that are safe to print.

In a pod the service account is used; elsewhere KUBECONFIG (or ``~/.kube/config``), as
kubectl would. Error messages never carry tokens or headers: only the API server's own
``Status`` message, or why it could not be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import msgspec
import urllib3
from kubernetes import client, config

from ..text import one_line

TIMEOUT_SECONDS = 30.0  # per request: a hung connection must not hang start-up
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"  # RFC 6902: a list of operations, `test` included
PAGE_SIZE = 500  # kubectl's chunk size
RESTARTS = 3  # a list whose continue token expired is restarted at most this often
CONFLICT_RETRIES = 5  # a write made on what was read is made again after a 409, this often

P = TypeVar("P")


class KubeError(Exception):
    """A Kubernetes API call failed; the message is one line. ``status`` is the HTTP status
    (None when the API server was not reached) and ``reason`` the Status reason."""

    def __init__(self, message: str, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def available() -> bool:
    """Whether there is a Kubernetes API to talk to: in a pod, or with KUBECONFIG set."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST") or os.environ.get("KUBECONFIG"))


def api_client() -> client.ApiClient:
    """In-cluster when KUBERNETES_SERVICE_HOST is set, else from KUBECONFIG."""
    configuration = client.Configuration()
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        else:
            # The client reads KUBECONFIG once, when it is imported: name the file as it is now.
            config.load_kube_config(  # type: ignore[no-untyped-call]
                os.environ.get("KUBECONFIG", "~/.kube/config"),
                client_configuration=configuration,
            )
    except config.ConfigException as exc:
        raise KubeError(f"no Kubernetes configuration: {one_line(str(exc))}") from None
    return client.ApiClient(configuration)


@contextlib.contextmanager
def translated(api: client.ApiClient, doing: str) -> Iterator[None]:
    """Turn the client's exceptions into a KubeError saying what was being done."""
    try:
        yield
    except client.ApiException as exc:
        if not exc.status:  # TLS failed: the client reports it as status 0
            raise _unreachable(api, doing, str(exc.reason)) from None
        status = _status(exc.body)
        message = status.get("message") or exc.reason or "failed"
        raise KubeError(
            f"{doing}: {exc.status} {one_line(str(message))}",
            exc.status,
            str(status.get("reason") or ""),
        ) from None
    except urllib3.exceptions.HTTPError as exc:
        reason = getattr(exc, "reason", None) or exc
        raise _unreachable(api, doing, str(reason)) from None


def _unreachable(api: client.ApiClient, doing: str, reason: str) -> KubeError:
    # urllib3 names its connection objects ("<...HTTPSConnection object at 0x...>: ..."): noise.
    reason = one_line(re.sub(r"<[^>]*>:?\s*", "", reason))
    return KubeError(
        f"{doing}: cannot reach the Kubernetes API at {api.configuration.host}: {reason}"
    )


def _status(body: object) -> dict[str, object]:
    try:
        status = json.loads(body) if isinstance(body, str | bytes) else None
    except ValueError:
        return {}
    return status if isinstance(status, dict) else {}


async def pages(fetch: Callable[[str], Awaitable[tuple[P, str]]]) -> AsyncIterator[P]:
    """Every page of a list. `fetch(token)` gets the page after `token` ("" for the first)
    and the token of the next ("" after the last). A token the API server has forgotten
    (410, after compaction) restarts the list: items already seen come again, none is missed,
    which suits callers that may see an object twice."""
    restarts = 0
    token = ""
    while True:
        try:
            page, following = await fetch(token)
        except KubeError as exc:
            if exc.status != 410 or not token or restarts >= RESTARTS:
                raise
            restarts, token = restarts + 1, ""
            continue
        yield page
        if not following:
            return
        token = following


def raw_request(
    api: client.ApiClient,
    method: str,
    path: str,
    query: list[tuple[str, Any]],
    doing: str,
    body: object = None,
    *,
    timeout: float = TIMEOUT_SECONDS,
    content_type: str | None = None,
) -> bytes:
    """The raw answer to one request (a PATCH body is a merge patch unless `content_type`
    names another, e.g. JSON_PATCH; any other body is the object), for callers that decode
    it with msgspec: the client's models would build every field of every object. Blocking:
    run it on a thread."""
    with translated(api, doing):
        answer = open_request(
            api, method, path, query, body=body, timeout=timeout, content_type=content_type
        )
        data: bytes = answer.data
    return data


def open_request(
    api: client.ApiClient,
    method: str,
    path: str,
    query: list[tuple[str, Any]],
    *,
    body: object = None,
    timeout: float | tuple[float, float] = TIMEOUT_SECONDS,
    content_type: str | None = None,
) -> urllib3.BaseHTTPResponse:
    """The answer to one request, its body not read yet (a watch streams it); an answer that
    is not a success raises the client's ApiException. `timeout`: in all, or (to connect,
    between reads). Blocking; call it in `translated`."""
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type or (
            MERGE_PATCH if method == "PATCH" else "application/json"
        )
    method, url, headers, body, post = api.param_serialize(
        method,
        path,
        query_params=query,
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(method, url, headers, body, post, _request_timeout=timeout)
    if not 200 <= response.status <= 299:
        response.read()  # type: ignore[no-untyped-call]  # the error's body, for its message
        raise client.ApiException(http_resp=response)
    answer: urllib3.BaseHTTPResponse = response.response
    return answer


async def serves(api: client.ApiClient, prefix: str) -> bool:
    """Whether the API serves a group version (``/apis/GROUP/VERSION``): discovery answers
    404 for one it does not; any other error is raised."""
    try:
        await asyncio.to_thread(raw_request, api, "GET", prefix, [], f"discovering {prefix}")
    except KubeError as exc:
        if exc.status != 404:
            raise
        return False
    return True


class ListMeta(msgspec.Struct, gc=False):
    """A list's metadata: where the next page starts, and the version the list was read at."""

    continue_: str | None = msgspec.field(default=None, name="continue")
    resourceVersion: str = ""


def decoded(raw: bytes, decoder: msgspec.json.Decoder[Any], doing: str) -> Any:
    """`raw` decoded, or a KubeError saying the answer was not what the API returns."""
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise KubeError(f"{doing}: unexpected answer: {exc}") from None


def listing(
    api: client.ApiClient,
    path: str,
    doing: str,
    decoder: msgspec.json.Decoder[Any],
    *,
    page_size: int = PAGE_SIZE,
    selector: str = "",
    field_selector: str = "",
) -> AsyncIterator[Any]:
    """Every page of the list at `path`, decoded (each with a `metadata: ListMeta`);
    `selector`, `field_selector`: only the objects these label and field selectors select."""

    async def fetch(token: str) -> tuple[Any, str]:
        query: list[tuple[str, Any]] = [("limit", page_size)]
        if selector:
            query.append(("labelSelector", selector))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        if token:
            query.append(("continue", token))
        raw = await asyncio.to_thread(raw_request, api, "GET", path, query, doing)
        page = decoded(raw, decoder, doing)
        return page, (page.metadata.continue_ if page.metadata else None) or ""

    return pages(fetch)


async def until_written(doing: str, attempt: Callable[[], Awaitable[bool]]) -> None:
    """Run `attempt` (a read, then a write conditional on what it read) until it says it
    wrote; False means another writer came between, so it reads again. A KubeError 409 when
    others changed the object every time."""
    for _ in range(CONFLICT_RETRIES):
        if await attempt():
            return
    raise KubeError(
        f"{doing}: changed by others {CONFLICT_RETRIES} times in a row", 409, "Conflict"
    )
