"""AdmissionReview (admission.k8s.io/v1): the request we read and the response we write."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

import msgspec
import orjson

from ..text import one_line, quoted
from .errors import BadReview
from .objects import KubeObject

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"
MAX_REASON = 200  # characters of a decoder's complaint quoted back (text.quoted)
OPERATIONS_WITH_OBJECT = frozenset({"CREATE", "UPDATE"})

ObjectT = TypeVar("ObjectT")


class _GroupVersionKind(msgspec.Struct, gc=False):
    group: str | None = None
    kind: str | None = None


class _Request(msgspec.Struct, Generic[ObjectT], gc=False):
    uid: str | None = None
    kind: _GroupVersionKind | None = None
    operation: str | None = None
    subResource: str | None = None
    namespace: str | None = None
    name: str | None = None
    dryRun: bool | None = None
    object: ObjectT | None = None


class _Review(msgspec.Struct, Generic[ObjectT], gc=False):
    apiVersion: str | None = None
    kind: str | None = None
    request: _Request[ObjectT] | None = None


# Decoding into these types checks the types of every field read and skips the rest. Like the
# object's types (see objects.py), they are not tracked by the garbage collector.
_DECODE = msgspec.json.Decoder(_Review[KubeObject])
# When that fails: whether the review itself is bad, or only the object inside it.
_DECODE_ENVELOPE = msgspec.json.Decoder(_Review[Any])


class AdmissionRequest(NamedTuple):
    """Immutable; a named tuple because it is built for every admission (cheaper than a
    frozen dataclass)."""

    uid: str
    group: str
    kind: str
    sub_resource: str
    operation: str
    namespace: str
    name: str
    dry_run: bool
    object: KubeObject | None  # None for DELETE and CONNECT, or when unreadable
    unreadable: str | None  # why the object could not be read, if it could not

    @property
    def display_name(self) -> str:
        name = self.name
        if not name and self.object is not None and self.object.metadata is not None:
            name = self.object.metadata.name or self.object.metadata.generateName or ""
        return f"{self.namespace}/{name}" if self.namespace else name


@dataclass(slots=True)
class AdmissionResponse:
    allowed: bool = True
    patch: list[dict[str, Any]] | None = None
    warnings: list[str] | None = None
    message: str | None = None  # why it was denied
    audit_annotations: dict[str, str] | None = None


def parse_review(body: bytes) -> AdmissionRequest:
    """The request inside an AdmissionReview; BadReview (400) with a one-line reason otherwise.

    An object whose fields have unexpected types is not the review's fault: the request
    comes back with `unreadable` saying why, for the caller to decide.
    """
    try:
        # JSON text is UTF-8 (RFC 8259 §8.1); the decoder checks only the strings it keeps.
        body.decode()
    except UnicodeDecodeError as exc:
        raise BadReview(400, f"body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    unreadable = None
    try:
        review: _Review[Any] = _decoded(_DECODE, body)
    except msgspec.ValidationError as exc:
        unreadable = _complaint(exc)
        try:
            review = _decoded(_DECODE_ENVELOPE, body)
        except msgspec.ValidationError as exc:
            raise BadReview(400, f"not an AdmissionReview: {_complaint(exc)}") from None
    if review.apiVersion != API_VERSION or review.kind != KIND:
        raise BadReview(400, f"expected apiVersion {API_VERSION} and kind {KIND}")
    request = review.request
    if request is None:
        raise BadReview(400, "AdmissionReview has no request")
    if not request.uid:
        raise BadReview(400, "request has no uid")
    if request.kind is None:
        raise BadReview(400, "request has no kind")
    operation = request.operation or ""
    obj = request.object
    if operation in OPERATIONS_WITH_OBJECT and not isinstance(obj, KubeObject | dict):
        raise BadReview(400, f"{operation} request has no object")
    if not isinstance(obj, KubeObject):
        obj = None
    # Positional: a named tuple built from keywords costs twice as much, on every admission.
    return AdmissionRequest(
        request.uid,
        request.kind.group or "",
        request.kind.kind or "",
        request.subResource or "",
        operation,
        request.namespace or "",
        request.name or "",
        request.dryRun is True,
        obj,
        unreadable if obj is None and operation in OPERATIONS_WITH_OBJECT else None,
    )


def _decoded(decoder: msgspec.json.Decoder[_Review[Any]], body: bytes) -> _Review[Any]:
    """`body` decoded; BadReview when it is not JSON at all (a type error is the caller's:
    msgspec.ValidationError). A type error can stop the first decoder before a syntax error
    later in the body, so every decoder meets both."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError:
        raise
    except msgspec.DecodeError as exc:
        raise BadReview(400, f"body is not valid JSON: {_complaint(exc)}") from None
    except RecursionError:
        # The decoder follows nesting as deep as Python's recursion limit allows; the API
        # server's reviews nest some 15 levels.
        raise BadReview(400, "body is nested too deeply to read") from None


def _complaint(error: msgspec.DecodeError) -> str:
    """The decoder's message, which quotes field names from the body, kept to one short line."""
    return quoted(one_line(error), MAX_REASON)


def encode_response(uid: str, answer: AdmissionResponse) -> bytes:
    response: dict[str, Any] = {"uid": uid, "allowed": answer.allowed}
    if answer.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(orjson.dumps(answer.patch)).decode()
    if answer.warnings:
        response["warnings"] = answer.warnings
    if answer.message is not None:
        response["status"] = {"code": 403, "message": answer.message}
    if answer.audit_annotations:
        response["auditAnnotations"] = answer.audit_annotations
    return orjson.dumps({"apiVersion": API_VERSION, "kind": KIND, "response": response})
