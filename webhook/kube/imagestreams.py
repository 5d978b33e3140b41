"""OpenShift ImageStreams, read through the API: the few fields that name images.

An ImageStream maps tags to images. ``spec.tags[]`` says where each tag comes from (an
external image, another ImageStream tag, or pushes to the internal registry);
``status.tags[]`` is what it pointed at, newest first (``items[0]`` is the current image,
the later items its history), each item a digest reference to the image's actual location
(``dockerImageReference``). A tag whose import is pending or failed has no items, and its
``conditions`` say why. Objects are decoded with msgspec into these fields only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import msgspec
from kubernetes import client

from ..registry.cache import ExpiringCache
from ..registry.flight import SingleFlight
from .client import PAGE_SIZE, KubeError, ListMeta, decoded, listing, raw_request, serves

GROUP, VERSION, PLURAL = "image.openshift.io", "v1", "imagestreams"
PREFIX = f"/apis/{GROUP}/{VERSION}"
# An admission waits for a read the first time a stream is named: a slow API server must
# not use up its budget.
READ_TIMEOUT_SECONDS = 5.0
FORBIDDEN_PAUSE = 600.0  # after a 403, the same answer for this long without asking
MAX_STREAMS = 4096
STREAM_CACHE_BYTES = 16 << 20


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


class ImageStreams:
    """Reads ImageStreams through the API server, on threads (the client is synchronous)."""

    def __init__(self, api: client.ApiClient, *, page_size: int = PAGE_SIZE) -> None:
        self._api = api
        self._page_size = page_size
        self._available: bool | None = None
        self._pages = msgspec.json.Decoder(_Page)
        self._streams = msgspec.json.Decoder(ImageStream)

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

    async def in_namespace(self, namespace: str) -> AsyncIterator[ImageStream]:
        """Every ImageStream of the namespace, a page at a time."""
        path = f"{PREFIX}/namespaces/{namespace}/{PLURAL}"
        doing = f"listing ImageStreams in {namespace}"

        async for page in listing(self._api, path, doing, self._pages, page_size=self._page_size):
            for stream in page.items:
                yield stream


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
