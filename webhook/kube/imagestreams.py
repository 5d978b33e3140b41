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
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from kubernetes import client

from .client import PAGE_SIZE, KubeError, pages, raw_request

GROUP, VERSION, PLURAL = "image.openshift.io", "v1", "imagestreams"
PREFIX = f"/apis/{GROUP}/{VERSION}"


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


class _ListMeta(msgspec.Struct, gc=False):
    continue_: str | None = msgspec.field(default=None, name="continue")
    resourceVersion: str = ""


class _Page(msgspec.Struct, gc=False):
    metadata: _ListMeta | None = None
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
            try:
                await asyncio.to_thread(
                    raw_request, self._api, "GET", PREFIX, [], f"discovering {PREFIX}"
                )
            except KubeError as exc:
                if exc.status != 404:
                    raise
                self._available = False
            else:
                self._available = True
        return self._available

    async def get(self, namespace: str, name: str) -> ImageStream | None:
        """The ImageStream, or None if there is none of that name."""
        path = f"{PREFIX}/namespaces/{namespace}/{PLURAL}/{name}"
        doing = f"reading ImageStream {namespace}/{name}"
        try:
            raw = await asyncio.to_thread(raw_request, self._api, "GET", path, [], doing)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        stream: ImageStream = self._decoded(raw, self._streams, doing)
        return stream

    async def in_namespace(self, namespace: str) -> AsyncIterator[ImageStream]:
        """Every ImageStream of the namespace, a page at a time."""
        path = f"{PREFIX}/namespaces/{namespace}/{PLURAL}"
        doing = f"listing ImageStreams in {namespace}"

        async def fetch(token: str) -> tuple[_Page, str]:
            query: list[tuple[str, Any]] = [("limit", self._page_size)]
            if token:
                query.append(("continue", token))
            raw = await asyncio.to_thread(raw_request, self._api, "GET", path, query, doing)
            page: _Page = self._decoded(raw, self._pages, doing)
            return page, (page.metadata.continue_ if page.metadata else None) or ""

        async for page in pages(fetch):
            for stream in page.items:
                yield stream

    @staticmethod
    def _decoded(raw: bytes, decoder: msgspec.json.Decoder[Any], doing: str) -> Any:
        try:
            return decoder.decode(raw)
        except msgspec.ValidationError as exc:
            raise KubeError(f"{doing}: unexpected answer: {exc}") from None
