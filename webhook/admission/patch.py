"""The RFC 6902 patch: the rewritten image fields and one annotation on the object itself.

Nothing in a pod template's metadata changes, so a rewrite never causes an
extra rollout of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

ORIGINAL_IMAGES = "image-backup.io/original-images"


def build_patch(
    obj: Mapping[str, Any], rewrites: Mapping[str, tuple[str, str, str]]
) -> list[dict[str, Any]]:
    """`rewrites` maps a JSON pointer to (container, original image, new image)."""
    if not rewrites:
        return []
    ops: list[dict[str, Any]] = [
        {"op": "replace", "path": pointer, "value": new}
        for pointer, (_, _, new) in rewrites.items()
    ]
    metadata = obj.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    originals = _recorded(annotations)
    originals.update({container: original for container, original, _ in rewrites.values()})
    value = orjson.dumps(originals, option=orjson.OPT_SORT_KEYS).decode()
    if not isinstance(metadata, dict):
        ops.append(
            {"op": "add", "path": "/metadata", "value": {"annotations": {ORIGINAL_IMAGES: value}}}
        )
    elif not isinstance(annotations, dict):
        ops.append(
            {"op": "add", "path": "/metadata/annotations", "value": {ORIGINAL_IMAGES: value}}
        )
    else:
        key = ORIGINAL_IMAGES.replace("~", "~0").replace("/", "~1")
        ops.append({"op": "add", "path": f"/metadata/annotations/{key}", "value": value})
    return ops


def _recorded(annotations: object) -> dict[str, str]:
    """What an earlier rewrite recorded, kept so an update adds to it rather than erasing it."""
    if not isinstance(annotations, dict):
        return {}
    try:
        recorded = orjson.loads(annotations.get(ORIGINAL_IMAGES) or "{}")
    except (orjson.JSONDecodeError, TypeError):
        return {}
    if not isinstance(recorded, dict):
        return {}
    return {k: v for k, v in recorded.items() if isinstance(k, str) and isinstance(v, str)}
