"""The anchor tag that keeps each backup's digest stays off the tags others use for it: OCI
1.1's referrers fallback tag ``sha256-<hex>`` and cosign's ``sha256-<hex>.sig``; backups
anchored by the old tag are still recognized, and anchored anew when next used."""

from __future__ import annotations

import hashlib
import json
import urllib.request

from tests.helpers import deadline, engine_for, plain_to
from tests.support import images, skopeo
from tests.support.registries import Registry
from webhook.reference import parse
from webhook.registry.client import ANCHOR_TAG, anchor_tag, old_anchor_tag

INDEX = "application/vnd.oci.image.index.v1+json"


def put_manifest(
    registry: Registry, repository: str, tag: str, body: bytes, media_type: str
) -> str:
    request = urllib.request.Request(
        f"{registry.backdoor_url}/v2/{repository}/manifests/{tag}",
        data=body,
        method="PUT",
        headers={"Content-Type": media_type},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 201
    return "sha256:" + hashlib.sha256(body).hexdigest()


def test_the_anchor_collides_with_no_tag_scheme_and_fits() -> None:
    digest = "sha256:" + "ab" * 32
    tag = anchor_tag(digest)
    assert tag == "backup-sha256-" + "ab" * 32 and len(tag) <= 128
    assert tag != old_anchor_tag(digest)  # OCI 1.1's referrers fallback tag
    assert not tag.endswith((".sig", ".att", ".sbom"))  # cosign's
    assert ANCHOR_TAG.fullmatch(tag) and ANCHOR_TAG.fullmatch(old_anchor_tag(digest))


async def test_a_backup_leaves_the_referrers_tag_free_and_a_signing_tool_may_use_it(
    plain_registry: Registry, basic_registry: Registry, image_cache: str, unique_repo: str
) -> None:
    image = images.make_image(image_cache, [20_000], seed=4100, fmt="oci")
    images.push(plain_registry.backdoor_url, unique_repo, "v1", image)
    config = plain_to(plain_registry, basic_registry)
    source = parse(f"{plain_registry.host}/{unique_repo}:v1")
    async with engine_for(config) as engine:
        made = await engine.backup(source, deadline=deadline())
    repository = made.backup.repository
    tags = images.tags(basic_registry.backdoor_url, repository)
    assert anchor_tag(image.digest) in tags
    assert old_anchor_tag(image.digest) not in tags

    # A signing tool pushes the referrers index of the digest to its fallback tag.
    referrers = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": []}).encode()
    index = put_manifest(basic_registry, repository, old_anchor_tag(image.digest), referrers, INDEX)
    async with engine_for(config) as engine:  # a fresh replica: nothing remembered
        again = await engine.backup(source, deadline=deadline())
    assert again.already_backed_up and again.stats.blobs_uploaded == 0
    fallback_tag = f"{repository}:{old_anchor_tag(image.digest)}"
    assert skopeo.inspect_raw_digest(basic_registry, fallback_tag) == index


async def test_a_backup_made_with_the_old_anchor_is_recognized_and_anchored_anew(
    plain_registry: Registry, basic_registry: Registry, image_cache: str, unique_repo: str
) -> None:
    image = images.make_image(image_cache, [30_000], seed=4101, fmt="oci")
    images.push(plain_registry.backdoor_url, unique_repo, "v1", image)
    config = plain_to(plain_registry, basic_registry)
    source = parse(f"{plain_registry.host}/{unique_repo}:v1")
    async with engine_for(config) as engine:
        repository = engine.target_for(source).path
        # As an earlier version left it: the image under its old anchor only.
        images.push(basic_registry.backdoor_url, repository, old_anchor_tag(image.digest), image)
        found = await engine.lookup(source, deadline=deadline())
        assert found is not None and found.digest == image.digest  # recognized, read-only
        assert anchor_tag(image.digest) not in images.tags(basic_registry.backdoor_url, repository)
        made = await engine.backup(source, deadline=deadline())
    assert made.already_backed_up and made.stats.blobs_uploaded == 0
    tags = images.tags(basic_registry.backdoor_url, repository)
    assert {anchor_tag(image.digest), old_anchor_tag(image.digest), "v1"} <= set(tags)
    anchored = f"{repository}:{anchor_tag(image.digest)}"
    assert skopeo.inspect_raw_digest(basic_registry, anchored) == image.digest
