"""Every workload of the opted-in namespaces, read page by page.

Admission sees an object when it is written; a backfill pass or a status report needs all
of those that already exist. Lists are paginated (``limit``/``continue``), so a namespace of
tens of thousands of objects is never one response, and each page is decoded with msgspec
into the few fields images need, as an admission review is: the rest of each object is
skipped, not built.

A page whose continue token expired (the API server answers 410 after compacting) restarts
that kind's list (client.pages): objects already seen are seen again, which a pass
tolerates (its copies are remembered), and none is missed. DeploymentConfigs are listed
where the API has them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass

import msgspec
from kubernetes import client

from ..admission.objects import KubeObject, OwnerReference
from .client import (
    JSON_PATCH,
    MERGE_PATCH,
    PAGE_SIZE,
    KubeError,
    ListMeta,
    decoded,
    listing,
    raw_request,
    serves,
)

MODE_LABEL = "image-backup.io/mode"
MODES = ("enforce", "audit")
# A Job's pod template cannot change once created: the API server refuses the update.
IMMUTABLE_TEMPLATES = frozenset({"Job"})


@dataclass(frozen=True, slots=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"


DEPLOYMENT_CONFIGS = Kind("apps.openshift.io", "v1", "deploymentconfigs", "DeploymentConfig")
# The kinds admission handles (pods.POD_SPEC_PATHS), controllers after what they create:
# nothing depends on the order, but a report reads best from the top down.
KINDS = (
    Kind("batch", "v1", "cronjobs", "CronJob"),
    Kind("batch", "v1", "jobs", "Job"),
    Kind("apps", "v1", "deployments", "Deployment"),
    Kind("apps", "v1", "statefulsets", "StatefulSet"),
    Kind("apps", "v1", "daemonsets", "DaemonSet"),
    Kind("apps", "v1", "replicasets", "ReplicaSet"),
    Kind("", "v1", "replicationcontrollers", "ReplicationController"),
    Kind("", "v1", "podtemplates", "PodTemplate"),
    Kind("", "v1", "pods", "Pod"),
)


@dataclass(frozen=True, slots=True)
class Workload:
    namespace: str
    mode: str  # the namespace's image-backup.io/mode: "enforce", "audit" ("": not opted in)
    kind: Kind
    obj: KubeObject

    @property
    def name(self) -> str:
        return (self.obj.metadata.name if self.obj.metadata else None) or ""

    @property
    def path(self) -> str:
        """``namespace/Kind/name``, as summaries and logs name it."""
        return f"{self.namespace}/{self.kind.kind}/{self.name}"

    @property
    def uid(self) -> str:
        return (self.obj.metadata.uid if self.obj.metadata else None) or ""

    @property
    def annotations(self) -> dict[str, str] | None:
        return self.obj.metadata.annotations if self.obj.metadata else None

    @property
    def controller(self) -> OwnerReference | None:
        """The owner that controls it (a ReplicaSet's Pods, a CronJob's Jobs), if any: the
        object to change, not it."""
        owners = self.obj.metadata.ownerReferences if self.obj.metadata else None
        return next((owner for owner in owners or () if owner.controller), None)

    @property
    def controlled(self) -> bool:
        return self.controller is not None


class _Page(msgspec.Struct, gc=False):
    metadata: ListMeta | None = None
    items: list[KubeObject] = []


class _NamespaceMeta(msgspec.Struct, gc=False):
    name: str = ""
    labels: dict[str, str] | None = None


class _Namespace(msgspec.Struct, gc=False):
    metadata: _NamespaceMeta | None = None


class _Namespaces(msgspec.Struct, gc=False):
    metadata: ListMeta | None = None
    items: list[_Namespace] = []


class Workloads:
    """Reads workloads through the API server, on threads (the client is synchronous)."""

    def __init__(self, api: client.ApiClient, *, page_size: int = PAGE_SIZE) -> None:
        self._api = api
        self._page_size = page_size
        self._kinds: tuple[Kind, ...] | None = None
        self._pages = msgspec.json.Decoder(_Page)
        self._objects = msgspec.json.Decoder(KubeObject)
        self._namespace_pages = msgspec.json.Decoder(_Namespaces)

    async def namespaces(self, only: Collection[str] = ()) -> list[tuple[str, str]]:
        """(namespace, mode) of every namespace that opted in, by name; `only`: of these."""
        found = []
        async for page in listing(
            self._api,
            "/api/v1/namespaces",
            "listing namespaces",
            self._namespace_pages,
            page_size=self._page_size,
        ):
            for item in page.items:
                meta = item.metadata
                mode = (meta.labels or {}).get(MODE_LABEL) if meta else None
                if meta and mode in MODES and (not only or meta.name in only):
                    found.append((meta.name, mode))
        return sorted(found)

    async def kinds(self) -> tuple[Kind, ...]:
        """The kinds to walk: DeploymentConfigs too where the API has them."""
        if self._kinds is None:
            openshift = await serves(self._api, DEPLOYMENT_CONFIGS.prefix)
            self._kinds = (DEPLOYMENT_CONFIGS, *KINDS) if openshift else KINDS
        return self._kinds

    async def mode(self, namespace: str) -> str:
        """The namespace's image-backup.io/mode ("" if it has none, or another value). Read
        by a list (the webhook may list namespaces, not get them); a namespace that does not
        exist is a KubeError."""
        pages = listing(
            self._api,
            "/api/v1/namespaces",
            f"reading namespace {namespace}",
            self._namespace_pages,
            field_selector=f"metadata.name={namespace}",
        )
        found = [item.metadata async for page in pages for item in page.items if item.metadata]
        if not found:
            raise KubeError(f"namespace {namespace} not found", 404, "NotFound")
        mode = (found[0].labels or {}).get(MODE_LABEL)
        return mode if mode in MODES else ""

    async def kind_named(self, name: str) -> Kind | None:
        """The kind walked here that `name` names, as kubectl takes it: ``Deployment``,
        ``deployment`` or ``deployments``."""
        for kind in await self.kinds():
            if name.lower() in (kind.kind.lower(), kind.plural):
                return kind
        return None

    async def in_namespace(
        self, namespace: str, mode: str, *, selector: str = ""
    ) -> AsyncIterator[Workload]:
        """Every workload of the namespace; `selector`: only those this label selector
        selects (the API server filters)."""
        for kind in await self.kinds():
            path = f"{kind.prefix}/namespaces/{namespace}/{kind.plural}"
            doing = f"listing {kind.plural} in {namespace}"
            async for page in listing(
                self._api, path, doing, self._pages, page_size=self._page_size, selector=selector
            ):
                for obj in page.items:
                    yield Workload(namespace, mode, kind, obj)

    async def one(self, namespace: str, mode: str, kind: Kind, name: str) -> Workload:
        """One object, read now by a list (the webhook may list workloads, not get them);
        one that does not exist is a KubeError."""
        path = f"{kind.prefix}/namespaces/{namespace}/{kind.plural}"
        doing = f"reading {kind.kind} {namespace}/{name}"
        pages = listing(self._api, path, doing, self._pages, field_selector=f"metadata.name={name}")
        found = [obj async for page in pages for obj in page.items]
        if not found:
            raise KubeError(f"{kind.kind} {namespace}/{name} not found", 404, "NotFound")
        return Workload(namespace, mode, kind, found[0])

    async def annotate(self, workload: Workload, key: str, value: str) -> KubeObject:
        """Set one annotation on the object, through the API server and so through every
        admission webhook: the object as stored after them."""
        body = {"metadata": {"annotations": {key: value}}}
        return await self._patch(workload, body)

    async def json_patch(
        self, workload: Workload, operations: list[dict[str, object]]
    ) -> KubeObject:
        """Apply an RFC 6902 patch to the object, through the API server and so through
        every admission webhook: the object as stored after them. A failed `test` operation
        fails the whole patch (422) and nothing is written."""
        return await self._patch(workload, operations, content_type=JSON_PATCH)

    async def _patch(
        self, workload: Workload, body: object, *, content_type: str = MERGE_PATCH
    ) -> KubeObject:
        path = f"{workload.kind.prefix}/namespaces/{workload.namespace}/{workload.kind.plural}"
        doing = f"updating {workload.kind.kind} {workload.namespace}/{workload.name}"
        raw = await asyncio.to_thread(
            raw_request,
            self._api,
            "PATCH",
            f"{path}/{workload.name}",
            [],
            doing,
            body,
            content_type=content_type,
        )
        stored: KubeObject = decoded(raw, self._objects, doing)
        return stored
