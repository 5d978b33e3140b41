"""The fake Kubernetes API server, driven by the real `kubernetes` client."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from kubernetes import client, config, watch

from tests.support.fakekube import (
    CRON_JOBS,
    DAEMON_SETS,
    DEPLOYMENT_CONFIGS,
    DEPLOYMENTS,
    EVENTS,
    EVENTS_V1,
    IMAGE_BACKUPS,
    IMAGE_STREAMS,
    JOBS,
    MUTATING_WEBHOOK_CONFIGURATIONS,
    NAMESPACES,
    POD_TEMPLATES,
    PODS,
    REPLICA_SETS,
    REPLICATION_CONTROLLERS,
    SECRETS,
    STATEFUL_SETS,
    USER_INFO,
    FakeKube,
    KubeError,
    Query,
    Resource,
    label_selector_matches,
    rule_matches,
)
from tests.support.loopthread import ServedApp
from tests.support.registries import free_port
from tests.support.tls import TLSFiles, generate_tls, server_ssl_context

NS = "team"
GROUP, VERSION, PLURAL = "image-backup.io", "v1alpha1", "imagebackups"
MERGE_PATCH = "application/merge-patch+json"


@pytest.fixture
def api(fake_kube: FakeKube) -> Iterator[Any]:
    """An ApiClient configured the normal way, from KUBECONFIG."""
    configuration = client.Configuration()
    # The client reads KUBECONFIG once, at import; name the file as it is now.
    config.load_kube_config(  # type: ignore[no-untyped-call]
        os.environ["KUBECONFIG"], client_configuration=configuration
    )
    with client.ApiClient(configuration) as api_client:
        yield api_client


def failure(call: Any, *args: Any, **kwargs: Any) -> tuple[int, str]:
    """The status code and Status reason of a call that must fail."""
    with pytest.raises(client.ApiException) as caught:
        call(*args, **kwargs)
    status = json.loads(caught.value.body or "")
    assert status["kind"] == "Status"
    assert status["code"] == caught.value.status
    return caught.value.status, status["reason"]


def stream_events(func: Any, *args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
    events: Iterator[dict[str, Any]] = watch.Watch().stream(  # type: ignore[no-untyped-call]
        func, *args, **kwargs
    )
    return events


def secret(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}, "type": "Opaque", "data": {"a": "MQ=="}}


def test_secret_create_get_list_replace_delete(api: Any, fake_kube: FakeKube) -> None:
    core: Any = client.CoreV1Api(api)
    created = core.create_namespaced_secret(NS, secret("one", app="x"))
    core.create_namespaced_secret(NS, secret("two", app="y"))
    core.create_namespaced_secret("elsewhere", secret("three", app="x"))
    assert created.metadata.uid and created.metadata.creation_timestamp
    assert created.metadata.namespace == NS
    assert failure(core.create_namespaced_secret, NS, secret("one")) == (409, "AlreadyExists")

    read = core.read_namespaced_secret("one", NS)
    assert read.data == {"a": "MQ=="}
    assert read.metadata.resource_version == created.metadata.resource_version

    listed = core.list_namespaced_secret(NS)
    assert [s.metadata.name for s in listed.items] == ["one", "two"]
    assert int(listed.metadata.resource_version) == fake_kube.store.resource_version
    assert [
        s.metadata.name for s in core.list_namespaced_secret(NS, label_selector="app=x").items
    ] == ["one"]
    assert [
        s.metadata.name for s in core.list_namespaced_secret(NS, label_selector="app!=x").items
    ] == ["two"]
    everywhere = core.list_secret_for_all_namespaces(label_selector="app=x")
    assert sorted(s.metadata.name for s in everywhere.items) == ["one", "three"]

    read.data = {"a": "Mg=="}
    replaced = core.replace_namespaced_secret("one", NS, read)
    assert int(replaced.metadata.resource_version) > int(read.metadata.resource_version)
    assert replaced.metadata.uid == created.metadata.uid
    # The same write again carries a stale resourceVersion now.
    assert failure(core.replace_namespaced_secret, "one", NS, read) == (409, "Conflict")
    missing = secret("nope")
    assert failure(core.replace_namespaced_secret, "nope", NS, missing) == (404, "NotFound")

    core.delete_namespaced_secret("one", NS)
    assert failure(core.read_namespaced_secret, "one", NS) == (404, "NotFound")
    assert failure(core.delete_namespaced_secret, "one", NS) == (404, "NotFound")
    assert [c.method for c in fake_kube.calls_to("DELETE", f"/namespaces/{NS}/secrets/one")] == [
        "DELETE",
        "DELETE",
    ]


def test_patches_merge_strategic_and_json(api: Any, fake_kube: FakeKube) -> None:
    core: Any = client.CoreV1Api(api)
    core.create_namespaced_service_account(
        NS, {"metadata": {"name": "sa"}, "imagePullSecrets": [{"name": "a"}, {"name": "b"}]}
    )
    # Strategic merge patch (the client's choice for an object body): lists are replaced.
    patched = core.patch_namespaced_service_account("sa", NS, {"imagePullSecrets": [{"name": "c"}]})
    assert fake_kube.calls[-1].content_type == "application/strategic-merge-patch+json"
    assert [s.name for s in patched.image_pull_secrets] == ["c"]

    core.create_namespaced_secret(NS, secret("s"))
    merged = core.patch_namespaced_secret(
        "s",
        NS,
        {"data": {"a": None, "b": "Mg=="}},
        _content_type="application/merge-patch+json",
    )
    assert fake_kube.calls[-1].content_type == "application/merge-patch+json"
    assert merged.data == {"b": "Mg=="}

    json_patched = core.patch_namespaced_secret(
        "s", NS, [{"op": "add", "path": "/data/c", "value": "Mw=="}]
    )
    assert fake_kube.calls[-1].content_type == "application/json-patch+json"
    assert json_patched.data == {"b": "Mg==", "c": "Mw=="}
    test_fails = [{"op": "test", "path": "/data/c", "value": "other"}]
    assert failure(core.patch_namespaced_secret, "s", NS, test_fails) == (422, "Invalid")
    assert failure(core.patch_namespaced_secret, "gone", NS, {"data": {}}) == (404, "NotFound")


@pytest.mark.parametrize(
    "patch",
    [
        {"metadata": {"resourceVersion": "1"}, "data": {"a": None}},
        [
            {"op": "replace", "path": "/metadata/resourceVersion", "value": "1"},
            {"op": "remove", "path": "/data/a"},
        ],
    ],
    ids=["merge", "json"],
)
def test_a_stale_resource_version_in_a_patch_is_a_conflict(
    api: Any, fake_kube: FakeKube, patch: Any
) -> None:
    core: Any = client.CoreV1Api(api)
    core.create_namespaced_secret(NS, secret("s"))  # resourceVersion 1
    core.patch_namespaced_secret("s", NS, {"data": {"b": "Mg=="}})  # now 2
    assert failure(core.patch_namespaced_secret, "s", NS, patch) == (409, "Conflict")
    assert fake_kube.store.get(SECRETS, NS, "s")["data"] == {"a": "MQ==", "b": "Mg=="}


def test_mutating_webhook_configurations_are_cluster_scoped(api: Any, fake_kube: FakeKube) -> None:
    admission: Any = client.AdmissionregistrationV1Api(api)
    webhook = {
        "name": "mutate.image-backup.io",
        "clientConfig": {"service": {"namespace": "image-backup", "name": "image-backup"}},
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
    }
    admission.create_mutating_webhook_configuration(
        {"metadata": {"name": "image-backup"}, "webhooks": [webhook]}
    )
    assert fake_kube.calls[-1].path == (
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
    )
    admission.patch_mutating_webhook_configuration(
        "image-backup",
        [{"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": "Q0E="}],
    )
    read = admission.read_mutating_webhook_configuration("image-backup")
    assert read.webhooks[0].client_config.ca_bundle == "Q0E="
    assert read.metadata.namespace is None
    stored = fake_kube.store.get(MUTATING_WEBHOOK_CONFIGURATIONS, "", "image-backup")
    assert stored["webhooks"][0]["clientConfig"]["caBundle"] == "Q0E="
    names = [c.metadata.name for c in admission.list_mutating_webhook_configuration().items]
    assert names == ["image-backup"]
    missing = admission.read_mutating_webhook_configuration
    assert failure(missing, "other") == (404, "NotFound")


def test_custom_resources_have_a_status_subresource(api: Any, fake_kube: FakeKube) -> None:
    custom: Any = client.CustomObjectsApi(api)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ImageBackup",
        "metadata": {"name": "nginx"},
        "spec": {"source": "nginx:1.25"},
        "status": {"ignored": True},
    }
    created = custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)
    assert created["metadata"]["generation"] == 1
    assert "status" not in created  # as kube-apiserver: status is written through /status
    assert "status" not in fake_kube.store.get(IMAGE_BACKUPS, NS, "nginx")

    status = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, NS, PLURAL, "nginx", {"status": {"phase": "Copied"}, "spec": {"x": 1}}
    )
    assert status["status"] == {"phase": "Copied"}
    assert status["spec"] == {"source": "nginx:1.25"}  # /status ignores the spec
    assert status["metadata"]["generation"] == 1

    status["spec"] = {"source": "nginx:1.26"}
    status["status"] = {"phase": "Overwritten?"}
    replaced = custom.replace_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "nginx", status)
    assert replaced["spec"] == {"source": "nginx:1.26"}
    assert replaced["status"] == {"phase": "Copied"}  # the main resource ignores it
    assert replaced["metadata"]["generation"] == 2

    listed = custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)
    assert [o["metadata"]["name"] for o in listed["items"]] == ["nginx"]
    deleted = custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "nginx")
    assert deleted["metadata"]["name"] == "nginx"
    with pytest.raises(client.ApiException) as caught:
        custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "nginx")
    assert caught.value.status == 404
    with pytest.raises(KubeError):
        fake_kube.store.get(IMAGE_BACKUPS, NS, "nginx")


def test_custom_resources_take_merge_patches_with_a_resource_version_precondition(
    api: Any, fake_kube: FakeKube
) -> None:
    """As ImageBackup records are updated by several writers at once: a merge patch naming
    the resourceVersion read applies only if nobody wrote since; else 409 Conflict."""
    custom: Any = client.CustomObjectsApi(api)
    args = (GROUP, VERSION, NS, PLURAL, "nginx")
    label = "imagestreams.image-backup.io/shop.web"
    body = {"metadata": {"name": "nginx"}, "spec": {"platforms": ["a"]}}
    read = custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)
    version = read["metadata"]["resourceVersion"]

    first = {"metadata": {"resourceVersion": version, "labels": {label: "true"}}}
    patched = custom.patch_namespaced_custom_object(
        *args, {**first, "spec": {"platforms": ["a", "b"]}}, _content_type=MERGE_PATCH
    )
    assert patched["metadata"]["resourceVersion"] != version
    stale = {"metadata": {"resourceVersion": version}, "spec": {"platforms": ["a", "c"]}}
    patch = custom.patch_namespaced_custom_object
    assert failure(patch, *args, stale, _content_type=MERGE_PATCH) == (409, "Conflict")
    assert fake_kube.store.get(IMAGE_BACKUPS, NS, "nginx")["spec"] == {"platforms": ["a", "b"]}

    missing = (GROUP, VERSION, NS, PLURAL, "other")
    assert failure(patch, *missing, stale, _content_type=MERGE_PATCH) == (404, "NotFound")
    for selector in (label, f"{label}=true"):
        listed = custom.list_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, label_selector=selector
        )
        assert [o["metadata"]["name"] for o in listed["items"]] == ["nginx"]
    unlabelled = custom.list_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, label_selector="imagestreams.image-backup.io/shop.other"
    )
    assert unlabelled["items"] == []


def test_custom_resources_are_pruned_to_their_crds_schema(api: Any, fake_kube: FakeKube) -> None:
    """As kube-apiserver prunes them: what manifests/base/crd.yaml does not define is dropped
    from every write, silently, down to the items of arrays."""
    custom: Any = client.CustomObjectsApi(api)
    args = (GROUP, VERSION, NS, PLURAL, "nginx")
    tag = {
        "namespace": "shop",
        "imageStream": "web",
        "tag": "prod",
        "created": "2026-11-01T09:00:00Z",
    }
    body = {
        "metadata": {"name": "nginx", "labels": {"any": "label"}},
        "spec": {"source": "nginx:1.25", "undefined": 1, "imageStreamTags": [{**tag, "extra": 2}]},
        "undefined": True,
    }
    created = custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)
    expected_spec = {"source": "nginx:1.25", "imageStreamTags": [tag]}
    assert (created["spec"], created["metadata"]["labels"]) == (expected_spec, {"any": "label"})
    assert "undefined" not in created

    unknown = {"spec": {"undefined": 2}}
    patched = custom.patch_namespaced_custom_object(*args, unknown, _content_type=MERGE_PATCH)
    assert patched["spec"] == expected_spec
    assert patched["metadata"]["generation"] == 1  # nothing changed
    status = {"status": {"phase": "Ready", "undefined": 3}}
    patched = custom.patch_namespaced_custom_object_status(*args, status)
    assert patched["status"] == {"phase": "Ready"}
    assert fake_kube.store.get(IMAGE_BACKUPS, NS, "nginx")["status"] == {"phase": "Ready"}


def test_leases_and_both_kinds_of_events(api: Any, fake_kube: FakeKube) -> None:
    coordination: Any = client.CoordinationV1Api(api)
    lease = coordination.create_namespaced_lease(
        NS, {"metadata": {"name": "leader"}, "spec": {"holderIdentity": "a"}}
    )
    lease.spec.holder_identity = "b"
    assert coordination.replace_namespaced_lease("leader", NS, lease).spec.holder_identity == "b"
    assert failure(coordination.replace_namespaced_lease, "leader", NS, lease) == (409, "Conflict")

    core: Any = client.CoreV1Api(api)
    core.create_namespaced_event(
        NS, {"metadata": {"generateName": "nginx."}, "involvedObject": {"name": "nginx"}}
    )
    events_v1: Any = client.EventsV1Api(api)
    events_v1.create_namespaced_event(
        NS, {"metadata": {"name": "e1"}, "eventTime": "2024-01-01T00:00:00.000000Z"}
    )
    (core_event,) = core.list_namespaced_event(NS).items
    assert core_event.metadata.name.startswith("nginx.")
    assert len(fake_kube.store.get(EVENTS, NS, core_event.metadata.name)["metadata"]["uid"]) > 0
    assert fake_kube.store.get(EVENTS_V1, NS, "e1")["apiVersion"] == "events.k8s.io/v1"


def test_watch_streams_changes_after_a_resource_version(api: Any, fake_kube: FakeKube) -> None:
    core: Any = client.CoreV1Api(api)
    core.create_namespaced_secret(NS, secret("before", app="x"))
    start = core.list_namespaced_secret(NS).metadata.resource_version
    core.create_namespaced_secret(NS, secret("one", app="x"))
    core.create_namespaced_secret(NS, secret("other", app="y"))  # filtered out below

    def later() -> None:
        core.patch_namespaced_secret("one", NS, {"data": {"b": "Mg=="}})
        core.delete_namespaced_secret("one", NS)

    seen = []
    writer = threading.Timer(0.2, later)  # after the watch has caught up, while it waits
    writer.start()
    stream = stream_events(
        core.list_namespaced_secret,
        NS,
        label_selector="app=x",
        resource_version=start,
        timeout_seconds=5,
    )
    for event in stream:
        seen.append((event["type"], event["object"].metadata.name))
        if event["type"] == "DELETED":
            break
    writer.join()
    assert seen == [("ADDED", "one"), ("MODIFIED", "one"), ("DELETED", "one")]


def test_watch_from_zero_lists_first_then_times_out(api: Any) -> None:
    core: Any = client.CoreV1Api(api)
    core.create_namespaced_secret(NS, secret("a"))
    events = list(
        stream_events(core.list_namespaced_secret, NS, resource_version="0", timeout_seconds=1)
    )
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "a")]


def test_watch_from_compacted_history_is_gone(api: Any, fake_kube: FakeKube) -> None:
    core: Any = client.CoreV1Api(api)
    core.create_namespaced_secret(NS, secret("a"))
    old = core.list_namespaced_secret(NS).metadata.resource_version
    core.create_namespaced_secret(NS, secret("b"))
    fake_kube.store.compact()
    with pytest.raises(client.ApiException) as caught:
        for _ in stream_events(
            core.list_namespaced_secret, NS, resource_version=old, timeout_seconds=5
        ):
            pass
    assert caught.value.status == 410
    assert str(caught.value.reason).startswith("Expired: too old resource version")
    # From the current resourceVersion a watch works again.
    current = core.list_namespaced_secret(NS).metadata.resource_version
    stream = stream_events(
        core.list_namespaced_secret, NS, resource_version=current, timeout_seconds=1
    )
    assert list(stream) == []


def test_interceptors_can_change_objects_between_requests(api: Any, fake_kube: FakeKube) -> None:
    core: Any = client.CoreV1Api(api)
    core.create_namespaced_secret(NS, secret("s"))
    read = core.read_namespaced_secret("s", NS)

    def meanwhile(call: Any) -> None:
        if call.to("PUT", "/secrets/s"):
            fake_kube.interceptors.remove(meanwhile)
            fake_kube.store.patch(
                SECRETS, NS, "s", {"data": {"x": "eA=="}}, "application/merge-patch+json"
            )

    fake_kube.interceptors.append(meanwhile)
    assert failure(core.replace_namespaced_secret, "s", NS, read) == (409, "Conflict")
    assert core.read_namespaced_secret("s", NS).data == {"a": "MQ==", "x": "eA=="}


def test_requests_without_the_token_are_unauthorized(fake_kube: FakeKube) -> None:
    configuration = client.Configuration(host=fake_kube.url)
    with client.ApiClient(configuration) as anonymous:
        core: Any = client.CoreV1Api(anonymous)
        assert failure(core.read_namespaced_secret, "s", NS) == (401, "Unauthorized")


# --- Workloads, namespaces, OpenShift --------------------------------------------------------

POD_SPEC = {"containers": [{"name": "app", "image": "nginx:1.25"}]}
TEMPLATE = {"metadata": {"labels": {"app": "web"}}, "spec": POD_SPEC}
JOB_TEMPLATE = {"metadata": {}, "spec": {**POD_SPEC, "restartPolicy": "Never"}}
SELECTOR = {"matchLabels": {"app": "web"}}
CONTROLLER_SPEC = {"selector": SELECTOR, "template": TEMPLATE}

WORKLOADS = [
    # (resource, client API, method suffix, body without metadata)
    (PODS, "CoreV1Api", "pod", {"spec": POD_SPEC}),
    (POD_TEMPLATES, "CoreV1Api", "pod_template", {"template": TEMPLATE}),
    (
        REPLICATION_CONTROLLERS,
        "CoreV1Api",
        "replication_controller",
        {"spec": {"selector": {"app": "web"}, "template": TEMPLATE}},
    ),
    (REPLICA_SETS, "AppsV1Api", "replica_set", {"spec": CONTROLLER_SPEC}),
    (DEPLOYMENTS, "AppsV1Api", "deployment", {"spec": CONTROLLER_SPEC}),
    (STATEFUL_SETS, "AppsV1Api", "stateful_set", {"spec": {**CONTROLLER_SPEC, "serviceName": "w"}}),
    (DAEMON_SETS, "AppsV1Api", "daemon_set", {"spec": CONTROLLER_SPEC}),
    (JOBS, "BatchV1Api", "job", {"spec": {"template": JOB_TEMPLATE}}),
    (
        CRON_JOBS,
        "BatchV1Api",
        "cron_job",
        {"spec": {"schedule": "0 * * * *", "jobTemplate": {"spec": {"template": JOB_TEMPLATE}}}},
    ),
]


@pytest.mark.parametrize(
    ("resource", "api_class", "method", "body"),
    WORKLOADS,
    ids=[w[0].plural for w in WORKLOADS],
)
def test_workloads_create_get_and_list_on_their_real_paths(
    api: Any, fake_kube: FakeKube, resource: Resource, api_class: str, method: str, body: Any
) -> None:
    typed: Any = getattr(client, api_class)(api)
    prefix = f"/apis/{resource.api_version}" if resource.group else "/api/v1"
    created = getattr(typed, f"create_namespaced_{method}")(
        NS, {"metadata": {"name": "web"}, **body}
    )
    assert fake_kube.calls[-1].path == f"{prefix}/namespaces/{NS}/{resource.plural}"
    assert created.metadata.namespace == NS and created.metadata.uid
    read = getattr(typed, f"read_namespaced_{method}")("web", NS)
    assert fake_kube.calls[-1].path == f"{prefix}/namespaces/{NS}/{resource.plural}/web"
    assert read.metadata.resource_version == created.metadata.resource_version
    stored = fake_kube.store.get(resource, NS, "web")
    assert (stored["apiVersion"], stored["kind"]) == (resource.api_version, resource.kind)

    getattr(typed, f"create_namespaced_{method}")("other", {"metadata": {"name": "web"}, **body})
    listed = getattr(typed, f"list_namespaced_{method}")(NS)
    assert [(o.metadata.namespace, o.metadata.name) for o in listed.items] == [(NS, "web")]
    everywhere = getattr(typed, f"list_{method}_for_all_namespaces")()
    assert fake_kube.calls[-1].path == f"{prefix}/{resource.plural}"
    assert [(o.metadata.namespace, o.metadata.name) for o in everywhere.items] == [
        ("other", "web"),
        (NS, "web"),
    ]


def test_cross_namespace_list_is_ordered_by_namespace_then_name(
    api: Any, fake_kube: FakeKube
) -> None:
    for namespace, name in [("beta", "a"), ("alpha", "b"), ("alpha", "a"), ("gamma", "0")]:
        fake_kube.store.create(DEPLOYMENTS, namespace, deployment(name))
    apps: Any = client.AppsV1Api(api)
    listed = apps.list_deployment_for_all_namespaces()
    assert fake_kube.calls[-1].path == "/apis/apps/v1/deployments"
    assert [(d.metadata.namespace, d.metadata.name) for d in listed.items] == [
        ("alpha", "a"),
        ("alpha", "b"),
        ("beta", "a"),
        ("gamma", "0"),
    ]
    assert listed.metadata.resource_version == str(fake_kube.store.resource_version)
    assert listed.metadata._continue is None


def test_namespaces_are_cluster_scoped_and_labelled_with_their_name(
    api: Any, fake_kube: FakeKube
) -> None:
    core: Any = client.CoreV1Api(api)
    created = core.create_namespace({"metadata": {"name": "team", "labels": {"backup": "on"}}})
    assert fake_kube.calls[-1].path == "/api/v1/namespaces"
    assert created.metadata.labels == {"backup": "on", "kubernetes.io/metadata.name": "team"}
    assert created.status.phase == "Active"
    # The API server keeps the label whatever an update says.
    replaced = core.replace_namespace("team", {"metadata": {"name": "team", "labels": {}}})
    assert replaced.metadata.labels == {"kubernetes.io/metadata.name": "team"}
    generated = fake_kube.store.create(NAMESPACES, "", {"metadata": {"generateName": "tmp-"}})
    name = generated["metadata"]["name"]
    assert generated["metadata"]["labels"] == {"kubernetes.io/metadata.name": name}
    assert [n.metadata.name for n in core.list_namespace().items] == ["team", name]
    assert core.read_namespace("team").metadata.namespace is None
    assert failure(core.read_namespace, "nope") == (404, "NotFound")


def deployment_config(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps.openshift.io/v1",
        "kind": "DeploymentConfig",
        "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"app": "web"}, "template": TEMPLATE},
    }


def test_deployment_configs_are_served_only_with_openshift(api: Any, fake_kube: FakeKube) -> None:
    custom: Any = client.CustomObjectsApi(api)
    args = ("apps.openshift.io", "v1", NS, "deploymentconfigs")
    assert failure(custom.create_namespaced_custom_object, *args, deployment_config("dc")) == (
        404,
        "NotFound",
    )
    assert failure(custom.list_namespaced_custom_object, *args) == (404, "NotFound")
    assert failure(custom.get_api_resources, "apps.openshift.io", "v1") == (404, "NotFound")

    fake_kube.openshift = True
    created = custom.create_namespaced_custom_object(*args, deployment_config("dc"))
    assert (
        fake_kube.calls[-1].path == f"/apis/apps.openshift.io/v1/namespaces/{NS}/deploymentconfigs"
    )
    assert created["metadata"]["namespace"] == NS
    assert custom.get_namespaced_custom_object(*args, "dc")["spec"]["replicas"] == 1
    listed = custom.list_cluster_custom_object("apps.openshift.io", "v1", "deploymentconfigs")
    assert listed["kind"] == "DeploymentConfigList"
    assert [o["metadata"]["name"] for o in listed["items"]] == ["dc"]
    assert fake_kube.store.get(DEPLOYMENT_CONFIGS, NS, "dc")["kind"] == "DeploymentConfig"


def test_start_with_openshift_serves_its_group_from_the_start() -> None:
    kube = FakeKube.start(openshift=True)
    try:
        configuration = client.Configuration(host=kube.url)
        configuration.api_key = {"authorization": f"Bearer {kube.token}"}
        with client.ApiClient(configuration) as api_client:
            custom: Any = client.CustomObjectsApi(api_client)
            listed = custom.list_namespaced_custom_object(
                "apps.openshift.io", "v1", NS, "deploymentconfigs"
            )
            assert listed["items"] == []
    finally:
        kube.stop()
    assert FakeKube("t").openshift is False


def test_discovery_answers_api_resource_lists(api: Any, fake_kube: FakeKube) -> None:
    apps_api: Any = client.AppsV1Api(api)
    apps = apps_api.get_api_resources()
    assert fake_kube.calls[-1].path == "/apis/apps/v1/"
    assert apps.group_version == "apps/v1"
    by_name = {r.name: r for r in apps.resources}
    assert sorted(by_name) == ["daemonsets", "deployments", "replicasets", "statefulsets"]
    deployments = by_name["deployments"]
    assert (deployments.kind, deployments.singular_name, deployments.namespaced) == (
        "Deployment",
        "deployment",
        True,
    )
    assert {"create", "get", "list", "patch", "update", "watch", "delete"} <= set(deployments.verbs)

    core_api: Any = client.CoreV1Api(api)
    core = core_api.get_api_resources()
    assert core.group_version == "v1"
    namespaced = {r.name: r.namespaced for r in core.resources}
    assert namespaced["namespaces"] is False and namespaced["pods"] is True
    custom: Any = client.CustomObjectsApi(api)
    crd = custom.get_api_resources("image-backup.io", "v1alpha1")
    assert [r.name for r in crd.resources] == ["imagebackups", "imagebackups/status"]
    assert custom.get_api_resources("batch", "v1").resources[0].kind == "CronJob"

    apis: Any = client.ApisApi(api)
    groups = apis.get_api_versions()
    names = [g.name for g in groups.groups]
    assert "apps" in names and "batch" in names and "apps.openshift.io" not in names
    assert groups.groups[names.index("apps")].preferred_version.group_version == "apps/v1"

    # What the wire says, field for field (the client's models would hide extra or missing ones).
    raw = raw_request(fake_kube, "GET", "/apis/batch/v1")[1]
    assert raw["kind"] == "APIResourceList" and raw["apiVersion"] == "v1"
    assert raw["groupVersion"] == "batch/v1"
    assert set(raw["resources"][0]) == {"name", "singularName", "namespaced", "kind", "verbs"}

    fake_kube.openshift = True
    openshift = custom.get_api_resources("apps.openshift.io", "v1")
    assert [(r.name, r.kind) for r in openshift.resources] == [
        ("deploymentconfigs", "DeploymentConfig")
    ]
    assert "apps.openshift.io" in [g.name for g in apis.get_api_versions().groups]


# --- Pagination ------------------------------------------------------------------------------


def deployment(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}, "spec": CONTROLLER_SPEC}


def every_page(call: Any, *args: Any, **kwargs: Any) -> list[Any]:
    """Every page of a list (from ``_continue`` if given), following continue tokens."""
    pages = [call(*args, **kwargs)]
    while pages[-1].metadata._continue:
        kwargs["_continue"] = pages[-1].metadata._continue
        pages.append(call(*args, **kwargs))
    return pages


def names(page: Any) -> list[tuple[str, str]]:
    return [(o.metadata.namespace, o.metadata.name) for o in page.items]


def flat(pages: list[Any]) -> list[tuple[str, str]]:
    return [entry for page in pages for entry in names(page)]


SPREAD = [("alpha", "d1"), ("alpha", "d2"), ("beta", "d1"), ("beta", "d3"), ("gamma", "d0")]


def test_pages_cover_every_object_once_with_remaining_counts(api: Any, fake_kube: FakeKube) -> None:
    for namespace, name in SPREAD:
        fake_kube.store.create(DEPLOYMENTS, namespace, deployment(name))
    apps: Any = client.AppsV1Api(api)
    pages = every_page(apps.list_deployment_for_all_namespaces, limit=2)
    assert [names(p) for p in pages] == [SPREAD[0:2], SPREAD[2:4], SPREAD[4:]]
    assert [p.metadata.remaining_item_count for p in pages] == [3, 1, None]
    assert [bool(p.metadata._continue) for p in pages] == [True, True, False]
    assert {p.metadata.resource_version for p in pages} == {str(fake_kube.store.resource_version)}
    assert fake_kube.calls[-1].query["limit"] == "2" and "continue" in fake_kube.calls[-1].query

    # Within a namespace too; a limit not reached gives no token.
    in_alpha = every_page(apps.list_namespaced_deployment, "alpha", limit=1)
    assert [names(p) for p in in_alpha] == [[("alpha", "d1")], [("alpha", "d2")]]
    whole = apps.list_namespaced_deployment("beta", limit=2)
    assert names(whole) == SPREAD[2:4]
    assert whole.metadata._continue is None and whole.metadata.remaining_item_count is None
    assert names(apps.list_deployment_for_all_namespaces(limit=0)) == SPREAD


def test_later_pages_read_the_first_pages_snapshot(api: Any, fake_kube: FakeKube) -> None:
    for namespace, name in SPREAD:
        fake_kube.store.create(DEPLOYMENTS, namespace, deployment(name))
    apps: Any = client.AppsV1Api(api)
    first = apps.list_deployment_for_all_namespaces(limit=2)
    version = first.metadata.resource_version
    apps.create_namespaced_deployment("beta", deployment("d2"))  # would land on page 2
    apps.delete_namespaced_deployment("d0", "gamma")  # on page 3
    apps.patch_namespaced_deployment("d1", "beta", {"metadata": {"labels": {"changed": "yes"}}})

    rest = every_page(
        apps.list_deployment_for_all_namespaces, limit=2, _continue=first.metadata._continue
    )
    assert [names(p) for p in rest] == [SPREAD[2:4], SPREAD[4:]]
    assert {p.metadata.resource_version for p in rest} == {version}
    assert rest[0].items[0].metadata.labels == {}  # as it was at the first page
    # A new list sees the changes.
    fresh = flat(every_page(apps.list_deployment_for_all_namespaces, limit=2))
    assert fresh == [*SPREAD[0:3], ("beta", "d2"), ("beta", "d3")]


def test_selectors_apply_before_pages_which_then_have_no_count(
    api: Any, fake_kube: FakeKube
) -> None:
    for index, (namespace, name) in enumerate(SPREAD):
        fake_kube.store.create(DEPLOYMENTS, namespace, deployment(name, even=str(index % 2 == 0)))
    apps: Any = client.AppsV1Api(api)
    pages = every_page(apps.list_deployment_for_all_namespaces, limit=2, label_selector="even=True")
    assert [names(p) for p in pages] == [[SPREAD[0], SPREAD[2]], [SPREAD[4]]]
    assert [p.metadata.remaining_item_count for p in pages] == [None, None]
    fields = every_page(
        apps.list_deployment_for_all_namespaces, limit=1, field_selector="metadata.name=d1"
    )
    assert [names(p) for p in fields] == [[SPREAD[0]], [SPREAD[2]]]


def test_a_continue_token_older_than_the_compaction_is_gone(api: Any, fake_kube: FakeKube) -> None:
    for namespace, name in SPREAD:
        fake_kube.store.create(DEPLOYMENTS, namespace, deployment(name))
    apps: Any = client.AppsV1Api(api)
    first = apps.list_deployment_for_all_namespaces(limit=2)
    fake_kube.store.compact()  # nothing changed since: the first page's version is still there
    second = apps.list_deployment_for_all_namespaces(limit=2, _continue=first.metadata._continue)
    assert names(second) == SPREAD[2:4]

    apps.create_namespaced_deployment("beta", deployment("d2"))
    fake_kube.store.compact()
    with pytest.raises(client.ApiException) as caught:
        apps.list_deployment_for_all_namespaces(limit=2, _continue=second.metadata._continue)
    status = json.loads(caught.value.body or "")
    assert (caught.value.status, status["reason"], status["code"]) == (410, "Expired", 410)
    assert status["message"] == (
        "The provided continue parameter is too old to display a consistent list result. You can "
        "start a new list without the continue parameter, or use the continue token in this "
        "response to retrieve the remainder of the results. Continuing with the provided token "
        "results in an inconsistent list - objects that were created, modified, or deleted "
        "between the time the first chunk was returned and now may show up in the list."
    )
    # The token in the answer goes on from the same key, at the latest version.
    inconsistent = apps.list_deployment_for_all_namespaces(
        limit=10, _continue=status["metadata"]["continue"]
    )
    assert names(inconsistent) == SPREAD[4:]
    assert inconsistent.metadata.resource_version == str(fake_kube.store.resource_version)
    restarted = every_page(apps.list_deployment_for_all_namespaces, limit=2)
    assert ("beta", "d2") in flat(restarted)


def test_bad_continue_requests_are_bad_requests(api: Any, fake_kube: FakeKube) -> None:
    for namespace, name in SPREAD:
        fake_kube.store.create(DEPLOYMENTS, namespace, deployment(name))
    apps: Any = client.AppsV1Api(api)
    listing = apps.list_deployment_for_all_namespaces
    assert failure(listing, limit=1, _continue="not a token!") == (400, "BadRequest")
    status, body, _ = raw_request(
        fake_kube, "GET", "/apis/apps/v1/deployments?limit=1&continue=eyJ9"
    )
    assert status == 400
    assert body["message"].startswith("invalid continue token: continue key is not valid")
    token = listing(limit=1).metadata._continue
    with_version = {"_continue": token, "resource_version": "3"}
    assert failure(listing, limit=1, **with_version) == (400, "BadRequest")


# --- The mutating admission chain ------------------------------------------------------------

Answer = Callable[[dict[str, Any]], Any]


@dataclass
class HookServer:
    """A tiny HTTPS admission webhook: every review it gets goes to ``reviews``, ``answer``
    makes the reply (``status`` and ``delay`` to misbehave)."""

    url: str
    ca_bundle: str
    reviews: list[dict[str, Any]] = field(default_factory=list)
    answer: Answer = field(default=lambda review: allow(review))
    status: int = 200
    delay: float = 0.0


@pytest.fixture
def hook(tls_ca: TLSFiles) -> Iterator[HookServer]:
    server: HookServer | None = None

    async def handle(request: web.Request) -> web.Response:
        assert server is not None
        review = await request.json()
        server.reviews.append({"query": dict(request.query), **review})
        if server.delay:
            await asyncio.sleep(server.delay)
        answer = await asyncio.to_thread(server.answer, review)
        return web.json_response(answer, status=server.status)

    app = web.Application()
    app.router.add_post("/mutate", handle)
    served = ServedApp(app, name="test-webhook", ssl_context=server_ssl_context(tls_ca))
    ca = base64.b64encode(Path(tls_ca.ca_file).read_bytes()).decode()
    server = HookServer(f"https://127.0.0.1:{served.port}/mutate", ca)
    try:
        yield server
    finally:
        served.stop()


def allow(review: dict[str, Any], *operations: Any, warnings: Any = ()) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": review["request"]["uid"], "allowed": True}
    if operations:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(list(operations)).encode()).decode()
    if warnings:
        response["warnings"] = list(warnings)
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def deny(review: dict[str, Any], status: Any = None, warnings: Any = ()) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": review["request"]["uid"], "allowed": False}
    if status is not None:
        response["status"] = status
    if warnings:
        response["warnings"] = list(warnings)
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def set_image(image: str) -> Answer:
    """An answer that pins the first container, and labels the object."""

    def answer(review: dict[str, Any]) -> Any:
        spec = review["request"]["object"]["spec"]
        path = "/spec/template/spec/containers/0/image" if "template" in spec else None
        path = path or "/spec/containers/0/image"
        return allow(
            review,
            {"op": "replace", "path": path, "value": image},
            {"op": "add", "path": "/metadata/labels/backed-up", "value": "yes"},
        )

    return answer


DEPLOYMENT_RULE = {
    "apiGroups": ["apps"],
    "apiVersions": ["v1"],
    "operations": ["CREATE", "UPDATE"],
    "resources": ["deployments"],
}


def webhook(server: HookServer, name: str = "mutate.test", **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "clientConfig": {"url": server.url, "caBundle": server.ca_bundle},
        "rules": [DEPLOYMENT_RULE],
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        **fields,
    }


def register(kube: FakeKube, *webhooks: dict[str, Any], name: str = "test") -> None:
    configuration = {"metadata": {"name": name}, "webhooks": list(webhooks)}
    kube.store.create(MUTATING_WEBHOOK_CONFIGURATIONS, "", configuration)


def raw_request(
    kube: FakeKube, method: str, path: str, body: Any = None, content_type: str = "application/json"
) -> tuple[int, Any, list[str]]:
    """Status, parsed body and Warning headers of a request sent without the client (which
    ignores warnings)."""
    request = urllib.request.Request(
        kube.url + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {kube.token}", "Content-Type": content_type},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read()), answer.headers.get_all("Warning") or []
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers.get_all("Warning") or []


def sample(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        (Path(__file__).parent / "data/admission" / name).read_text()
    )
    return loaded


def test_a_create_is_patched_by_a_webhook_which_gets_a_real_review(
    api: Any, fake_kube: FakeKube, hook: HookServer
) -> None:
    hook.answer = set_image("backup.example/nginx:1.25")
    register(fake_kube, webhook(hook))
    apps: Any = client.AppsV1Api(api)
    created = apps.create_namespaced_deployment(NS, deployment("web", app="web"))
    assert created.spec.template.spec.containers[0].image == "backup.example/nginx:1.25"
    assert created.metadata.labels == {"app": "web", "backed-up": "yes"}
    stored = fake_kube.store.get(DEPLOYMENTS, NS, "web")
    assert stored["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "backup.example/nginx:1.25"
    )

    (call,) = fake_kube.admission_calls
    assert (call.configuration, call.webhook, call.error) == ("test", "mutate.test", None)
    assert call.url == f"{hook.url}?timeout=10s"
    assert hook.reviews[0]["query"] == {"timeout": "10s"}
    review = call.review
    assert {k: v for k, v in hook.reviews[0].items() if k != "query"} == review
    captured = sample("deployment-create.json")
    assert review.keys() == captured.keys()
    assert review["kind"] == "AdmissionReview" and review["apiVersion"] == "admission.k8s.io/v1"
    request = review["request"]
    assert list(request) == list(captured["request"])  # the same fields, in the same order
    for field_name in ("kind", "resource", "requestKind", "requestResource", "operation"):
        assert request[field_name] == captured["request"][field_name]
    assert (request["name"], request["namespace"], request["dryRun"]) == ("web", NS, False)
    assert request["oldObject"] is None
    assert request["userInfo"] == USER_INFO == captured["request"]["userInfo"]
    assert request["options"] == {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
    obj = request["object"]
    assert (obj["apiVersion"], obj["kind"]) == ("apps/v1", "Deployment")
    assert obj["metadata"] == {
        "name": "web",
        "labels": {"app": "web"},
        "namespace": NS,
        "creationTimestamp": None,
    }
    assert call.answer["response"]["uid"] == request["uid"]


def test_updates_by_put_and_patch_send_the_old_and_the_proposed_object(
    api: Any, fake_kube: FakeKube, hook: HookServer
) -> None:
    fake_kube.store.create(DEPLOYMENTS, NS, deployment("web"))
    hook.answer = set_image("backup.example/nginx:1.25")
    register(fake_kube, webhook(hook))
    apps: Any = client.AppsV1Api(api)

    before = fake_kube.store.get(DEPLOYMENTS, NS, "web")
    patched = apps.patch_namespaced_deployment("web", NS, {"spec": {"replicas": 3}})
    assert patched.spec.replicas == 3
    assert patched.spec.template.spec.containers[0].image == "backup.example/nginx:1.25"
    request = fake_kube.admission_calls[-1].review["request"]
    assert list(request) == list(
        sample("openshift/deployment-update-by-image-trigger.json")["request"]
    )
    assert (request["operation"], request["name"]) == ("UPDATE", "web")
    assert request["options"] == {"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1"}
    assert request["oldObject"] == before
    assert request["object"]["spec"]["replicas"] == 3  # the patch applied, not yet the webhook's
    assert request["object"]["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.25"

    before = fake_kube.store.get(DEPLOYMENTS, NS, "web")
    read = fake_kube.store.get(DEPLOYMENTS, NS, "web")
    read["spec"]["replicas"] = 5
    replaced = apps.replace_namespaced_deployment("web", NS, read)
    assert replaced.spec.replicas == 5
    request = fake_kube.admission_calls[-1].review["request"]
    assert request["oldObject"] == before
    assert request["object"]["spec"]["replicas"] == 5
    assert len(fake_kube.admission_calls) == 2
    # A stale write is a conflict, found in storage: after the webhooks were called.
    assert failure(apps.replace_namespaced_deployment, "web", NS, read) == (409, "Conflict")
    assert len(fake_kube.admission_calls) == 3


def test_field_manager_and_dry_run_reach_the_options(fake_kube: FakeKube, hook: HookServer) -> None:
    register(fake_kube, webhook(hook))
    path = f"/apis/apps/v1/namespaces/{NS}/deployments?fieldManager=backfill&dryRun=All"
    status, _, _ = raw_request(fake_kube, "POST", path, deployment("web"))
    assert status == 201
    assert fake_kube.admission_calls[-1].review["request"]["options"] == {
        "kind": "CreateOptions",
        "apiVersion": "meta.k8s.io/v1",
        "dryRun": ["All"],
        "fieldManager": "backfill",
    }
    status, body, _ = raw_request(fake_kube, "POST", path.replace("All", "Some"), deployment("w"))
    assert (status, body["reason"]) == (422, "Invalid")


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        (None, {}, True),
        ({}, {"a": "1"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
        ({"matchLabels": {"a": "1"}}, {}, False),
        (
            {"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]},
            {"a": "2"},
            True,
        ),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {}, False),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
        (
            {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]},
            {"a": "1"},
            False,
        ),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"b": "1"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"b": "1"}, True),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": "1"}, False),
        (
            {
                "matchLabels": {"b": "2"},
                "matchExpressions": [{"key": "a", "operator": "Exists"}],
            },
            {"a": "1"},
            False,
        ),
    ],
)
def test_label_selectors(selector: Any, labels: dict[str, str], expected: bool) -> None:
    assert label_selector_matches(selector, labels) is expected


def test_namespace_selectors_see_the_namespaces_labels(
    api: Any, fake_kube: FakeKube, hook: HookServer
) -> None:
    core: Any = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": "opted", "labels": {"backup": "on"}}})
    core.create_namespace({"metadata": {"name": "other"}})

    def expression(key: str, operator: str, *values: str) -> dict[str, Any]:
        return {"matchExpressions": [{"key": key, "operator": operator, "values": list(values)}]}

    selectors = {
        "by-label": {"matchLabels": {"backup": "on"}},
        "by-name": expression("kubernetes.io/metadata.name", "In", "opted", "other"),
        "not-in": expression("backup", "NotIn", "on"),
        "exists": expression("backup", "Exists"),
        "absent": expression("backup", "DoesNotExist"),
        "everything": {},
    }
    register(
        fake_kube,
        *(webhook(hook, name, namespaceSelector=s) for name, s in selectors.items()),
    )
    apps: Any = client.AppsV1Api(api)
    called = {}
    for namespace in ("opted", "other", "ghost"):  # ghost: no Namespace object, no labels
        before = len(fake_kube.admission_calls)
        apps.create_namespaced_deployment(namespace, deployment("web"))
        called[namespace] = [c.webhook for c in fake_kube.admission_calls[before:]]
    assert called == {
        "opted": ["by-label", "by-name", "exists", "everything"],
        "other": ["by-name", "not-in", "absent", "everything"],
        "ghost": ["not-in", "absent", "everything"],
    }


@pytest.mark.parametrize(
    ("rule", "resource", "operation", "subresource", "expected"),
    [
        (DEPLOYMENT_RULE, DEPLOYMENTS, "CREATE", "", True),
        (DEPLOYMENT_RULE, DEPLOYMENTS, "DELETE", "", False),
        (DEPLOYMENT_RULE, REPLICA_SETS, "CREATE", "", False),
        (DEPLOYMENT_RULE | {"apiVersions": ["v1beta1"]}, DEPLOYMENTS, "CREATE", "", False),
        (DEPLOYMENT_RULE | {"apiGroups": [""]}, DEPLOYMENTS, "CREATE", "", False),
        (DEPLOYMENT_RULE, DEPLOYMENTS, "UPDATE", "status", False),
        (
            DEPLOYMENT_RULE | {"resources": ["deployments/status"]},
            DEPLOYMENTS,
            "UPDATE",
            "status",
            True,
        ),
        (DEPLOYMENT_RULE | {"resources": ["deployments/status"]}, DEPLOYMENTS, "UPDATE", "", False),
        (DEPLOYMENT_RULE | {"resources": ["deployments/*"]}, DEPLOYMENTS, "UPDATE", "scale", True),
        (
            {"apiGroups": ["*"], "apiVersions": ["*"], "operations": ["*"], "resources": ["*"]},
            PODS,
            "UPDATE",
            "",
            True,
        ),
        (
            {"apiGroups": ["*"], "apiVersions": ["*"], "operations": ["*"], "resources": ["*"]},
            PODS,
            "UPDATE",
            "status",
            False,
        ),
        (
            {"apiGroups": ["*"], "apiVersions": ["*"], "operations": ["*"], "resources": ["*/*"]},
            PODS,
            "UPDATE",
            "status",
            True,
        ),
        (
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": ["pods"],
                "scope": "Namespaced",
            },
            PODS,
            "CREATE",
            "",
            True,
        ),
        (
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": ["pods"],
                "scope": "Cluster",
            },
            PODS,
            "CREATE",
            "",
            False,
        ),
        (
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": ["namespaces"],
                "scope": "Cluster",
            },
            NAMESPACES,
            "CREATE",
            "",
            True,
        ),
        (
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": ["namespaces"],
                "scope": "Namespaced",
            },
            NAMESPACES,
            "CREATE",
            "",
            False,
        ),
    ],
)
def test_rules(
    rule: dict[str, Any], resource: Resource, operation: str, subresource: str, expected: bool
) -> None:
    assert rule_matches(rule, resource, operation, subresource) is expected


def test_rules_pick_the_webhooks_of_each_write(
    api: Any, fake_kube: FakeKube, hook: HookServer
) -> None:
    every = {"apiGroups": ["*"], "apiVersions": ["*"]}
    register(
        fake_kube,
        webhook(hook, "apps-create", rules=[DEPLOYMENT_RULE | {"operations": ["CREATE"]}]),
        webhook(hook, "any-update", rules=[every | {"operations": ["UPDATE"], "resources": ["*"]}]),
        webhook(hook, "status", rules=[every | {"operations": ["*"], "resources": ["*/status"]}]),
        webhook(hook, "all-sub", rules=[every | {"operations": ["CREATE"], "resources": ["*/*"]}]),
        webhook(
            hook,
            "cluster",
            rules=[every | {"operations": ["*"], "resources": ["*"], "scope": "Cluster"}],
        ),
        webhook(
            hook,
            "pods",
            rules=[
                {
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "operations": ["*"],
                    "resources": ["pods"],
                }
            ],
        ),
    )
    apps: Any = client.AppsV1Api(api)
    core: Any = client.CoreV1Api(api)

    def hooks_of(write: Callable[[], Any]) -> list[str]:
        before = len(fake_kube.admission_calls)
        write()
        return [c.webhook for c in fake_kube.admission_calls[before:]]

    assert hooks_of(lambda: apps.create_namespaced_deployment(NS, deployment("web"))) == [
        "apps-create",
        "all-sub",
    ]
    assert hooks_of(
        lambda: apps.patch_namespaced_deployment("web", NS, {"spec": {"replicas": 2}})
    ) == ["any-update"]
    pod = {"metadata": {"name": "p"}, "spec": POD_SPEC}
    assert hooks_of(lambda: core.create_namespaced_pod(NS, pod)) == ["all-sub", "pods"]
    assert hooks_of(lambda: core.create_namespace({"metadata": {"name": "n"}})) == []
    assert hooks_of(lambda: apps.delete_namespaced_deployment("web", NS)) == []


def test_status_writes_and_deletes_are_not_admitted(
    api: Any, fake_kube: FakeKube, hook: HookServer
) -> None:
    every = {"apiGroups": ["*"], "apiVersions": ["*"], "operations": ["*"], "resources": ["*/*"]}
    register(fake_kube, webhook(hook, rules=[every]))
    custom: Any = client.CustomObjectsApi(api)
    body = {"metadata": {"name": "nginx"}, "spec": {"source": "nginx:1.25"}}
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)
    assert len(fake_kube.admission_calls) == 1
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, NS, PLURAL, "nginx", {"status": {"phase": "Copied"}}
    )
    custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "nginx")
    assert len(fake_kube.admission_calls) == 1


def test_object_selectors_see_the_new_or_the_old_labels(
    api: Any, fake_kube: FakeKube, hook: HookServer
) -> None:
    register(fake_kube, webhook(hook, objectSelector={"matchLabels": {"backup": "on"}}))
    apps: Any = client.AppsV1Api(api)
    apps.create_namespaced_deployment(NS, deployment("plain"))
    assert fake_kube.admission_calls == []
    apps.patch_namespaced_deployment("plain", NS, {"metadata": {"labels": {"backup": "on"}}})
    assert len(fake_kube.admission_calls) == 1  # the new object has the label
    apps.patch_namespaced_deployment("plain", NS, {"metadata": {"labels": {"backup": None}}})
    assert len(fake_kube.admission_calls) == 2  # the old one had it
    apps.patch_namespaced_deployment("plain", NS, {"spec": {"replicas": 4}})
    assert len(fake_kube.admission_calls) == 2
    apps.create_namespaced_deployment(NS, deployment("labelled", backup="on"))
    assert len(fake_kube.admission_calls) == 3


def test_webhooks_run_in_order_each_on_what_the_last_made(
    api: Any, fake_kube: FakeKube, hook: HookServer
) -> None:
    def answer(review: dict[str, Any]) -> Any:
        labels = review["request"]["object"]["metadata"].get("labels") or {}
        return allow(
            review,
            {"op": "add", "path": "/metadata/labels", "value": {**labels, f"n{len(labels)}": "x"}},
        )

    hook.answer = answer
    register(fake_kube, webhook(hook, "second"), name="b")
    register(fake_kube, webhook(hook, "first"), name="a")
    apps: Any = client.AppsV1Api(api)
    created = apps.create_namespaced_deployment(NS, deployment("web"))
    assert [c.webhook for c in fake_kube.admission_calls] == ["first", "second"]
    assert created.metadata.labels == {"n0": "x", "n1": "x"}


def test_a_denial_fails_the_write_as_the_api_server_answers_it(
    api: Any, fake_kube: FakeKube, hook: HookServer
) -> None:
    hook.answer = lambda review: deny(
        review, {"code": 403, "reason": "Forbidden", "message": "no backup of nginx"}
    )
    register(fake_kube, webhook(hook, "deny.test"))
    apps: Any = client.AppsV1Api(api)
    with pytest.raises(client.ApiException) as caught:
        apps.create_namespaced_deployment(NS, deployment("web"))
    status = json.loads(caught.value.body or "")
    assert (caught.value.status, status["code"], status["reason"]) == (403, 403, "Forbidden")
    assert (
        status["message"] == 'admission webhook "deny.test" denied the request: no backup of nginx'
    )
    assert failure(apps.read_namespaced_deployment, "web", NS) == (404, "NotFound")

    # Without a status: 400 and no reason (v1.28's ToStatusErr).
    hook.answer = lambda review: deny(review)
    code, body, _ = raw_request(
        fake_kube, "POST", f"/apis/apps/v1/namespaces/{NS}/deployments", deployment("web")
    )
    assert (code, body["code"], "reason" in body) == (400, 400, False)
    assert body["message"] == 'admission webhook "deny.test" denied the request without explanation'
    hook.answer = lambda review: deny(review, {"code": 200, "reason": "NotAllowed"})
    code, body, _ = raw_request(
        fake_kube, "POST", f"/apis/apps/v1/namespaces/{NS}/deployments", deployment("web")
    )
    assert (code, body["reason"]) == (400, "NotAllowed")
    assert body["message"] == 'admission webhook "deny.test" denied the request: NotAllowed'


def test_warnings_come_back_as_warning_headers(fake_kube: FakeKube, hook: HookServer) -> None:
    hook.answer = lambda review: allow(review, warnings=["copied nginx", 'tag "latest" moves'])
    register(fake_kube, webhook(hook, "one"), webhook(hook, "two"))
    status, body, warnings = raw_request(
        fake_kube, "POST", f"/apis/apps/v1/namespaces/{NS}/deployments", deployment("web")
    )
    assert (status, body["metadata"]["name"]) == (201, "web")
    # Both webhooks said the same: the API server's recorder keeps each text once.
    assert warnings == ['299 - "copied nginx"', '299 - "tag \\"latest\\" moves"']

    hook.answer = lambda review: deny(review, {"code": 403, "message": "no"}, warnings=["why"])
    status, _, warnings = raw_request(
        fake_kube, "POST", f"/apis/apps/v1/namespaces/{NS}/deployments", deployment("other")
    )
    assert (status, warnings) == (403, ['299 - "why"'])


FAILURES = ["refused", "tls", "timeout", "status", "uid", "service", "patch-type"]


@pytest.mark.parametrize(
    ("failure_kind", "policy"),
    [(kind, policy) for kind in FAILURES for policy in ("Fail", "Ignore")] + [("refused", None)],
)
def test_call_failures_follow_the_failure_policy(
    api: Any,
    fake_kube: FakeKube,
    hook: HookServer,
    tmp_path: Path,
    failure_kind: str,
    policy: str | None,
) -> None:
    fields: dict[str, Any] = {"timeoutSeconds": 1} if failure_kind == "timeout" else {}
    if policy is not None:
        fields["failurePolicy"] = policy
    hooked = webhook(hook, "flaky.test", **fields)
    hook.answer = set_image("backup.example/nginx:1.25")
    expected = ""
    if failure_kind == "refused":
        port = free_port()
        hooked["clientConfig"]["url"] = f"https://127.0.0.1:{port}/mutate"
        expected = (
            f'failed to call webhook: Post "https://127.0.0.1:{port}/mutate?timeout=10s": '
            f"dial tcp 127.0.0.1:{port}: connect: connection refused"
        )
    elif failure_kind == "tls":
        other = generate_tls(str(tmp_path / "other-ca"))
        hooked["clientConfig"]["caBundle"] = base64.b64encode(
            Path(other.ca_file).read_bytes()
        ).decode()
        expected = (
            f'failed to call webhook: Post "{hook.url}?timeout=10s": '
            "tls: failed to verify certificate: unable to get local issuer certificate"
        )
    elif failure_kind == "timeout":
        hook.delay = 2
        expected = (
            f'failed to call webhook: Post "{hook.url}?timeout=1s": context deadline exceeded'
        )
    elif failure_kind == "status":
        hook.status = 500
        expected = "failed to call webhook: an error on the server ("
    elif failure_kind == "uid":
        hook.answer = lambda review: allow({"request": {"uid": "other"}})
        expected = 'received invalid webhook response: expected response.uid="'
    elif failure_kind == "service":
        hooked["clientConfig"] = {"service": {"namespace": "image-backup", "name": "image-backup"}}
        expected = "failed to call webhook: "
    elif failure_kind == "patch-type":

        def merge_patch(review: dict[str, Any]) -> Any:
            answer = allow(review, {"op": "add", "path": "/x", "value": 1})
            answer["response"]["patchType"] = "MergePatch"
            return answer

        hook.answer = merge_patch
        expected = 'unsupported patch type "MergePatch"'
    register(fake_kube, hooked)
    apps: Any = client.AppsV1Api(api)

    if policy == "Ignore":
        created = apps.create_namespaced_deployment(NS, deployment("web"))
        assert created.spec.template.spec.containers[0].image == "nginx:1.25"  # unpatched
    else:
        with pytest.raises(client.ApiException) as caught:
            apps.create_namespaced_deployment(NS, deployment("web"))
        status = json.loads(caught.value.body or "")
        assert (caught.value.status, status["reason"]) == (500, "InternalError")
        prefix = f'Internal error occurred: failed calling webhook "flaky.test": {expected}'
        assert status["message"].startswith(prefix), status["message"]
        assert status["details"]["causes"][0]["message"] == status["message"].removeprefix(
            "Internal error occurred: "
        )
        assert fake_kube.store.list_objects(Query(DEPLOYMENTS, NS, [], []))[0] == []
    (call,) = fake_kube.admission_calls
    assert call.error is not None and call.error.startswith(
        f'failed calling webhook "flaky.test": {expected}'
    )


def test_a_patch_that_does_not_apply_is_an_internal_error_whatever_the_policy(
    api: Any, fake_kube: FakeKube, hook: HookServer
) -> None:
    hook.answer = lambda review: allow(review, {"op": "remove", "path": "/spec/nothing"})
    register(fake_kube, webhook(hook, failurePolicy="Ignore"))
    apps: Any = client.AppsV1Api(api)
    assert failure(apps.create_namespaced_deployment, NS, deployment("web")) == (
        500,
        "InternalError",
    )


def test_dry_run_admits_and_stores_nothing(api: Any, fake_kube: FakeKube, hook: HookServer) -> None:
    hook.answer = set_image("backup.example/nginx:1.25")
    register(fake_kube, webhook(hook, sideEffects="NoneOnDryRun"))
    apps: Any = client.AppsV1Api(api)
    version = fake_kube.store.resource_version
    would = apps.create_namespaced_deployment(NS, deployment("web"), dry_run="All")
    assert would.spec.template.spec.containers[0].image == "backup.example/nginx:1.25"
    assert would.metadata.uid and would.metadata.resource_version is None
    assert fake_kube.store.resource_version == version
    assert failure(apps.read_namespaced_deployment, "web", NS) == (404, "NotFound")
    request = fake_kube.admission_calls[-1].review["request"]
    assert request["dryRun"] is True
    assert request["options"] == {
        "kind": "CreateOptions",
        "apiVersion": "meta.k8s.io/v1",
        "dryRun": ["All"],
    }
    captured = sample("deployment-create-dryrun.json")["request"]
    assert list(request) == list(captured)

    fake_kube.store.create(DEPLOYMENTS, NS, deployment("web"))
    stored = fake_kube.store.get(DEPLOYMENTS, NS, "web")
    would = apps.patch_namespaced_deployment("web", NS, {"spec": {"replicas": 7}}, dry_run="All")
    assert would.spec.replicas == 7
    assert would.spec.template.spec.containers[0].image == "backup.example/nginx:1.25"
    assert fake_kube.store.get(DEPLOYMENTS, NS, "web") == stored
    assert fake_kube.admission_calls[-1].review["request"]["options"]["kind"] == "UpdateOptions"


@pytest.mark.parametrize("side_effects", ["Some", "Unknown"])
def test_dry_run_fails_on_webhooks_with_side_effects(
    api: Any, fake_kube: FakeKube, hook: HookServer, side_effects: str
) -> None:
    register(
        fake_kube, webhook(hook, "effects.test", sideEffects=side_effects, failurePolicy="Ignore")
    )
    apps: Any = client.AppsV1Api(api)
    with pytest.raises(client.ApiException) as caught:
        apps.create_namespaced_deployment(NS, deployment("web"), dry_run="All")
    status = json.loads(caught.value.body or "")
    assert (caught.value.status, status["reason"]) == (400, "BadRequest")
    assert status["message"] == 'admission webhook "effects.test" does not support dry run'
    assert hook.reviews == [] and fake_kube.admission_calls == []
    apps.create_namespaced_deployment(NS, deployment("web"))  # a real write calls it
    assert len(hook.reviews) == 1


def test_a_webhook_may_call_the_api_server_while_it_answers(
    api: Any, fake_kube: FakeKube, hook: HookServer
) -> None:
    fake_kube.store.create(SECRETS, NS, secret("pull"))

    def answer(review: dict[str, Any]) -> Any:
        # Blocking, from the webhook's own thread: the fake must serve it while it waits.
        _, listed, _ = raw_request(fake_kube, "GET", f"/api/v1/namespaces/{NS}/secrets")
        name = listed["items"][0]["metadata"]["name"]
        return allow(
            review, {"op": "add", "path": "/metadata/annotations", "value": {"seen": name}}
        )

    hook.answer = answer
    register(fake_kube, webhook(hook))
    apps: Any = client.AppsV1Api(api)
    created = apps.create_namespaced_deployment(NS, deployment("web"))
    assert created.metadata.annotations == {"seen": "pull"}


def test_imagestream_writes_keep_the_status_the_api_server_computes(
    openshift_kube: FakeKube,
) -> None:
    """As openshift-apiserver's ImageStream strategy: a create ignores the status sent (the
    internal registry's name for the stream, no tags: history comes from imports and
    pushes), an update keeps the stored status, and a PUT or POST takes no patch."""
    path = "/apis/image.openshift.io/v1/namespaces/shop/imagestreams"
    history = {"tags": [{"tag": "v1", "items": [{"image": "sha256:" + "1" * 64}]}]}
    spec = {"tags": [{"name": "v1", "from": {"kind": "DockerImage", "name": "quay.io/a/b:1"}}]}
    stream = {"metadata": {"name": "app"}, "spec": spec, "status": history}

    created = raw_request(openshift_kube, "POST", path, stream)
    as_patch = raw_request(
        openshift_kube, "POST", path, stream, content_type="application/merge-patch+json"
    )

    assert created[0] == 201
    assert created[1]["status"] == {
        "dockerImageRepository": "image-registry.openshift-image-registry.svc:5000/shop/app"
    }
    assert created[1]["metadata"]["generation"] == 1
    assert created[1]["spec"]["tags"][0]["generation"] == 1
    assert as_patch[0] == 415 and as_patch[1]["reason"] == "UnsupportedMediaType"
    # An import writes the history (here, the test's backdoor); a PUT of the object with
    # another status changes the spec only.
    openshift_kube.store.patch(
        IMAGE_STREAMS, "shop", "app", {"status": history}, "application/merge-patch+json"
    )
    current = openshift_kube.store.get(IMAGE_STREAMS, "shop", "app")
    changed = {**current, "spec": {"tags": []}, "status": {"tags": []}}
    updated = raw_request(openshift_kube, "PUT", f"{path}/app", changed)
    assert updated[0] == 200
    assert updated[1]["spec"] == {"tags": []}
    assert updated[1]["status"]["tags"] == history["tags"]
