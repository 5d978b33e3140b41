"""Workloads of every kind the webhook handles, built from the captured API objects.

The Deployment, CronJob and Pod come from the kube-apiserver v1.28 samples (the objects the
API server sent, with its defaults), the DeploymentConfig from the OpenShift 4.15 one; the
other kinds wrap the Deployment's pod template the way their APIs do.
"""

from __future__ import annotations

import base64
import copy
import json
import urllib.request
from typing import Any

from tests.admission_helpers import sample
from tests.support.fakekube import NAMESPACES, WORKLOADS, FakeKube, Resource
from tests.support.registries import Registry

Object = dict[str, Any]

RESOURCES = {r.kind: r for r in WORKLOADS}
KUBERNETES_KINDS = [kind for kind in RESOURCES if kind != "DeploymentConfig"]


def _object(name: str) -> Object:
    obj: Object = copy.deepcopy(sample(name)["request"]["object"])
    return obj


def _openshift(name: str) -> Object:
    obj: Object = copy.deepcopy(sample(f"openshift/{name}")["request"]["object"])
    return obj


def workload(kind: str, name: str, images: dict[str, str], **pod: Any) -> Object:
    """A `kind` named `name` whose pod runs `images` ({container: image}); `pod`: more pod
    spec fields (imagePullSecrets, serviceAccountName)."""
    deployment = _object("deployment-create")
    template = deployment["spec"]["template"]
    if kind == "Pod":
        obj = _object("pod-create-bare")
        spec = obj["spec"]
    elif kind == "CronJob":
        obj = _object("cronjob-create")
        spec = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "DeploymentConfig":
        obj = _openshift("deploymentconfig-create")
        spec = obj["spec"]["template"]["spec"]
    elif kind == "PodTemplate":
        obj = {"apiVersion": "v1", "kind": kind, "metadata": {}, "template": template}
        spec = template["spec"]
    else:
        resource = RESOURCES[kind]
        obj = {"apiVersion": resource.api_version, "kind": kind, "metadata": {}}
        obj["spec"] = {"selector": deployment["spec"]["selector"], "template": template}
        if kind == "Job":
            obj["spec"] = {"template": template}
            template["spec"]["restartPolicy"] = "Never"
        if kind == "ReplicationController":
            obj["spec"]["selector"] = template["metadata"]["labels"]
        spec = template["spec"]
    obj["metadata"] = {"name": name, **{k: v for k, v in obj["metadata"].items() if k == "labels"}}
    base = spec["containers"][0]
    spec["containers"] = [{**base, "name": c, "image": image} for c, image in images.items()]
    spec.pop("initContainers", None)
    spec.update(pod)
    return obj


def opt_in(kube: FakeKube, namespace: str, mode: str | None) -> None:
    labels = {"image-backup.io/mode": mode} if mode else {}
    kube.store.create(NAMESPACES, "", {"metadata": {"name": namespace, "labels": labels}})


def create(kube: FakeKube, namespace: str, obj: Object) -> Object:
    resource: Resource = RESOURCES[obj["kind"]]
    created: Object = kube.store.create(resource, namespace, obj)
    return created


def api_write(
    kube: FakeKube,
    method: str,
    path: str,
    obj: object,
    *,
    content_type: str = "application/json",
) -> Object:
    """A write through the fake API server, and so through its mutating webhooks; `obj` is
    sent as `content_type` (an object, or a patch)."""
    request = urllib.request.Request(
        kube.url + path,
        data=json.dumps(obj).encode(),
        method=method,
        headers={"Authorization": f"Bearer {kube.token}", "Content-Type": content_type},
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        written: Object = json.loads(answer.read())
    return written


def collection(resource: Resource, namespace: str) -> str:
    """The API path of `resource`'s objects in `namespace`."""
    prefix = f"/apis/{resource.api_version}" if resource.group else f"/api/{resource.version}"
    return f"{prefix}/namespaces/{namespace}/{resource.plural}"


def admit(kube: FakeKube, namespace: str, obj: Object) -> Object:
    """Create `obj` through the API server, and so through its admission webhooks: the
    object as stored."""
    return api_write(kube, "POST", collection(RESOURCES[obj["kind"]], namespace), obj)


def pull_secret(registry: Registry) -> Object:
    """A pull secret (named private-pull) with the registry's login."""
    login = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    content = {"auths": {registry.host: {"auth": login}}}
    return {
        "metadata": {"name": "private-pull"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(content).encode()).decode()},
    }
