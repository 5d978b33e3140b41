"""Where the images are: the pod spec inside each workload kind, and its containers."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, NamedTuple

CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")

_TEMPLATE = ("spec", "template", "spec")
# (API group, kind) -> keys from the object down to its pod spec.
POD_SPEC_PATHS: dict[tuple[str, str], tuple[str, ...]] = {
    ("", "Pod"): ("spec",),
    ("", "PodTemplate"): ("template", "spec"),
    ("", "ReplicationController"): _TEMPLATE,
    ("apps", "ReplicaSet"): _TEMPLATE,
    ("apps", "Deployment"): _TEMPLATE,
    ("apps", "StatefulSet"): _TEMPLATE,
    ("apps", "DaemonSet"): _TEMPLATE,
    ("batch", "Job"): _TEMPLATE,
    ("batch", "CronJob"): ("spec", "jobTemplate", "spec", "template", "spec"),
    ("apps.openshift.io", "DeploymentConfig"): _TEMPLATE,
}


class ImageField(NamedTuple):
    pointer: str  # RFC 6901 pointer to the image string within the object
    container: str
    image: str


def handles(group: str, kind: str) -> bool:
    return (group, kind) in POD_SPEC_PATHS


def image_fields(group: str, kind: str, obj: dict[str, Any]) -> list[ImageField]:
    """Every container image of the object's pod spec; malformed parts are skipped.

    The API server validates the schema after us, so odd shapes are not ours to
    reject, only not to crash on. This runs on every admission, hence the plain loops.
    """
    path = POD_SPEC_PATHS.get((group, kind))
    if path is None:
        return []
    spec: Any = obj
    for key in path:
        spec = spec.get(key) if isinstance(spec, dict) else None
    if not isinstance(spec, dict):
        return []
    fields = []
    for list_name in CONTAINER_LISTS:
        containers = spec.get(list_name)
        if not isinstance(containers, list):
            continue
        pointers = _pointers(path, list_name, len(containers))
        for index, container in enumerate(containers):
            if not isinstance(container, dict):
                continue
            image, name = container.get("image"), container.get("name")
            if isinstance(image, str) and image:
                fields.append(
                    ImageField(pointers[index], name if isinstance(name, str) else "", image)
                )
    return fields


@lru_cache(maxsize=256)
def _pointers(path: tuple[str, ...], list_name: str, count: int) -> tuple[str, ...]:
    base = "/" + "/".join(path)
    return tuple(f"{base}/{list_name}/{index}/image" for index in range(count))
