"""The copy engine against real registries, checked independently (skopeo, read-back)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from tests.helpers import deadline, engine_for, make_config, plain, plain_to
from tests.support import images, skopeo
from tests.support.faultproxy import FaultProxyFactory, ProxyLogEntry, drop_header
from tests.support.registries import Registry
from webhook.reference import Reference, parse
from webhook.registry.client import Repository, anchor_tag


def source_ref(registry: Registry, repo: str, tag: str) -> Reference:
    return parse(f"{registry.host}/{repo}:{tag}")


def assert_backed_up(target: Registry, backup: Reference, expected_digest: str) -> set[str]:
    """The backup is where the reference says, byte-exact, with every blob readable."""
    assert backup.digest == expected_digest
    assert skopeo.inspect_raw_digest(target, f"{backup.repository}@{expected_digest}") == (
        expected_digest
    )
    tags = images.tags(target.backdoor_url, backup.repository)
    assert anchor_tag(expected_digest) in tags
    if backup.tag:
        assert backup.tag in tags
        assert skopeo.inspect_raw_digest(target, f"{backup.repository}:{backup.tag}") == (
            expected_digest
        )
    return images.read_back(target.backdoor_url, backup.repository, expected_digest)


@pytest.mark.parametrize("fmt", ["oci", "docker"])
async def test_image_is_copied_digest_exact_under_the_naming_scheme(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    tmp_path: Path,
    fmt: images.Format,
) -> None:
    image = images.make_image(image_cache, [1000, 300_000, 50], seed=11, fmt=fmt)
    images.push(plain_registry.backdoor_url, unique_repo, "1.0", image)
    config = plain_to(plain_registry, basic_registry)
    source = source_ref(plain_registry, unique_repo, "1.0")

    async with engine_for(config) as engine:
        result = await engine.backup(source, deadline=deadline())

    host_part = plain_registry.host.replace(":", "_")
    assert str(result.backup) == (
        f"{basic_registry.host}/backup/{host_part}/{unique_repo}:1.0@{image.digest}"
    )
    blobs = assert_backed_up(basic_registry, result.backup, image.digest)
    assert blobs == set(image.blobs)
    assert result.stats.blobs_uploaded == len(image.blobs)


@pytest.mark.parametrize("fmt", ["oci", "docker"])
async def test_every_platform_of_an_index_is_copied(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    fmt: images.Format,
) -> None:
    amd64 = images.make_image(image_cache, [20_000, 30_000], seed=21, fmt=fmt)
    arm64 = images.make_image(image_cache, [40_000], seed=22, fmt=fmt, platform=("linux", "arm64"))
    index = images.make_index(image_cache, [amd64, arm64], fmt)
    images.push(plain_registry.backdoor_url, unique_repo, "multi", index)
    config = plain_to(plain_registry, basic_registry)

    async with engine_for(config) as engine:
        result = await engine.backup(
            source_ref(plain_registry, unique_repo, "multi"), deadline=deadline()
        )

    blobs = assert_backed_up(basic_registry, result.backup, index.digest)
    assert blobs == set(index.blobs)
    for child in (amd64, arm64):
        assert (
            skopeo.inspect_raw_digest(basic_registry, f"{result.backup.repository}@{child.digest}")
            == child.digest
        )


async def test_digest_only_source_gets_only_the_anchor_tag(
    plain_registry: Registry, basic_registry: Registry, image_cache: str, unique_repo: str
) -> None:
    image = images.make_image(image_cache, [5_000], seed=31, fmt="oci")
    images.push(plain_registry.backdoor_url, unique_repo, None, image)
    config = plain_to(plain_registry, basic_registry)
    source = parse(f"{plain_registry.host}/{unique_repo}@{image.digest}")

    async with engine_for(config) as engine:
        result = await engine.backup(source, deadline=deadline())

    assert result.backup.tag is None
    assert str(result.backup).endswith(f"/{unique_repo}@{image.digest}")
    assert images.tags(basic_registry.backdoor_url, result.backup.repository) == [
        anchor_tag(image.digest)
    ]
    assert_backed_up(basic_registry, result.backup, image.digest)


async def test_flat_path_style_puts_the_source_in_one_component(
    plain_registry: Registry, basic_registry: Registry, image_cache: str, unique_repo: str
) -> None:
    image = images.make_image(image_cache, [2_000], seed=32, fmt="oci")
    images.push(plain_registry.backdoor_url, unique_repo, "v1", image)
    config = make_config(
        basic_registry,
        sources=[plain(plain_registry)],
        docker_config=basic_registry.docker_config,
        prefix="team",
        path_style="flat",
    )

    async with engine_for(config) as engine:
        result = await engine.backup(
            source_ref(plain_registry, unique_repo, "v1"), deadline=deadline()
        )

    assert result.backup.repository.count("/") == 1
    assert result.backup.repository.startswith("team/")
    assert_backed_up(basic_registry, result.backup, image.digest)


async def test_blobs_already_in_another_backup_repository_are_mounted_not_uploaded(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
    tmp_path: Path,
) -> None:
    image = images.make_image(image_cache, [100_000, 200_000], seed=41, fmt="oci")
    images.push(plain_registry.backdoor_url, unique_repo, "v1", image)
    proxy = fault_proxy(basic_registry)
    config = plain_to(plain_registry, proxy)
    source = source_ref(plain_registry, unique_repo, "v1")

    async with engine_for(config) as engine:
        first = await engine.copy(
            source, Repository(proxy.host, f"{unique_repo}-a"), tag="v1", deadline=deadline()
        )
        proxy.clear_log()
        second = await engine.copy(
            source, Repository(proxy.host, f"{unique_repo}-b"), tag="v1", deadline=deadline()
        )

    assert first.stats.blobs_uploaded == len(image.blobs)
    mounts = [e for e in proxy.requests("POST", r"/blobs/uploads/") if "mount=" in e.query]
    assert len(mounts) == len(image.blobs)
    assert all(e.status == 201 for e in mounts)
    assert proxy.requests("PUT", r"/blobs/uploads/") == []  # no blob bytes sent again
    assert second.stats.blobs_mounted == len(image.blobs)
    assert_backed_up(
        basic_registry,
        Reference(basic_registry.host, f"{unique_repo}-b", "v1", image.digest),
        image.digest,
    )


async def test_a_refused_mount_falls_back_to_an_upload(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
) -> None:
    image = images.make_image(image_cache, [70_000], seed=42, fmt="oci")
    images.push(plain_registry.backdoor_url, unique_repo, "v1", image)
    config = plain_to(plain_registry, basic_registry)
    source = source_ref(plain_registry, unique_repo, "v1")
    layer = image.layers[0].digest

    async with engine_for(config) as engine:
        await engine.copy(
            source,
            Repository(basic_registry.host, f"{unique_repo}-a"),
            tag="v1",
            deadline=deadline(),
        )
        # The registry loses the layer from repository a: a mount from there must fail.
        assert images.delete_blob(basic_registry.backdoor_url, f"{unique_repo}-a", layer)
        result = await engine.copy(
            source,
            Repository(basic_registry.host, f"{unique_repo}-b"),
            tag="v1",
            deadline=deadline(),
        )

    assert result.stats.blobs_uploaded >= 1
    assert_backed_up(basic_registry, result.backup, image.digest)


async def test_concurrent_backups_of_one_image_share_one_copy(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
) -> None:
    image = images.make_image(image_cache, [400_000, 10_000], seed=51, fmt="oci")
    images.push(plain_registry.backdoor_url, unique_repo, "v1", image)
    source_proxy = fault_proxy(plain_registry)
    config = plain_to(source_proxy, basic_registry)
    by_tag = parse(f"{source_proxy.host}/{unique_repo}:v1")
    by_digest = parse(f"{source_proxy.host}/{unique_repo}@{image.digest}")

    async with engine_for(config) as engine:
        results = await asyncio.gather(
            *(
                engine.backup(ref, deadline=deadline())
                for ref in [by_tag, by_tag, by_digest, by_tag]
            )
        )

    assert {r.digest for r in results} == {image.digest}
    for blob in image.blobs:
        assert len(source_proxy.requests("GET", f"/blobs/{blob}$")) == 1
    # The three asking for the tag with the same credential share one resolve too.
    assert len(source_proxy.requests(None, f"/{unique_repo}/manifests/v1$")) == 1
    assert_backed_up(basic_registry, results[0].backup, image.digest)


async def test_results_are_cached_for_tags_until_they_go_stale(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
) -> None:
    old = images.make_image(image_cache, [3_000], seed=61, fmt="oci")
    new = images.make_image(image_cache, [4_000], seed=62, fmt="oci")
    images.push(plain_registry.backdoor_url, unique_repo, "moving", old)
    source_proxy = fault_proxy(plain_registry)
    config = make_config(
        basic_registry,
        sources=[plain(source_proxy)],
        docker_config=basic_registry.docker_config,
        tagCacheSeconds=0.5,
    )
    source = parse(f"{source_proxy.host}/{unique_repo}:moving")

    async with engine_for(config) as engine:
        first = await engine.backup(source, deadline=deadline())
        source_proxy.clear_log()
        images.push(plain_registry.backdoor_url, unique_repo, "moving", new)  # the tag moves
        cached = await engine.backup(source, deadline=deadline())
        assert engine.cached(source) is not None
        assert source_proxy.log == []  # answered from memory
        await asyncio.sleep(0.6)  # past its lifetime: a copy asks the registries again
        revalidated = await engine.backup(source, deadline=deadline())

    assert first.digest == cached.digest == old.digest and cached.from_cache
    assert revalidated.digest == new.digest and not revalidated.from_cache
    assert_backed_up(basic_registry, revalidated.backup, new.digest)
    # The old digest stays pinned by its anchor tag after the tag moved.
    assert anchor_tag(old.digest) in images.tags(
        basic_registry.backdoor_url, first.backup.repository
    )


async def test_digest_results_are_cached_without_expiry(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
) -> None:
    image = images.make_image(image_cache, [3_000], seed=63, fmt="oci")
    images.push(plain_registry.backdoor_url, unique_repo, None, image)
    source_proxy = fault_proxy(plain_registry)
    config = make_config(
        basic_registry,
        sources=[plain(source_proxy)],
        docker_config=basic_registry.docker_config,
        tagCacheSeconds=0,
    )
    source = parse(f"{source_proxy.host}/{unique_repo}@{image.digest}")

    async with engine_for(config) as engine:
        await engine.backup(source, deadline=deadline())
        source_proxy.clear_log()
        again = await engine.backup(source, deadline=deadline())

    assert again.from_cache and source_proxy.log == []


async def test_copying_again_after_a_restart_transfers_nothing(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
) -> None:
    image = images.make_image(image_cache, [30_000, 20_000], seed=64, fmt="oci")
    images.push(plain_registry.backdoor_url, unique_repo, "v1", image)
    source_proxy = fault_proxy(plain_registry)
    config = plain_to(source_proxy, basic_registry)
    source = parse(f"{source_proxy.host}/{unique_repo}:v1")
    async with engine_for(config) as engine:
        await engine.backup(source, deadline=deadline())
    source_proxy.clear_log()

    async with engine_for(config) as fresh_engine:  # nothing in memory
        result = await fresh_engine.backup(source, deadline=deadline())

    assert result.already_backed_up
    # The tag was resolved (besides probing whether the registry speaks TLS), and, new to
    # this process, the backup's referrers looked for: no manifest or blob was read.
    asked = [(e.method, e.path) for e in source_proxy.log if unique_repo in e.path]
    assert asked == [
        ("HEAD", f"/v2/{unique_repo}/manifests/v1"),
        ("GET", f"/v2/{unique_repo}/tags/list"),
        ("GET", f"/v2/{unique_repo}/referrers/{image.digest}"),
    ]


async def test_resolve_falls_back_to_get_when_head_gives_no_digest(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
) -> None:
    image = images.make_image(image_cache, [1_000], seed=65, fmt="docker")
    images.push(plain_registry.backdoor_url, unique_repo, "v1", image)
    source_proxy = fault_proxy(plain_registry)
    source_proxy.add(drop_header("Docker-Content-Digest", method="HEAD", path="/manifests/"))
    config = make_config(basic_registry, sources=[plain(source_proxy)])

    async with engine_for(config) as engine:
        digest = await engine.resolve(
            parse(f"{source_proxy.host}/{unique_repo}:v1"), deadline=deadline()
        )

    assert digest == image.digest
    assert len(source_proxy.requests("GET", "/manifests/v1$")) == 1


async def test_each_blob_costs_at_most_one_check_and_one_streamed_upload(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
) -> None:
    first = images.make_image(image_cache, [300_000, 7_000], seed=71, fmt="oci")
    second = images.make_image(image_cache, [300_000, 9_000], seed=71, fmt="oci")
    shared = first.layers[0].digest
    assert second.layers[0].digest == shared
    images.push(plain_registry.backdoor_url, unique_repo, "one", first)
    images.push(plain_registry.backdoor_url, unique_repo, "two", second)
    target = fault_proxy(basic_registry)
    config = plain_to(plain_registry, target)

    async with engine_for(config) as engine:
        await engine.backup(source_ref(plain_registry, unique_repo, "one"), deadline=deadline())
        fresh_repository_log = list(target.log)
        target.clear_log()
        result = await engine.backup(
            source_ref(plain_registry, unique_repo, "two"), deadline=deadline()
        )

    def count(log: list[ProxyLogEntry], method: str, pattern: str) -> int:
        return sum(1 for e in log if e.method == method and re.search(pattern, e.path))

    # A new repository: no existence checks, one upload session and one PUT per blob.
    assert count(fresh_repository_log, "HEAD", "/blobs/") == 0
    assert count(fresh_repository_log, "POST", "/blobs/uploads/$") == len(first.blobs)
    assert count(fresh_repository_log, "PUT", "/blobs/uploads/") == len(first.blobs)
    assert count(fresh_repository_log, "PATCH", "") == 0
    # An existing repository: one check per blob; only the blobs it lacks are sent.
    later = target.log
    for blob in second.blobs:
        assert count(later, "HEAD", f"/blobs/{blob}$") == 1
    assert count(later, "PUT", "/blobs/uploads/") == len(second.blobs) - 1
    assert result.stats.blobs_present == 1
    assert_backed_up(basic_registry, result.backup, second.digest)
