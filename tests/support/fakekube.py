"""A fake Kubernetes API server: the real REST paths, over plain HTTP on 127.0.0.1.

Tests run the real ``kubernetes`` client against it. It keeps objects in memory under
(group, version, resource, namespace, name) and implements what clients rely on: GET, LIST
(label and field selectors of the ``key=value``, ``key!=value``, ``key``, ``!key`` forms),
POST, PUT, PATCH (merge, strategic merge - like merge, lists replaced, no ``$patch``
directives - and JSON patch), DELETE and watches, with a global monotonic resourceVersion,
optimistic concurrency and ``kind: Status`` errors.

Every request needs ``Authorization: Bearer <token>`` (the kubeconfig it writes has it), is
recorded in ``calls``, and goes through ``interceptors`` first: a test can change objects
between a client's read and write, or fail a request by raising :class:`KubeError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import json
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonpatch
import jsonpointer
import yaml
from aiohttp import web

from tests.support.loopthread import ServedApp

__all__ = [
    "EVENTS",
    "EVENTS_V1",
    "IMAGE_BACKUPS",
    "LEASES",
    "MUTATING_WEBHOOK_CONFIGURATIONS",
    "SECRETS",
    "SERVICE_ACCOUNTS",
    "Call",
    "Change",
    "FakeKube",
    "KubeError",
    "Query",
    "Resource",
    "Store",
]

Object = dict[str, Any]
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
EVENTS_V1 = Resource("events.k8s.io", "v1", "events", "Event")
MUTATING_WEBHOOK_CONFIGURATIONS = Resource(
    "admissionregistration.k8s.io",
    "v1",
    "mutatingwebhookconfigurations",
    "MutatingWebhookConfiguration",
    namespaced=False,
)
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
IMAGE_BACKUPS = Resource("image-backup.io", "v1alpha1", "imagebackups", "ImageBackup", custom=True)

_RESOURCES = {
    (r.group, r.version, r.plural): r
    for r in (
        SECRETS,
        SERVICE_ACCOUNTS,
        EVENTS,
        EVENTS_V1,
        MUTATING_WEBHOOK_CONFIGURATIONS,
        LEASES,
        IMAGE_BACKUPS,
    )
}


class KubeError(Exception):
    """An API error; the server answers it as a ``kind: Status`` with its code."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    def status(self) -> Object:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


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


def _without_status(obj: Object) -> Object:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


class Store:
    """The objects and their change history; usable from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[Key, Object] = {}
        self._history: list[Change] = []
        self._compacted = 0  # a watch from an older resourceVersion is Expired
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
        with self._lock:
            items = [
                copy.deepcopy(o) for k, o in sorted(self._objects.items()) if query.wants(k, o)
            ]
            return items, self.resource_version

    def create(self, resource: Resource, namespace: str, body: Object) -> Object:
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
        key = self.key(resource, namespace, name)
        with self._lock:
            if key in self._objects:
                raise KubeError(
                    409, "AlreadyExists", f'{resource.qualified} "{name}" already exists'
                )
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
    ) -> Object:
        if body.get("metadata", {}).get("name", name) != name:
            raise KubeError(
                400, "BadRequest", "the name of the object does not match the name on the URL"
            )
        return self._update(resource, namespace, name, lambda _current: body, status_only)

    def patch(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        patch: Any,
        content_type: str,
        *,
        status_only: bool = False,
    ) -> Object:
        apply = PATCHES.get(content_type)
        if apply is None:
            raise KubeError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format: {content_type}",
            )
        return self._update(
            resource, namespace, name, lambda current: apply(current, patch), status_only
        )

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
        """Forget the history: watches from any resourceVersion before now get 410 Gone."""
        with self._lock:
            self._history.clear()
            self._compacted = self.resource_version

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
    ) -> Object:
        with self._lock:
            current = self._current(resource, namespace, name)
            proposed = change(copy.deepcopy(current))
            if not isinstance(proposed, dict):
                raise KubeError(400, "BadRequest", "the object must be a JSON object")
            expected = proposed.get("metadata", {}).get("resourceVersion")
            if expected and expected != current["metadata"]["resourceVersion"]:
                raise _conflict(resource, name)
            obj = _updated(resource, current, proposed, status_only)
            if obj == current:
                return copy.deepcopy(current)  # a no-op write keeps the resourceVersion
            result = self._commit("MODIFIED", self.key(resource, namespace, name), obj)
        self._notify()
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


def _nowhere() -> KubeError:
    return KubeError(404, "NotFound", "the server could not find the requested resource")


@dataclass(frozen=True)
class _Target:
    resource: Resource
    namespace: str
    name: str | None
    subresource: str | None


def _target(path: str) -> _Target:
    parts = path.strip("/").split("/")
    if parts[0] == "api":
        parts.insert(1, "")  # the core group, which has no name
    if parts[0] not in ("api", "apis") or len(parts) < 4:
        raise _nowhere()
    group, version, rest = parts[1], parts[2], parts[3:]
    namespace = ""
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource = _RESOURCES.get((group, version, rest[0]))
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


class FakeKube:
    """The server, running on a background loop; ``url``, ``store``, ``calls``, ``interceptors``."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.store = Store()
        self.calls: list[Call] = []
        self.interceptors: list[Callable[[Call], None]] = []
        self._served: ServedApp | None = None
        self._changed: asyncio.Event | None = None

    @classmethod
    def start(cls, token: str | None = None) -> FakeKube:
        kube = cls(token or secrets.token_urlsafe(16))
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

    def stop(self) -> None:
        if self._served is not None:
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
        try:
            if request.headers.get("Authorization") != f"Bearer {self.token}":
                raise KubeError(401, "Unauthorized", "Unauthorized")
            for intercept in list(self.interceptors):
                intercept(call)
            target = _target(request.path)
            if target.name is None and request.method == "GET" and _flag(call.query, "watch"):
                return await self._watch(request, _query(target, call.query))
            created = 201 if request.method == "POST" else 200
            return web.json_response(self._serve(call, target), status=created)
        except KubeError as exc:
            return _status_response(exc)

    def _serve(self, call: Call, target: _Target) -> Object:
        store, resource, namespace, name = (
            self.store,
            target.resource,
            target.namespace,
            target.name,
        )
        if name is None:
            if call.method == "GET":
                items, version = store.list_objects(_query(target, call.query))
                return {
                    "apiVersion": resource.api_version,
                    "kind": f"{resource.kind}List",
                    "metadata": {"resourceVersion": str(version)},
                    "items": items,
                }
            if call.method == "POST" and namespace == "" and resource.namespaced:
                raise KubeError(405, "MethodNotAllowed", "create needs a namespace")
            if call.method == "POST":
                return store.create(resource, namespace, _object(call.body))
        else:
            status_only = target.subresource == "status"
            if call.method == "GET":
                return store.get(resource, namespace, name)
            if call.method == "PUT":
                body = _object(call.body)
                return store.replace(resource, namespace, name, body, status_only=status_only)
            if call.method == "PATCH":
                return store.patch(
                    resource, namespace, name, call.body, call.content_type, status_only=status_only
                )
            if call.method == "DELETE" and not status_only:
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
