"""The install manifests as `kubectl kustomize` renders them: valid against the Kubernetes API
schemas, and consistent with the webhook itself (its routes, the kinds it reviews, its config
loader, its shutdown time).

The base and every overlay are rendered; most checks run on all of them, so an overlay cannot
quietly undo what the base guarantees.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import shutil
import subprocess
from importlib.metadata import version
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from webhook.admission.pods import POD_SPEC_PATHS
from webhook.cli import _parser as cli_parser
from webhook.cli import _serve as cli_serve
from webhook.config import Config, load, merged
from webhook.metrics import Metrics
from webhook.server import Mode, Readiness, WebhookServer, build_routes

Obj = dict[str, Any]

MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"
BASE = "base"
CERT_MANAGER = "overlays/cert-manager"
OPENSHIFT = "overlays/openshift"
NO_SECRET_READ = "overlays/no-secret-read"
LEASE = "image-backup-backfill"  # webhook.cluster.BACKFILL_LEASE
VARIANTS = (BASE, CERT_MANAGER, OPENSHIFT, NO_SECRET_READ)

NAMESPACE = "image-backup"
NAME = "image-backup"
TLS_SECRET = "image-backup-tls"
REGISTRY_SECRET = "image-backup-registry"
OPENSHIFT_REGISTRY = "image-registry.openshift-image-registry.svc:5000"
SERVICE_ACCOUNT_DIR = PurePosixPath("/var/run/secrets/kubernetes.io/serviceaccount")
PLACEHOLDER_HOST = "registry.example.com"
# The API the manifests are checked against, so no field of a later one creeps in
# (pods/ephemeralcontainers, policy/v1 and the kubernetes.io/metadata.name label predate it).
KUBERNETES_VERSION = "1.28"
CLUSTER_SCOPED = {
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
}
# Kustomization fields that both Debian's kubectl (embedded kustomize 2.0.3) and current
# kustomize understand; newer ones (patches, components, labels) break the former.
PORTABLE_KUSTOMIZATION_FIELDS = {
    "apiVersion",
    "kind",
    "bases",
    "resources",
    "namespace",
    "commonLabels",
    "images",
    "patchesStrategicMerge",
    "patchesJson6902",
    "configMapGenerator",
    "generatorOptions",
}
READ_VERBS = {"get", "list", "watch"}


@functools.cache
def render(variant: str, manifests: Path = MANIFESTS) -> tuple[Obj, ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl not found (make system-deps installs it)"
    result = subprocess.run(
        [kubectl, "kustomize", str(manifests / variant)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@pytest.fixture(params=VARIANTS)
def variant(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def only(objects: tuple[Obj, ...], kind: str) -> Obj:
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(objects: tuple[Obj, ...]) -> Obj:
    webhook: Obj
    (webhook,) = pod_spec(objects)["containers"]
    return webhook


def pod_spec(objects: tuple[Obj, ...]) -> Obj:
    spec: Obj = only(objects, "Deployment")["spec"]["template"]["spec"]
    return spec


def pod_labels(objects: tuple[Obj, ...]) -> dict[str, str]:
    labels: dict[str, str] = only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    return labels


def config_files(objects: tuple[Obj, ...]) -> list[str]:
    """The config files the container's arguments name, in the order they are merged."""
    args = parsed_args(objects)
    assert args.command is cli_serve
    files: list[str] = args.config
    return files


def parsed_args(objects: tuple[Obj, ...]) -> argparse.Namespace:
    # The image's ENTRYPOINT is image-backup: the container's args go to its parser.
    return cli_parser().parse_args(container(objects)["args"])


def config_texts(objects: tuple[Obj, ...]) -> list[str]:
    """The text of each config file, from the ConfigMap item mounted there."""
    data = only(objects, "ConfigMap")["data"]
    keys = [projected_source(mounted_file(objects, path))[2] for path in config_files(objects)]
    return [data[key] for key in keys]


def config_document(objects: tuple[Obj, ...]) -> Obj:
    """The configuration the webhook reads: every config file, merged as it merges them."""
    document: Obj = {}
    for text in config_texts(objects):
        document = merged(document, yaml.safe_load(text))
    return document


def with_local_files(document: Any, root: Path) -> Any:
    """The config with every absolute path moved under `root`, where an empty file is made.

    The loader insists that credential and CA files exist; in the cluster the volumes provide
    them (test_config_files_are_mounted checks that).
    """
    if isinstance(document, dict):
        return {key: with_local_files(value, root) for key, value in document.items()}
    if isinstance(document, list):
        return [with_local_files(value, root) for value in document]
    if isinstance(document, str) and document.startswith("/"):
        local = root / document.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.touch()
        return str(local)
    return document


def loaded_config(objects: tuple[Obj, ...], scratch: Path) -> Config:
    """The configuration as the webhook loads it from the files the container names."""
    files = []
    for number, text in enumerate(config_texts(objects)):
        local = scratch / f"config-{number}.yaml"
        local.write_text(yaml.safe_dump(with_local_files(yaml.safe_load(text), scratch)))
        files.append(local)
    return load(*files)


class MountedFile(NamedTuple):
    volume: Obj
    path: str  # within the volume


def mounted_file(objects: tuple[Obj, ...], path: str) -> MountedFile:
    """The volume, and the path within it, that provide `path` inside the container."""
    mounts = container(objects).get("volumeMounts", [])
    candidates = [m for m in mounts if PurePosixPath(path).is_relative_to(m["mountPath"])]
    assert candidates, f"{path} is on no volume"
    mount = max(candidates, key=lambda m: len(m["mountPath"]))
    (volume,) = [v for v in pod_spec(objects)["volumes"] if v["name"] == mount["name"]]
    relative = str(PurePosixPath(path).relative_to(mount["mountPath"]))
    return MountedFile(volume, relative)


def projected_source(mounted: MountedFile) -> tuple[str, str, str]:
    """(kind, object name, key) of the projected item that is this file."""
    sources = mounted.volume["projected"]["sources"]
    found = [
        (kind, source[kind]["name"], item["key"])
        for source in sources
        for kind in ("configMap", "secret")
        if kind in source
        for item in source[kind]["items"]
        if item["path"] == mounted.path
    ]
    assert len(found) == 1, f"{mounted.path} is not one item of {mounted.volume['name']}"
    return found[0]


def test_kustomizations_use_only_portable_fields() -> None:
    """kubectl here may embed a newer kustomize than Debian's: check what it would refuse."""
    kustomizations = sorted(MANIFESTS.rglob("kustomization.yaml"))
    assert len(kustomizations) == len(VARIANTS)
    for path in kustomizations:
        document = yaml.safe_load(path.read_text())
        assert set(document) <= PORTABLE_KUSTOMIZATION_FIELDS, path
        # kustomize 2.0.3 reads only files from `resources`; directories go in `bases`.
        for entry in document.get("resources", []):
            assert (path.parent / entry).is_file(), f"{path}: {entry}"
        for entry in document.get("bases", []):
            assert (path.parent / entry / "kustomization.yaml").is_file(), f"{path}: {entry}"


def test_objects_are_valid_for_the_kubernetes_api(variant: str) -> None:
    """Strict: a misspelt or misplaced field fails, as `kubectl apply` would refuse it."""
    for obj in render(variant):
        if obj["apiVersion"].startswith("cert-manager.io/"):
            continue  # not a Kubernetes API; test_cert_manager_overlay checks those
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")


def test_everything_is_in_its_own_namespace(variant: str) -> None:
    objects = render(variant)
    assert only(objects, "Namespace")["metadata"]["name"] == NAMESPACE
    for obj in objects:
        namespace = obj["metadata"].get("namespace")
        expected = None if obj["kind"] in CLUSTER_SCOPED else NAMESPACE
        assert namespace == expected, f"{obj['kind']}/{obj['metadata']['name']}"


def test_webhook_entries(variant: str) -> None:
    objects = render(variant)
    configuration = only(objects, "MutatingWebhookConfiguration")
    assert configuration["metadata"]["name"] == NAME
    service = only(objects, "Service")
    entries = {entry["name"]: entry for entry in configuration["webhooks"]}
    expected = {
        "enforce.image-backup.io": ("enforce", "/mutate", "Fail"),
        "audit.image-backup.io": ("audit", "/audit", "Ignore"),
    }
    assert set(entries) == set(expected)
    for name, (mode, path, failure_policy) in expected.items():
        entry = entries[name]
        assert len(name.split(".")) >= 3  # the API server's rule for webhook names
        selector = entry["namespaceSelector"]
        assert selector["matchLabels"] == {"image-backup.io/mode": mode}
        assert {
            "key": "kubernetes.io/metadata.name",
            "operator": "NotIn",
            "values": [NAMESPACE],
        } in selector["matchExpressions"]
        assert entry["clientConfig"]["service"] == {
            "name": service["metadata"]["name"],
            "namespace": service["metadata"]["namespace"],
            "path": path,
            "port": service["spec"]["ports"][0]["port"],
        }
        assert not entry["clientConfig"].get("caBundle")  # filled in the cluster
        assert entry["failurePolicy"] == failure_policy
        assert entry["sideEffects"] == "NoneOnDryRun"
        assert entry["timeoutSeconds"] == 30
        assert entry["reinvocationPolicy"] == "IfNeeded"
        assert entry["matchPolicy"] == "Equivalent"
        assert entry["admissionReviewVersions"] == ["v1"]


def test_admission_budget_fits_the_webhook_timeout(variant: str, tmp_path: Path) -> None:
    objects = render(variant)
    config = loaded_config(objects, tmp_path)
    for entry in only(objects, "MutatingWebhookConfiguration")["webhooks"]:
        assert config.admission_budget_seconds < entry["timeoutSeconds"]


def reviewed_resources(entry: Obj) -> set[tuple[str, str]]:
    resources = set()
    for rule in entry["rules"]:
        assert sorted(rule["operations"]) == ["CREATE", "UPDATE"]
        assert rule["scope"] == "Namespaced"
        assert rule["apiVersions"] == ["v1"]
        (group,) = rule["apiGroups"]
        resources |= {(group, resource) for resource in rule["resources"]}
    return resources


def test_rules_cover_every_kind_the_webhook_handles(variant: str) -> None:
    """Exactly the handled kinds: any other kind would only cost a round trip."""
    handled = {(group, kind.lower() + "s") for group, kind in POD_SPEC_PATHS}
    handled.add(("", "pods/ephemeralcontainers"))  # `kubectl debug` adds containers there
    if variant != OPENSHIFT:
        handled.remove(("apps.openshift.io", "deploymentconfigs"))
    for entry in only(render(variant), "MutatingWebhookConfiguration")["webhooks"]:
        assert reviewed_resources(entry) == handled, entry["name"]


def served_routes() -> set[tuple[str, str]]:
    class NoReviews:
        async def review(self, body: bytes, mode: Mode) -> bytes:
            raise AssertionError("not called")

        async def backup_registry_answers(self) -> bool:
            raise AssertionError("not called")

    reviewer = NoReviews()
    readiness = Readiness(reviewer, None, retry_seconds=1)
    return set(build_routes(reviewer, Metrics(), readiness, max_body_bytes=1024))


def container_port(objects: tuple[Obj, ...], port: int | str) -> int:
    """A port as a probe or Service names it (number or name), as the container's number."""
    ports = container(objects)["ports"]
    found = [p["containerPort"] for p in ports if port in (p.get("name"), p["containerPort"])]
    assert len(found) == 1, f"port {port!r} is not a container port"
    number: int = found[0]
    return number


def test_the_service_and_probes_reach_the_server(variant: str, tmp_path: Path) -> None:
    objects = render(variant)
    server_port = loaded_config(objects, tmp_path).server.port
    routes = served_routes()
    webhook = container(objects)
    for probe_name, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        probe = webhook[probe_name]["httpGet"]
        assert probe["path"] == path
        assert ("GET", probe["path"]) in routes
        assert probe["scheme"] == "HTTPS"
        assert container_port(objects, probe["port"]) == server_port
    for entry in only(objects, "MutatingWebhookConfiguration")["webhooks"]:
        assert ("POST", entry["clientConfig"]["service"]["path"]) in routes
    service = only(objects, "Service")
    (port,) = service["spec"]["ports"]
    assert port["port"] == 443
    assert container_port(objects, port["targetPort"]) == server_port
    assert service["spec"]["selector"].items() <= pod_labels(objects).items()


def test_deployment_runs_locked_down(variant: str) -> None:
    objects = render(variant)
    deployment = only(objects, "Deployment")
    spec = pod_spec(objects)
    webhook = container(objects)
    assert deployment["spec"]["replicas"] == 2
    assert spec["serviceAccountName"] == only(objects, "ServiceAccount")["metadata"]["name"]
    pod_security = spec["securityContext"]
    security = webhook["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    ids = {"runAsUser", "runAsGroup", "fsGroup"}
    if variant == OPENSHIFT:
        # The restricted SCC assigns the namespace's UID range; a fixed one is refused.
        assert not ids & (pod_security.keys() | security.keys())
    else:
        assert {key: pod_security[key] for key in ids} == dict.fromkeys(ids, 65532)
        assert "runAsUser" not in security
    for kind in ("requests", "limits"):
        assert set(webhook["resources"][kind]) == {"cpu", "memory"}


def test_deployment_image_is_this_version(variant: str) -> None:
    image = container(render(variant))["image"]
    assert image == f"image-backup-webhook:{version('image-backup-webhook')}"


def test_deployment_knows_its_pod(variant: str) -> None:
    env = {item["name"]: item for item in container(render(variant))["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_shutdown_fits_the_grace_period(variant: str) -> None:
    """SIGTERM comes after preStop; the server then drains for up to its shutdown timeout."""
    spec = pod_spec(render(variant))
    command = container(render(variant))["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    drain = inspect.signature(WebhookServer).parameters["shutdown_timeout"].default
    assert spec["terminationGracePeriodSeconds"] > float(command[1]) + drain


def test_replicas_spread_and_survive_disruptions(variant: str) -> None:
    objects = render(variant)
    labels = pod_labels(objects).items()
    (spread,) = pod_spec(objects)["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"].items() <= labels
    budget = only(objects, "PodDisruptionBudget")["spec"]
    assert budget["minAvailable"] == 1
    assert budget["selector"]["matchLabels"].items() <= labels
    assert only(objects, "Deployment")["spec"]["selector"]["matchLabels"].items() <= labels


def test_only_tmp_and_the_certificate_are_writable(variant: str) -> None:
    """With a read-only root, /tmp and the TLS directory must be volumes of their own."""
    objects = render(variant)
    tmp = mounted_file(objects, "/tmp/x")
    assert tmp.path == "x" and "emptyDir" in tmp.volume
    server = config_document(objects)["server"]
    certificate = mounted_file(objects, server["certFile"])
    key = mounted_file(objects, server["keyFile"])
    assert certificate.volume == key.volume
    assert (certificate.path, key.path) == ("tls.crt", "tls.key")  # a kubernetes.io/tls Secret
    if variant == CERT_MANAGER:
        assert certificate.volume["secret"] == {"secretName": TLS_SECRET}
    else:
        assert "emptyDir" in certificate.volume  # written by the server itself (--self-signed)


def test_self_signed_unless_cert_manager(variant: str) -> None:
    assert ("--self-signed" in container(render(variant))["args"]) == (variant != CERT_MANAGER)


def test_the_command_line_accepts_the_arguments(variant: str) -> None:
    args = parsed_args(render(variant))
    assert args.command is cli_serve
    assert args.self_signed == (variant != CERT_MANAGER)


def test_config_files_are_mounted(variant: str) -> None:
    """Every file the arguments and the config name comes from the right object."""
    objects = render(variant)
    config_map = only(objects, "ConfigMap")["metadata"]["name"]
    sources = [projected_source(mounted_file(objects, path)) for path in config_files(objects)]
    assert sources[0] == ("configMap", config_map, "config.yaml")  # the base's, first
    assert all(source[:2] == ("configMap", config_map) for source in sources)
    config = config_document(objects)
    docker_config = projected_source(mounted_file(objects, config["credentials"]["dockerConfig"]))
    assert docker_config == ("secret", REGISTRY_SECRET, ".dockerconfigjson")
    assert not any(obj["metadata"]["name"] == REGISTRY_SECRET for obj in objects)  # yours
    for registry in config.get("registries", []):
        for key in ("caFile", "tokenFile"):
            # In every pod whose ServiceAccount token is mounted (on OpenShift with the CA).
            assert PurePosixPath(registry[key]).parent == SERVICE_ACCOUNT_DIR
            assert pod_spec(objects).get("automountServiceAccountToken", True)


def test_config_is_accepted_by_the_webhook(variant: str, tmp_path: Path) -> None:
    objects = render(variant)
    config = loaded_config(objects, tmp_path)
    assert config.backup_registry.host == PLACEHOLDER_HOST
    first, *others = config_texts(objects)
    assert first == (MANIFESTS / BASE / "config.yaml").read_text()  # the file to edit
    (line,) = [line for line in first.splitlines() if PLACEHOLDER_HOST in line]
    assert "CHANGE THIS" in line
    assert config.server.port == container_port(objects, "https")
    document = config_document(objects)
    registries = document.get("registries", [])
    if variant == OPENSHIFT:
        assert registries == [
            {
                "host": OPENSHIFT_REGISTRY,
                "caFile": str(SERVICE_ACCOUNT_DIR / "service-ca.crt"),
                "tokenFile": str(SERVICE_ACCOUNT_DIR / "token"),
            }
        ]
        assert [registry.host for registry in config.registries] == [OPENSHIFT_REGISTRY]
        # The overlay's file adds the registry and the release payload's exclusion.
        (added,) = [yaml.safe_load(text) for text in others]
        assert added == {"registries": registries, "exclude": document["exclude"]}
        assert config.exclude.images == document["exclude"]["images"]
    else:
        assert registries == []
        assert others == []


def test_base_config_reaches_every_variant(variant: str, tmp_path: Path) -> None:
    """A setting changed in base/config.yaml, as the README's install says to, is what the
    webhook reads in every variant: no overlay carries a copy of its own."""
    manifests = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, manifests)
    base_config = manifests / BASE / "config.yaml"
    document = yaml.safe_load(base_config.read_text())
    document["backupRegistry"]["host"] = "backup.example.org:5000"
    document["copy"] = {"concurrency": 3}
    base_config.write_text(yaml.safe_dump(document))
    config = loaded_config(render(variant, manifests), tmp_path / "files")
    assert config.backup_registry.host == "backup.example.org:5000"
    assert config.copy_settings.concurrency == 3


Grant = tuple[str | None, str, str, str, str | None]


def grants(objects: tuple[Obj, ...]) -> set[Grant]:
    """What the webhook's ServiceAccount may do: (namespace or None for cluster-wide, group,
    resource, verb, resource name or None for any)."""
    account = only(objects, "ServiceAccount")["metadata"]
    roles = {(o["kind"], o["metadata"]["name"]): o for o in objects if "rules" in o}
    found: set[Grant] = set()
    for binding in objects:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
        ]
        ref = binding["roleRef"]
        if ref["name"].startswith("system:"):
            continue  # defined by the platform (OpenShift's image puller)
        role = roles[ref["kind"], ref["name"]]
        namespace = binding["metadata"].get("namespace")
        assert role["metadata"].get("namespace") == namespace
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), rule
            found |= {
                (namespace, group, resource, verb, name)
                for group in rule["apiGroups"]
                for resource in rule["resources"]
                for verb in rule["verbs"]
                for name in rule.get("resourceNames") or [None]
            }
    return found


WORKLOAD_RESOURCES = {
    "": ("pods", "podtemplates", "replicationcontrollers"),
    "apps": ("replicasets", "deployments", "statefulsets", "daemonsets"),
    "batch": ("jobs", "cronjobs"),
}


def test_rbac_is_least_privilege(variant: str) -> None:
    def grant(namespace: str | None, group: str, resource: str, *verbs: str) -> set[Grant]:
        return {(namespace, group, resource, verb, None) for verb in verbs}

    expected = (
        grant(None, "", "serviceaccounts", "get")
        | grant(None, "", "events", "create", "patch")
        | grant(NAMESPACE, "image-backup.io", "imagebackups", *READ_VERBS, "create", "patch")
        | grant(NAMESPACE, "image-backup.io", "imagebackups/status", "update", "patch")
        | grant(NAMESPACE, "coordination.k8s.io", "leases", "create")
        | {(NAMESPACE, "coordination.k8s.io", "leases", v, LEASE) for v in ("get", "update")}
        # Backfill and status: the opted-in namespaces and what runs there, listed; the
        # top-level kinds patched by backfill.rewrite (a role of its own, to delete).
        | grant(None, "", "namespaces", "list")
    )
    for group, resources in WORKLOAD_RESOURCES.items():
        for resource in resources:
            expected |= grant(None, group, resource, "list")
            if resource != "jobs":  # a Job's pod template cannot change: never rewritten
                expected |= grant(None, group, resource, "patch")
    if variant == OPENSHIFT:
        expected |= grant(None, "apps.openshift.io", "deploymentconfigs", "list", "patch")
        # ImageStreams' history, backed up by backfill (list) and the watch; admission's get.
        expected |= grant(None, "image.openshift.io", "imagestreams", "get", "list", "watch")
    if variant != NO_SECRET_READ:
        expected |= grant(None, "", "secrets", "get")  # workloads' pull secrets, by name
    if variant != CERT_MANAGER:
        # The server keeps its own certificate and the webhook configuration's caBundle: only
        # those objects, by name (creating cannot be limited by name).
        expected |= {(NAMESPACE, "", "secrets", v, TLS_SECRET) for v in ("get", "update", "patch")}
        expected |= grant(NAMESPACE, "", "secrets", "create")
        expected |= {
            (None, "admissionregistration.k8s.io", "mutatingwebhookconfigurations", verb, NAME)
            for verb in ("get", "patch")
        }
    assert grants(render(variant)) == expected


def test_on_openshift_imagestreams_are_read_and_watched_cluster_wide() -> None:
    """Backfill lists them and the Lease holder watches them in every opted-in namespace;
    admission gets the one a bare name resolves through. Nothing is written to them."""
    streams = {
        g for g in grants(render(OPENSHIFT)) if g[1:3] == ("image.openshift.io", "imagestreams")
    }
    assert streams == {
        (None, "image.openshift.io", "imagestreams", verb, None)
        for verb in ("get", "list", "watch")
    }


def test_leases_are_granted_in_the_own_namespace_only(variant: str) -> None:
    """Leader election reads, creates and renews its Lease there: nothing more, nowhere else,
    and no other Lease."""
    leases = {g for g in grants(render(variant)) if g[1:3] == ("coordination.k8s.io", "leases")}
    assert leases == {
        (NAMESPACE, "coordination.k8s.io", "leases", "create", None),
        (NAMESPACE, "coordination.k8s.io", "leases", "get", LEASE),
        (NAMESPACE, "coordination.k8s.io", "leases", "update", LEASE),
    }


def test_imagebackup_resource(variant: str) -> None:
    definition = only(render(variant), "CustomResourceDefinition")
    spec = definition["spec"]
    assert definition["metadata"]["name"] == "imagebackups.image-backup.io"
    assert spec["group"] == "image-backup.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "ImageBackup"
    assert spec["names"]["plural"] == "imagebackups"
    assert spec["names"]["shortNames"] == ["ib"]
    (served,) = spec["versions"]
    assert (served["name"], served["served"], served["storage"]) == ("v1alpha1", True, True)
    assert served["subresources"] == {"status": {}}
    schema = served["schema"]["openAPIV3Schema"]["properties"]
    assert schema["status"]["properties"]["phase"]["enum"] == ["Copying", "Ready", "Failed"]
    assert schema["spec"]["properties"]["size"]["type"] == "integer"
    assert schema["spec"]["properties"]["platforms"]["items"] == {"type": "string"}
    for field in ("heartbeat", "firstUsed", "lastUsed"):
        assert schema["status"]["properties"][field]["format"] == "date-time"
    stream_tags = schema["spec"]["properties"]["imageStreamTags"]
    assert stream_tags["type"] == "array"
    item = stream_tags["items"]
    fields = {"namespace", "imageStream", "tag", "created"}
    assert (item["type"], set(item["required"]), set(item["properties"])) == (
        "object",
        fields,
        fields,
    )
    assert {field["type"] for field in item["properties"].values()} == {"string"}
    assert item["properties"]["created"]["format"] == "date-time"
    columns = {column["name"]: column for column in served["additionalPrinterColumns"]}
    assert list(columns) == [
        "Source",
        "Backup",
        "Phase",
        "Size",
        "First Used",
        "Last Used",
        "Age",
    ]
    assert columns["First Used"]["type"] == "date"
    for column in columns.values():
        # Each column shows a field the schema defines (a typo would show an empty column).
        section, field = column["jsonPath"].removeprefix(".").split(".")
        if section != "metadata":
            assert field in schema[section]["properties"], column


def test_cert_manager_overlay() -> None:
    """cert-manager's kinds are not in the Kubernetes schemas: checked field by field."""
    objects = render(CERT_MANAGER)
    issuer = only(objects, "Issuer")
    certificate = only(objects, "Certificate")
    for obj in (issuer, certificate):
        assert obj["apiVersion"] == "cert-manager.io/v1"
    assert issuer["spec"] == {"selfSigned": {}}
    spec = certificate["spec"]
    assert spec["secretName"] == TLS_SECRET
    assert spec["issuerRef"] == {"kind": "Issuer", "name": issuer["metadata"]["name"]}
    service = only(objects, "Service")["metadata"]
    name, namespace = service["name"], service["namespace"]
    assert spec["dnsNames"] == [
        name,
        f"{name}.{namespace}",
        f"{name}.{namespace}.svc",
        f"{name}.{namespace}.svc.cluster.local",
    ]
    annotations = only(objects, "MutatingWebhookConfiguration")["metadata"]["annotations"]
    injected = f"{certificate['metadata']['namespace']}/{certificate['metadata']['name']}"
    assert annotations["cert-manager.io/inject-ca-from"] == injected
