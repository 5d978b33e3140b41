"""AdmissionReview (admission.k8s.io/v1): the request we read and the response we write."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from .errors import BadReview

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"
OPERATIONS_WITH_OBJECT = frozenset({"CREATE", "UPDATE"})


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
    object: dict[str, Any] | None  # None for DELETE and CONNECT

    @property
    def display_name(self) -> str:
        name = self.name or _generated_name(self.object)
        return f"{self.namespace}/{name}" if self.namespace else name


@dataclass(slots=True)
class AdmissionResponse:
    allowed: bool = True
    patch: list[dict[str, Any]] | None = None
    warnings: list[str] | None = None
    message: str | None = None  # why it was denied
    audit_annotations: dict[str, str] | None = None


def parse_review(body: bytes) -> AdmissionRequest:
    """The request inside an AdmissionReview; BadReview (400) with a one-line reason otherwise."""
    try:
        review = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadReview(400, f"body is not valid JSON: {_one_line(str(exc))}") from None
    if not isinstance(review, dict):
        raise BadReview(400, "body is not a JSON object")
    if review.get("apiVersion") != API_VERSION or review.get("kind") != KIND:
        raise BadReview(400, f"expected apiVersion {API_VERSION} and kind {KIND}")
    request = review.get("request")
    if not isinstance(request, dict):
        raise BadReview(400, "AdmissionReview has no request")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise BadReview(400, "request has no uid")
    operation = _text(request, "operation")
    obj = request.get("object")
    if operation in OPERATIONS_WITH_OBJECT and not isinstance(obj, dict):
        raise BadReview(400, f"{operation} request has no object")
    kind = request.get("kind")
    if not isinstance(kind, dict):
        raise BadReview(400, "request has no kind")
    # Positional: a named tuple built from keywords costs twice as much, on every admission.
    return AdmissionRequest(
        uid,
        _text(kind, "group"),
        _text(kind, "kind"),
        _text(request, "subResource"),
        operation,
        _text(request, "namespace"),
        _text(request, "name"),
        request.get("dryRun") is True,
        obj if isinstance(obj, dict) else None,
    )


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


def _text(document: dict[str, Any], key: str) -> str:
    value = document.get(key)
    if type(value) is str:  # the common case first: this runs on every admission
        return value
    if value is None:
        return ""
    raise BadReview(400, f"request field {key!r} is not a string")


def _generated_name(obj: dict[str, Any] | None) -> str:
    metadata = obj.get("metadata") if obj else None
    if isinstance(metadata, dict):
        for key in ("name", "generateName"):
            value = metadata.get(key)
            if isinstance(value, str) and value:
                return value
    return ""


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]
