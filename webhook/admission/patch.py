"""The RFC 6902 patch: the rewritten image fields and one annotation on the object itself.

Nothing in a pod template's metadata changes, so a rewrite never causes an
extra rollout of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from .objects import ObjectMeta

ORIGINAL_IMAGES = "image-backup.io/original-images"


def build_patch(
    metadata: ObjectMeta | None,
    rewrites: Mapping[str, tuple[str, str, str]],
    *,
    record_originals: bool = True,
) -> list[dict[str, Any]]:
    """`rewrites` maps a JSON pointer to (container, original image, new image);
    `record_originals`: also in the ORIGINAL_IMAGES annotation."""
    if not rewrites:
        return []
    ops: list[dict[str, Any]] = [
        {"op": "replace", "path": pointer, "value": new}
        for pointer, (_, _, new) in rewrites.items()
    ]
    if not record_originals:
        return ops
    annotations = metadata.annotations if metadata is not None else None
    originals = _recorded(annotations)
    originals.update({container: original for container, original, _ in rewrites.values()})
    value = orjson.dumps(originals, option=orjson.OPT_SORT_KEYS).decode()
    if metadata is None:
        ops.append(
            {"op": "add", "path": "/metadata", "value": {"annotations": {ORIGINAL_IMAGES: value}}}
        )
    elif annotations is None:
        ops.append(
            {"op": "add", "path": "/metadata/annotations", "value": {ORIGINAL_IMAGES: value}}
        )
    else:
        key = ORIGINAL_IMAGES.replace("~", "~0").replace("/", "~1")
        ops.append({"op": "add", "path": f"/metadata/annotations/{key}", "value": value})
    return ops


def _recorded(annotations: dict[str, str] | None) -> dict[str, str]:
    """What an earlier rewrite recorded, kept so an update adds to it rather than erasing it."""
    if not annotations:
        return {}
    try:
        recorded = orjson.loads(annotations.get(ORIGINAL_IMAGES) or "{}")
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(recorded, dict):
        return {}
    return {k: v for k, v in recorded.items() if isinstance(k, str) and isinstance(v, str)}
