"""Signatures, attestations and SBOMs travel with each backup: cosign's tags and OCI 1.1
referrers (by the fallback tag on Distribution 2.8, by the referrers API behind a proxy
that adds it), recursively, for every platform; the backup side's referrers index; the
artifact types a configuration leaves out; a referrer that fails; old anchors."""

from __future__ import annotations

import json
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric import ec

from tests.helpers import deadline, engine_for, make_config, plain, plain_to
from tests.support import artifacts, images, skopeo
from tests.support.artifacts import ArtifactManifest
from tests.support.fakekube import FakeKube
from tests.support.faultproxy import FaultProxyFactory, status
from tests.support.referrersproxy import ReferrersProxyFactory
from tests.support.registries import Registry
from tests.workloads import create, opt_in, workload
from webhook.backfill import Backfill
from webhook.cluster import connect
from webhook.config import Config
from webhook.engine import open_engine
from webhook.metrics import Metrics
from webhook.reference import parse
from webhook.registry.client import anchor_tag, old_anchor_tag
from webhook.registry.copy import CopyResult
from webhook.registry.referrers import Carried

SPDX = "application/spdx+json"
SLSA = "application/vnd.in-toto+json"


def outcomes(carried: Carried | None) -> dict[str, str]:
    """What became of each artifact, by its tag or digest."""
    assert carried is not None
    return {artifact.name: artifact.outcome.value for artifact in carried.artifacts}


def same_bytes(source: Registry, backup: Registry, repos: tuple[str, str], ref: str) -> str:
    """The manifest at `ref` is byte-identical in both (skopeo reads each), every blob under
    it intact in the backup; its digest."""
    digest = skopeo.inspect_raw_digest(backup, f"{repos[1]}:{ref}")
    assert digest == skopeo.inspect_raw_digest(source, f"{repos[0]}:{ref}")
    images.read_back(backup.backdoor_url, repos[1], digest)
    return digest


def at_digest(registry: Registry, repository: str, digest: str) -> str:
    return skopeo.inspect_raw_digest(registry, f"{repository}@{digest}")


async def back_up(config: Config, reference: str) -> CopyResult:
    async with engine_for(config) as engine:
        return await engine.backup(parse(reference), deadline=deadline())


def push_all(url: str, repository: str, made: Sequence[ArtifactManifest]) -> None:
    """cosign's artifacts at their tags; OCI referrers by the fallback tag, as tools do on a
    registry without the referrers API."""
    for artifact in made:
        if artifact.tag:
            artifacts.push_artifact(url, repository, artifact.tag, artifact)
        else:
            artifacts.attach_by_fallback_tag(url, repository, artifact)


def pushed(registry: Registry, cache: str, repository: str, *, seed: int) -> images.Image:
    """A small image at `repository:v1`."""
    image = images.make_image(cache, [20_000], seed=seed, fmt="oci")
    images.push(registry.backdoor_url, repository, "v1", image)
    return image


def sbom_of(image: images.Image) -> ArtifactManifest:
    """An SPDX SBOM of the image, as an OCI 1.1 referrer."""
    return artifacts.oci_referrer(
        image.descriptor(), SPDX, artifacts.spdx_document(image.digest), SPDX
    )


def without_referrers(source: Registry, backup: Registry) -> Config:
    """As `plain_to`, with referrers left behind (as versions before them did)."""
    return make_config(
        backup, sources=[plain(source)], docker_config=backup.docker_config, referrers=False
    )


def public(key: ec.EllipticCurvePrivateKey) -> ec.EllipticCurvePublicKey:
    return key.public_key()


async def test_cosign_tags_travel_byte_exact_and_verify_against_the_backup(
    plain_registry: Registry, basic_registry: Registry, image_cache: str, unique_repo: str
) -> None:
    image = pushed(plain_registry, image_cache, unique_repo, seed=9300)
    key = artifacts.generate_key()
    signed_as = f"{plain_registry.host}/{unique_repo}"
    made = [
        artifacts.cosign_signature(key, image.digest, signed_as),
        artifacts.cosign_attestation(key, image.digest, signed_as),
        artifacts.cosign_sbom(image.digest),
    ]
    push_all(plain_registry.backdoor_url, unique_repo, made)
    config = plain_to(plain_registry, basic_registry)

    result = await back_up(config, f"{signed_as}:v1")

    repository = result.backup.repository
    tags = {artifact.tag: artifact for artifact in made if artifact.tag}
    assert outcomes(result.referrers) == dict.fromkeys(tags, "carried")
    for tag, artifact in tags.items():
        digest = same_bytes(plain_registry, basic_registry, (unique_repo, repository), tag)
        assert digest == artifact.digest
    # What a verifier reads from the backup, checked with the signer's public key.
    sig, (payload,) = artifacts.fetch_artifact(
        basic_registry.backdoor_url, repository, artifacts.cosign_tag(image.digest, "sig")
    )
    artifacts.verify_cosign_signature(public(key), sig, payload, result.digest)
    att, (envelope,) = artifacts.fetch_artifact(
        basic_registry.backdoor_url, repository, artifacts.cosign_tag(image.digest, "att")
    )
    artifacts.verify_dsse_attestation(public(key), att, envelope, result.digest)

    again = await back_up(config, f"{signed_as}:v1")  # a new process: due again, all there
    assert outcomes(again.referrers) == dict.fromkeys(tags, "present")


async def test_oci_referrers_travel_through_the_fallback_tag_recursively(
    plain_registry: Registry, basic_registry: Registry, image_cache: str, unique_repo: str
) -> None:
    image = pushed(plain_registry, image_cache, unique_repo, seed=9301)
    key = artifacts.generate_key()
    signed_as = f"{plain_registry.host}/{unique_repo}"
    sbom = sbom_of(image)
    provenance = artifacts.oci_referrer(
        image.descriptor(), SLSA, b'{"predicateType":"slsa"}', SLSA, {"org.example": "1"}
    )
    sbom_signature = artifacts.oci_signature(key, sbom.descriptor(), signed_as)
    push_all(plain_registry.backdoor_url, unique_repo, [sbom, provenance, sbom_signature])
    config = plain_to(plain_registry, basic_registry)

    result = await back_up(config, f"{signed_as}:v1")

    repository = result.backup.repository
    assert outcomes(result.referrers) == {
        sbom.digest: "carried",
        provenance.digest: "carried",
        sbom_signature.digest: "carried",  # a referrer of a referrer
    }
    for artifact in (sbom, provenance, sbom_signature):
        assert at_digest(basic_registry, repository, artifact.digest) == artifact.digest
        images.read_back(basic_registry.backdoor_url, repository, artifact.digest)
    # Distribution 2.8 has no referrers API: the backup gets the fallback indexes, each entry
    # as OCI 1.1 describes a referrer (annotations included).
    assert sorted(
        artifacts.listed_by_fallback_tag(basic_registry.backdoor_url, repository, image.digest)
    ) == sorted([sbom.digest, provenance.digest])
    assert artifacts.listed_by_fallback_tag(
        basic_registry.backdoor_url, repository, sbom.digest
    ) == [sbom_signature.digest]
    index = images.get_manifest(
        basic_registry.backdoor_url, repository, old_anchor_tag(image.digest)
    )
    assert index is not None
    entries = {entry["digest"]: entry for entry in json.loads(index[0])["manifests"]}
    assert entries[provenance.digest] == provenance.referrer_descriptor()
    # The signature of the SBOM verifies from the backup.
    signature, (payload,) = artifacts.fetch_artifact(
        basic_registry.backdoor_url, repository, sbom_signature.digest
    )
    artifacts.verify_cosign_signature(public(key), signature, payload, sbom.digest)
    # The image itself is still anchored where it was.
    assert at_digest(basic_registry, repository, image.digest) == image.digest
    assert anchor_tag(image.digest) in images.tags(basic_registry.backdoor_url, repository)


async def test_every_platform_of_an_index_brings_its_own_referrers(
    plain_registry: Registry, basic_registry: Registry, image_cache: str, unique_repo: str
) -> None:
    platforms = [
        images.make_image(image_cache, [10_000], seed=9302 + i, fmt="oci", platform=("linux", a))
        for i, a in enumerate(("amd64", "arm64"))
    ]
    index = images.make_index(image_cache, platforms, "oci")
    images.push(plain_registry.backdoor_url, unique_repo, "v1", index)
    key = artifacts.generate_key()
    signed_as = f"{plain_registry.host}/{unique_repo}"
    arm_sbom = sbom_of(platforms[1])
    made = [artifacts.cosign_signature(key, index.digest, signed_as), arm_sbom]
    push_all(plain_registry.backdoor_url, unique_repo, made)
    config = plain_to(plain_registry, basic_registry)

    result = await back_up(config, f"{signed_as}:v1")

    repository = result.backup.repository
    assert result.referrers is not None
    subjects = {artifact.name: artifact.subject for artifact in result.referrers.held}
    assert subjects == {
        artifacts.cosign_tag(index.digest, "sig"): index.digest,
        arm_sbom.digest: platforms[1].digest,
    }
    assert artifacts.listed_by_fallback_tag(
        basic_registry.backdoor_url, repository, platforms[1].digest
    ) == [arm_sbom.digest]
    assert at_digest(basic_registry, repository, arm_sbom.digest) == arm_sbom.digest


async def test_a_source_with_the_referrers_api_is_read_page_by_page(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    referrers_proxy: ReferrersProxyFactory,
) -> None:
    source = referrers_proxy(plain_registry, page_size=1)
    image = images.make_image(image_cache, [20_000], seed=9304, fmt="oci")
    images.push(source.url, unique_repo, "v1", image)
    made = [
        artifacts.oci_referrer(image.descriptor(), f"application/x.kind-{n}", b"%d" % n, SPDX)
        for n in range(3)
    ]
    for artifact in made:  # through the API: no fallback tag anywhere
        assert artifacts.attach(source.url, unique_repo, artifact) is False
    config = plain_to(source, basic_registry)

    result = await back_up(config, f"{source.host}/{unique_repo}:v1")

    assert outcomes(result.referrers) == {a.digest: "carried" for a in made}
    asked = [e for e in source.seen_referrer_requests if image.digest in e.path]
    assert len(asked) == 3  # one page each
    repository = result.backup.repository
    for artifact in made:
        assert at_digest(basic_registry, repository, artifact.digest) == artifact.digest
    assert sorted(
        artifacts.listed_by_fallback_tag(basic_registry.backdoor_url, repository, image.digest)
    ) == sorted(a.digest for a in made)


async def test_a_backup_registry_with_the_referrers_api_keeps_no_fallback_tag(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    referrers_proxy: ReferrersProxyFactory,
) -> None:
    backup = referrers_proxy(basic_registry)
    image = pushed(plain_registry, image_cache, unique_repo, seed=9305)
    sbom = sbom_of(image)
    push_all(plain_registry.backdoor_url, unique_repo, [sbom])
    config = make_config(
        backup, sources=[plain(plain_registry)], docker_config=backup.docker_config
    )

    result = await back_up(config, f"{plain_registry.host}/{unique_repo}:v1")

    repository = result.backup.repository
    assert outcomes(result.referrers) == {sbom.digest: "carried"}
    # It answered OCI-Subject: it lists the referrer itself, and no tag was spent on it.
    assert [d["digest"] for d in backup.referrers(repository, image.digest)] == [sbom.digest]
    assert old_anchor_tag(image.digest) not in images.tags(basic_registry.backdoor_url, repository)
    assert at_digest(basic_registry, repository, sbom.digest) == sbom.digest


async def test_the_backup_referrers_index_is_merged_with_what_it_lists(
    plain_registry: Registry, basic_registry: Registry, image_cache: str, unique_repo: str
) -> None:
    image = pushed(plain_registry, image_cache, unique_repo, seed=9306)
    config = plain_to(plain_registry, basic_registry)
    first = await back_up(config, f"{plain_registry.host}/{unique_repo}:v1")
    repository = first.backup.repository
    # Someone signs the backup itself, in the backup registry...
    key = artifacts.generate_key()
    local = artifacts.oci_signature(key, image.descriptor(), f"{basic_registry.host}/{repository}")
    artifacts.attach_by_fallback_tag(basic_registry.backdoor_url, repository, local)
    # ...and the source gets an SBOM later.
    sbom = sbom_of(image)
    push_all(plain_registry.backdoor_url, unique_repo, [sbom])

    again = await back_up(config, f"{plain_registry.host}/{unique_repo}:v1")

    assert outcomes(again.referrers) == {sbom.digest: "carried"}
    assert artifacts.listed_by_fallback_tag(
        basic_registry.backdoor_url, repository, image.digest
    ) == [local.digest, sbom.digest]


async def test_an_old_anchor_on_the_referrers_tag_gives_way_to_the_index(
    plain_registry: Registry, basic_registry: Registry, image_cache: str, unique_repo: str
) -> None:
    image = pushed(plain_registry, image_cache, unique_repo, seed=9307)
    config = plain_to(plain_registry, basic_registry)
    repository = f"backup/{plain_registry.host.replace(':', '_')}/{unique_repo}"
    # A backup made before the anchor moved: the image under `sha256-<hex>` and its tag.
    images.push(basic_registry.backdoor_url, repository, old_anchor_tag(image.digest), image)
    images.push(basic_registry.backdoor_url, repository, "v1", image)
    unsigned = await back_up(config, f"{plain_registry.host}/{unique_repo}:v1")
    assert unsigned.already_backed_up and unsigned.backup.repository == repository
    # Without referrers the old anchor stays as it is (beside the new one).
    assert at_digest(basic_registry, repository, image.digest) == image.digest
    old = images.get_manifest(basic_registry.backdoor_url, repository, old_anchor_tag(image.digest))
    assert old is not None and old[0] == image.manifest_bytes

    sbom = sbom_of(image)
    push_all(plain_registry.backdoor_url, unique_repo, [sbom])
    signed = await back_up(config, f"{plain_registry.host}/{unique_repo}:v1")

    assert outcomes(signed.referrers) == {sbom.digest: "carried"}
    assert artifacts.listed_by_fallback_tag(
        basic_registry.backdoor_url, repository, image.digest
    ) == [sbom.digest]
    tags = images.tags(basic_registry.backdoor_url, repository)
    got = images.get_manifest(basic_registry.backdoor_url, repository, anchor_tag(image.digest))
    assert got is not None and got[0] == image.manifest_bytes  # the new anchor keeps the image
    assert {"v1", anchor_tag(image.digest), old_anchor_tag(image.digest)} <= set(tags)


async def test_artifact_types_limit_what_travels(
    plain_registry: Registry, basic_registry: Registry, image_cache: str, unique_repo: str
) -> None:
    image = pushed(plain_registry, image_cache, unique_repo, seed=9308)
    key = artifacts.generate_key()
    signed_as = f"{plain_registry.host}/{unique_repo}"
    signature = artifacts.cosign_signature(key, image.digest, signed_as)
    cosign_sbom = artifacts.cosign_sbom(image.digest)
    oci_sbom = sbom_of(image)
    signed_sbom = artifacts.oci_signature(key, oci_sbom.descriptor(), signed_as)
    push_all(plain_registry.backdoor_url, unique_repo, [signature, cosign_sbom, oci_sbom])
    push_all(plain_registry.backdoor_url, unique_repo, [signed_sbom])
    config = make_config(
        basic_registry,
        sources=[plain(plain_registry)],
        docker_config=basic_registry.docker_config,
        artifactTypes=[artifacts.SIMPLESIGNING, artifacts.COSIGN_SIG_ARTIFACT_TYPE],
    )

    result = await back_up(config, f"{signed_as}:v1")

    assert outcomes(result.referrers) == {
        signature.tag: "carried",
        cosign_sbom.tag: "skipped",
        oci_sbom.digest: "skipped",  # and with it, what refers to it
    }
    repository = result.backup.repository
    tags = images.tags(basic_registry.backdoor_url, repository)
    assert signature.tag in tags and cosign_sbom.tag not in tags
    assert old_anchor_tag(image.digest) not in tags
    for left in (oci_sbom, signed_sbom):
        assert not images.manifest_exists(basic_registry.backdoor_url, repository, left.digest)

    nothing = make_config(
        basic_registry,
        sources=[plain(plain_registry)],
        docker_config=basic_registry.docker_config,
        prefix="none",
        referrers=False,
    )
    bare = await back_up(nothing, f"{signed_as}:v1")
    assert bare.referrers is None
    assert images.tags(basic_registry.backdoor_url, bare.backup.repository) == sorted(
        ["v1", anchor_tag(image.digest)]
    )


async def test_a_referrer_that_fails_leaves_the_backup_whole_and_is_tried_again(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
) -> None:
    image = pushed(plain_registry, image_cache, unique_repo, seed=9309)
    key = artifacts.generate_key()
    source = fault_proxy(plain_registry)
    signature = artifacts.cosign_signature(key, image.digest, f"{source.host}/{unique_repo}")
    sbom = sbom_of(image)
    push_all(plain_registry.backdoor_url, unique_repo, [signature, sbom])
    layer = sbom.layers[0].digest
    source.add(status(404, method="GET", path=f"/blobs/{layer}$"))
    now = [0.0]
    config = plain_to(source, basic_registry)
    reference = parse(f"{source.host}/{unique_repo}:v1")

    async with open_engine(config, clock=lambda: now[0]) as engine:
        first = await engine.backup(reference, deadline=deadline())
        repository = first.backup.repository
        assert skopeo.inspect_raw_digest(basic_registry, f"{repository}:v1") == image.digest
        assert first.referrers is not None
        assert outcomes(first.referrers) == {signature.tag: "carried", sbom.digest: "failed"}
        (failure,) = first.referrers.failures
        assert layer in failure.error and "not found" in failure.error
        assert failure.subject == image.digest
        assert not images.manifest_exists(basic_registry.backdoor_url, repository, sbom.digest)

        source.clear_rules()
        now[0] += 61  # past the retry (and the tag's cache): the next use carries it
        second = await engine.backup(reference, deadline=deadline())
        assert outcomes(second.referrers) == {signature.tag: "present", sbom.digest: "carried"}
        now[0] += 61  # all carried: not due again for a while
        third = await engine.backup(reference, deadline=deadline())
        assert third.referrers is None

    assert at_digest(basic_registry, repository, sbom.digest) == sbom.digest
    assert artifacts.listed_by_fallback_tag(
        basic_registry.backdoor_url, repository, image.digest
    ) == [sbom.digest]


async def test_a_backup_made_without_referrers_gets_them_at_its_next_use(
    plain_registry: Registry, basic_registry: Registry, image_cache: str, unique_repo: str
) -> None:
    image = pushed(plain_registry, image_cache, unique_repo, seed=9310)
    key = artifacts.generate_key()
    signed_as = f"{plain_registry.host}/{unique_repo}"
    signature = artifacts.cosign_signature(key, image.digest, signed_as)
    push_all(plain_registry.backdoor_url, unique_repo, [signature])
    before = without_referrers(plain_registry, basic_registry)
    made = await back_up(before, f"{signed_as}:v1")
    repository = made.backup.repository
    assert signature.tag not in images.tags(basic_registry.backdoor_url, repository)

    used = await back_up(plain_to(plain_registry, basic_registry), f"{signed_as}:v1")

    assert used.already_backed_up
    assert outcomes(used.referrers) == {signature.tag: "carried"}
    assert skopeo.inspect_raw_digest(basic_registry, f"{repository}:{signature.tag}") == (
        signature.digest
    )


async def test_a_cosign_tag_that_moved_keeps_the_old_signatures_anchored(
    plain_registry: Registry, basic_registry: Registry, image_cache: str, unique_repo: str
) -> None:
    image = pushed(plain_registry, image_cache, unique_repo, seed=9311)
    signed_as = f"{plain_registry.host}/{unique_repo}"
    old = artifacts.cosign_signature(artifacts.generate_key(), image.digest, signed_as)
    push_all(plain_registry.backdoor_url, unique_repo, [old])
    config = plain_to(plain_registry, basic_registry)
    made = await back_up(config, f"{signed_as}:v1")
    repository = made.backup.repository
    # Signed again with a new key: the source's .sig tag now holds another manifest.
    new = artifacts.cosign_signature(artifacts.generate_key(), image.digest, signed_as)
    push_all(plain_registry.backdoor_url, unique_repo, [new])

    again = await back_up(config, f"{signed_as}:v1")

    assert outcomes(again.referrers) == {new.tag: "carried"}
    assert skopeo.inspect_raw_digest(basic_registry, f"{repository}:{new.tag}") == new.digest
    kept = images.get_manifest(basic_registry.backdoor_url, repository, anchor_tag(old.digest))
    assert kept is not None and kept[0] == old.manifest_bytes


async def test_a_backfill_pass_brings_those_of_workloads_running_from_backups(
    fake_kube: FakeKube,
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
) -> None:
    image = pushed(plain_registry, image_cache, unique_repo, seed=9312)
    signed_as = f"{plain_registry.host}/{unique_repo}"
    signature = artifacts.cosign_signature(artifacts.generate_key(), image.digest, signed_as)
    push_all(plain_registry.backdoor_url, unique_repo, [signature])
    before = without_referrers(plain_registry, basic_registry)
    made = await back_up(before, f"{signed_as}:v1")  # before referrers travelled
    opt_in(fake_kube, "team", "enforce")
    create(fake_kube, "team", workload("Deployment", "web", {"main": str(made.backup)}))
    config = plain_to(plain_registry, basic_registry)

    async with (
        connect(config, Metrics()) as cluster,
        open_engine(config) as engine,
    ):
        assert cluster is not None
        summary = await Backfill(engine, cluster.workloads, config, pull=cluster.pull).run()

    assert dict(summary.images) == {"protected": 1}  # nothing copied, nothing rewritten...
    repository = made.backup.repository
    # ...but what refers to the image it runs came along.
    assert skopeo.inspect_raw_digest(basic_registry, f"{repository}:{signature.tag}") == (
        signature.digest
    )


async def test_a_source_refusing_the_referrers_path_otherwise_than_404_has_no_api(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
) -> None:
    """Registries older than the API may answer 405 (or 400, 406) to a path they do not
    know: the fallback tag is read then, and nothing is reported as failed."""
    image = pushed(plain_registry, image_cache, unique_repo, seed=9313)
    sbom = sbom_of(image)
    push_all(plain_registry.backdoor_url, unique_repo, [sbom])
    source = fault_proxy(plain_registry)
    source.add(status(405, method="GET", path="/referrers/"))

    result = await back_up(plain_to(source, basic_registry), f"{source.host}/{unique_repo}:v1")

    assert outcomes(result.referrers) == {sbom.digest: "carried"}
    assert source.requests("GET", "/referrers/")  # it was asked, and took the refusal
