"""A fault-injecting HTTP reverse proxy in front of a registry.

The proxy listens on plain HTTP on 127.0.0.1 (random port) in a background thread with its
own event loop, streams bodies in both directions, keeps the client's ``Host`` header (and
sends ``X-Forwarded-Proto: http``) so the registry's ``Location`` headers point back at the
proxy, and records every request in :attr:`FaultProxy.log`.

Faults are :class:`Rule` objects made with :func:`status`, :func:`corrupt`,
:func:`reset_after`, :func:`cut_request`, :func:`serve` or :func:`delay`; each matches a
method (or any) and a path regex (``re.search`` on the path, no query) and fires ``times``
times (``None``: forever).
The first live matching rule, in the order added, applies.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import ssl
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, Self

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from tests.support.loopthread import ServedApp

if TYPE_CHECKING:
    from tests.support.registries import Registry

__all__ = [
    "FaultKind",
    "FaultProxy",
    "FaultProxyFactory",
    "ProxyLogEntry",
    "Rule",
    "corrupt",
    "cut_request",
    "delay",
    "drop_header",
    "reset_after",
    "serve",
    "status",
]

FaultKind = Literal[
    "status", "corrupt", "reset_after", "cut_request", "serve", "delay", "drop_header"
]

_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)
_CHUNK = 256 * 1024


class FaultProxyFactory(Protocol):
    """Type of the ``fault_proxy`` fixture."""

    def __call__(
        self, target: Registry | str, ca_file: str | None = None, *, credentials: bool = True
    ) -> FaultProxy: ...


@dataclass
class Rule:
    kind: FaultKind
    method: str | None = None  # None: any method
    path: str = ".*"  # regex, re.search against the request path
    times: int | None = None  # remaining firings; None = unlimited
    code: int = 200  # status / serve
    headers: dict[str, str] = field(default_factory=dict)  # status / serve
    body: bytes = b""  # status / serve
    content_type: str | None = None  # serve
    nbytes: int = 0  # reset_after, cut_request
    seconds: float = 0.0  # delay
    header: str = ""  # drop_header
    hits: int = 0  # how many times it fired

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return re.search(self.path, path) is not None


def status(
    code: int,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    *,
    method: str | None = None,
    path: str = ".*",
    times: int | None = None,
) -> Rule:
    """Answer with ``code`` (e.g. 429 + ``{"Retry-After": "1"}``, or 503) without forwarding."""
    return Rule("status", method, path, times, code=code, headers=dict(headers or {}), body=body)


def corrupt(*, method: str | None = None, path: str = ".*", times: int | None = None) -> Rule:
    """Forward, but flip one byte in the middle of the upstream response body."""
    return Rule("corrupt", method, path, times)


def reset_after(
    nbytes: int, *, method: str | None = None, path: str = ".*", times: int | None = None
) -> Rule:
    """Forward the upstream headers and ``nbytes`` of the body, then abort the connection."""
    return Rule("reset_after", method, path, times, nbytes=nbytes)


def cut_request(
    nbytes: int, *, method: str | None = None, path: str = ".*", times: int | None = None
) -> Rule:
    """Read ``nbytes`` of the request body, then abort the connection: a registry that
    goes away while a client is still sending (an upload cut mid-blob)."""
    return Rule("cut_request", method, path, times, nbytes=nbytes)


def serve(
    body: bytes,
    content_type: str,
    headers: Mapping[str, str] | None = None,
    *,
    code: int = 200,
    method: str | None = None,
    path: str = ".*",
    times: int | None = None,
) -> Rule:
    """Answer with a canned response (e.g. a schema-1 manifest), without forwarding."""
    return Rule(
        "serve",
        method,
        path,
        times,
        code=code,
        headers=dict(headers or {}),
        body=body,
        content_type=content_type,
    )


def drop_header(
    header: str, *, method: str | None = None, path: str = ".*", times: int | None = None
) -> Rule:
    """Forward, but strip ``header`` from the upstream response."""
    return Rule("drop_header", method, path, times, header=header)


def delay(
    seconds: float, *, method: str | None = None, path: str = ".*", times: int | None = None
) -> Rule:
    """Wait ``seconds`` before forwarding (for client timeout tests)."""
    return Rule("delay", method, path, times, seconds=seconds)


@dataclass(frozen=True)
class ProxyLogEntry:
    method: str
    path: str
    query: str
    status: int  # what the client got (upstream's status for corrupt/reset_after/delay)
    fault: FaultKind | None  # the rule that fired, if any
    headers: dict[str, str]  # request headers (repeated ones joined with ", ")
    time: float


def _joined(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in items:
        out[k] = f"{out[k]}, {v}" if k in out else v
    return out


class FaultProxy:
    """Fault-injecting reverse proxy. Create with :meth:`start`; call :meth:`stop`.

    Also usable as a skopeo endpoint / registry stand-in: ``host``, ``url``,
    ``ca_file`` (always None: the proxy is plain HTTP) and ``docker_config`` (credentials
    for the proxy's host, if given).
    """

    def __init__(
        self,
        upstream_url: str,
        ca_file: str | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.upstream_url = upstream_url.rstrip("/")
        self.upstream_ca_file = ca_file
        self.ca_file: str | None = None
        self.username = username
        self.password = password
        self._rules: list[Rule] = []
        self._log: list[ProxyLogEntry] = []
        self._lock = threading.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._tmpdir = tempfile.mkdtemp(prefix="ibw-faultproxy-")

        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        app.on_cleanup.append(self._close_session)
        self._served = ServedApp(app, name="fault-proxy")
        self.port = self._served.port
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"

        auths: dict[str, object] = {}
        if username is not None and password is not None:
            auths[self.host] = {
                "auth": base64.b64encode(f"{username}:{password}".encode()).decode()
            }
        self.docker_config = os.path.join(self._tmpdir, "docker-config.json")
        with open(self.docker_config, "w") as f:
            json.dump({"auths": auths}, f)

    @classmethod
    def start(
        cls,
        upstream_url: str,
        ca_file: str | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> Self:
        return cls(upstream_url, ca_file, username=username, password=password)

    def stop(self) -> None:
        self._served.stop()
        shutil.rmtree(self._tmpdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- rules and log -------------------------------------------------------------------

    def add(self, rule: Rule) -> Rule:
        """Add a rule (after existing ones); returns it so tests can check ``rule.hits``."""
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        """Remove all rules and empty the log."""
        self.clear_rules()
        self.clear_log()

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    @property
    def rules(self) -> list[Rule]:
        with self._lock:
            return list(self._rules)

    @property
    def log(self) -> list[ProxyLogEntry]:
        """Snapshot of the requests handled so far (oldest first)."""
        with self._lock:
            return list(self._log)

    def requests(self, method: str | None = None, path: str = ".*") -> list[ProxyLogEntry]:
        """Log entries filtered by method and path regex."""
        return [
            e
            for e in self.log
            if (method is None or e.method == method.upper()) and re.search(path, e.path)
        ]

    def _take(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path):
                    if rule.times is not None:
                        rule.times -= 1
                    rule.hits += 1
                    return rule
        return None

    def _record(self, request: web.Request, code: int, fault: FaultKind | None) -> None:
        entry = ProxyLogEntry(
            method=request.method,
            path=request.path,
            query=request.query_string,
            status=code,
            fault=fault,
            headers=_joined(request.headers.items()),
            time=time.time(),
        )
        with self._lock:
            self._log.append(entry)

    # --- proxying ------------------------------------------------------------------------

    async def _close_session(self, app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            ctx: ssl.SSLContext | bool = False
            if self.upstream_url.startswith("https://"):
                ctx = ssl.create_default_context(cafile=self.upstream_ca_file)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ctx, limit=0),
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        return self._session

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rule = self._take(request.method, request.path)
        kind = rule.kind if rule is not None else None
        if rule is not None and rule.kind in ("status", "serve"):
            with contextlib.suppress(Exception):
                await request.read()  # drain the request body
            canned = dict(rule.headers)
            if rule.kind == "serve" and rule.content_type:
                canned["Content-Type"] = rule.content_type
            if rule.kind == "serve" and "Docker-Content-Digest" not in canned:
                canned["Docker-Content-Digest"] = "sha256:" + hashlib.sha256(rule.body).hexdigest()
            resp = web.Response(status=rule.code, body=rule.body, headers=canned)
            self._record(request, rule.code, kind)
            return resp
        if rule is not None and rule.kind == "delay":
            await asyncio.sleep(rule.seconds)
        if rule is not None and rule.kind == "cut_request":
            with contextlib.suppress(Exception):
                await request.content.readexactly(rule.nbytes)
            self._record(request, 0, kind)
            assert request.transport is not None
            request.transport.abort()
            raise _Aborted

        return await self._forward(request, rule)

    async def _forward(
        self,
        request: web.Request,
        rule: Rule | None,
        *,
        body: bytes | None = None,
        on_response: Callable[[aiohttp.ClientResponse], Mapping[str, str]] | None = None,
    ) -> web.StreamResponse:
        """Forward ``request`` upstream and relay the answer, with ``rule``'s fault (corrupt,
        reset_after, drop_header) if any.

        The hooks of a subclass that answers some requests itself or adds to answers
        (:class:`~tests.support.referrersproxy.ReferrersProxy`): ``body`` is the request body
        when it has read it already; ``on_response`` sees the upstream answer before it is
        relayed and returns headers to add to it.
        """
        kind = rule.kind if rule is not None else None
        # a multidict: clients send repeated headers (e.g. one Accept per media type)
        headers: CIMultiDict[str] = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP
        )
        headers["X-Forwarded-Proto"] = "http"
        data: AsyncIterator[bytes] | bytes | None = body
        if body is None and request.body_exists:
            data = request.content.iter_chunked(_CHUNK)
        try:
            up_cm = self._get_session().request(
                request.method,
                self.upstream_url + request.path_qs,
                headers=headers,
                data=data,
                allow_redirects=False,
            )
            up = await up_cm.__aenter__()
        except (aiohttp.ClientError, OSError) as e:
            self._record(request, 502, kind)
            return web.Response(status=502, text=f"fault proxy: upstream unreachable: {e}\n")
        try:
            if rule is not None and rule.kind == "reset_after":
                await self._reset(request, up, rule.nbytes)
                self._record(request, up.status, kind)
                raise _Aborted
            dropped = rule.header.lower() if rule is not None and kind == "drop_header" else ""
            extra = on_response(up) if on_response is not None else {}
            return await self._relay(
                request,
                up,
                corrupt=rule is not None and kind == "corrupt",
                dropped=dropped,
                extra=extra,
            )
        finally:
            await up_cm.__aexit__(None, None, None)

    def _response_headers(self, up: aiohttp.ClientResponse) -> list[tuple[str, str]]:
        return [(k, v) for k, v in up.headers.items() if k.lower() not in _HOP_BY_HOP]

    async def _relay(
        self,
        request: web.Request,
        up: aiohttp.ClientResponse,
        *,
        corrupt: bool,
        dropped: str = "",
        extra: Mapping[str, str] | None = None,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=up.status, reason=up.reason)
        for k, v in [*self._response_headers(up), *(extra or {}).items()]:
            if k.lower() == dropped:
                continue
            if k.lower() == "content-length":
                resp.content_length = int(v)
            else:
                resp.headers.add(k, v)
        self._record(request, up.status, "corrupt" if corrupt else None)
        if request.method == "HEAD":
            await resp.prepare(request)
            await resp.write_eof()
            return resp
        flip_at: int | None = None
        if corrupt:
            if up.content_length is not None:
                flip_at = up.content_length // 2
            else:  # unknown length: buffer it to find the middle
                data = bytearray(await up.read())
                if data:
                    data[len(data) // 2] ^= 0xFF
                resp.content_length = len(data)
                await resp.prepare(request)
                await resp.write(bytes(data))
                await resp.write_eof()
                return resp
        await resp.prepare(request)
        offset = 0
        try:
            async for chunk in up.content.iter_chunked(_CHUNK):
                if flip_at is not None and offset <= flip_at < offset + len(chunk):
                    buf = bytearray(chunk)
                    buf[flip_at - offset] ^= 0xFF
                    chunk = bytes(buf)
                offset += len(chunk)
                await resp.write(chunk)
            await resp.write_eof()
        except (ConnectionError, aiohttp.ClientError) as e:
            # upstream or client went away mid-body: cut the client connection too
            if request.transport is not None:
                request.transport.abort()
            raise _Aborted from e
        return resp

    async def _reset(self, request: web.Request, up: aiohttp.ClientResponse, nbytes: int) -> None:
        """Send status line, headers and ``nbytes`` of the body raw, then abort the socket."""
        transport = request.transport
        assert transport is not None
        data = bytearray()
        if request.method != "HEAD":
            while len(data) < nbytes:
                chunk = await up.content.read(min(_CHUNK, nbytes - len(data)))
                if not chunk:
                    break
                data += chunk
        head = [f"HTTP/1.1 {up.status} {up.reason or ''}"]
        head += [f"{k}: {v}" for k, v in self._response_headers(up)]
        raw = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + bytes(data)
        transport.write(raw)
        for _ in range(10_000):  # wait (up to ~10 s) until the kernel has taken it all
            if transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.01)  # let the kernel push it out before the RST
        transport.abort()


class _Aborted(web.HTTPException):
    """Raised after the client connection was aborted on purpose (nothing more to send)."""

    status_code = 499
