"""Failures: every one ends in a clear error or a correct copy, never in a bad backup."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import pytest

from tests.helpers import deadline, engine_for, make_config, plain, plain_to
from tests.support import images, skopeo
from tests.support.faultproxy import (
    FaultProxyFactory,
    corrupt,
    delay,
    reset_after,
    serve,
    status,
)
from tests.support.registries import Registry, RegistryFactory, write_docker_config
from webhook.reference import parse
from webhook.registry.errors import (
    CorruptTransfer,
    NotFound,
    RegistryError,
    TransientError,
    Unauthorized,
    UnsupportedManifest,
)


@pytest.fixture
def pushed(plain_registry: Registry, image_cache: str, unique_repo: str) -> images.Image:
    image = images.make_image(image_cache, [600_000, 5_000], seed=101, fmt="oci")
    images.push(plain_registry.backdoor_url, unique_repo, "v1", image)
    return image


async def test_missing_source_image_is_reported_by_side_and_tag(
    plain_registry: Registry, basic_registry: Registry, unique_repo: str
) -> None:
    config = plain_to(plain_registry, basic_registry)
    async with engine_for(config) as engine:
        with pytest.raises(NotFound) as caught:
            await engine.backup(
                parse(f"{plain_registry.host}/{unique_repo}:nope"), deadline=deadline()
            )
    # The caller names the image; the error says where and what was looked for.
    assert (
        str(caught.value)
        == f"reading tag nope from the source registry {plain_registry.host}: not found"
    )


async def test_wrong_credentials_are_reported_without_the_secret(
    plain_registry: Registry,
    basic_registry: Registry,
    pushed: images.Image,
    unique_repo: str,
    tmp_path: Path,
) -> None:
    bad = write_docker_config(
        tmp_path / "config.json", {basic_registry.host: ("tester", "s3cret-wrong-Pa55")}
    )
    config = make_config(basic_registry, sources=[plain(plain_registry)], docker_config=bad)
    async with engine_for(config) as engine:
        with pytest.raises(Unauthorized) as caught:
            await engine.backup(
                parse(f"{plain_registry.host}/{unique_repo}:v1"), deadline=deadline()
            )
    message = str(caught.value)
    assert basic_registry.host in message and "unauthorized" in message
    assert "s3cret-wrong-Pa55" not in message


async def test_unreachable_target_fails_within_the_deadline(
    plain_registry: Registry,
    registry_factory: RegistryFactory,
    pushed: images.Image,
    unique_repo: str,
) -> None:
    target = registry_factory(tls=True, auth="basic")
    target.stop()
    config = plain_to(plain_registry, target)
    started = time.monotonic()
    async with engine_for(config) as engine:
        with pytest.raises(TransientError) as caught:
            await engine.backup(
                parse(f"{plain_registry.host}/{unique_repo}:v1"), deadline=deadline(3)
            )
    assert time.monotonic() - started < 4
    assert f"on the backup registry {target.host}: cannot connect: connection refused" in str(
        caught.value
    )


async def test_connection_reset_mid_blob_is_retried(
    plain_registry: Registry,
    basic_registry: Registry,
    pushed: images.Image,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
) -> None:
    source = fault_proxy(plain_registry)
    big_layer = pushed.layers[0].digest
    rule = source.add(reset_after(100_000, method="GET", path=f"/blobs/{big_layer}$", times=1))
    config = plain_to(source, basic_registry)
    async with engine_for(config) as engine:
        result = await engine.backup(parse(f"{source.host}/{unique_repo}:v1"), deadline=deadline())
    assert rule.hits == 1
    assert len(source.requests("GET", f"/blobs/{big_layer}$")) == 2
    assert images.read_back(basic_registry.backdoor_url, result.backup.repository, pushed.digest)


async def test_corrupt_source_bytes_are_never_committed(
    plain_registry: Registry,
    basic_registry: Registry,
    pushed: images.Image,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
) -> None:
    source = fault_proxy(plain_registry)
    big_layer = pushed.layers[0].digest
    source.add(corrupt(method="GET", path=f"/blobs/{big_layer}$"))
    config = plain_to(source, basic_registry)
    ref = parse(f"{source.host}/{unique_repo}:v1")
    async with engine_for(config) as engine:
        with pytest.raises(CorruptTransfer) as caught:
            await engine.backup(ref, deadline=deadline())
        target_repo = engine.target_for(ref).path
    assert big_layer in str(caught.value) and "corrupt" in str(caught.value)
    assert images.tags(basic_registry.backdoor_url, target_repo) == []
    assert not images.blob_exists(basic_registry.backdoor_url, target_repo, big_layer)


async def test_corruption_in_transit_once_is_retried(
    plain_registry: Registry,
    basic_registry: Registry,
    pushed: images.Image,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
) -> None:
    source = fault_proxy(plain_registry)
    big_layer = pushed.layers[0].digest
    source.add(corrupt(method="GET", path=f"/blobs/{big_layer}$", times=1))
    config = plain_to(source, basic_registry)
    async with engine_for(config) as engine:
        result = await engine.backup(parse(f"{source.host}/{unique_repo}:v1"), deadline=deadline())
    assert (
        skopeo.inspect_raw_digest(basic_registry, f"{result.backup.repository}@{pushed.digest}")
        == pushed.digest
    )
    images.read_back(basic_registry.backdoor_url, result.backup.repository, pushed.digest)


async def test_rate_limit_is_honoured(
    plain_registry: Registry,
    basic_registry: Registry,
    pushed: images.Image,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
) -> None:
    source = fault_proxy(plain_registry)
    source.add(status(429, {"Retry-After": "1"}, method="GET", path="/manifests/", times=1))
    config = plain_to(source, basic_registry)
    async with engine_for(config) as engine:
        result = await engine.backup(parse(f"{source.host}/{unique_repo}:v1"), deadline=deadline())
    manifest_gets = source.requests("GET", "/manifests/")
    assert [e.status for e in manifest_gets] == [429, 200]
    assert manifest_gets[1].time - manifest_gets[0].time >= 0.95
    assert result.digest == pushed.digest


async def test_rate_limit_longer_than_the_deadline_fails_at_once(
    plain_registry: Registry,
    basic_registry: Registry,
    pushed: images.Image,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
) -> None:
    source = fault_proxy(plain_registry)
    source.add(status(429, {"Retry-After": "120"}, method="HEAD", path="/manifests/"))
    config = make_config(basic_registry, sources=[plain(source)])
    started = time.monotonic()
    async with engine_for(config) as engine:
        with pytest.raises(TransientError, match="HTTP 429"):
            await engine.backup(parse(f"{source.host}/{unique_repo}:v1"), deadline=deadline(10))
    assert time.monotonic() - started < 2


async def test_persistent_server_errors_give_up_after_bounded_retries(
    plain_registry: Registry,
    basic_registry: Registry,
    pushed: images.Image,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
) -> None:
    target = fault_proxy(basic_registry)
    rule = target.add(status(503, method="PUT", path="/manifests/"))
    config = plain_to(plain_registry, target)
    async with engine_for(config) as engine:
        with pytest.raises(TransientError, match="HTTP 503"):
            await engine.backup(
                parse(f"{plain_registry.host}/{unique_repo}:v1"), deadline=deadline(30)
            )
    assert 2 <= rule.hits <= 5


async def test_legacy_schema1_manifests_are_refused(
    plain_registry: Registry,
    basic_registry: Registry,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
) -> None:
    source = fault_proxy(plain_registry)
    body = images.schema1_manifest_body(unique_repo, "old")
    source.add(serve(body, images.SCHEMA1_SIGNED_MANIFEST, path="/manifests/"))
    config = plain_to(source, basic_registry)
    async with engine_for(config) as engine:
        with pytest.raises(UnsupportedManifest, match="schema 1"):
            await engine.backup(parse(f"{source.host}/{unique_repo}:old"), deadline=deadline())


async def test_tls_is_verified_unless_the_registry_is_marked_insecure(
    plain_registry: Registry,
    basic_registry: Registry,
    pushed: images.Image,
    unique_repo: str,
) -> None:
    source = parse(f"{plain_registry.host}/{unique_repo}:v1")
    untrusted = make_config(
        basic_registry,
        sources=[plain(plain_registry)],
        docker_config=basic_registry.docker_config,
        backup_insecure=False,
    )
    assert untrusted.backup_registry.ca_file is not None
    no_ca = msgspec.structs.replace(
        untrusted, backup_registry=msgspec.structs.replace(untrusted.backup_registry, ca_file=None)
    )
    async with engine_for(no_ca) as engine:
        with pytest.raises(
            RegistryError,
            match=r"on the backup registry [^ ]+: cannot connect: TLS certificate not trusted "
            r"\(.+\); set caFile for this registry, or insecure: true",
        ):
            await engine.backup(source, deadline=deadline())

    insecure = make_config(
        basic_registry,
        sources=[plain(plain_registry)],
        docker_config=basic_registry.docker_config,
        backup_insecure=True,
    )
    assert insecure.backup_registry.ca_file is None
    async with engine_for(insecure) as engine:
        result = await engine.backup(source, deadline=deadline())
    assert result.digest == pushed.digest


async def test_plain_http_source_needs_insecure(
    plain_registry: Registry,
    basic_registry: Registry,
    pushed: images.Image,
    unique_repo: str,
) -> None:
    config = make_config(basic_registry, sources=[], docker_config=basic_registry.docker_config)
    async with engine_for(config) as engine:
        with pytest.raises(
            RegistryError, match="speaks plain HTTP; set insecure: true for this registry"
        ):
            await engine.backup(
                parse(f"{plain_registry.host}/{unique_repo}:v1"), deadline=deadline(5)
            )
    explicit = make_config(
        basic_registry,
        sources=[{"host": plain_registry.host, "endpoint": plain_registry.url, "insecure": True}],
        docker_config=basic_registry.docker_config,
    )
    async with engine_for(explicit) as engine:
        result = await engine.backup(
            parse(f"{plain_registry.host}/{unique_repo}:v1"), deadline=deadline()
        )
    assert result.digest == pushed.digest


async def test_an_insecure_registry_down_at_first_contact_is_asked_again(
    plain_registry: Registry,
    registry_factory: RegistryFactory,
    pushed: images.Image,
    unique_repo: str,
) -> None:
    target = registry_factory(tls=True, auth="basic")
    target.stop()
    config = make_config(
        target,
        sources=[plain(plain_registry)],
        docker_config=target.docker_config,
        backup_insecure=True,
    )
    source = parse(f"{plain_registry.host}/{unique_repo}:v1")
    async with engine_for(config) as engine:
        with pytest.raises(TransientError, match="cannot connect: connection refused"):
            await engine.backup(source, deadline=deadline(2))
        target.restart()
        result = await engine.backup(source, deadline=deadline())
    assert result.digest == pushed.digest
    images.read_back(target.backdoor_url, result.backup.repository, pushed.digest)


async def test_a_blob_is_read_while_its_upload_opens(
    plain_registry: Registry,
    basic_registry: Registry,
    pushed: images.Image,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
) -> None:
    # Opening an upload is a round trip (and a password check); the source is asked for the
    # blob meanwhile, not after. Here every upload takes half a second to open.
    source, target = fault_proxy(plain_registry), fault_proxy(basic_registry)
    target.add(delay(0.5, method="POST", path=r"/blobs/uploads/$"))
    async with engine_for(plain_to(source, target)) as engine:
        await engine.backup(parse(f"{source.host}/{unique_repo}:v1"), deadline=deadline())
    opened = min(e.time for e in target.requests("POST", r"/blobs/uploads/$"))
    for blob in pushed.layers:
        [read] = source.requests("GET", f"/blobs/{blob.digest}$")
        assert read.time < opened


async def test_an_upload_the_source_fails_is_cancelled_before_the_retry(
    plain_registry: Registry,
    basic_registry: Registry,
    pushed: images.Image,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
) -> None:
    source, target = fault_proxy(plain_registry), fault_proxy(basic_registry)
    big_layer = pushed.layers[0].digest
    source.add(reset_after(100_000, method="GET", path=f"/blobs/{big_layer}$", times=1))
    async with engine_for(plain_to(source, target)) as engine:
        result = await engine.backup(parse(f"{source.host}/{unique_repo}:v1"), deadline=deadline())
    assert len(target.requests("DELETE", r"/blobs/uploads/.+")) == 1
    images.read_back(basic_registry.backdoor_url, result.backup.repository, pushed.digest)
