"""Authentication against real registries: Basic, Bearer tokens, identity tokens, token files."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.helpers import (
    deadline,
    engine_for,
    make_config,
    plain,
    plain_to,
    tls,
)
from tests.support import images, skopeo
from tests.support.accounts import PUSHER, READER, READER_PASSWORD, TOKEN_POLICY
from tests.support.faultproxy import FaultProxyFactory, status
from tests.support.registries import Registry, write_docker_config
from tests.support.tokenserver import TokenServer
from webhook.reference import parse
from webhook.registry.client import Repository
from webhook.registry.errors import Unauthorized


def push_image(
    registry: Registry, cache: str, repo: str, seed: int, layers: int = 3
) -> images.Image:
    image = images.make_image(cache, [50_000 + i for i in range(layers)], seed=seed, fmt="oci")
    images.push(registry.backdoor_url, repo, "v1", image)
    return image


async def test_push_with_bearer_tokens_fetches_one_token_per_scope(
    plain_registry: Registry,
    token_registry: Registry,
    token_server: TokenServer,
    image_cache: str,
    unique_repo: str,
) -> None:
    image = push_image(plain_registry, image_cache, unique_repo, seed=201, layers=5)
    config = plain_to(plain_registry, token_registry)
    async with engine_for(config) as engine:
        result = await engine.backup(
            parse(f"{plain_registry.host}/{unique_repo}:v1"), deadline=deadline()
        )

    requests = token_server.requests_for(token_registry.service)
    push_scope = f"repository:{result.backup.repository}:pull,push"
    assert [r.scopes for r in requests] == [(push_scope,)]  # cached across 6 blobs + manifests
    assert requests[0].user == PUSHER and requests[0].status == 200
    assert (
        skopeo.inspect_raw_digest(token_registry, f"{result.backup.repository}@{image.digest}")
        == image.digest
    )


async def test_pull_with_a_read_only_token(
    token_registry: Registry,
    basic_registry: Registry,
    token_server: TokenServer,
    image_cache: str,
    unique_repo: str,
    tmp_path: Path,
) -> None:
    image = push_image(token_registry, image_cache, unique_repo, seed=202)
    logins = write_docker_config(
        tmp_path / "config.json",
        {
            token_registry.host: (READER, READER_PASSWORD),
            basic_registry.host: (basic_registry.username or "", basic_registry.password or ""),
        },
    )
    config = make_config(basic_registry, sources=[tls(token_registry)], docker_config=logins)
    async with engine_for(config) as engine:
        result = await engine.backup(
            parse(f"{token_registry.host}/{unique_repo}:v1"), deadline=deadline()
        )

    assert result.digest == image.digest
    requests = token_server.requests_for(token_registry.service)
    assert {r.scopes for r in requests} == {(f"repository:{unique_repo}:pull",)}
    assert all(r.user == READER for r in requests)
    images.read_back(basic_registry.backdoor_url, result.backup.repository, image.digest)


async def test_anonymous_pull_gets_an_anonymous_token(
    token_registry: Registry,
    basic_registry: Registry,
    token_server: TokenServer,
    image_cache: str,
    unique_repo: str,
) -> None:
    image = push_image(token_registry, image_cache, unique_repo, seed=203)
    token_server.policy = {**TOKEN_POLICY, None: {unique_repo: {"pull"}}}
    config = make_config(
        basic_registry, sources=[tls(token_registry)], docker_config=basic_registry.docker_config
    )
    async with engine_for(config) as engine:
        result = await engine.backup(
            parse(f"{token_registry.host}/{unique_repo}:v1"), deadline=deadline()
        )
    assert result.digest == image.digest
    assert {r.user for r in token_server.requests_for(token_registry.service)} == {None}


async def test_a_refused_token_is_refreshed_once(
    plain_registry: Registry,
    token_registry: Registry,
    token_server: TokenServer,
    image_cache: str,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
) -> None:
    image = push_image(plain_registry, image_cache, unique_repo, seed=204)
    target = fault_proxy(token_registry)
    challenge = (
        f'Bearer realm="{token_server.realm}",service="{token_registry.service}",'
        'error="invalid_token"'
    )
    rule = target.add(
        status(401, {"WWW-Authenticate": challenge}, method="PUT", path="/manifests/", times=1)
    )
    config = plain_to(plain_registry, target)
    async with engine_for(config) as engine:
        result = await engine.backup(
            parse(f"{plain_registry.host}/{unique_repo}:v1"), deadline=deadline()
        )

    assert rule.hits == 1
    assert len(token_server.requests_for(token_registry.service)) == 2
    assert (
        skopeo.inspect_raw_digest(token_registry, f"{result.backup.repository}@{image.digest}")
        == image.digest
    )


async def test_mount_needs_pull_on_the_other_repository_and_falls_back_without_it(
    plain_registry: Registry,
    token_registry: Registry,
    token_server: TokenServer,
    image_cache: str,
    unique_repo: str,
) -> None:
    image = push_image(plain_registry, image_cache, unique_repo, seed=205, layers=2)
    config = plain_to(plain_registry, token_registry)
    source = parse(f"{plain_registry.host}/{unique_repo}:v1")
    first, second, third = (Repository(token_registry.host, f"{unique_repo}-{n}") for n in "abc")

    async with engine_for(config) as engine:
        await engine.copy(source, first, tag="v1", deadline=deadline())
        token_server.clear_log()
        mounted = await engine.copy(source, second, tag="v1", deadline=deadline())
        mount_scopes = {r.scopes for r in token_server.requests_for(token_registry.service)}
        # Now the pusher may no longer read the repositories holding the blobs.
        token_server.policy = lambda user, _type, name: (
            ({"push"} if name in (first.path, second.path) else {"pull", "push"})
            if user == PUSHER
            else set()
        )
        uploaded = await engine.copy(source, third, tag="v1", deadline=deadline())

    assert mounted.stats.blobs_mounted == len(image.blobs)
    assert any(f"repository:{first.path}:pull" in scopes for scopes in mount_scopes)
    assert uploaded.stats.blobs_uploaded == len(image.blobs)
    images.read_back(token_registry.backdoor_url, third.path, image.digest)


async def test_identity_token_is_exchanged_with_the_refresh_token_grant(
    token_registry: Registry,
    basic_registry: Registry,
    token_server: TokenServer,
    image_cache: str,
    unique_repo: str,
    tmp_path: Path,
) -> None:
    image = push_image(token_registry, image_cache, unique_repo, seed=206)
    token_server.refresh_tokens = {"opaque-identity-token": READER}
    logins = json.loads(Path(basic_registry.docker_config).read_text())
    logins["auths"][token_registry.host] = {"identitytoken": "opaque-identity-token"}
    (tmp_path / "config.json").write_text(json.dumps(logins))
    config = make_config(
        basic_registry, sources=[tls(token_registry)], docker_config=str(tmp_path / "config.json")
    )
    async with engine_for(config) as engine:
        result = await engine.backup(
            parse(f"{token_registry.host}/{unique_repo}:v1"), deadline=deadline()
        )
    assert result.digest == image.digest
    requests = token_server.requests_for(token_registry.service)
    assert requests and all(r.method == "POST" and r.user == READER for r in requests)


async def test_token_file_is_sent_as_bearer_and_reread_when_it_rotates(
    token_registry: Registry,
    basic_registry: Registry,
    token_server: TokenServer,
    image_cache: str,
    unique_repo: str,
    tmp_path: Path,
) -> None:
    image = push_image(token_registry, image_cache, unique_repo, seed=207)
    other = push_image(token_registry, image_cache, f"{unique_repo}-other", seed=208)
    token_file = tmp_path / "token"
    service = token_registry.service
    assert service is not None
    token_file.write_text(token_server.issue(READER, service, [f"repository:{unique_repo}:pull"]))
    config = make_config(
        basic_registry,
        sources=[{**tls(token_registry), "tokenFile": str(token_file)}],
        docker_config=basic_registry.docker_config,
    )
    async with engine_for(config) as engine:
        first = await engine.backup(
            parse(f"{token_registry.host}/{unique_repo}:v1"), deadline=deadline()
        )
        # The token on disk rotates (as a projected service-account token does).
        token_file.write_text(
            token_server.issue(READER, service, [f"repository:{unique_repo}-other:pull"]) + "\n"
        )
        second = await engine.backup(
            parse(f"{token_registry.host}/{unique_repo}-other:v1"), deadline=deadline()
        )
    assert (first.digest, second.digest) == (image.digest, other.digest)
    assert token_server.requests_for(service) == []  # the file's token was used as it is


async def test_docker_config_username_password_fields(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    tmp_path: Path,
) -> None:
    image = push_image(plain_registry, image_cache, unique_repo, seed=209)
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "auths": {
                    f"https://{basic_registry.host}/v2/": {
                        "username": basic_registry.username,
                        "password": basic_registry.password,
                    }
                }
            }
        )
    )
    config = make_config(
        basic_registry, sources=[plain(plain_registry)], docker_config=str(tmp_path / "config.json")
    )
    async with engine_for(config) as engine:
        result = await engine.backup(
            parse(f"{plain_registry.host}/{unique_repo}:v1"), deadline=deadline()
        )
    assert result.digest == image.digest


async def test_tokens_are_reused_until_they_expire(
    plain_registry: Registry,
    token_registry: Registry,
    token_server: TokenServer,
    image_cache: str,
    unique_repo: str,
) -> None:
    first = push_image(plain_registry, image_cache, unique_repo, seed=210)
    second = images.make_image(image_cache, [7_000], seed=211, fmt="oci")
    images.push(plain_registry.backdoor_url, unique_repo, "v2", second)
    token_server.expires_in = 2
    config = make_config(
        token_registry,
        sources=[plain(plain_registry)],
        docker_config=token_registry.docker_config,
        tagCacheSeconds=0,
    )
    async with engine_for(config) as engine:
        await engine.backup(parse(f"{plain_registry.host}/{unique_repo}:v1"), deadline=deadline())
        await engine.backup(parse(f"{plain_registry.host}/{unique_repo}:v2"), deadline=deadline())
        fetched_while_valid = len(token_server.requests_for(token_registry.service))
        await asyncio.sleep(2.1)
        images.push(plain_registry.backdoor_url, unique_repo, "v1", second)  # tag moved
        await engine.backup(parse(f"{plain_registry.host}/{unique_repo}:v1"), deadline=deadline())
    assert first.digest != second.digest
    assert fetched_while_valid == 1
    assert len(token_server.requests_for(token_registry.service)) == 2


async def test_refused_credentials_name_the_source_registry_and_its_token_service(
    token_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    tmp_path: Path,
) -> None:
    push_image(token_registry, image_cache, unique_repo, seed=209)
    logins = write_docker_config(
        tmp_path / "config.json",
        {
            token_registry.host: (READER, "not-the-Pa55word"),
            basic_registry.host: (basic_registry.username or "", basic_registry.password or ""),
        },
    )
    config = make_config(basic_registry, sources=[tls(token_registry)], docker_config=logins)
    async with engine_for(config) as engine:
        with pytest.raises(Unauthorized) as caught:
            await engine.backup(
                parse(f"{token_registry.host}/{unique_repo}:v1"), deadline=deadline()
            )

    assert str(caught.value) == (
        f"reading tag v1 from the source registry {token_registry.host}: the token service "
        f"refused the credentials (HTTP 401) for repository:{unique_repo}:pull"
    )
    assert "not-the-Pa55word" not in str(caught.value)
