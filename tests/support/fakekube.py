"""A fake Kubernetes API server: the real REST paths, over plain HTTP on 127.0.0.1.

Tests run the real ``kubernetes`` client against it. It keeps objects in memory under
(group, version, resource, namespace, name) and implements what clients rely on, as a
kube-apiserver v1.28 does:

- GET, LIST (label and field selectors of the ``key=value``, ``key!=value``, ``key``, ``!key``
  forms; ``limit`` and ``continue`` pagination, ordered by key - namespace then name -, with
  ``remainingItemCount`` and every page read from the first page's snapshot; a token older
  than the compaction is 410 Expired), cross-namespace LIST, POST, PUT, PATCH (merge,
  strategic merge - like merge, lists replaced, no ``$patch`` directives - and JSON patch),
  DELETE and watches, with a global monotonic resourceVersion, optimistic concurrency (a
  ``metadata.resourceVersion`` in a PUT or a patch is a precondition: another one is 409
  Conflict) and ``kind: Status`` errors;
- custom resources with a ``/status`` subresource: a create drops the status, the main
  resource ignores status changes and ``/status`` ignores everything else (``store`` writes,
  a test's backdoor, keep what they are given); every write of one is pruned to the schema
  of its CustomResourceDefinition in ``manifests/base/crd.yaml`` (a field the schema does
  not define is dropped, silently), so the CRD and the code writing records cannot drift;
- the core, apps, batch, events, coordination, admissionregistration and image-backup.io
  resources of ``_RESOURCES`` (Namespaces get their ``kubernetes.io/metadata.name`` label),
  and OpenShift's ``apps.openshift.io`` DeploymentConfigs only when started with
  ``openshift=True`` (otherwise that group is 404, as on a plain cluster);
- discovery: ``/apis``, ``/api/v1`` and ``/apis/<group>/<version>`` (APIResourceList);
- the mutating admission chain on writes of namespaced objects (POST, PUT, PATCH; not DELETE,
  not /status): every MutatingWebhookConfiguration's matching webhooks (rules,
  namespaceSelector, objectSelector) get an AdmissionReview v1 over HTTPS at
  ``clientConfig.url``; their JSON patches, denials, warnings (``Warning`` headers),
  failurePolicy and ``?dryRun=All`` behave as the API server's. ``admission_calls`` records
  what was sent and answered.

Every request needs ``Authorization: Bearer <token>`` (the kubeconfig it writes has it), is
recorded in ``calls``, and goes through ``interceptors`` first: a test can change objects
between a client's read and write, or fail a request by raising :class:`KubeError`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import datetime
import functools
import json
import secrets
import ssl
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import jsonpointer
import yaml
from aiohttp import web

from tests.support.loopthread import ServedApp

__all__ = [
    "CRON_JOBS",
    "DAEMON_SETS",
    "DEPLOYMENTS",
    "DEPLOYMENT_CONFIGS",
    "EVENTS",
    "EVENTS_V1",
    "IMAGE_BACKUPS",
    "IMAGE_STREAMS",
    "JOBS",
    "LEASES",
    "MUTATING_WEBHOOK_CONFIGURATIONS",
    "NAMESPACES",
    "PODS",
    "POD_TEMPLATES",
    "REPLICATION_CONTROLLERS",
    "REPLICA_SETS",
    "SECRETS",
    "SERVICE_ACCOUNTS",
    "STATEFUL_SETS",
    "USER_INFO",
    "WORKLOADS",
    "AdmissionCall",
    "Call",
    "Change",
    "FakeKube",
    "KubeError",
    "Page",
    "Query",
    "Resource",
    "Store",
    "label_selector_matches",
    "rule_matches",
]

Object = dict[str, Any]
CRD_FILE = Path(__file__).resolve().parents[2] / "manifests" / "base" / "crd.yaml"
Key = tuple[str, str, str, str, str]  # group, version, resource, namespace ("" if none), name


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    custom: bool = False  # a custom resource: a /status subresource and metadata.generation

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """How the API server names it in messages: ``secrets``, ``leases.coordination.k8s.io``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


SECRETS = Resource("", "v1", "secrets", "Secret")
SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts", "ServiceAccount")
EVENTS = Resource("", "v1", "events", "Event")
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
PODS = Resource("", "v1", "pods", "Pod")
POD_TEMPLATES = Resource("", "v1", "podtemplates", "PodTemplate")
REPLICATION_CONTROLLERS = Resource("", "v1", "replicationcontrollers", "ReplicationController")
EVENTS_V1 = Resource("events.k8s.io", "v1", "events", "Event")
MUTATING_WEBHOOK_CONFIGURATIONS = Resource(
    "admissionregistration.k8s.io",
    "v1",
    "mutatingwebhookconfigurations",
    "MutatingWebhookConfiguration",
    namespaced=False,
)
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
REPLICA_SETS = Resource("apps", "v1", "replicasets", "ReplicaSet")
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
STATEFUL_SETS = Resource("apps", "v1", "statefulsets", "StatefulSet")
DAEMON_SETS = Resource("apps", "v1", "daemonsets", "DaemonSet")
JOBS = Resource("batch", "v1", "jobs", "Job")
CRON_JOBS = Resource("batch", "v1", "cronjobs", "CronJob")
IMAGE_BACKUPS = Resource("image-backup.io", "v1alpha1", "imagebackups", "ImageBackup", custom=True)
DEPLOYMENT_CONFIGS = Resource("apps.openshift.io", "v1", "deploymentconfigs", "DeploymentConfig")
IMAGE_STREAMS = Resource("image.openshift.io", "v1", "imagestreams", "ImageStream")
# The kinds whose pod templates the webhook reviews.
WORKLOADS = (
    PODS,
    POD_TEMPLATES,
    REPLICATION_CONTROLLERS,
    REPLICA_SETS,
    DEPLOYMENTS,
    STATEFUL_SETS,
    DAEMON_SETS,
    JOBS,
    CRON_JOBS,
    DEPLOYMENT_CONFIGS,
)

_RESOURCES = {
    (r.group, r.version, r.plural): r
    for r in (
        SECRETS,
        SERVICE_ACCOUNTS,
        EVENTS,
        NAMESPACES,
        EVENTS_V1,
        MUTATING_WEBHOOK_CONFIGURATIONS,
        LEASES,
        IMAGE_BACKUPS,
        IMAGE_STREAMS,
        *WORKLOADS,
    )
}
# Served only by an OpenShift cluster; a plain one answers 404 for every path under them.
_OPENSHIFT_GROUPS = frozenset({"apps.openshift.io", "image.openshift.io"})

# The label the API server puts on every Namespace (KEP 2161: namespaceSelectors can name one).
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"

# Who the fake says made every request, in AdmissionReviews (kubeadm's admin, as in the
# captured reviews under tests/data/admission).
USER_INFO: Object = {
    "username": "kubernetes-admin",
    "groups": ["system:masters", "system:authenticated"],
}


class KubeError(Exception):
    """An API error; the server answers it as a ``kind: Status`` with its code."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: Object | None = None,
        metadata: Object | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.metadata = metadata or {}

    def status(self) -> Object:
        status: Object = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": copy.deepcopy(self.metadata),
            "status": "Failure",
            "message": self.message,
        }
        if self.reason:  # omitempty: a webhook's denial may have none
            status["reason"] = self.reason
        if self.details is not None:
            status["details"] = copy.deepcopy(self.details)
        status["code"] = self.code
        return status


def _not_found(resource: Resource, name: str) -> KubeError:
    return KubeError(404, "NotFound", f'{resource.qualified} "{name}" not found')


def _conflict(resource: Resource, name: str) -> KubeError:
    return KubeError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {resource.qualified} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
    )


@dataclass(frozen=True)
class Change:
    """One entry of the watch history."""

    resource_version: int
    type: str  # ADDED, MODIFIED or DELETED
    key: Key
    object: Object


Selector = list[tuple[str, str, str]]  # (key, operator "=", "!=", "exists" or "!", value)


def parse_selector(text: str) -> Selector:
    requirements: Selector = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            requirements.append((key.strip(), "!=", value.strip()))
        elif "=" in term:
            key, value = term.split("=", 1)
            requirements.append((key.strip(), "=", value.strip().lstrip("=")))
        elif term.startswith("!"):
            requirements.append((term[1:].strip(), "!", ""))
        else:
            requirements.append((term, "exists", ""))
    return requirements


def _matches(selector: Selector, values: dict[str, str]) -> bool:
    return all(_holds(operator, values.get(key), value) for key, operator, value in selector)


def _holds(operator: str, actual: str | None, value: str) -> bool:
    if operator == "=":
        return actual == value
    if operator == "!=":
        return actual != value
    return (actual is not None) == (operator == "exists")


def label_selector_matches(selector: Object | None, labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector (``matchLabels`` and ``matchExpressions`` with In, NotIn, Exists,
    DoesNotExist) against ``labels``; absent or empty selects everything, as in webhooks'
    namespaceSelector and objectSelector."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression.get("key", ""), expression.get("operator", "")
        values = expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
        if operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False  # the API server rejects such a configuration; select nothing
    return True


def rule_matches(rule: Object, resource: Resource, operation: str, subresource: str = "") -> bool:
    """Whether a webhook's ``rules[]`` entry covers a request, as the API server's
    rules.Matcher decides: ``*`` wildcards, ``resource/subresource`` forms (``*`` alone is no
    subresource, ``*/*`` is any) and ``scope``."""
    scope = rule.get("scope") or "*"
    namespaced = resource.namespaced  # a Namespace itself is cluster-scoped
    if not {"*": True, "Namespaced": namespaced, "Cluster": not namespaced}.get(scope, False):
        return False

    def covers(items: Any, requested: str) -> bool:
        return any(item in ("*", requested) for item in items or [])

    if not (
        covers(rule.get("operations"), operation)
        and covers(rule.get("apiGroups"), resource.group)
        and covers(rule.get("apiVersions"), resource.version)
    ):
        return False
    for entry in rule.get("resources") or []:
        name, _, sub = str(entry).partition("/")
        if name in ("*", resource.plural) and sub in ("*", subresource):
            return True
    return False


@dataclass(frozen=True)
class Query:
    """Which objects a LIST or watch wants."""

    resource: Resource
    namespace: str  # "" for all namespaces
    labels: Selector
    fields: Selector

    def wants(self, key: Key, obj: Object) -> bool:
        resource = self.resource
        if key[:3] != (resource.group, resource.version, resource.plural):
            return False
        if self.namespace and key[3] != self.namespace:
            return False
        metadata = obj.get("metadata", {})
        fields = {"metadata.name": key[4], "metadata.namespace": key[3]}
        return _matches(self.labels, metadata.get("labels") or {}) and _matches(self.fields, fields)

    @property
    def prefix(self) -> str:
        """Where the keys of this list start, below the resource's own prefix (what a continue
        token's start key is relative to, as in the API server's etcd keys)."""
        return f"{self.namespace}/" if self.namespace and self.resource.namespaced else ""


@dataclass(frozen=True)
class Page:
    """One LIST answer: its items, the resourceVersion they are read at, and - when more
    remain - the continue token and how many are left (None with a selector)."""

    items: list[Object]
    resource_version: int
    next: str | None = None
    remaining: int | None = None


def _sort_key(key: Key) -> str:
    """The object's etcd key below the resource's prefix: the API server lists in its order."""
    return f"{key[3]}/{key[4]}" if key[3] else key[4]


# The API server's answer to a continue token older than the compaction
# (k8s.io/apiserver/pkg/storage/etcd3/errors.go, inconsistentContinue).
_INCONSISTENT_CONTINUE = (
    "The provided continue parameter is too old to display a consistent list result. You can "
    "start a new list without the continue parameter, or use the continue token in this "
    "response to retrieve the remainder of the results. Continuing with the provided token "
    "results in an inconsistent list - objects that were created, modified, or deleted between "
    "the time the first chunk was returned and now may show up in the list."
)


def _encode_continue(resource_version: int, start: str) -> str:
    """The API server's token: unpadded URL-safe base64 of ``{"v", "rv", "start"}``; rv -1
    means "continue at the latest version" (what a 410 hands out)."""
    token = {"v": "meta.k8s.io/v1", "rv": resource_version, "start": start}
    raw = json.dumps(token, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode_continue(token: str) -> tuple[int, str]:
    """(resourceVersion, start key) of a token, or 400 with the API server's words."""

    def invalid(why: str) -> KubeError:
        return KubeError(
            400, "BadRequest", f"invalid continue token: continue key is not valid{why}"
        )

    try:
        decoded = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise invalid(f": {exc}") from None
    if not isinstance(decoded, dict) or decoded.get("v") != "meta.k8s.io/v1":
        version = decoded.get("v") if isinstance(decoded, dict) else decoded
        raise invalid(f": server does not recognize this encoded version {version}")
    version, start = decoded.get("rv"), decoded.get("start")
    if not isinstance(version, int) or version == 0:
        raise invalid(": incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
    if not isinstance(start, str) or not start:
        raise invalid(": encoded start key empty (version meta.k8s.io/v1)")
    return version, start


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else (lists too) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _json_patch(target: Any, patch: Any) -> Any:
    try:
        operations = jsonpatch.JsonPatch(patch)
    except (jsonpatch.InvalidJsonPatch, TypeError) as exc:
        raise KubeError(400, "BadRequest", str(exc)) from None
    try:
        return operations.apply(target)
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        raise KubeError(422, "Invalid", str(exc)) from None


PATCHES: dict[str, Callable[[Any, Any], Any]] = {
    "application/merge-patch+json": merge_patch,
    "application/strategic-merge-patch+json": merge_patch,
    "application/json-patch+json": _json_patch,
}


def _patcher(content_type: str) -> Callable[[Any, Any], Any]:
    apply = PATCHES.get(content_type)
    if apply is None:
        raise KubeError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format: {content_type}",
        )
    return apply


def _check_name(body: Object, name: str) -> None:
    if body.get("metadata", {}).get("name", name) != name:
        raise KubeError(
            400, "BadRequest", "the name of the object does not match the name on the URL"
        )


def _without_status(obj: Object) -> Object:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


class Store:
    """The objects and their change history; usable from any thread.

    Writes made here directly skip admission (they are a test's backdoor); the server's own
    writes read with :meth:`read_for_update`, admit, then :meth:`commit_update`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[Key, Object] = {}
        self._history: list[Change] = []
        self._compacted = 0  # a watch or continue from an older resourceVersion is Expired
        # What paginated lists read their later pages from, by the first page's version.
        # Stored objects are replaced, never changed in place, so a shallow copy is a snapshot.
        self._snapshots: dict[int, dict[Key, Object]] = {}
        self.resource_version = 0
        self.listeners: list[Callable[[], None]] = []  # called after every change

    @staticmethod
    def key(resource: Resource, namespace: str, name: str) -> Key:
        scope = namespace if resource.namespaced else ""
        return (resource.group, resource.version, resource.plural, scope, name)

    def get(self, resource: Resource, namespace: str, name: str) -> Object:
        with self._lock:
            return copy.deepcopy(self._current(resource, namespace, name))

    def list_objects(self, query: Query) -> tuple[list[Object], int]:
        """The matching objects and the resourceVersion they are current at."""
        page = self.list_page(query)
        return page.items, page.resource_version

    def list_page(self, query: Query, limit: int = 0, token: str = "") -> Page:
        """At most ``limit`` (0: all) matching objects in key order, from the start or from
        where ``token`` says; every page of a list reads the snapshot of its first page."""
        with self._lock:
            version, objects, start = self._list_source(query, token)
            matching = sorted(
                ((_sort_key(k), o) for k, o in objects.items() if query.wants(k, o)),
                key=lambda entry: entry[0],
            )
            matching = [entry for entry in matching if entry[0] >= start]
            page = matching[:limit] if limit > 0 else matching
            items = [copy.deepcopy(o) for _, o in page]
            left = len(matching) - len(page)
            if not left:
                return Page(items, version)
            if version not in self._snapshots:
                self._snapshots[version] = dict(objects)
            next_start = page[-1][0][len(query.prefix) :] + "\x00"
            # The API server counts keys, selected or not: with a selector it gives no count.
            remaining = None if query.labels or query.fields else left
            return Page(items, version, _encode_continue(version, next_start), remaining)

    def _list_source(self, query: Query, token: str) -> tuple[int, Mapping[Key, Object], str]:
        """(resourceVersion, objects, first key) a list page reads."""
        if not token:
            return self.resource_version, self._objects, ""
        version, start = _decode_continue(token)
        if version == -1:
            return self.resource_version, self._objects, query.prefix + start
        snapshot = self._snapshots.get(version)
        if version < self._compacted or snapshot is None:
            raise KubeError(
                410,
                "Expired",
                _INCONSISTENT_CONTINUE,
                metadata={"continue": _encode_continue(-1, start)},
            )
        return version, snapshot, query.prefix + start

    def create(
        self, resource: Resource, namespace: str, body: Object, *, dry_run: bool = False
    ) -> Object:
        """Store a new object; with ``dry_run``, only what would be stored (no
        resourceVersion), after the same checks."""
        obj = copy.deepcopy(body)
        metadata = obj.setdefault("metadata", {})
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = metadata["generateName"] + secrets.token_hex(3)[:5]
        name = metadata.get("name")
        if not name:
            raise KubeError(422, "Invalid", "metadata.name: Required value: name is required")
        if resource.namespaced:
            if metadata.get("namespace", namespace) != namespace:
                raise KubeError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on "
                    "the request",
                )
            metadata["namespace"] = namespace
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = (
            datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()
        ).replace("+00:00", "Z")
        metadata.pop("resourceVersion", None)
        if resource.custom:
            metadata["generation"] = 1
        obj["apiVersion"], obj["kind"] = resource.api_version, resource.kind
        if resource is NAMESPACES:
            obj["status"] = {"phase": "Active"}
        _canonicalize(resource, obj)
        key = self.key(resource, namespace, name)
        with self._lock:
            if key in self._objects:
                raise KubeError(
                    409, "AlreadyExists", f'{resource.qualified} "{name}" already exists'
                )
            if dry_run:
                return copy.deepcopy(obj)
            result = self._commit("ADDED", key, obj)
        self._notify()
        return result

    def replace(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        body: Object,
        *,
        status_only: bool = False,
        dry_run: bool = False,
    ) -> Object:
        _check_name(body, name)
        return self._update(resource, namespace, name, lambda _current: body, status_only, dry_run)

    def patch(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        patch: Any,
        content_type: str,
        *,
        status_only: bool = False,
        dry_run: bool = False,
    ) -> Object:
        apply = _patcher(content_type)
        return self._update(
            resource, namespace, name, lambda current: apply(current, patch), status_only, dry_run
        )

    def read_for_update(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        change: Callable[[Object], Any],
    ) -> tuple[Object, Object]:
        """The stored object and what ``change`` makes of a copy of it, neither checked nor
        stored yet (admission runs in between)."""
        current = self.get(resource, namespace, name)
        proposed = change(copy.deepcopy(current))
        if not isinstance(proposed, dict):
            raise KubeError(400, "BadRequest", "the object must be a JSON object")
        return current, copy.deepcopy(proposed)

    def commit_update(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        current: Object,
        proposed: Object,
        *,
        status_only: bool = False,
        dry_run: bool = False,
    ) -> Object | None:
        """Store ``proposed`` if the object is still ``current``; None if it changed since
        (read and admit again, as the API server's update loop does). A resourceVersion in
        ``proposed`` is the caller's precondition: another one is a conflict."""
        with self._lock:
            stored = self._current(resource, namespace, name)
            version = stored["metadata"]["resourceVersion"]
            if version != current["metadata"]["resourceVersion"]:
                return None
            expected = proposed.get("metadata", {}).get("resourceVersion")
            if expected and expected != version:
                raise _conflict(resource, name)
            obj = _updated(resource, stored, proposed, status_only)
            if obj == stored or dry_run:
                return copy.deepcopy(obj)  # a no-op write keeps the resourceVersion
            result = self._commit("MODIFIED", self.key(resource, namespace, name), obj)
        self._notify()
        return result

    def delete(self, resource: Resource, namespace: str, name: str) -> Object:
        with self._lock:
            self._current(resource, namespace, name)
            key = self.key(resource, namespace, name)
            obj = self._objects.pop(key)
            self.resource_version += 1
            self._history.append(Change(self.resource_version, "DELETED", key, obj))
            result = copy.deepcopy(obj)
        self._notify()
        return result

    def changes_since(self, resource_version: int, query: Query) -> tuple[list[Change], int]:
        """The matching changes after ``resource_version``, and the version they reach."""
        with self._lock:
            if resource_version < self._compacted:
                raise KubeError(
                    410,
                    "Expired",
                    f"too old resource version: {resource_version} ({self._compacted})",
                )
            changes = [
                c
                for c in self._history
                if c.resource_version > resource_version and query.wants(c.key, c.object)
            ]
            return copy.deepcopy(changes), self.resource_version

    def compact(self) -> None:
        """Forget the history: watches and continue tokens from any resourceVersion before now
        get 410 Gone."""
        with self._lock:
            self._history.clear()
            self._compacted = self.resource_version
            self._snapshots = {
                v: snapshot for v, snapshot in self._snapshots.items() if v >= self._compacted
            }

    def _current(self, resource: Resource, namespace: str, name: str) -> Object:
        obj = self._objects.get(self.key(resource, namespace, name))
        if obj is None:
            raise _not_found(resource, name)
        return obj

    def _update(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        change: Callable[[Object], Any],
        status_only: bool,
        dry_run: bool,
    ) -> Object:
        while True:
            current, proposed = self.read_for_update(resource, namespace, name, change)
            result = self.commit_update(
                resource,
                namespace,
                name,
                current,
                proposed,
                status_only=status_only,
                dry_run=dry_run,
            )
            if result is not None:
                return result

    def _commit(self, kind: str, key: Key, obj: Object) -> Object:
        self.resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self.resource_version)
        self._objects[key] = obj
        self._history.append(Change(self.resource_version, kind, key, copy.deepcopy(obj)))
        return copy.deepcopy(obj)

    def _notify(self) -> None:
        for listener in list(self.listeners):
            listener()


def _canonicalize(resource: Resource, obj: Object) -> None:
    """What the API server's strategies always ensure: a Namespace is labelled with its name;
    a custom resource holds only what its CRD's schema defines."""
    if resource is NAMESPACES:
        metadata = obj["metadata"]
        labels = metadata.get("labels") or {}
        metadata["labels"] = {**labels, NAMESPACE_NAME_LABEL: metadata["name"]}
    schema = _crd_schemas().get((resource.group, resource.version, resource.plural))
    if schema is not None:
        fields = {k: obj.pop(k) for k in list(obj) if k not in ("apiVersion", "kind", "metadata")}
        obj.update(_pruned(fields, schema))


@functools.cache
def _crd_schemas() -> dict[tuple[str, str, str], Object]:
    """The openAPIV3Schema of each (group, version, plural) that CRD_FILE defines."""
    schemas = {}
    for definition in yaml.safe_load_all(CRD_FILE.read_text()):
        spec = definition["spec"]
        for version in spec["versions"]:
            key = (spec["group"], version["name"], spec["names"]["plural"])
            schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


def _pruned(value: Any, schema: Object) -> Any:
    """``value`` without the fields ``schema`` does not define (structural pruning)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return value
    properties = schema.get("properties")
    if isinstance(value, dict) and properties is not None:
        return {k: _pruned(v, properties[k]) for k, v in value.items() if k in properties}
    if isinstance(value, list) and "items" in schema:
        return [_pruned(item, schema["items"]) for item in value]
    return value


def _updated(resource: Resource, current: Object, proposed: Object, status_only: bool) -> Object:
    """What a write makes of ``current``: identity fields kept; for a custom resource the
    main resource ignores status and /status ignores everything else."""
    if status_only:
        obj = copy.deepcopy(current)
        obj.pop("status", None)
        if "status" in proposed:
            obj["status"] = copy.deepcopy(proposed["status"])
    else:
        obj = copy.deepcopy(proposed)
        if resource.custom:
            obj.pop("status", None)
            if "status" in current:
                obj["status"] = copy.deepcopy(current["status"])
    metadata = obj.setdefault("metadata", {})
    for field in ("name", "namespace", "uid", "creationTimestamp", "resourceVersion", "generation"):
        if field in current["metadata"]:
            metadata[field] = current["metadata"][field]
    obj["apiVersion"], obj["kind"] = resource.api_version, resource.kind
    _canonicalize(resource, obj)
    if resource.custom and _without_status(obj) != _without_status(current):
        metadata["generation"] = current["metadata"]["generation"] + 1
    return obj


@dataclass(frozen=True)
class Call:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any  # parsed JSON, None without a body

    def to(self, method: str, path_suffix: str) -> bool:
        return self.method == method and self.path.endswith(path_suffix)


@dataclass(frozen=True)
class AdmissionCall:
    """One call of a webhook by the admission chain: what was sent and what came back."""

    configuration: str  # metadata.name of the MutatingWebhookConfiguration
    webhook: str  # its webhooks[].name
    url: str  # as called, with the API server's ?timeout=
    review: Object  # the AdmissionReview sent
    answer: Any  # the parsed body answered; None if there was none
    error: str | None  # 'failed calling webhook "<name>": ...' if the call failed


def _nowhere() -> KubeError:
    return KubeError(404, "NotFound", "the server could not find the requested resource")


@dataclass(frozen=True)
class _Target:
    resource: Resource
    namespace: str
    name: str | None
    subresource: str | None


def _target(path: str, resources: Mapping[tuple[str, str, str], Resource]) -> _Target:
    parts = path.strip("/").split("/")
    if parts[0] == "api":
        parts.insert(1, "")  # the core group, which has no name
    if parts[0] not in ("api", "apis") or len(parts) < 4:
        raise _nowhere()
    group, version, rest = parts[1], parts[2], parts[3:]
    namespace = ""
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource = resources.get((group, version, rest[0]))
    if resource is None or len(rest) > 3:
        raise _nowhere()
    name = rest[1] if len(rest) > 1 else None
    subresource = rest[2] if len(rest) > 2 else None
    if namespace and not resource.namespaced:
        raise _nowhere()
    if resource.namespaced and not namespace and name is not None:
        raise _nowhere()
    if subresource is not None and (subresource != "status" or not resource.custom):
        raise _nowhere()
    return _Target(resource, namespace, name, subresource)


# What the fake serves of every resource (no deletecollection).
_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def _discovery(path: str, resources: Mapping[tuple[str, str, str], Resource]) -> Object | None:
    """The discovery document at ``path`` (/apis, /api/v1, /apis/<group>/<version>), None if
    the path is not a discovery path, 404 for a group/version not served."""
    parts = path.strip("/").split("/")
    if parts == ["apis"]:
        return _api_group_list(resources.values())
    if parts == ["api", "v1"]:
        return _api_resource_list("", "v1", resources.values())
    if len(parts) == 3 and parts[0] == "apis":
        group, version = parts[1], parts[2]
        if not any((r.group, r.version) == (group, version) for r in resources.values()):
            raise _nowhere()
        return _api_resource_list(group, version, resources.values())
    return None


def _api_resource_list(group: str, version: str, resources: Iterable[Resource]) -> Object:
    """An APIResourceList as kube-apiserver answers it (custom resources with /status)."""
    entries: list[Object] = []
    for r in sorted(resources, key=lambda r: r.plural):
        if (r.group, r.version) != (group, version):
            continue
        entries.append(
            {
                "name": r.plural,
                "singularName": r.kind.lower(),
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": list(_VERBS),
            }
        )
        if r.custom:
            entries.append(
                {
                    "name": f"{r.plural}/status",
                    "singularName": "",
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
    group_version = f"{group}/{version}" if group else version
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": entries,
    }


def _api_group_list(resources: Iterable[Resource]) -> Object:
    """The APIGroupList at /apis: every named group served, one version each."""
    versions = sorted({(r.group, r.version) for r in resources if r.group})
    groups = []
    for group, version in versions:
        entry = {"groupVersion": f"{group}/{version}", "version": version}
        groups.append({"name": group, "versions": [entry], "preferredVersion": dict(entry)})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


@dataclass
class _Write:
    """A write on its way through admission: what every webhook call of it needs."""

    target: _Target
    operation: str  # CREATE or UPDATE
    dry_run: bool
    options: Object  # the CreateOptions or UpdateOptions of the review
    warnings: list[str]  # answered as Warning headers


class _CallFailed(Exception):
    """A webhook could not be called or answered nonsense: its failurePolicy decides."""


class FakeKube:
    """The server, running on a background loop; ``url``, ``store``, ``calls``,
    ``interceptors``, ``admission_calls``; ``openshift`` serves apps.openshift.io."""

    def __init__(self, token: str, *, openshift: bool = False) -> None:
        self.token = token
        self.openshift = openshift
        self.store = Store()
        self.calls: list[Call] = []
        self.interceptors: list[Callable[[Call], None]] = []
        self.admission_calls: list[AdmissionCall] = []
        self._served: ServedApp | None = None
        self._changed: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tls: dict[str, ssl.SSLContext] = {}

    @classmethod
    def start(cls, token: str | None = None, *, openshift: bool = False) -> FakeKube:
        kube = cls(token or secrets.token_urlsafe(16), openshift=openshift)
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", kube._handle)
        kube._served = ServedApp(app, name="fake-kube")
        loop = kube._served.thread.loop

        def changed() -> None:
            loop.call_soon_threadsafe(kube._wake)

        kube.store.listeners.append(changed)
        return kube

    @property
    def url(self) -> str:
        assert self._served is not None
        return f"http://127.0.0.1:{self._served.port}"

    @property
    def resources(self) -> dict[tuple[str, str, str], Resource]:
        """What this cluster serves: OpenShift's groups only with ``openshift``."""
        return {
            k: r
            for k, r in _RESOURCES.items()
            if self.openshift or r.group not in _OPENSHIFT_GROUPS
        }

    def stop(self) -> None:
        if self._served is not None:
            if self._session is not None:
                with contextlib.suppress(Exception):
                    self._served.thread.run(self._session.close(), timeout=10)
            self._served.stop()

    def write_kubeconfig(self, path: str | Path, namespace: str = "default") -> str:
        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                }
            ],
            "current-context": "fake",
        }
        Path(path).write_text(yaml.safe_dump(document))
        return str(path)

    def calls_to(self, method: str, path_suffix: str) -> list[Call]:
        return [c for c in self.calls if c.to(method, path_suffix)]

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
        self._changed = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            raw = await request.read()
            body = json.loads(raw) if raw else None
        except ValueError:
            return _status_response(KubeError(400, "BadRequest", "the body is not JSON"))
        call = Call(request.method, request.path, dict(request.query), request.content_type, body)
        self.calls.append(call)
        warnings: list[str] = []
        response: web.Response
        try:
            if request.headers.get("Authorization") != f"Bearer {self.token}":
                raise KubeError(401, "Unauthorized", "Unauthorized")
            for intercept in list(self.interceptors):
                intercept(call)
            discovered = _discovery(request.path, self.resources) if call.method == "GET" else None
            if discovered is not None:
                return web.json_response(discovered)
            target = _target(request.path, self.resources)
            if target.name is None and request.method == "GET" and _flag(call.query, "watch"):
                return await self._watch(request, _query(target, call.query))
            created = 201 if request.method == "POST" else 200
            answer = await self._serve(call, target, warnings)
            response = web.json_response(answer, status=created)
        except KubeError as exc:
            response = _status_response(exc)
        for text in warnings:  # the API server's warning recorder: code 299, agent "-"
            response.headers.add("Warning", f"299 - {_quoted(text)}")
        return response

    async def _serve(self, call: Call, target: _Target, warnings: list[str]) -> Object:
        store, resource, namespace, name = (
            self.store,
            target.resource,
            target.namespace,
            target.name,
        )
        if call.method in ("POST", "PUT") and call.content_type.endswith("patch+json"):
            raise KubeError(
                415,
                "UnsupportedMediaType",
                f'the body of type "{call.content_type}" is unsupported',
            )
        if name is None:
            if call.method == "GET":
                return self._list(call, target)
            if call.method == "POST" and namespace == "" and resource.namespaced:
                raise KubeError(405, "MethodNotAllowed", "create needs a namespace")
            if call.method == "POST":
                return await self._create(call, target, warnings)
        else:
            if call.method == "GET":
                return store.get(resource, namespace, name)
            if call.method in ("PUT", "PATCH"):
                return await self._update(call, target, warnings)
            if call.method == "DELETE" and target.subresource is None:
                deleted = store.delete(resource, namespace, name)
                if resource.custom:
                    return deleted
                details = {"name": name, "group": resource.group, "kind": resource.plural}
                details["uid"] = deleted["metadata"]["uid"]
                return {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": details,
                }
        raise KubeError(405, "MethodNotAllowed", f"{call.method} is not supported here")

    def _list(self, call: Call, target: _Target) -> Object:
        token = call.query.get("continue", "")
        if token and call.query.get("resourceVersion", "") not in ("", "0"):
            raise KubeError(
                400, "BadRequest", "specifying resource version is not allowed when using continue"
            )
        try:
            limit = int(call.query.get("limit", "0") or "0")
        except ValueError:
            raise KubeError(400, "BadRequest", "limit must be an integer") from None
        page = self.store.list_page(_query(target, call.query), limit, token)
        metadata: Object = {"resourceVersion": str(page.resource_version)}
        if page.next is not None:
            metadata["continue"] = page.next
        if page.remaining is not None:
            metadata["remainingItemCount"] = page.remaining
        return {
            "apiVersion": target.resource.api_version,
            "kind": f"{target.resource.kind}List",
            "metadata": metadata,
            "items": page.items,
        }

    async def _create(self, call: Call, target: _Target, warnings: list[str]) -> Object:
        body = copy.deepcopy(_object(call.body))
        if target.resource.custom:
            body.pop("status", None)  # written through /status only: a create drops it
        if target.resource is IMAGE_STREAMS:
            body = _image_stream_created(body, target.namespace)
        write = _write(call, target, "CREATE", warnings)
        admitted = await self._admit(write, body, None)
        return self.store.create(target.resource, target.namespace, admitted, dry_run=write.dry_run)

    async def _update(self, call: Call, target: _Target, warnings: list[str]) -> Object:
        """PUT or PATCH: read, change, admit, store unless the object changed meanwhile
        (then again from the read, as the API server's GuaranteedUpdate does)."""
        resource, namespace, name = target.resource, target.namespace, target.name
        assert name is not None
        change: Callable[[Object], Any]
        if call.method == "PUT":
            body = _object(call.body)
            _check_name(body, name)
            change = lambda _current: body  # noqa: E731
        else:
            apply, patch = _patcher(call.content_type), call.body
            change = lambda current: apply(current, patch)  # noqa: E731
        if resource is IMAGE_STREAMS:
            change = _image_stream_updated(change)
        write = _write(call, target, "UPDATE", warnings)
        status_only = target.subresource == "status"
        while True:
            current, proposed = self.store.read_for_update(resource, namespace, name, change)
            admitted = await self._admit(write, proposed, current)
            result = self.store.commit_update(
                resource,
                namespace,
                name,
                current,
                admitted,
                status_only=status_only,
                dry_run=write.dry_run,
            )
            if result is not None:
                return result

    async def _admit(self, write: _Write, obj: Object, old: Object | None) -> Object:
        """The mutating admission chain: every matching webhook in configuration-name order,
        each seeing what the ones before made of the object."""
        target = write.target
        if not target.resource.namespaced or target.subresource is not None:
            return obj
        configurations, _ = self.store.list_objects(
            Query(MUTATING_WEBHOOK_CONFIGURATIONS, "", [], [])
        )
        if not configurations:
            return obj
        obj = _as_admitted(write, obj)
        namespace_labels = self._namespace_labels(target.namespace)
        for configuration in configurations:
            for hook in configuration.get("webhooks") or []:
                if _should_call(hook, write, obj, old, namespace_labels):
                    name = configuration["metadata"]["name"]
                    obj = await self._call_webhook(name, hook, write, obj, old)
        return obj

    def _namespace_labels(self, namespace: str) -> dict[str, str]:
        """A namespace without its Namespace object in the store has no labels."""
        try:
            labels = self.store.get(NAMESPACES, "", namespace)["metadata"].get("labels")
        except KubeError:
            return {}
        return dict(labels or {})

    async def _call_webhook(
        self, configuration: str, hook: Object, write: _Write, obj: Object, old: Object | None
    ) -> Object:
        """One webhook's verdict on ``obj``: the object it patched, or the write's failure."""
        name = str(hook.get("name", ""))
        if write.dry_run:
            side_effects = hook.get("sideEffects")
            if side_effects is None:
                return _call_failed(hook, obj, "Webhook SideEffects is nil")
            if side_effects not in ("None", "NoneOnDryRun"):
                raise KubeError(
                    400, "BadRequest", f'admission webhook "{name}" does not support dry run'
                )
        review = _review(write, obj, old)
        uid = review["request"]["uid"]
        url, answer, error = "", None, None
        response: Object = {}
        operations: list[Any] = []
        try:
            timeout = hook.get("timeoutSeconds") or 10
            url = _webhook_url(hook)
            url = f"{url}{'&' if '?' in url else '?'}timeout={timeout}s"
            answer = await self._post(url, timeout, hook, review)
            response = _verified(answer, uid)
            for text in response.get("warnings") or []:
                if text not in write.warnings:
                    write.warnings.append(str(text))
            if response.get("allowed") is True:
                operations = _patch_operations(response)
        except _CallFailed as exc:
            error = f'failed calling webhook "{name}": {exc}'
        self.admission_calls.append(AdmissionCall(configuration, name, url, review, answer, error))
        if error is not None:
            return _call_failed(hook, obj, error)
        if response.get("allowed") is not True:
            raise _denied(name, response.get("status"))
        if not operations:
            return obj
        try:
            patched = jsonpatch.JsonPatch(operations).apply(obj)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
            raise _internal_error(str(exc)) from None
        if not isinstance(patched, dict):
            raise _internal_error(f'admission webhook "{name}" made the object not an object')
        return patched

    async def _post(self, url: str, timeout: float, hook: Object, review: Object) -> Any:
        """POST the review as the API server's REST client does: trusting the CA of
        ``caBundle``, the whole call within timeoutSeconds."""
        config = hook.get("clientConfig") or {}
        try:
            context = self._tls_context(config.get("caBundle") or "")
        except (ValueError, ssl.SSLError) as exc:
            raise _CallFailed(f"could not get REST client: {exc}") from None
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {"Content-Type": "application/json", "Accept": "application/json, */*"}
        try:
            async with (
                asyncio.timeout(timeout),
                self._session.post(
                    url, data=json.dumps(review).encode(), headers=headers, ssl=context
                ) as answer,
            ):
                status, body = answer.status, await answer.read()
        except TimeoutError:
            raise _CallFailed(
                f'failed to call webhook: Post "{url}": context deadline exceeded'
            ) from None
        except aiohttp.ClientError as exc:
            raise _CallFailed(f'failed to call webhook: Post "{url}": {_dial_error(exc)}') from None
        if not 200 <= status <= 206:
            raise _CallFailed(f"failed to call webhook: {_unexpected_status(status, body)}")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise _CallFailed(f"failed to call webhook: {exc}") from None

    def _tls_context(self, ca_bundle: str) -> ssl.SSLContext:
        """Verifying against ``caBundle`` (base64 PEM), the system's roots without one."""
        context = self._tls.get(ca_bundle)
        if context is None:
            if ca_bundle:
                pem = base64.b64decode(ca_bundle, validate=True).decode()
                context = ssl.create_default_context(cadata=pem)
            else:
                context = ssl.create_default_context()
            self._tls[ca_bundle] = context
        return context

    async def _watch(self, request: web.Request, query: Query) -> web.StreamResponse:
        """Newline-delimited events until timeoutSeconds (or the client goes away)."""
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        since = request.query.get("resourceVersion", "")
        timeout = float(request.query.get("timeoutSeconds", "0")) or None
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            async with asyncio.timeout(timeout):
                if since in ("", "0"):
                    items, version = self.store.list_objects(query)
                    for obj in items:
                        await _send(response, "ADDED", obj)
                else:
                    version = int(since)
                while True:
                    if self._changed is None:
                        self._changed = asyncio.Event()
                    changed = self._changed
                    try:
                        changes, version = self.store.changes_since(version, query)
                    except KubeError as exc:
                        await _send(response, "ERROR", exc.status())
                        break
                    for change in changes:
                        await _send(response, change.type, change.object)
                    await changed.wait()
        return response


# Where openshift-apiserver says the internal registry serves an ImageStream (its
# status.dockerImageRepository), when the registry's hostname is configured.
INTERNAL_REGISTRY = "image-registry.openshift-image-registry.svc:5000"


def _image_stream_created(body: Object, namespace: str) -> Object:
    """What openshift-apiserver's strategy makes of a created ImageStream: its status is
    computed, never taken from the request (tag history comes from imports and pushes only),
    and the stream and each spec tag start at generation 1."""
    name = (body.get("metadata") or {}).get("name", "")
    body["status"] = {"dockerImageRepository": f"{INTERNAL_REGISTRY}/{namespace}/{name}"}
    body.setdefault("metadata", {})["generation"] = 1
    for tag in (body.get("spec") or {}).get("tags") or ():
        tag["generation"] = 1
    return body


def _image_stream_updated(change: Callable[[Object], Any]) -> Callable[[Object], Any]:
    """An update of an ImageStream as openshift-apiserver's strategy makes it: the status
    stays the stored one whatever the request says (imports and pushes write it)."""

    def updated(current: Object) -> Any:
        proposed = change(copy.deepcopy(current))
        if isinstance(proposed, dict):
            proposed["status"] = copy.deepcopy(current.get("status") or {})
        return proposed

    return updated


def _write(call: Call, target: _Target, operation: str, warnings: list[str]) -> _Write:
    """The write's dryRun and the options its reviews carry (PATCH's are UpdateOptions, as
    the API server converts them)."""
    dry_run = call.query.get("dryRun", "")
    kind = "CreateOptions" if operation == "CREATE" else "UpdateOptions"
    if dry_run not in ("", "All"):
        raise KubeError(
            422,
            "Invalid",
            f'{kind}.meta.k8s.io "" is invalid: dryRun: Unsupported value: []string{{"{dry_run}"}}:'
            ' supported values: "All"',
        )
    options: Object = {"kind": kind, "apiVersion": "meta.k8s.io/v1"}
    if dry_run:
        options["dryRun"] = ["All"]
    for field in ("fieldManager", "fieldValidation"):
        if call.query.get(field):
            options[field] = call.query[field]
    return _Write(target, operation, bool(dry_run), options, warnings)


def _as_admitted(write: _Write, obj: Object) -> Object:
    """The object as webhooks see it: typed, in the request's namespace; a new one has no
    creationTimestamp yet (Go writes the zero time as null)."""
    obj = copy.deepcopy(obj)
    resource = write.target.resource
    obj["apiVersion"], obj["kind"] = resource.api_version, resource.kind
    metadata = obj.setdefault("metadata", {})
    if not isinstance(metadata, dict):
        raise KubeError(400, "BadRequest", "metadata must be a JSON object")
    if write.operation == "CREATE":
        if metadata.get("namespace", write.target.namespace) != write.target.namespace:
            raise KubeError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on "
                "the request",
            )
        metadata.setdefault("creationTimestamp", None)
    metadata["namespace"] = write.target.namespace
    return obj


def _should_call(
    hook: Object,
    write: _Write,
    obj: Object,
    old: Object | None,
    namespace_labels: Mapping[str, str],
) -> bool:
    """The API server's ShouldCallHook: namespaceSelector on the namespace's labels,
    objectSelector on the new or the old object's labels, then any rule."""
    if not label_selector_matches(hook.get("namespaceSelector"), namespace_labels):
        return False
    selector = hook.get("objectSelector")
    if selector and not any(
        label_selector_matches(selector, (o.get("metadata") or {}).get("labels") or {})
        for o in (obj, old)
        if o is not None
    ):
        return False
    resource, operation = write.target.resource, write.operation
    return any(rule_matches(rule, resource, operation) for rule in hook.get("rules") or [])


def _review(write: _Write, obj: Object, old: Object | None) -> Object:
    """An AdmissionReview v1 request, field for field as the captured ones."""
    resource = write.target.resource
    kind = {"group": resource.group, "version": resource.version, "kind": resource.kind}
    gvr = {"group": resource.group, "version": resource.version, "resource": resource.plural}
    request: Object = {
        "uid": str(uuid.uuid4()),
        "kind": kind,
        "resource": gvr,
        "requestKind": dict(kind),
        "requestResource": dict(gvr),
        "name": (obj.get("metadata") or {}).get("name") or "",
        "namespace": write.target.namespace,
        "operation": write.operation,
        "userInfo": copy.deepcopy(USER_INFO),
        "object": copy.deepcopy(obj),
        "oldObject": copy.deepcopy(old),
        "dryRun": write.dry_run,
        "options": copy.deepcopy(write.options),
    }
    return {"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": request}


def _webhook_url(hook: Object) -> str:
    config = hook.get("clientConfig") or {}
    url = config.get("url")
    if isinstance(url, str) and url:
        return url
    service = config.get("service") or {}
    address = f"{service.get('name', '')}.{service.get('namespace', '')}.svc"
    raise _CallFailed(
        f"failed to call webhook: the fake API server reaches no Service ({address}); "
        "give clientConfig.url"
    )


def _verified(answer: Any, uid: str) -> Object:
    """The response of an answered AdmissionReview, checked as VerifyAdmissionResponse does."""
    if not isinstance(answer, dict):
        raise _CallFailed("failed to call webhook: the answer is not a JSON object")
    response = answer.get("response")
    if not isinstance(response, dict):
        raise _CallFailed("received invalid webhook response: webhook response was absent")
    if response.get("uid") != uid:
        raise _CallFailed(
            "received invalid webhook response: "
            f'expected response.uid="{uid}", got "{response.get("uid", "")}"'
        )
    if (answer.get("apiVersion"), answer.get("kind")) != ("admission.k8s.io/v1", "AdmissionReview"):
        raise _CallFailed(
            "received invalid webhook response: expected webhook response of "
            "admission.k8s.io/v1, Kind=AdmissionReview, got "
            f"{answer.get('apiVersion', '')}, Kind={answer.get('kind', '')}"
        )
    patch, patch_type = response.get("patch"), response.get("patchType")
    if patch and patch_type is None:
        raise _CallFailed(
            "received invalid webhook response: "
            "webhook returned response.patch but not response.patchType"
        )
    if not patch and patch_type is not None:
        raise _CallFailed(
            "received invalid webhook response: "
            "webhook returned response.patchType but not response.patch"
        )
    return response


def _patch_operations(response: Object) -> list[Any]:
    """The JSON patch of an allowing response (base64 in ``patch``)."""
    patch = response.get("patch")
    if not patch:
        return []
    if response.get("patchType") != "JSONPatch":
        raise _CallFailed(f'unsupported patch type "{response.get("patchType")}"')
    try:
        raw = base64.b64decode(str(patch), validate=True)
    except (ValueError, binascii.Error) as exc:
        raise _CallFailed(f"failed to call webhook: illegal base64 data: {exc}") from None
    try:
        operations = json.loads(raw)
    except ValueError as exc:
        raise _CallFailed(f"received undecodable patch in webhook response: {exc}") from None
    if not isinstance(operations, list):
        raise _CallFailed("received undecodable patch in webhook response: a JSON patch is a list")
    return operations


def _call_failed(hook: Object, obj: Object, message: str) -> Object:
    """failurePolicy Ignore: the object as it was; Fail (the default): 500."""
    if hook.get("failurePolicy") == "Ignore":
        return obj
    if not message.startswith("failed calling webhook"):
        message = f'failed calling webhook "{hook.get("name", "")}": {message}'
    raise _internal_error(message)


def _internal_error(message: str) -> KubeError:
    """apierrors.NewInternalError."""
    return KubeError(
        500,
        "InternalError",
        f"Internal error occurred: {message}",
        details={"causes": [{"message": message}]},
    )


def _denied(name: str, status: Any) -> KubeError:
    """A webhook's denial as the API server answers it (webhook/errors.ToStatusErr of v1.28):
    its code if 400 or more, else 400; its reason and details; the message prefixed."""
    status = status if isinstance(status, dict) else {}
    code = status.get("code")
    code = code if isinstance(code, int) and code >= 400 else 400
    denied_by = f'admission webhook "{name}" denied the request'
    if status.get("message"):
        message = f"{denied_by}: {status['message']}"
    elif status.get("reason"):
        message = f"{denied_by}: {status['reason']}"
    else:
        message = f"{denied_by} without explanation"
    details = status.get("details") if isinstance(status.get("details"), dict) else None
    return KubeError(code, str(status.get("reason") or ""), message, details=details)


def _unexpected_status(status: int, body: bytes) -> str:
    """What client-go's REST client says of a non-2xx answer without a Status."""
    if status == 404:
        return "the server could not find the requested resource"
    if status >= 500:
        text = body.decode(errors="replace")[:1024]
        return (
            f"an error on the server ({json.dumps(text)}) has prevented the request from succeeding"
        )
    return f"the server responded with the status code {status} but did not return more information"


def _dial_error(exc: aiohttp.ClientError) -> str:
    """The words of Go's net and crypto/tls for the usual failures, else aiohttp's."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        error = exc.certificate_error
        detail = getattr(error, "verify_message", None) or str(error)
        return f"tls: failed to verify certificate: {detail}"
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
        exc.os_error, ConnectionRefusedError
    ):
        return f"dial tcp {exc.host}:{exc.port}: connect: connection refused"
    return str(exc)


def _quoted(text: str) -> str:
    """net.NewWarningHeader's quoting: backslash and double quote escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def _send(response: web.StreamResponse, kind: str, obj: Object) -> None:
    await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")


def _status_response(error: KubeError) -> web.Response:
    return web.json_response(error.status(), status=error.code)


def _flag(query: dict[str, str], name: str) -> bool:
    return query.get(name, "").lower() in ("true", "1")


def _query(target: _Target, query: dict[str, str]) -> Query:
    return Query(
        target.resource,
        target.namespace,
        parse_selector(query.get("labelSelector", "")),
        parse_selector(query.get("fieldSelector", "")),
    )


def _object(body: Any) -> Object:
    if not isinstance(body, dict):
        raise KubeError(400, "BadRequest", "the body must be a JSON object")
    return body
