"""The fake Kubernetes API server, driven by the real `kubernetes` client."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config, watch

from tests.support.fakekube import (
    EVENTS,
    EVENTS_V1,
    IMAGE_BACKUPS,
    MUTATING_WEBHOOK_CONFIGURATIONS,
    SECRETS,
    FakeKube,
    KubeError,
)

NS = "team"
GROUP, VERSION, PLURAL = "image-backup.io", "v1alpha1", "imagebackups"


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
    assert "status" in created  # create keeps what it is given; only updates split the two

    status = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, NS, PLURAL, "nginx", {"status": {"phase": "Copied"}, "spec": {"x": 1}}
    )
    assert status["status"] == {"ignored": True, "phase": "Copied"}
    assert status["spec"] == {"source": "nginx:1.25"}  # /status ignores the spec
    assert status["metadata"]["generation"] == 1

    status["spec"] = {"source": "nginx:1.26"}
    status["status"] = {"phase": "Overwritten?"}
    replaced = custom.replace_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "nginx", status)
    assert replaced["spec"] == {"source": "nginx:1.26"}
    assert replaced["status"] == {
        "ignored": True,
        "phase": "Copied",
    }  # the main resource ignores it
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
