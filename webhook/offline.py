"""`image-backup review`: the webhook's decisions for manifests on disk (CI, GitOps).

Each object goes through the same review as an admission request, so a
repository can commit the backup references the cluster would get.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import jsonpatch
import orjson
import yaml

from .admission.decisions import Mode
from .admission.handler import Admission
from .admission.pods import handles
from .admission.review import API_VERSION, KIND
from .text import one_line


class ManifestError(ValueError):
    """A manifest file that cannot be read as Kubernetes objects."""


@dataclass(slots=True)
class Report:
    documents: list[Any] = field(default_factory=list)  # rewritten (enforce) or as read
    notes: list[str] = field(default_factory=list)  # one line per image decision
    denials: list[str] = field(default_factory=list)


def load_documents(name: str, text: str) -> list[Any]:
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ManifestError(f"{name}: not valid YAML: {one_line(exc)}") from None


async def review_documents(
    admission: Admission, name: str, documents: Iterable[Any], mode: Mode
) -> Report:
    report = Report()
    for document in documents:
        report.documents.append(await _review_document(admission, name, document, mode, report))
    return report


async def _review_document(
    admission: Admission, name: str, document: Any, mode: Mode, report: Report
) -> Any:
    if isinstance(document, dict) and document.get("kind") == "List":
        items = document.get("items")
        if isinstance(items, list):
            reviewed = [await _review_document(admission, name, i, mode, report) for i in items]
            return {**document, "items": reviewed}
        return document
    if not isinstance(document, dict):
        return document
    group, kind = _group_kind(document)
    if not handles(group, kind):
        return document
    answer = orjson.loads(await admission.review(_review_body(document, group, kind), mode))
    response = answer["response"]
    label = f"{name}: {kind}/{_name(document)}"
    report.notes.extend(f"{label}: {warning}" for warning in response.get("warnings", []))
    if not response["allowed"]:
        report.denials.append(f"{label}: {response['status']['message']}")
        return document
    if "patch" not in response:
        return document
    patch = orjson.loads(base64.b64decode(response["patch"]))
    return jsonpatch.apply_patch(document, patch)


def dump_documents(documents: list[Any]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False)


def _review_body(obj: dict[str, Any], group: str, kind: str) -> bytes:
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    assert isinstance(metadata, dict)
    request = {
        "uid": str(uuid.uuid4()),
        "kind": {"group": group, "version": "", "kind": kind},
        "operation": "CREATE",
        "namespace": metadata.get("namespace") or "",
        "name": metadata.get("name") or "",
        "object": obj,
    }
    return orjson.dumps({"apiVersion": API_VERSION, "kind": KIND, "request": request})


def _group_kind(obj: dict[str, Any]) -> tuple[str, str]:
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return "", ""
    group = api_version.rpartition("/")[0]
    return group, kind


def _name(obj: dict[str, Any]) -> str:
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) else "?"
