"""What OpenShift's ImageStreams make of a workload's images, before they are planned.

* A bare name ``NAME[:TAG]`` (no registry, no ``/``, no digest) names the ImageStream tag
  ``NAME:TAG`` (``latest`` if none) of the object's namespace when that ImageStream has
  ``spec.lookupPolicy.local``, or when the object or its pod template carries
  ``alpha.image.policy.openshift.io/resolve-names: "*"``: the image is the tag's current
  one (``status.tags[TAG].items[0]``). That is what OpenShift's image policy admission
  plugin does, and what kubelet then pulls; its LocalNames rules cover every kind the
  webhook reviews but PodTemplates, which the resolution here also covers (their Pods
  would be resolved). A name that such an ImageStream claims is never read as Docker
  Hub's: a tag with no image yet is a failure naming the tag and why.
* A container a trigger fills (triggers.py) is left alone while its image is not yet a
  digest reference (a placeholder, or the tag's name): the trigger's update is reviewed.
* A digest the stream says is a tag's current image is backed up with that tag too (the
  backup repository's tag follows it), so a restore or fallback by tag finds it.

ImageStreams are read through a StreamReader (kube.imagestreams.StreamLookup): remembered
briefly and refreshed off the hot path, as pull credentials are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..kube.imagestreams import ImageStream
from ..reference import DEFAULT_TAG, InvalidReference, Reference, parse
from ..text import one_line
from .objects import KubeObject
from .pods import ImageField, template_annotations
from .triggers import StreamTagName

RESOLVE_NAMES = "alpha.image.policy.openshift.io/resolve-names"


class StreamReader(Protocol):
    async def stream(self, namespace: str, name: str) -> tuple[ImageStream | None, float]:
        """The ImageStream (None: there is none) and until when (time.monotonic()) that
        holds; raises an error with words when it cannot be told."""
        ...


@dataclass(frozen=True, slots=True)
class StreamImage:
    reference: Reference  # what to back up: a digest, tagged when the stream says which tag
    via: str  # "ImageStream app:v1", for the words of warnings


@dataclass(slots=True)
class Resolved:
    images: dict[str, StreamImage] = field(default_factory=dict)  # by pointer
    waiting: dict[str, StreamTagName] = field(default_factory=dict)  # for their trigger
    problems: dict[str, str] = field(default_factory=dict)  # why no image can be told
    valid_until: float | None = None  # when what the streams said goes stale
    uncertain: bool = False  # a stream could not be read: the answer is not to be reused

    def trust_until(self, moment: float) -> None:
        self.valid_until = moment if self.valid_until is None else min(self.valid_until, moment)


def resolves_all_names(group: str, kind: str, obj: KubeObject) -> bool:
    """Whether the object, or its pod template, asks for every name to be resolved."""
    for found in (
        obj.metadata.annotations if obj.metadata is not None else None,
        template_annotations(group, kind, obj),
    ):
        if found and found.get(RESOLVE_NAMES) == "*":
            return True
    return False


def bare_name(image: str) -> tuple[str, str] | None:
    """(ImageStream, tag) a bare ``NAME[:TAG]`` may name; None for any other image."""
    if "/" in image or "@" in image:
        return None
    try:
        parse(image)
    except InvalidReference:
        return None
    name, _, tag = image.partition(":")
    return name, tag or DEFAULT_TAG


async def resolve(
    reader: StreamReader,
    *,
    namespace: str,
    fields: Sequence[ImageField],
    triggered: Mapping[str, StreamTagName],
    resolve_all: bool,
) -> Resolved:
    resolved = Resolved()
    for image_field in fields:
        pointer, image = image_field.pointer, image_field.image
        trigger = triggered.get(pointer)
        if trigger is not None:
            reference = _digest_reference(image)
            if reference is None:
                resolved.waiting[pointer] = trigger
                continue
            stream = await _read(reader, trigger.namespace, trigger.stream, resolved)
            if isinstance(stream, ImageStream):
                tag = located_tag(stream, trigger.tag, reference)
                if tag is not None:
                    via = f"ImageStream {trigger}"
                    resolved.images[pointer] = StreamImage(reference.with_tag(tag), via)
            continue
        named = bare_name(image)
        if named is None:
            continue
        name, tag = named
        stream = await _read(reader, namespace, name, resolved)
        if isinstance(stream, str):
            resolved.problems[pointer] = stream
        elif stream is not None and (resolve_all or stream.local_lookup):
            _from_stream(stream, tag, pointer, resolved)
    return resolved


def located_tag(stream: ImageStream, tag: str, reference: Reference) -> str | None:
    """The tag that names `reference` (a digest) where it lives, if the stream says it is
    tag `tag`'s current image: the tag of the external pull spec the tag is imported from,
    or, for an image pushed to the internal registry, the ImageStream tag's own name."""
    history = stream.history(tag)
    items = history.items if history is not None else None
    if not items or _digest_reference(items[0].dockerImageReference) != reference:
        return None
    origin = stream.spec_tag(tag)
    if origin is not None and origin.from_ is not None and origin.from_.kind == "DockerImage":
        try:
            imported = parse(origin.from_.name)
        except InvalidReference:
            imported = None
        if imported is not None and imported.name == reference.name:
            return imported.tag or DEFAULT_TAG
    try:
        internal = parse(stream.status.dockerImageRepository).name
    except InvalidReference:
        return None
    return tag if internal == reference.name else None


def _from_stream(stream: ImageStream, tag: str, pointer: str, resolved: Resolved) -> None:
    where = f"ImageStream {stream.name}:{tag}"
    history = stream.history(tag)
    items = history.items if history is not None else None
    if history is None or not items:
        why = history.problem() if history is not None else "the ImageStream has no such tag"
        resolved.problems[pointer] = f"{where} has no image: {one_line(why)}"
        return
    reference = _digest_reference(items[0].dockerImageReference)
    if reference is None:
        resolved.problems[pointer] = (
            f"{where} names {items[0].dockerImageReference!r}, not an image by digest"
        )
        return
    tag_there = located_tag(stream, tag, reference)
    resolved.images[pointer] = StreamImage(reference.with_tag(tag_there), where)


async def _read(
    reader: StreamReader, namespace: str, name: str, resolved: Resolved
) -> ImageStream | str | None:
    """The stream, None if there is none, or why it cannot be read."""
    try:
        stream, fresh_until = await reader.stream(namespace, name)
    except Exception as exc:  # the API server's words (KubeError), or a failure of ours
        resolved.uncertain = True
        return f"cannot tell whether ImageStream {namespace}/{name} names it: {one_line(exc)}"
    resolved.trust_until(fresh_until)
    return stream


def _digest_reference(image: str) -> Reference | None:
    try:
        reference = parse(image)
    except InvalidReference:
        return None
    return reference.with_tag(None) if reference.digest else None
