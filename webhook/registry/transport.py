"""HTTP to registries: endpoints, TLS, the auth flow driver, errors and retries.

Everything above this layer speaks in repositories and digests; everything
about sockets, certificates, status codes and 401 dances lives here.
"""

from __future__ import annotations

import ssl
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict
from yarl import URL

from .auth import RegistryAuth, Request, Response
from .credentials import Credential, DockerConfig
from .errors import NotFound, RegistryError, TransientError, Unauthorized
from .flight import SingleFlight
from .retry import parse_retry_after, remaining, retrying

USER_AGENT = "image-backup-webhook/0.1"
DOCKER_HUB = "docker.io"
DOCKER_HUB_ENDPOINT = "https://registry-1.docker.io"
MAX_TOKEN_RESPONSE = 1 << 20


@dataclass(frozen=True, slots=True)
class Endpoint:
    """How one registry (named as in image references) is actually reached."""

    host: str
    url: str | None = None  # "https://mirror.internal:5000"; None: https://host
    insecure: bool = False  # allow plain HTTP and unverified TLS for this registry only
    ca_file: str | None = None  # trusted in addition to the system CAs
    token_file: str | None = None  # bearer token re-read at each use


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
        self._ssl: dict[str, ssl.SSLContext | bool] = {}
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
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def endpoint(self, host: str) -> Endpoint:
        found = self._endpoints.get(host)
        if found is not None:
            return found
        return Endpoint(host, DOCKER_HUB_ENDPOINT if host == DOCKER_HUB else None)

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
        what: str,
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
        retries the whole transfer.
        """

        async def attempt() -> aiohttp.ClientResponse:
            base = await self.base_url(host, deadline)
            url = base.join(URL(target, encoded=True)) if isinstance(target, str) else target
            request = Request(method, url, CIMultiDict(headers or {}), data)
            credential = self.credential(host, repository, keyring)
            response = await self._send(host, request, credential, scopes, deadline, what)
            if response.status in ok:
                return response
            try:
                raise await _status_error(response, what)
            finally:
                response.release()

        if retry:
            return await retrying(attempt, deadline=deadline)
        return await attempt()

    async def _send(
        self,
        host: str,
        request: Request,
        credential: Credential | None,
        scopes: Sequence[str],
        deadline: float,
        what: str,
    ) -> aiohttp.ClientResponse:
        base = await self.base_url(host, deadline)
        if request.url.origin() != base.origin():
            # An upload or blob URL on another host (object storage): no registry credentials.
            return await self._http(host, request, deadline, what)
        flow = self._auth_for(host).flow(request, credential, scopes)
        outgoing = next(flow)
        replayable = request.data is None or isinstance(request.data, bytes | dict)
        sent_once = False
        while True:
            if outgoing.is_token_request:
                reply = await self._fetch_token(host, outgoing, deadline, what)
                outgoing = flow.send(reply)
                continue
            if sent_once and not replayable:
                # Only a streamed upload gets here (its token expired mid-way); the
                # flow has a fresh token now, so the transfer as a whole can retry.
                raise TransientError(f"{what}: authorization expired during the upload")
            response = await self._http(host, outgoing, deadline, what)
            sent_once = True
            try:
                outgoing = flow.send(Response(response.status, response.headers))
            except StopIteration:
                return response
            except BaseException:
                response.release()
                raise
            response.release()

    async def _fetch_token(
        self, host: str, request: Request, deadline: float, what: str
    ) -> Response:
        key = (str(request.url), request.headers.get("Authorization", ""), repr(request.data))

        async def fetch() -> Response:
            async with await self._http(host, request, deadline, what) as response:
                body = await response.content.read(MAX_TOKEN_RESPONSE)
                return Response(response.status, response.headers, body)

        return await self._token_fetches.run(key, fetch)

    async def _http(
        self, host: str, request: Request, deadline: float, what: str
    ) -> aiohttp.ClientResponse:
        timeout = aiohttp.ClientTimeout(
            total=remaining(deadline, what), sock_connect=10, sock_read=60
        )
        try:
            return await self._session.request(
                request.method,
                request.url,
                headers=request.headers,
                data=request.data,
                ssl=self._ssl_for(host, request.url),
                timeout=timeout,
                allow_redirects=True,
            )
        except aiohttp.ClientConnectorCertificateError as exc:
            raise RegistryError(
                f"{what}: TLS certificate of {request.url.host} not trusted "
                f"({exc.certificate_error}); set caFile, or insecure: true to skip verification"
            ) from None
        except aiohttp.ClientSSLError as exc:
            raise RegistryError(
                f"{what}: TLS handshake with {request.url.host} failed ({exc})"
            ) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TransientError(f"{what}: {host} unreachable ({_describe(exc)})") from None

    def credential(
        self, host: str, repository: str, keyring: DockerConfig | None = None
    ) -> Credential | None:
        """What a request to `repository` on `host` presents: `keyring`'s match, or else the
        configured docker config's."""
        return (keyring or self._docker_config).lookup(host, repository)

    def _auth_for(self, host: str) -> RegistryAuth:
        auth = self._auth.get(host)
        if auth is None:
            auth = RegistryAuth(host, self.endpoint(host).token_file)
            self._auth[host] = auth
        return auth

    def _ssl_for(self, host: str, url: URL) -> ssl.SSLContext | bool:
        if url.scheme != "https":
            return True  # ignored by aiohttp for plain HTTP
        context = self._ssl.get(host)
        if context is None:
            endpoint = self.endpoint(host)
            if endpoint.insecure:
                context = False
            else:
                context = ssl.create_default_context()
                if endpoint.ca_file:
                    context.load_verify_locations(cafile=endpoint.ca_file)
            self._ssl[host] = context
        return context

    async def _find_base_url(self, host: str, deadline: float) -> URL:
        endpoint = self.endpoint(host)
        if endpoint.url is not None:
            url = URL(endpoint.url if "://" in endpoint.url else f"https://{endpoint.url}")
            if url.scheme == "http" and not endpoint.insecure:
                raise RegistryError(f"{host}: plain HTTP endpoint {url} needs insecure: true")
            return url.with_path("/")
        https = URL(f"https://{host}/")
        if not endpoint.insecure:
            return https
        # An insecure registry may speak TLS (unverified) or plain HTTP: ask it, TLS first.
        # A registry that answers neither is reported, and asked again next time.
        for url in (https, URL(f"http://{host}/")):
            timeout = aiohttp.ClientTimeout(total=min(5.0, remaining(deadline, host)))
            try:
                async with self._session.get(url.join(URL("v2/")), ssl=False, timeout=timeout):
                    return url
            except (aiohttp.ClientError, TimeoutError) as exc:
                failure = exc
        raise TransientError(f"{host} unreachable ({_describe(failure)})")


async def _status_error(response: aiohttp.ClientResponse, what: str) -> RegistryError:
    detail = await _registry_message(response)
    status = response.status
    suffix = f": {detail}" if detail else ""
    if status in (401, 403):
        return Unauthorized(f"{what}: unauthorized (HTTP {status}){suffix}")
    if status == 404:
        return NotFound(f"{what}: not found{suffix}")
    if status == 429 or status >= 500:
        return TransientError(
            f"{what}: registry answered HTTP {status}{suffix}",
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    return RegistryError(f"{what}: registry answered HTTP {status}{suffix}")


async def _registry_message(response: aiohttp.ClientResponse) -> str:
    """The registry's own error code and message, if it sent the standard error body."""
    try:
        body = await response.content.read(64 * 1024)
        errors = orjson.loads(body).get("errors") or []
        first = errors[0]
        return f"{first.get('code', '')} {first.get('message', '')}".strip()[:200]
    except (aiohttp.ClientError, orjson.JSONDecodeError, AttributeError, IndexError, TypeError):
        return ""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        # Its own text drags in the repr of our SSL context.
        reason = exc.os_error.strerror or str(exc.os_error) or type(exc.os_error).__name__
        return f"cannot connect to {exc.host}:{exc.port}: {reason}"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
