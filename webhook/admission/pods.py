"""Where the images are: the pod spec inside each workload kind, and its containers."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, NamedTuple

from .objects import KubeObject, Spec, Template

CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
# An update of this Pod subresource keeps spec.ephemeralContainers and drops every other
# change (the API server's rule, as for `kubectl debug`): only those images are backed up
# and rewritten, and no annotation records them.
EPHEMERAL_CONTAINERS = "ephemeralcontainers"
# Pointers are kept for lists up to this long: a pod has a few containers, while a hostile
# body may list a million, whose pointers no cache should keep.
CACHED_POINTERS = 64

_TEMPLATE = ("spec", "template", "spec")
# (API group, kind) -> fields from the object down to its pod spec.
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


def pod_spec(group: str, kind: str, obj: KubeObject) -> Spec | None:
    """The object's pod spec, if it has one."""
    path = POD_SPEC_PATHS.get((group, kind))
    if path is None:
        return None
    spec: Any = obj
    for field in path:
        spec = getattr(spec, field)
        if spec is None:
            return None
    assert isinstance(spec, Spec)
    return spec


def template_annotations(group: str, kind: str, obj: KubeObject) -> dict[str, str] | None:
    """The annotations of the object's pod template (a Pod has none: it is no template)."""
    path = POD_SPEC_PATHS.get((group, kind))
    if path is None or len(path) < 2:
        return None
    template: Any = obj
    for name in path[:-1]:
        template = getattr(template, name)
        if template is None:
            return None
    assert isinstance(template, Template)
    return template.metadata.annotations if template.metadata is not None else None


def pull_identity(spec: Spec) -> tuple[str, tuple[str, ...]]:
    """Whose pull credentials a pod of this spec gets: its ServiceAccount (``default`` when
    none is named, as the API server defaults it) and its imagePullSecrets, in order."""
    account = spec.serviceAccountName or spec.serviceAccount or "default"
    secrets = spec.imagePullSecrets or ()
    return account, tuple(secret.name for secret in secrets if secret.name)


def image_fields(group: str, kind: str, spec: Spec, *, sub_resource: str) -> list[ImageField]:
    """Every container image of a pod spec of that kind, in the order of CONTAINER_LISTS,
    that a request for `sub_resource` can change."""
    path = POD_SPEC_PATHS[group, kind]
    fields = []
    lists = ("ephemeralContainers",) if sub_resource == EPHEMERAL_CONTAINERS else CONTAINER_LISTS
    for list_name in lists:
        containers = getattr(spec, list_name)
        if not containers:
            continue
        count = len(containers)
        pointers = (
            _cached_pointers(path, list_name, count)
            if count <= CACHED_POINTERS
            else _pointers(path, list_name, count)
        )
        for index, container in enumerate(containers):
            if container.image:
                fields.append(ImageField(pointers[index], container.name or "", container.image))
    return fields


def stored_images(group: str, kind: str, obj: KubeObject) -> tuple[Spec | None, list[ImageField]]:
    """A stored object's pod spec, and every image in it: what a pass or a report reads of
    each workload (an object as a whole, never through a subresource)."""
    spec = pod_spec(group, kind, obj)
    if spec is None:
        return None, []
    return spec, image_fields(group, kind, spec, sub_resource="")


def _pointers(path: tuple[str, ...], list_name: str, count: int) -> tuple[str, ...]:
    base = "/" + "/".join(path)
    return tuple(f"{base}/{list_name}/{index}/image" for index in range(count))


_cached_pointers = lru_cache(maxsize=256)(_pointers)
