"""Pull credentials: a private source registry (htpasswd) read with the workload's own Secrets,
found through the Kubernetes API (the fake API server, with the real client)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tests.admission_helpers import body, images_of, patched, response_of, sample, with_object
from tests.helpers import make_config, tls
from tests.support import images, skopeo
from tests.support.fakekube import SECRETS, SERVICE_ACCOUNTS, Call, FakeKube, KubeError
from tests.support.registries import Registry, RegistryFactory
from webhook.admission.handler import Admission
from webhook.config import Config
from webhook.engine import configured_credentials, open_engine
from webhook.kube.client import api_client
from webhook.kube.pullsecrets import PullCredentials
from webhook.metrics import Metrics


@pytest.fixture
def private(registry_factory: RegistryFactory) -> Registry:
    """The private source: TLS and htpasswd, with a login the webhook itself is not given."""
    return registry_factory(tls=True, auth="basic", username="puller")


@pytest.fixture
def image(private: Registry, image_cache: str) -> tuple[str, images.Image]:
    """An image in the private registry, as a workload would name it (by tag)."""
    made = images.make_image(image_cache, [40_000, 2_000], seed=7100, fmt="oci")
    images.push(private.backdoor_url, "team/app", "1.0", made)
    return f"{private.host}/team/app:1.0", made


def config_for(private: Registry, backup: Registry) -> Config:
    return make_config(
        backup,
        sources=[tls(private)],
        docker_config=backup.docker_config,  # the backup registry's login only
        prefix=f"p{secrets.token_hex(4)}",
    )


def docker_config_secret(name: str, registry: Registry, *, legacy: bool = False) -> dict[str, Any]:
    login = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    auths = {registry.host: {"auth": login}}
    key, kind = (".dockercfg", "dockercfg") if legacy else (".dockerconfigjson", "dockerconfigjson")
    content = auths if legacy else {"auths": auths}
    return {
        "metadata": {"name": name},
        "type": f"kubernetes.io/{kind}",
        "data": {key: base64.b64encode(json.dumps(content).encode()).decode()},
    }


def pod_review(
    namespace: str,
    image: str,
    *,
    pull_secrets: tuple[str, ...] = (),
    service_account: str | None = None,
) -> dict[str, Any]:
    review = sample("pod-create-bare")
    pod = review["request"]["object"]
    pod["metadata"]["namespace"] = namespace
    spec = pod["spec"]
    spec["containers"] = [{"name": "app", "image": image}]
    spec.pop("initContainers", None)
    spec.pop("serviceAccountName", None)
    spec.pop("serviceAccount", None)
    if service_account:
        spec["serviceAccountName"] = service_account
    if pull_secrets:
        spec["imagePullSecrets"] = [{"name": name} for name in pull_secrets]
    return with_object(review, pod, namespace=namespace)


@asynccontextmanager
async def webhook(config: Config, ttl: float = 60.0) -> AsyncIterator[Admission]:
    async with open_engine(config) as engine:
        with api_client() as api:
            pull = PullCredentials(configured_credentials(config), api, ttl=ttl)
            yield Admission(engine, config, Metrics(), pull=pull)


async def admit(hook: Admission, review: dict[str, Any]) -> dict[str, Any]:
    return response_of(await hook.review(body(review), "enforce"), review)


def secret_reads(kube: FakeKube) -> list[Call]:
    return [c for c in kube.calls if c.method == "GET" and "/secrets/" in c.path]


async def test_the_workloads_pull_secret_reads_the_private_source(
    fake_kube: FakeKube,
    private: Registry,
    basic_registry: Registry,
    image: tuple[str, images.Image],
) -> None:
    name, made = image
    fake_kube.store.create(SECRETS, "team-a", docker_config_secret("regcred", private))
    review = pod_review("team-a", name, pull_secrets=("regcred",))

    async with webhook(config_for(private, basic_registry)) as hook:
        response = await admit(hook, review)

    assert response["allowed"] is True, response.get("status")
    backup = images_of(patched(review, response)["spec"])["app"]
    assert backup.endswith(f":1.0@{made.digest}")
    repository = backup.split("/", 1)[1].split(":")[0]
    assert skopeo.inspect_raw_digest(basic_registry, f"{repository}@{made.digest}") == made.digest


@pytest.mark.parametrize("by_digest", [False, True], ids=["tag", "digest"])
async def test_a_namespace_without_the_secret_gets_no_backup_of_a_private_image(
    fake_kube: FakeKube,
    private: Registry,
    basic_registry: Registry,
    image: tuple[str, images.Image],
    by_digest: bool,
) -> None:
    name, made = image
    if by_digest:
        name = f"{name}@{made.digest}"
    fake_kube.store.create(SECRETS, "team-a", docker_config_secret("regcred", private))
    async with webhook(config_for(private, basic_registry)) as hook:
        allowed = await admit(hook, pod_review("team-a", name, pull_secrets=("regcred",)))
        assert allowed["allowed"] is True
        # The backup exists and this replica remembers it, yet team-b cannot read the source.
        refused = await admit(hook, pod_review("team-b", name))
        # The same workload as team-a's is still answered, from memory.
        again = pod_review("team-a", name, pull_secrets=("regcred",))
        allowed_again = await admit(hook, again)

    assert refused["allowed"] is False
    message = refused["status"]["message"]
    assert name in message and "unauthorized" in message
    assert private.password is not None and private.password not in message
    assert allowed_again["allowed"] is True
    assert images_of(patched(again, allowed_again)["spec"])["app"].endswith(made.digest)


async def test_service_account_secrets_count_and_default_is_the_default_account(
    fake_kube: FakeKube,
    private: Registry,
    basic_registry: Registry,
    image: tuple[str, images.Image],
) -> None:
    name, _ = image
    for namespace, account in (("team-a", "builder"), ("team-b", "default")):
        fake_kube.store.create(SECRETS, namespace, docker_config_secret("sa-cred", private))
        fake_kube.store.create(
            SERVICE_ACCOUNTS,
            namespace,
            {"metadata": {"name": account}, "imagePullSecrets": [{"name": "sa-cred"}]},
        )
    async with webhook(config_for(private, basic_registry)) as hook:
        named = await admit(hook, pod_review("team-a", name, service_account="builder"))
        defaulted = await admit(hook, pod_review("team-b", name))
        # team-a's default account has no pull secret.
        other = await admit(hook, pod_review("team-a", name))

    assert named["allowed"] is True
    assert defaulted["allowed"] is True
    assert other["allowed"] is False


async def test_legacy_dockercfg_secrets_are_read(
    fake_kube: FakeKube,
    private: Registry,
    basic_registry: Registry,
    image: tuple[str, images.Image],
) -> None:
    name, _ = image
    fake_kube.store.create(SECRETS, "team-a", docker_config_secret("old", private, legacy=True))
    async with webhook(config_for(private, basic_registry)) as hook:
        response = await admit(hook, pod_review("team-a", name, pull_secrets=("old",)))
    assert response["allowed"] is True


async def test_credentials_are_read_once_then_refreshed_in_the_background(
    fake_kube: FakeKube,
    private: Registry,
    basic_registry: Registry,
    image: tuple[str, images.Image],
) -> None:
    name, _ = image
    fake_kube.store.create(SECRETS, "team-a", docker_config_secret("regcred", private))

    def review() -> dict[str, Any]:
        return pod_review("team-a", name, pull_secrets=("regcred",))

    async with webhook(config_for(private, basic_registry), ttl=0.5) as hook:
        for _ in range(3):
            assert (await admit(hook, review()))["allowed"] is True
        assert len(secret_reads(fake_kube)) == 1

        # Stale: the next admission is answered with what is known while a read runs...
        await asyncio.sleep(0.6)
        fake_kube.store.delete(SECRETS, "team-a", "regcred")
        assert (await admit(hook, review()))["allowed"] is True
        for _ in range(100):
            if len(secret_reads(fake_kube)) == 2:
                break
            await asyncio.sleep(0.02)
        assert len(secret_reads(fake_kube)) == 2
        await asyncio.sleep(0.1)  # the refresh lands
        # ... and from then on the deleted Secret is gone: the image is no longer readable.
        refused = await admit(hook, review())
    assert refused["allowed"] is False
    assert "unauthorized" in refused["status"]["message"]


async def test_forbidden_secrets_fall_back_to_the_configured_login(
    fake_kube: FakeKube,
    private: Registry,
    basic_registry: Registry,
    image: tuple[str, images.Image],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The no-secret-read install: Secrets cannot be read, said once, admissions go on."""
    name, _ = image

    def forbid(call: Call) -> None:
        if "/secrets/" in call.path:
            raise KubeError(403, "Forbidden", 'secrets "regcred" is forbidden')

    fake_kube.interceptors.append(forbid)
    fake_kube.store.create(SECRETS, "team-a", docker_config_secret("regcred", private))
    with caplog.at_level(logging.WARNING, logger="image_backup.pullsecrets"):
        async with webhook(config_for(private, basic_registry)) as hook:
            first = await admit(hook, pod_review("team-a", name, pull_secrets=("regcred",)))
            second = await admit(hook, pod_review("team-c", name, pull_secrets=("other",)))
    assert first["allowed"] is False and "unauthorized" in first["status"]["message"]
    assert second["allowed"] is False
    forbidden = [r for r in caplog.records if "pull_secrets_forbidden" in r.getMessage()]
    assert len(forbidden) == 1
    assert len(secret_reads(fake_kube)) == 1  # not asked again while forbidden


async def test_an_unanswered_read_is_not_remembered(
    fake_kube: FakeKube,
    private: Registry,
    basic_registry: Registry,
    image: tuple[str, images.Image],
) -> None:
    """The API server failing (or too slow) gives this admission the configured login only;
    the next one asks again instead of living with the failure for a whole lifetime."""
    name, _ = image
    fake_kube.store.create(SECRETS, "team-a", docker_config_secret("regcred", private))

    def overloaded(call: Call) -> None:
        if "/secrets/" in call.path:
            raise KubeError(500, "InternalError", "etcdserver: request timed out")

    fake_kube.interceptors.append(overloaded)
    async with webhook(config_for(private, basic_registry)) as hook:
        first = await admit(hook, pod_review("team-a", name, pull_secrets=("regcred",)))
        fake_kube.interceptors.remove(overloaded)
        second = await admit(hook, pod_review("team-a", name, pull_secrets=("regcred",)))
    assert first["allowed"] is False and "unauthorized" in first["status"]["message"]
    assert second["allowed"] is True
    assert len(secret_reads(fake_kube)) == 2
