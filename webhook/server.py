"""The HTTPS server the API server calls: admission endpoints, probes and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol, TextIO

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .admission.errors import BadReview
from .events import event_message
from .metrics import Metrics
from .text import one_line, quoted
from .tls import CertificateError, ReloadingCertificate

if TYPE_CHECKING:
    from aiohttp.abc import AbstractStreamWriter
    from aiohttp.http_parser import RawRequestMessage
    from aiohttp.streams import StreamReader
    from aiohttp.web_protocol import RequestHandler

    from .config import Server

__all__ = [
    "CertificateError",
    "Mode",
    "Reviewer",
    "ServerError",
    "WebhookServer",
    "build_routes",
    "configure_logging",
    "serve",
]

log = logging.getLogger("image_backup.server")

Mode = Literal["enforce", "audit"]

INTERNAL_ERROR = "internal error while reviewing the request (see the webhook's log)"


class Reviewer(Protocol):
    async def review(self, body: bytes, mode: Mode) -> bytes:
        """The AdmissionReview response JSON; raises BadReview for input it cannot review."""
        ...

    async def backup_registry_answers(self) -> bool: ...


_JSON = {"Content-Type": "application/json"}
GC_THRESHOLD = 50_000


class ServerError(Exception):
    """The server cannot start (certificate, address in use); the message is one line."""


class Readiness:
    """Ready once the certificate is loaded and the backup registry answered once.

    Probes come every few seconds from every kubelet; until the registry has answered, at
    most one question is in flight and a new one is asked only `retry_seconds` after the last.
    A probe waits `wait_seconds` at most (the kubelet's own timeout is short); a slow answer
    still counts for the next probe.
    """

    def __init__(
        self,
        reviewer: Reviewer,
        certificate: ReloadingCertificate | None,
        *,
        retry_seconds: float,
        wait_seconds: float = 0.8,
        ask_timeout: float = 10.0,
    ) -> None:
        self._reviewer = reviewer
        self._certificate = certificate
        self._retry_seconds = retry_seconds
        self._wait_seconds = wait_seconds
        self._ask_timeout = ask_timeout
        self._ready = False
        self._reason = "the backup registry has not answered yet"
        self._asked_at = -float("inf")
        self._asking: asyncio.Task[None] | None = None

    async def check(self) -> str | None:
        """None when ready, else why not."""
        if self._ready:
            return None
        if self._certificate is not None and not self._certificate.loaded:
            return "the TLS certificate is not loaded"
        now = time.monotonic()
        if self._asking is None and now - self._asked_at >= self._retry_seconds:
            self._asked_at = now
            self._asking = asyncio.create_task(self._ask())
        if self._asking is not None:
            await asyncio.wait({self._asking}, timeout=self._wait_seconds)
        return None if self._ready else self._reason

    async def _ask(self) -> None:
        try:
            async with asyncio.timeout(self._ask_timeout):
                self._ready = await self._reviewer.backup_registry_answers()
            if not self._ready:
                self._reason = "the backup registry does not answer"
        except TimeoutError:
            self._reason = "the backup registry does not answer (timed out)"
        except Exception as exc:
            self._reason = f"asking the backup registry failed: {type(exc).__name__}"
            log.warning(event_message("readiness_check_failed", error=one_line(exc) or "-"))
        finally:
            self._asking = None

    async def close(self) -> None:
        if self._asking is not None:
            self._asking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._asking


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def build_routes(
    reviewer: Reviewer,
    metrics: Metrics,
    readiness: Readiness,
    *,
    max_body_bytes: int,
    body_timeout_seconds: float | None = None,  # None: no deadline
) -> dict[tuple[str, str], Handler]:
    """(method, path) -> handler; TLS and dispatch are the caller's (see WebhookServer)."""

    async def review(request: web.BaseRequest, mode: Mode) -> web.Response:
        try:
            # A declared length is refused before reading; the request's client_max_size
            # cuts off a streamed body at the limit.
            if (request.content_length or 0) > max_body_bytes:
                raise web.HTTPRequestEntityTooLarge(max_body_bytes, request.content_length or 0)
            if request.content.is_eof():
                # All of it arrived with the head, as from an API server: no deadline to
                # arm (a timer per request costs the hot path a sixth of its time).
                body = await request.read()
            else:
                async with asyncio.timeout(body_timeout_seconds):
                    body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _closing(413, f"request body larger than {max_body_bytes} bytes")
        except TimeoutError:
            return _closing(408, f"request body not received within {body_timeout_seconds} s")
        except (ConnectionError, web.RequestPayloadError) as exc:
            # The client went away (or broke the framing) mid-body: its business, not an
            # error of ours, and nobody is left to answer.
            log.info(event_message("request_body_incomplete", mode=mode, error=one_line(exc)))
            return _closing(400, "request body incomplete")
        try:
            answer = await reviewer.review(body, mode)
        except BadReview as exc:
            # Only a bug may answer 5xx: a BadReview is always the client's fault.
            status = exc.status if 400 <= exc.status < 500 else 400
            return _text(status, exc.reason)
        except Exception as exc:
            log.error(
                event_message("review_failed", mode=mode, error=type(exc).__name__), exc_info=exc
            )
            return _text(500, INTERNAL_ERROR)
        return web.Response(body=answer, headers=_JSON)

    async def mutate(request: web.BaseRequest) -> web.Response:
        return await review(request, "enforce")

    async def audit(request: web.BaseRequest) -> web.Response:
        return await review(request, "audit")

    async def healthz(_request: web.BaseRequest) -> web.Response:
        return _text(200, "ok")

    async def readyz(_request: web.BaseRequest) -> web.Response:
        reason = await readiness.check()
        return _text(200, "ok") if reason is None else _text(503, reason)

    async def metrics_page(_request: web.BaseRequest) -> web.Response:
        body, content_type = metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    return {
        ("POST", "/mutate"): mutate,
        ("POST", "/audit"): audit,
        ("GET", "/healthz"): healthz,
        ("GET", "/readyz"): readyz,
        ("GET", "/metrics"): metrics_page,
    }


class _ConnectionLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's log for the connections it serves. It logs a request it cannot parse (a
    bad chunk size, a negative length) as an error with a traceback; that is the client's
    fault, and it gets its 400: one info line here, not a traceback per broken client."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            reason = quoted(one_line(exc_info.message))
            log.info(event_message("request_malformed", error=reason))
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


def _dispatcher(routes: dict[tuple[str, str], Handler]) -> Handler:
    """Five fixed routes, looked up in one dict: aiohttp's Application and router cost each
    request more than reviewing a Pod answered from memory (about 4 µs of 50)."""
    allowed: dict[str, list[str]] = {}
    for method, path in routes:
        allowed.setdefault(path, []).append(method)

    async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
        method = "GET" if request.method == "HEAD" else request.method  # HEAD: GET, no body
        handler = routes.get((method, request.path))
        if handler is not None:
            return await handler(request)
        methods = allowed.get(request.path)
        if methods is None:
            return _text(404, "not found")
        response = _text(405, f"method {quoted(request.method)} not allowed")
        response.headers["Allow"] = ", ".join(methods)
        return response

    return dispatch


class WebhookServer:
    """The app over TLS on host:port, with the certificate watcher; `start()`, then `stop()`."""

    def __init__(
        self,
        reviewer: Reviewer,
        metrics: Metrics,
        certificate: ReloadingCertificate,
        *,
        host: str,
        port: int,
        max_body_bytes: int,
        keep_alive_seconds: float,
        body_timeout_seconds: float,
        readiness_retry_seconds: float = 5.0,
        shutdown_timeout: float = 25.0,
    ) -> None:
        self.certificate = certificate
        self._host = host
        self._requested_port = port
        self._readiness = Readiness(reviewer, certificate, retry_seconds=readiness_retry_seconds)
        routes = build_routes(
            reviewer,
            metrics,
            self._readiness,
            max_body_bytes=max_body_bytes,
            body_timeout_seconds=body_timeout_seconds,
        )

        def request_factory(
            message: RawRequestMessage,
            payload: StreamReader,
            protocol: RequestHandler,
            writer: AbstractStreamWriter,
            task: asyncio.Task[None],
        ) -> web.BaseRequest:
            return web.BaseRequest(
                message,
                payload,
                protocol,
                writer,
                task,
                task.get_loop(),
                client_max_size=max_body_bytes,
            )

        # No access log: probes would drown the one line per review the reviewer writes.
        # aiohttp's keep-alive timer runs while a connection waits for a request's head, so it
        # also cuts off a client trickling its headers. After an early answer (413, 408) the
        # rest of a body is read and dropped, so that the client sees the answer rather than a
        # reset, for no longer than the body itself was given (aiohttp's default: 10 s).
        server = web.Server(
            _dispatcher(routes),
            request_factory=request_factory,
            logger=_ConnectionLog(logging.getLogger("aiohttp.server"), {}),
            access_log=None,
            keepalive_timeout=keep_alive_seconds,
            lingering_time=body_timeout_seconds,
        )
        self._runner = web.ServerRunner(server, shutdown_timeout=shutdown_timeout)
        self._watch: asyncio.Task[None] | None = None
        self.port = port

    async def start(self) -> None:
        """Raises CertificateError or ServerError, each with a one-line message."""
        if not self.certificate.loaded:
            self.certificate.load()
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self._host, self._requested_port, ssl_context=self.certificate.context
        )
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            address = _address(self._host, self._requested_port)
            raise ServerError(f"cannot listen on {address}: {exc.strerror or exc}") from None
        self.port = self._runner.addresses[0][1]
        self._watch = asyncio.create_task(self.certificate.watch(), name="certificate-watch")
        log.info(event_message("listening", address=_address(self._host, self.port)))

    async def stop(self) -> None:
        """Stop accepting, let reviews in flight finish (up to shutdown_timeout), close."""
        if self._watch is None:  # not started, or stopped already
            return
        self._watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._watch
        self._watch = None
        await self._runner.cleanup()
        await self._readiness.close()


async def serve(
    reviewer: Reviewer,
    metrics: Metrics,
    certificate: ReloadingCertificate,
    *,
    settings: Server,
) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    server = WebhookServer(
        reviewer,
        metrics,
        certificate,
        host=settings.address,
        port=settings.port,
        max_body_bytes=settings.max_body_bytes,
        keep_alive_seconds=settings.keep_alive_seconds,
        body_timeout_seconds=settings.request_body_timeout_seconds,
    )
    try:
        await server.start()
        # Everything built so far lives as long as the process: keep it out of every
        # garbage collection from now on. A review's objects are freed by reference
        # counting as it ends, so collecting after every 700 allocations (the default)
        # mostly walks requests still in flight: collect far less often.
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, 20, 100)
        await stopping.wait()
        log.info(event_message("stopping"))
        await server.stop()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


class _JsonLines(logging.Formatter):
    """One JSON object per record; a message that is itself a JSON object is merged in.

    Tracebacks are left out (the exception's type is in the message's own fields): they go
    to stderr, so nothing multi-line lands in the structured log.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        message = record.getMessage()
        fields: object = None
        if message.startswith("{"):
            with contextlib.suppress(orjson.JSONDecodeError):
                fields = orjson.loads(message)
        if isinstance(fields, dict):
            line.update(fields)
        else:
            line["message"] = one_line(message) or "-"
        return orjson.dumps(line).decode()


class _Tracebacks(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return self.formatException(record.exc_info) if record.exc_info else ""


def configure_logging(stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr) -> None:
    """JSON lines on stdout, one per event; tracebacks on stderr."""
    events = logging.StreamHandler(stdout)
    events.setFormatter(_JsonLines())
    tracebacks = logging.StreamHandler(stderr)
    tracebacks.setFormatter(_Tracebacks())
    tracebacks.addFilter(lambda record: record.exc_info is not None)
    root = logging.getLogger()
    root.handlers[:] = [events, tracebacks]
    root.setLevel(logging.INFO)


def _text(status: int, reason: str) -> web.Response:
    return web.Response(status=status, text=(one_line(reason) or "-") + "\n")


def _closing(status: int, reason: str) -> web.Response:
    """An answer after which the connection closes: the rest of the body is not read."""
    response = _text(status, reason)
    response.force_close()
    return response


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
