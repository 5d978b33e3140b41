"""Every registry-side cache holds a bounded number of bytes, whatever size its keys and
values come in: results, pull credentials, tokens and known blob locations."""

from __future__ import annotations

import base64
import json

import orjson
from multidict import CIMultiDict
from yarl import URL

from tests.helpers import deadline, make_config, plain
from tests.support import images
from tests.support.fakekube import SECRETS, FakeKube
from tests.support.registries import Registry
from webhook.engine import configured_credentials
from webhook.kube.client import api_client
from webhook.kube.pullsecrets import CREDENTIAL_CACHE_BYTES, PullCredentials
from webhook.reference import parse
from webhook.registry.auth import TOKEN_CACHE_BYTES, RegistryAuth, Request, Response
from webhook.registry.client import RegistryClient, Repository
from webhook.registry.copy import CopyEngine
from webhook.registry.credentials import DockerConfig
from webhook.registry.known import KnownBlobs
from webhook.registry.transport import Transport

CHALLENGE = 'Bearer realm="https://auth.example/token",service="registry.example"'


def test_tokens_are_bounded_in_bytes_the_newest_kept() -> None:
    auth = RegistryAuth()

    def authorized_up_front(scope: str) -> bool:
        flow = auth.flow(Request("GET", URL("https://registry.example/v2/")), None, [scope])
        return "Authorization" in next(flow).headers

    scopes = [f"repository:team/app-{n}:pull" for n in range(100)]
    for scope in scopes:  # each answered with a 100 KB token
        flow = auth.flow(Request("GET", URL("https://registry.example/v2/")), None, [scope])
        next(flow)
        flow.send(Response(401, CIMultiDict({"WWW-Authenticate": CHALLENGE})))
        token = orjson.dumps({"token": "t" * 100_000, "expires_in": 300})
        retried = flow.send(Response(200, CIMultiDict(), token))
        assert retried.headers["Authorization"].startswith("Bearer t")

    assert authorized_up_front(scopes[-1])
    assert not authorized_up_front(scopes[0])
    assert auth._tokens.weight <= TOKEN_CACHE_BYTES


def test_known_blob_places_are_bounded_in_bytes_the_newest_kept() -> None:
    limit = 1 << 20
    known = KnownBlobs(max_bytes=limit)
    into = Repository("backup.example", "backup/elsewhere")
    digests = [f"sha256:{n:064x}" for n in range(2_000)]
    for digest in digests:
        known.add(Repository("backup.example", "backup/" + "x" * 2_000), digest)

    assert known.weight <= limit
    assert known.mount_source(digests[-1], into) is not None
    assert known.mount_source(digests[0], into) is None


async def test_results_are_bounded_in_bytes_the_newest_kept(
    plain_registry: Registry, basic_registry: Registry, image_cache: str, unique_repo: str
) -> None:
    image = images.make_image(image_cache, [1_000], seed=81, fmt="oci")
    tags = [f"v{n}-" + "x" * 120 for n in range(8)]
    for tag in tags:
        images.push(plain_registry.backdoor_url, unique_repo, tag, image)
    config = make_config(
        basic_registry, sources=[plain(plain_registry)], docker_config=basic_registry.docker_config
    )
    limit = 8_000  # a few results with long names
    sources = [parse(f"{plain_registry.host}/{unique_repo}:{tag}") for tag in tags]
    async with Transport(config.endpoints(), configured_credentials(config)) as transport:
        engine = CopyEngine(
            RegistryClient(transport), config.backup_registry.scheme(), cache_bytes=limit
        )
        for source in sources:
            await engine.backup(source, deadline=deadline())

        assert engine._results.weight <= limit
        assert engine.cached(sources[-1]) is not None
        assert engine.cached(sources[0]) is None


async def test_pull_credentials_are_bounded_in_bytes_the_newest_kept(fake_kube: FakeKube) -> None:
    # A Secret of 2,500 logins each, in 24 namespaces: far more than the bound in all.
    logins = {
        f"registry-{n}.example": {"auth": base64.b64encode(b"u:p").decode()} for n in range(2_500)
    }
    document = base64.b64encode(json.dumps({"auths": logins}).encode()).decode()
    namespaces = [f"team-{n}" for n in range(24)]
    for namespace in namespaces:
        secret = {
            "metadata": {"name": "many"},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": document},
        }
        fake_kube.store.create(SECRETS, namespace, secret)
    with api_client() as api:
        pull = PullCredentials(DockerConfig(), api)
        for namespace in namespaces:
            await pull.keyring(namespace, "default", ("many",))
        reads = len(fake_kube.calls)
        await pull.keyring(namespaces[-1], "default", ("many",))  # remembered
        remembered = len(fake_kube.calls) == reads
        await pull.keyring(namespaces[0], "default", ("many",))  # forgotten: read again

    assert pull._known.weight <= CREDENTIAL_CACHE_BYTES
    assert remembered
    assert len(fake_kube.calls) > reads
