"""HTTP to registries: endpoints, TLS, the auth flow driver, errors and retries.

Everything above this layer speaks in repositories and digests; everything
about sockets, certificates, status codes and 401 dances lives here.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict
from yarl import URL

from ..text import one_line
from .auth import RegistryAuth, Request, Response
from .credentials import Credential, DockerConfig
from .endpoint import Endpoint, verifying_context
from .errors import NotFound, Operation, RegistryError, TransientError, Unauthorized
from .flight import SingleFlight
from .retry import parse_retry_after, remaining, retrying

USER_AGENT = "image-backup-webhook/0.1"
MAX_TOKEN_RESPONSE = 1 << 20
# What OpenSSL says when the other end answers a TLS hello in plain HTTP.
PLAIN_HTTP_REPLIES = frozenset(
    {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"}
)
ERRNO_WORDS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.ECONNABORTED: "connection aborted",
    errno.EPIPE: "the registry closed the connection",
    errno.ETIMEDOUT: "timed out",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
}


class Transport:
    """One connection pool for all registries, with per-registry TLS and auth state."""

    def __init__(
        self,
        endpoints: Iterable[Endpoint] = (),
        docker_config: DockerConfig | None = None,
        *,
        connections: int = 64,
    ) -> None:
        self._endpoints = {e.host: e for e in endpoints}
        self._docker_config = docker_config or DockerConfig()
        self._auth: dict[str, RegistryAuth] = {}
        self._base_urls: dict[str, URL] = {}
        self._contexts: dict[str, asyncio.Future[ssl.SSLContext]] = {}
        self._token_fetches: SingleFlight[tuple[str, str, str], Response] = SingleFlight()
        self._probes: SingleFlight[str, URL] = SingleFlight()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections, limit_per_host=connections),
            headers={"User-Agent": USER_AGENT},
            # Registry bytes are hashed as they are: never let the HTTP layer decode them.
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding",),
            # Larger reads mean fewer pause/resume cycles per streamed blob.
            read_bufsize=1 << 20,
        )

    async def close(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> Transport:
        for endpoint in self._endpoints.values():  # their CAs load while the work starts
            if endpoint.ca_file and not endpoint.insecure:
                self._tls_context(endpoint)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def endpoint(self, host: str) -> Endpoint:
        found = self._endpoints.get(host)
        if found is not None:
            return found
        return Endpoint.default(host)

    async def base_url(self, host: str, deadline: float) -> URL:
        known = self._base_urls.get(host)
        if known is None:
            known = await self._probes.run(host, lambda: self._find_base_url(host, deadline))
            self._base_urls[host] = known
        return known

    async def request(
        self,
        host: str,
        method: str,
        target: str | URL,
        *,
        repository: str,
        scopes: Sequence[str],
        deadline: float,
        operation: Operation,
        headers: dict[str, str] | None = None,
        data: Any = None,
        ok: Collection[int] = (200,),
        retry: bool = True,
        keyring: DockerConfig | None = None,
    ) -> aiohttp.ClientResponse:
        """Send one request with authentication; statuses outside `ok` raise RegistryError.

        Credentials come from `keyring` (an admission's pull secrets, already ending with
        the configured ones) or else the configured docker config.

        `target` is a path under the registry's base URL or an absolute URL (an
        upload Location). The caller owns the returned response and must release it.
        Requests whose body is a stream are never retried here: the caller
        retries the whole transfer. Every error raised names `operation`, unless it is
        a streamed body's own, which names the body's source.
        """

        async def attempt() -> aiohttp.ClientResponse:
            base = await self.base_url(host, deadline)
            url = base.join(URL(target, encoded=True)) if isinstance(target, str) else target
            request = Request(method, url, CIMultiDict(headers or {}), data)
            credential = self.credential(host, repository, keyring)
            response = await self._send(host, request, credential, scopes, deadline)
            if response.status in ok:
                return response
            try:
                anonymous = credential is None and not self.endpoint(host).token_file
                raise await _status_error(response, anonymous=anonymous)
            finally:
                response.release()

        try:
            if retry:
                return await retrying(attempt, deadline=deadline)
            return await attempt()
        except RegistryError as exc:
            raise exc.during(operation) from None

    async def _send(
        self,
        host: str,
        request: Request,
        credential: Credential | None,
        scopes: Sequence[str],
        deadline: float,
    ) -> aiohttp.ClientResponse:
        base = await self.base_url(host, deadline)
        if request.url.origin() != base.origin():
            # An upload or blob URL on another host (object storage): no registry credentials.
            return await self._http(host, request, deadline)
        flow = self._auth_for(host).flow(request, credential, scopes)
        outgoing = next(flow)
        replayable = request.data is None or isinstance(request.data, bytes | dict)
        sent_once = False
        while True:
            if outgoing.is_token_request:
                reply = await self._fetch_token(host, outgoing, deadline)
                outgoing = flow.send(reply)
                continue
            if sent_once and not replayable:
                # Only a streamed upload gets here (its token expired mid-way); the
                # flow has a fresh token now, so the transfer as a whole can retry.
                raise TransientError("authorization expired during the upload")
            response = await self._http(host, outgoing, deadline)
            sent_once = True
            try:
                outgoing = flow.send(Response(response.status, response.headers))
            except StopIteration:
                return response
            except BaseException:
                response.release()
                raise
            response.release()

    async def _fetch_token(self, host: str, request: Request, deadline: float) -> Response:
        key = (str(request.url), request.headers.get("Authorization", ""), repr(request.data))

        async def fetch() -> Response:
            async with await self._http(host, request, deadline) as response:
                body = await response.content.read(MAX_TOKEN_RESPONSE)
                return Response(response.status, response.headers, body)

        return await self._token_fetches.run(key, fetch)

    async def _http(self, host: str, request: Request, deadline: float) -> aiohttp.ClientResponse:
        timeout = aiohttp.ClientTimeout(total=remaining(deadline), sock_connect=10, sock_read=60)
        try:
            return await self._session.request(
                request.method,
                request.url,
                headers=request.headers,
                data=request.data,
                ssl=await self._ssl_for(host, request.url),
                timeout=timeout,
                allow_redirects=True,
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _failure(exc, self._peer(host, request)) from None

    def _peer(self, host: str, request: Request) -> str:
        """Who answered `request`, when not the registry itself: said after the reason."""
        base = self._base_urls.get(host)
        if base is not None and request.url.origin() == base.origin():
            return ""
        peer = request.url.host_port_subcomponent
        return f" (token service {peer})" if request.is_token_request else f" (at {peer})"

    def credential(
        self, host: str, repository: str, keyring: DockerConfig | None = None
    ) -> Credential | None:
        """What a request to `repository` on `host` presents: `keyring`'s match, or else the
        configured docker config's."""
        return (keyring or self._docker_config).lookup(host, repository)

    def _auth_for(self, host: str) -> RegistryAuth:
        auth = self._auth.get(host)
        if auth is None:
            auth = RegistryAuth(self.endpoint(host).token_file)
            self._auth[host] = auth
        return auth

    async def _ssl_for(self, host: str, url: URL) -> ssl.SSLContext | bool:
        if url.scheme != "https":
            return True  # ignored by aiohttp for plain HTTP
        endpoint = self.endpoint(host)
        if endpoint.insecure:
            return False
        if not endpoint.ca_file:
            return True  # aiohttp's own verifying context, loaded once at its import
        building = self._tls_context(endpoint)
        try:
            return await asyncio.shield(building)
        except (OSError, ValueError):
            if self._contexts.get(host) is building:
                del self._contexts[host]  # a CA file fixed since is read at the next request
            raise

    def _tls_context(self, endpoint: Endpoint) -> asyncio.Future[ssl.SSLContext]:
        """The context for a registry with its own CA, built once and on a thread: the first
        request to it, or to another registry meanwhile, does not wait on the event loop."""
        context = self._contexts.get(endpoint.host)
        if context is None:
            assert endpoint.ca_file is not None
            context = asyncio.ensure_future(asyncio.to_thread(verifying_context, endpoint.ca_file))
            # Retrieved here: a context started ahead and never used is no lost error.
            context.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._contexts[endpoint.host] = context
        return context

    async def _find_base_url(self, host: str, deadline: float) -> URL:
        endpoint = self.endpoint(host)
        if endpoint.url is not None:
            url = URL(endpoint.url if "://" in endpoint.url else f"https://{endpoint.url}")
            if url.scheme == "http" and not endpoint.insecure:
                raise RegistryError(
                    f"endpoint {url} is plain HTTP; set insecure: true for this registry"
                )
            return url.with_path("/")
        https = URL(f"https://{host}/")
        if not endpoint.insecure:
            return https
        # An insecure registry may speak TLS (unverified) or plain HTTP: ask it, TLS first.
        # A registry that answers neither is reported, and asked again next time.
        for url in (https, URL(f"http://{host}/")):
            timeout = aiohttp.ClientTimeout(total=min(5.0, remaining(deadline)))
            try:
                async with self._session.get(url.join(URL("v2/")), ssl=False, timeout=timeout):
                    return url
            except (aiohttp.ClientError, TimeoutError) as exc:
                failure = exc
        raise TransientError(f"{describe(failure)} (tried HTTPS and plain HTTP)")


async def _status_error(response: aiohttp.ClientResponse, *, anonymous: bool) -> RegistryError:
    detail = await _registry_message(response)
    status = response.status
    suffix = f": {detail}" if detail else ""
    if status in (401, 403):
        hint = "; no credentials were found for it" if anonymous else ""
        return Unauthorized(f"unauthorized (HTTP {status}){suffix}{hint}")
    if status == 404:
        return NotFound(f"not found{suffix}")
    if status == 429 or status >= 500:
        return TransientError(
            f"the registry answered HTTP {status}{suffix}",
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    return RegistryError(f"the registry answered HTTP {status}{suffix}")


async def _registry_message(response: aiohttp.ClientResponse) -> str:
    """The registry's own error code and message, if it sent the standard error body."""
    try:
        body = await response.content.read(64 * 1024)
        errors = orjson.loads(body).get("errors") or []
        first = errors[0]
        return one_line(f"{first.get('code', '')} {first.get('message', '')}")[:200]
    except (aiohttp.ClientError, orjson.JSONDecodeError, AttributeError, IndexError, TypeError):
        return ""


def _failure(exc: BaseException, peer: str) -> RegistryError:
    """A failed exchange as the error to report.

    When a streamed request body fails (the source of a blob), aiohttp reports it as a
    failure to send, with the body's own error as the cause: that error is the one to
    report, naming the source, not the registry that was being written to.
    """
    for cause in _causes(exc):
        if isinstance(cause, RegistryError):
            return cause
    words = describe(exc) + peer
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return RegistryError(
            f"{words}; set caFile for this registry, or insecure: true to skip verification"
        )
    if isinstance(exc, aiohttp.ClientSSLError):
        advice = "; set insecure: true for this registry" if _speaks_plain_http(exc) else ""
        return RegistryError(f"{words}{advice}")
    return TransientError(words)


def describe(exc: BaseException) -> str:
    """A transport failure in words an operator can act on, never an internal object's text
    (aiohttp's messages carry the repr of connection keys and SSL contexts).

    What the OS or TLS said, anywhere in the chain of causes, wins over what aiohttp
    made of it."""
    connecting = isinstance(exc, aiohttp.ClientConnectorError)
    causes = list(_causes(exc))
    words = (
        next(filter(None, map(_cause_words, causes)), None)
        or next(filter(None, map(_symptom_words, causes)), None)
        or f"failed ({type(exc).__name__})"
    )
    return f"cannot connect: {words}" if connecting else words


def _cause_words(exc: BaseException) -> str | None:
    if isinstance(exc, aiohttp.ClientConnectorDNSError | socket.gaierror):
        return "name not resolved"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({exc.verify_message or 'verification failed'})"
    if isinstance(exc, ssl.SSLError):
        if _speaks_plain_http(exc):
            return "TLS handshake failed: the registry speaks plain HTTP"
        reason = getattr(exc, "reason", None) or "unknown"
        return f"TLS error ({reason.replace('_', ' ').lower()})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        if exc.errno in ERRNO_WORDS:
            return ERRNO_WORDS[exc.errno]
        if isinstance(exc, ConnectionResetError):
            return "connection reset"
        return os.strerror(exc.errno).lower() if exc.errno else None
    return None


def _symptom_words(exc: BaseException) -> str | None:
    """What aiohttp saw, when nothing below it said why."""
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the registry closed the connection"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the connection ended before the whole body arrived"
    if isinstance(exc, aiohttp.ClientConnectionError | ConnectionError):
        return "connection lost"
    return None


def _speaks_plain_http(exc: BaseException) -> bool:
    return any(
        isinstance(c, ssl.SSLError) and getattr(c, "reason", None) in PLAIN_HTTP_REPLIES
        for c in _causes(exc)
    )


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it wraps, outermost first: aiohttp's connector errors hold the OS
    error, its other errors chain it as cause or context."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, aiohttp.ClientConnectorError):
            if isinstance(current, aiohttp.ClientConnectorDNSError):
                yield current
            current = current.os_error
            continue
        yield current
        current = current.__cause__ or current.__context__
