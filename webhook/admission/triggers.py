"""Which containers OpenShift's image triggers fill, and from which ImageStream tag.

A DeploymentConfig's ``ImageChange`` trigger names containers; the
``image.openshift.io/triggers`` annotation (on Deployments, StatefulSets, DaemonSets, Jobs
and CronJobs) names image fields by path. OpenShift's trigger controller writes the
ImageStream tag's current image, a digest reference, into them; until it has, the image is
a placeholder (``" "``, the convention of ``oc new-app`` and templates) or the tag's name,
neither of which is the image that will run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from .objects import KubeObject, Trigger
from .pods import ImageField

TRIGGERS_ANNOTATION = "image.openshift.io/triggers"
# The kinds OpenShift's trigger controller fills through the annotation.
ANNOTATION_KINDS = frozenset(
    {
        ("apps", "Deployment"),
        ("apps", "StatefulSet"),
        ("apps", "DaemonSet"),
        ("batch", "Job"),
        ("batch", "CronJob"),
    }
)
DEPLOYMENT_CONFIG = ("apps.openshift.io", "DeploymentConfig")
# `spec.template.spec.containers[?(@.name=="app")].image`, or `...containers[0].image`.
_FIELD_PATH = re.compile(
    r"(?P<path>[A-Za-z.]+)\.(?P<list>containers|initContainers)"
    r"""\[(?:\?\(@\.name==(?P<quote>["'])(?P<name>.*?)(?P=quote)\)|(?P<index>\d+))\]\.image"""
)


@dataclass(frozen=True, slots=True)
class StreamTagName:
    """An ImageStream tag, as a trigger names it."""

    namespace: str
    stream: str
    tag: str

    def __str__(self) -> str:
        return f"{self.stream}:{self.tag}"


def triggered(
    group: str, kind: str, obj: KubeObject, fields: Sequence[ImageField], namespace: str
) -> dict[str, StreamTagName]:
    """The image fields (by pointer) that a trigger fills, and the tag it fills each from."""
    found: dict[str, StreamTagName] = {}
    if (group, kind) == DEPLOYMENT_CONFIG and obj.spec is not None:
        for trigger in obj.spec.triggers or ():
            _from_deployment_config(trigger, fields, namespace, found)
    annotations = obj.metadata.annotations if obj.metadata is not None else None
    raw = annotations.get(TRIGGERS_ANNOTATION) if annotations else None
    if raw and (group, kind) in ANNOTATION_KINDS:
        _from_annotation(raw, fields, namespace, found)
    return found


def _from_deployment_config(
    trigger: Trigger, fields: Sequence[ImageField], namespace: str, found: dict[str, StreamTagName]
) -> None:
    params = trigger.imageChangeParams
    if trigger.type != "ImageChange" or params is None or params.from_ is None:
        return
    source = _stream_tag(params.from_.kind, params.from_.name, params.from_.namespace, namespace)
    if source is None:
        return
    names = set(params.containerNames or ())
    for field in fields:
        if field.container in names and "/ephemeralContainers/" not in field.pointer:
            found[field.pointer] = source


def _from_annotation(
    raw: str, fields: Sequence[ImageField], namespace: str, found: dict[str, StreamTagName]
) -> None:
    """The annotation as the trigger controller reads it; entries it could not use are
    skipped here too (the controller would never fill them)."""
    try:
        entries = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return
    for entry in entries if isinstance(entries, list) else ():
        if not isinstance(entry, dict) or not isinstance(entry.get("from"), dict):
            continue
        origin = entry["from"]
        source = _stream_tag(
            origin.get("kind"), origin.get("name"), origin.get("namespace"), namespace
        )
        path = entry.get("fieldPath")
        match = _FIELD_PATH.fullmatch(path) if isinstance(path, str) else None
        if source is None or match is None:
            continue
        prefix = "/" + match["path"].replace(".", "/") + "/" + match["list"] + "/"
        for field in fields:
            if not field.pointer.startswith(prefix):
                continue
            index = field.pointer[len(prefix) :].partition("/")[0]
            if index == match["index"] or (
                match["index"] is None and field.container == match["name"]
            ):
                found[field.pointer] = source


def _stream_tag(
    kind: object, name: object, namespace: object, default: str
) -> StreamTagName | None:
    if kind != "ImageStreamTag" or not isinstance(name, str):
        return None
    stream, colon, tag = name.partition(":")
    if not stream or not colon or not tag:
        return None
    return StreamTagName(
        namespace if isinstance(namespace, str) and namespace else default, stream, tag
    )
