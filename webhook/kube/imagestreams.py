"""OpenShift ImageStreams, read through the API: the few fields that name images.

An ImageStream maps tags to images. ``spec.tags[]`` says where each tag comes from (an
external image, another ImageStream tag, or pushes to the internal registry);
``status.tags[]`` is what it pointed at, newest first (``items[0]`` is the current image,
the later items its history), each item a digest reference to the image's actual location
(``dockerImageReference``). A tag whose import is pending or failed has no items, and its
``conditions`` say why. Objects are decoded with msgspec into these fields only.

Changes are watched cluster-wide (``watch``) as client-go's reflectors do: from the
resourceVersion of a list, for a bounded time, the stream's events decoded as they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import msgspec
import urllib3
from kubernetes import client
from kubernetes.watch.watch import iter_resp_lines

from ..registry.cache import ExpiringCache
from ..registry.flight import SingleFlight
from ..text import one_line
from .client import (
    PAGE_SIZE,
    TIMEOUT_SECONDS,
    KubeError,
    ListMeta,
    decoded,
    listing,
    open_request,
    raw_request,
    serves,
    translated,
    until_written,
)

GROUP, VERSION, PLURAL = "image.openshift.io", "v1", "imagestreams"
PREFIX = f"/apis/{GROUP}/{VERSION}"
# An admission waits for a read the first time a stream is named: a slow API server must
# not use up its budget.
READ_TIMEOUT_SECONDS = 5.0
FORBIDDEN_PAUSE = 600.0  # after a 403, the same answer for this long without asking
MAX_STREAMS = 4096
STREAM_CACHE_BYTES = 16 << 20
# Events read from a watch and not yet taken by its consumer: the reading thread waits for
# room, so a slow consumer holds the stream back instead of piling ImageStreams up.
WATCH_BUFFER = 16


class ObjectReference(msgspec.Struct, gc=False, frozen=True):
    """A tag's origin: ``DockerImage`` (a pull spec), ``ImageStreamTag`` (``NAME:TAG``) or
    ``ImageStreamImage`` (``NAME@DIGEST``), in ``namespace`` or the stream's own."""

    kind: str = ""
    name: str = ""
    namespace: str = ""


class LookupPolicy(msgspec.Struct, gc=False, frozen=True):
    local: bool = False


class TagReference(msgspec.Struct, gc=False, frozen=True):
    name: str = ""
    from_: ObjectReference | None = msgspec.field(default=None, name="from")


class StreamSpec(msgspec.Struct, gc=False, frozen=True):
    lookupPolicy: LookupPolicy | None = None
    tags: list[TagReference] | None = None


class TagEvent(msgspec.Struct, gc=False, frozen=True):
    created: str = ""  # RFC 3339
    dockerImageReference: str = ""
    image: str = ""  # the image's digest
    generation: int | None = None


class TagEventCondition(msgspec.Struct, gc=False, frozen=True):
    type: str = ""
    status: str = ""
    reason: str = ""
    message: str = ""


class NamedTagEventList(msgspec.Struct, gc=False, frozen=True):
    tag: str = ""
    items: list[TagEvent] | None = None
    conditions: list[TagEventCondition] | None = None

    def problem(self) -> str:
        """Why the tag has no image, in the words of its conditions."""
        for condition in self.conditions or ():
            if condition.status != "True" and (condition.message or condition.reason):
                return condition.message or condition.reason
        return "no image imported yet"


class StreamStatus(msgspec.Struct, gc=False, frozen=True):
    dockerImageRepository: str = ""  # where the internal registry serves this stream
    tags: list[NamedTagEventList] | None = None


class StreamMeta(msgspec.Struct, gc=False, frozen=True):
    name: str = ""
    namespace: str = ""
    uid: str = ""
    resourceVersion: str = ""
    annotations: dict[str, str] | None = None


class ImageStream(msgspec.Struct, gc=False, frozen=True):
    metadata: StreamMeta = StreamMeta()
    spec: StreamSpec = StreamSpec()
    status: StreamStatus = StreamStatus()

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    @property
    def local_lookup(self) -> bool:
        """Whether bare names resolve through it (``spec.lookupPolicy.local``)."""
        return self.spec.lookupPolicy is not None and self.spec.lookupPolicy.local

    def history(self, tag: str) -> NamedTagEventList | None:
        """The tag's status: its images, newest first; None if the stream has no such tag."""
        for named in self.status.tags or ():
            if named.tag == tag:
                return named
        return None

    def spec_tag(self, tag: str) -> TagReference | None:
        for reference in self.spec.tags or ():
            if reference.name == tag:
                return reference
        return None


class _Page(msgspec.Struct, gc=False):
    metadata: ListMeta | None = None
    items: list[ImageStream] = []


class _Status(msgspec.Struct, gc=False, frozen=True):
    message: str = ""
    reason: str = ""
    code: int = 0


class _Event(msgspec.Struct, gc=False, frozen=True):
    type: str
    object: msgspec.Raw


_END = object()  # the watch's stream ended


class ImageStreams:
    """Reads ImageStreams through the API server, on threads (the client is synchronous)."""

    def __init__(self, api: client.ApiClient, *, page_size: int = PAGE_SIZE) -> None:
        self._api = api
        self._page_size = page_size
        self._available: bool | None = None
        self._pages = msgspec.json.Decoder(_Page)
        self._streams = msgspec.json.Decoder(ImageStream)
        self._events = msgspec.json.Decoder(_Event)
        self._statuses = msgspec.json.Decoder(_Status)

    async def available(self) -> bool:
        """Whether the API serves ImageStreams (an OpenShift cluster); asked once."""
        if self._available is None:
            self._available = await serves(self._api, PREFIX)
        return self._available

    async def get(self, namespace: str, name: str) -> ImageStream | None:
        """The ImageStream, or None if there is none of that name."""
        stream, _ = await self._get(namespace, name)
        return stream

    async def _get(self, namespace: str, name: str) -> tuple[ImageStream | None, int]:
        """The ImageStream (None: none of that name) and the bytes it was read from."""
        path = f"{PREFIX}/namespaces/{namespace}/{PLURAL}/{name}"
        doing = f"reading ImageStream {namespace}/{name}"
        try:
            raw = await asyncio.to_thread(
                raw_request, self._api, "GET", path, [], doing, timeout=READ_TIMEOUT_SECONDS
            )
        except KubeError as exc:
            if exc.status == 404:
                return None, 0
            raise
        stream: ImageStream = decoded(raw, self._streams, doing)
        return stream, len(raw)

    async def point_tags(self, namespace: str, name: str, tags: Mapping[str, str]) -> bool:
        """Point each spec tag of `tags` at its image (``{kind: DockerImage, name: <pull
        spec>}``, referencePolicy Source), creating the ImageStream if there is none; the
        stream's other tags and fields are kept. True if it was created. A write that meets
        a newer version of the stream (409) is read and made again.

        Only the spec is written: the API server computes the status, and the tag's image
        appears there once OpenShift has imported it from the pull spec."""
        path = f"{PREFIX}/namespaces/{namespace}/{PLURAL}"
        doing = f"writing ImageStream {namespace}/{name}"
        created = False

        async def attempt() -> bool:
            nonlocal created
            try:
                raw = await asyncio.to_thread(
                    raw_request, self._api, "GET", f"{path}/{name}", [], doing
                )
            except KubeError as exc:
                if exc.status != 404:
                    raise
                stream: Any = {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "ImageStream",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {},
                }
                method, target = "POST", path
            else:
                stream = msgspec.json.decode(raw)
                method, target = "PUT", f"{path}/{name}"
            _point(stream, tags)
            try:
                await asyncio.to_thread(raw_request, self._api, method, target, [], doing, stream)
            except KubeError as exc:
                if exc.status != 409:  # a conflict, or created meanwhile: read it again
                    raise
                return False
            created = method == "POST"
            return True

        await until_written(doing, attempt)
        return created

    async def in_namespace(self, namespace: str) -> AsyncIterator[ImageStream]:
        """Every ImageStream of the namespace, a page at a time."""
        path = f"{PREFIX}/namespaces/{namespace}/{PLURAL}"
        doing = f"listing ImageStreams in {namespace}"

        async for page in listing(self._api, path, doing, self._pages, page_size=self._page_size):
            for stream in page.items:
                yield stream

    async def everywhere(self) -> AsyncIterator[tuple[list[ImageStream], str]]:
        """Every ImageStream of the cluster, a page at a time, each page with the
        resourceVersion of its list: a watch from the last one misses no later change."""
        path, doing = f"{PREFIX}/{PLURAL}", "listing ImageStreams"
        async for page in listing(self._api, path, doing, self._pages, page_size=self._page_size):
            yield page.items, page.metadata.resourceVersion if page.metadata else ""

    async def watch(
        self, resource_version: str, *, timeout_seconds: int
    ) -> AsyncIterator[tuple[str, ImageStream]]:
        """(ADDED, MODIFIED or DELETED, the ImageStream) for each change after
        `resource_version`, cluster-wide, until the API server ends the stream (after
        `timeout_seconds`). A resourceVersion the API server no longer has raises
        KubeError with status 410: list again."""
        doing = "watching ImageStreams"
        query: list[tuple[str, Any]] = [
            ("watch", "true"),
            ("resourceVersion", resource_version),
            ("allowWatchBookmarks", "false"),
            ("timeoutSeconds", timeout_seconds),
        ]
        timeout = (TIMEOUT_SECONDS, timeout_seconds + TIMEOUT_SECONDS)

        def start() -> urllib3.BaseHTTPResponse:
            with translated(self._api, doing):
                return open_request(self._api, "GET", f"{PREFIX}/{PLURAL}", query, timeout=timeout)

        response = await asyncio.to_thread(start)
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[object] = asyncio.Queue()
        room = threading.Semaphore(WATCH_BUFFER)
        stopped = threading.Event()

        def hand(item: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody reads
                loop.call_soon_threadsafe(lines.put_nowait, item)

        def read() -> None:
            """On a thread of its own: the stream's lines, as the consumer makes room."""
            try:
                with translated(self._api, doing):
                    for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                        while not room.acquire(timeout=0.5):
                            if stopped.is_set():
                                return
                        if stopped.is_set():
                            return
                        hand(line)
            except Exception as exc:  # the consumer shut the stream, or it broke
                if not stopped.is_set():
                    hand(
                        exc
                        if isinstance(exc, KubeError)
                        else KubeError(f"{doing}: {one_line(str(exc))}")
                    )
            finally:
                response.close()
            hand(_END)

        reader = threading.Thread(target=read, name="imagestreams-watch", daemon=True)
        reader.start()
        try:
            while (line := await lines.get()) is not _END:
                room.release()
                if isinstance(line, KubeError):
                    raise line
                assert isinstance(line, str)
                if line.strip():
                    yield self._event(line, doing)
        finally:
            stopped.set()
            # The reading thread's read returns at once, and it closes the response (closing
            # it here would wait for that read).
            with contextlib.suppress(ValueError, RuntimeError, OSError):  # ended already
                response.shutdown()

    def _event(self, line: str, doing: str) -> tuple[str, ImageStream]:
        event: _Event = decoded(line.encode(), self._events, doing)
        if event.type == "ERROR":
            status: _Status = decoded(bytes(event.object), self._statuses, doing)
            raise KubeError(f"{doing}: {status.code} {status.message}", status.code, status.reason)
        stream: ImageStream = decoded(bytes(event.object), self._streams, doing)
        return event.type, stream


def _point(stream: Any, tags: Mapping[str, str]) -> None:
    """Set `stream`'s spec tags to pull `tags`' images by reference (the object's JSON)."""
    spec = stream.setdefault("spec", {})
    listed = spec.setdefault("tags", []) or []
    spec["tags"] = listed
    by_name = {tag.get("name"): tag for tag in listed}
    for tag, image in tags.items():
        entry = by_name.get(tag)
        if entry is None:
            entry = {"name": tag}
            listed.append(entry)
        entry["from"] = {"kind": "DockerImage", "name": image}
        entry["referencePolicy"] = {"type": "Source"}


class StreamLookup:
    """ImageStreams as admissions read them: remembered for `ttl` seconds and, once stale,
    read again in the background while the stale one still answers, as pull credentials
    are. Admissions wait on the API server only for a stream not seen recently."""

    def __init__(
        self, streams: ImageStreams, *, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._streams = streams
        self._ttl = ttl
        self._clock = clock
        # (stream or None, read at, bytes read); kept ten lifetimes, then a request waits.
        self._known: ExpiringCache[tuple[str, str], tuple[ImageStream | None, float, int]] = (
            ExpiringCache(
                MAX_STREAMS, clock, max_bytes=STREAM_CACHE_BYTES, weigh=lambda _, v: v[2] + 256
            )
        )
        self._reads: SingleFlight[tuple[str, str], ImageStream | None] = SingleFlight()
        self._forbidden: tuple[float, KubeError] | None = None

    async def stream(self, namespace: str, name: str) -> tuple[ImageStream | None, float]:
        """The ImageStream (None: there is none) and until when (time.monotonic()) that is
        fresh. Raises KubeError when it cannot be read and was not read before."""
        key = (namespace, name)
        now = self._clock()
        known = self._known.get(key)
        if known is not None:
            stream, read_at, _ = known[0]
            if now - read_at < self._ttl:
                return stream, read_at + self._ttl
            self._reads.start(key, lambda: self._read(key))  # a failure keeps the stale one
            return stream, now
        return await self._reads.run(key, lambda: self._read(key)), now + self._ttl

    async def _read(self, key: tuple[str, str]) -> ImageStream | None:
        if self._forbidden is not None and self._clock() < self._forbidden[0]:
            raise self._forbidden[1]
        read_at = self._clock()
        try:
            stream, size = await self._streams._get(*key)
        except KubeError as exc:
            if exc.status == 403:
                self._forbidden = (self._clock() + FORBIDDEN_PAUSE, exc)
            raise
        self._known.put(key, (stream, read_at, size), self._ttl * 10)
        return stream
