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
# Its RFC 6901 pointer in an object: "/" in a key is written "~1".
ORIGINAL_IMAGES_POINTER = "/metadata/annotations/image-backup.io~1original-images"


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
    originals = recorded_originals(annotations)
    originals.update({container: original for container, original, _ in rewrites.values()})
    value = originals_value(originals)
    if metadata is None:
        ops.append(
            {"op": "add", "path": "/metadata", "value": {"annotations": {ORIGINAL_IMAGES: value}}}
        )
    elif annotations is None:
        ops.append(
            {"op": "add", "path": "/metadata/annotations", "value": {ORIGINAL_IMAGES: value}}
        )
    else:
        ops.append({"op": "add", "path": ORIGINAL_IMAGES_POINTER, "value": value})
    return ops


def originals_value(originals: Mapping[str, str]) -> str:
    """The annotation's value: container name -> original image, as JSON."""
    return orjson.dumps(dict(originals), option=orjson.OPT_SORT_KEYS).decode()


def recorded_originals(annotations: dict[str, str] | None) -> dict[str, str]:
    """What earlier rewrites recorded: an update adds to it rather than erasing it, and
    `image-backup revert` puts it back. Anything but a JSON object of strings counts as
    nothing recorded."""
    if not annotations:
        return {}
    try:
        recorded = orjson.loads(annotations.get(ORIGINAL_IMAGES) or "{}")
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(recorded, dict):
        return {}
    return {k: v for k, v in recorded.items() if isinstance(k, str) and isinstance(v, str)}
