"""Where the images are: the pod spec inside each workload kind, and its containers."""

from __future__ import annotations

from collections.abc import Iterator
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
    reject, only not to crash on.
    """
    path = POD_SPEC_PATHS.get((group, kind))
    if path is None:
        return []
    spec: Any = obj
    for key in path:
        spec = spec.get(key) if isinstance(spec, dict) else None
    if not isinstance(spec, dict):
        return []
    base = "/" + "/".join(path)
    return list(_containers(spec, base))


def _containers(spec: dict[str, Any], base: str) -> Iterator[ImageField]:
    for list_name in CONTAINER_LISTS:
        containers = spec.get(list_name)
        if not isinstance(containers, list):
            continue
        for index, container in enumerate(containers):
            if not isinstance(container, dict):
                continue
            image, name = container.get("image"), container.get("name")
            if isinstance(image, str) and image:
                yield ImageField(
                    f"{base}/{list_name}/{index}/image",
                    name if isinstance(name, str) else "",
                    image,
                )
