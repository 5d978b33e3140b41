"""Reviews built from the captured kube-apiserver samples, served by local registries."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from pathlib import Path
from typing import Any

import jsonpatch
import orjson

SAMPLES = Path(__file__).resolve().parent / "data" / "admission"  # see tests/data/README.md

# The images the samples use, as Docker Hub names; tests serve them from a local registry.
SAMPLE_IMAGES = {
    "library/nginx:1.25": [120_000, 3_000],
    "library/nginx:1.26": [130_000, 3_000],
    "library/busybox:1.36": [80_000],
    "library/alpine:3.19": [90_000],
}


def sample(name: str) -> dict[str, Any]:
    review: dict[str, Any] = json.loads((SAMPLES / f"{name}.json").read_text())
    return review


def body(review: dict[str, Any]) -> bytes:
    return orjson.dumps(review)


def with_object(review: dict[str, Any], obj: dict[str, Any], **request: Any) -> dict[str, Any]:
    """A copy of `review` carrying `obj`, a fresh uid and any request fields given."""
    changed = copy.deepcopy(review)
    changed["request"]["object"] = obj
    changed["request"]["uid"] = str(uuid.uuid4())
    changed["request"].update(request)
    return changed


def response_of(answer: bytes, review: dict[str, Any]) -> dict[str, Any]:
    """The response part, after checking the envelope every answer must have."""
    document = orjson.loads(answer)
    assert document["apiVersion"] == "admission.k8s.io/v1"
    assert document["kind"] == "AdmissionReview"
    assert document["response"]["uid"] == review["request"]["uid"]
    response: dict[str, Any] = document["response"]
    return response


def patched(review: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """The request's object with the response's JSON patch applied (unchanged without one)."""
    obj: dict[str, Any] = copy.deepcopy(review["request"]["object"])
    if "patch" not in response:
        return obj
    assert response["patchType"] == "JSONPatch"
    operations = json.loads(base64.b64decode(response["patch"]))
    result = jsonpatch.apply_patch(obj, operations)
    assert isinstance(result, dict)
    return result


def images_of(pod_spec: dict[str, Any]) -> dict[str, str]:
    return {
        c["name"]: c["image"]
        for key in ("initContainers", "containers", "ephemeralContainers")
        for c in pod_spec.get(key, [])
    }
