"""The test support for image referrers: cosign and OCI 1.1 artifacts on real registries
(tests/support/artifacts.py) and the referrers API proxy (tests/support/referrersproxy.py)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support import artifacts, faultproxy, images, skopeo
from tests.support.artifacts import (
    COSIGN_SIG_ARTIFACT_TYPE,
    ArtifactManifest,
    VerificationError,
    fallback_tag,
)
from tests.support.referrersproxy import ReferrersProxyFactory, get_referrers
from tests.support.registries import Registry

SPDX = "application/spdx+json"
PROVENANCE = "application/vnd.ibw.test.provenance+json"
CREATED = {"org.opencontainers.image.created": "2024-01-02T03:04:05Z"}


def _image(image_cache: str, seed: int) -> images.Image:
    return images.make_image(image_cache, [1000], seed=seed, fmt="oci")


def _sbom(subject: images.Image | ArtifactManifest) -> ArtifactManifest:
    document = artifacts.spdx_document(subject.digest)
    return artifacts.oci_referrer(subject.descriptor(), SPDX, document, SPDX, CREATED)


def _digests(descriptors: list[dict[str, object]]) -> list[object]:
    return [d["digest"] for d in descriptors]


# --- shapes, in memory -------------------------------------------------------------------------


def test_artifact_shapes_and_signatures(image_cache: str) -> None:
    img = _image(image_cache, 40)
    key, other_key = artifacts.generate_key(), artifacts.generate_key()
    hex_ = img.digest.split(":")[1]
    assert artifacts.fallback_tag(img.digest) == f"sha256-{hex_}"
    assert [artifacts.cosign_tag(img.digest, s) for s in ("sig", ".att", "sbom")] == [
        f"sha256-{hex_}.sig",
        f"sha256-{hex_}.att",
        f"sha256-{hex_}.sbom",
    ]
    with pytest.raises(ValueError):
        artifacts.cosign_tag(img.digest, "sign")
    assert artifacts.EMPTY_BLOB.descriptor() == {
        "mediaType": "application/vnd.oci.empty.v1+json",
        "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        "size": 2,
    }

    sig = artifacts.cosign_signature(key, img.digest, "registry.test/app")
    doc = sig.doc
    assert sig.tag == f"sha256-{hex_}.sig" and sig.subject is None
    assert doc["mediaType"] == images.OCI_MANIFEST == sig.media_type
    assert doc["config"]["mediaType"] == images.OCI_CONFIG
    assert sig.digest == images.sha256_digest(sig.manifest_bytes)
    (layer,) = doc["layers"]
    assert layer["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
    assert sig.payload == (
        b'{"critical":{"identity":{"docker-reference":"registry.test/app"},'
        b'"image":{"docker-manifest-digest":"' + img.digest.encode() + b'"},'
        b'"type":"cosign container image signature"},"optional":null}'
    )
    # the annotation is an ECDSA-SHA256 signature of the payload, checked here without the helper
    raw = base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"])
    key.public_key().verify(raw, sig.payload, ec.ECDSA(hashes.SHA256()))
    artifacts.verify_cosign_signature(key.public_key(), sig.manifest_bytes, sig.payload, img.digest)
    forged = artifacts.cosign_signature(other_key, img.digest, "registry.test/app")
    wrong_subject = artifacts.oci_signature(key, img.descriptor(), "registry.test/app")
    wrong_subject = artifacts.oci_referrer(  # signs img, refers to another digest
        {**img.descriptor(), "digest": "sha256:" + "1" * 64},
        COSIGN_SIG_ARTIFACT_TYPE,
        wrong_subject.payload,
        artifacts.SIMPLESIGNING,
        layer_annotations=wrong_subject.doc["layers"][0]["annotations"],
    )
    for public_key, manifest, payload, expected in [
        (other_key.public_key(), sig.manifest_bytes, sig.payload, None),  # another key
        (key.public_key(), sig.manifest_bytes, sig.payload, "sha256:" + "0" * 64),  # image
        (key.public_key(), sig.manifest_bytes, sig.payload.replace(b"app", b"bad"), None),
        (key.public_key(), forged.manifest_bytes, forged.payload, None),  # signed by another
        (key.public_key(), wrong_subject.manifest_bytes, wrong_subject.payload, None),
    ]:
        with pytest.raises(VerificationError):
            artifacts.verify_cosign_signature(public_key, manifest, payload, expected)

    att = artifacts.cosign_attestation(key, img.digest, "registry.test/app")
    envelope = json.loads(att.payload)
    payload = base64.b64decode(envelope["payload"])
    # DSSE's PAE, spelled out: "DSSEv1 <len(type)> <type> <len(body)> <body>"
    pae = b"DSSEv1 28 application/vnd.in-toto+json %d " % len(payload) + payload
    key.public_key().verify(
        base64.b64decode(envelope["signatures"][0]["sig"]), pae, ec.ECDSA(hashes.SHA256())
    )
    statement = artifacts.verify_dsse_attestation(
        key.public_key(), att.manifest_bytes, att.payload, img.digest
    )
    assert statement["subject"] == [{"name": "registry.test/app", "digest": {"sha256": hex_}}]
    assert att.tag == f"sha256-{hex_}.att"
    assert att.doc["layers"][0]["mediaType"] == "application/vnd.dsse.envelope.v1+json"
    with pytest.raises(VerificationError):
        artifacts.verify_dsse_attestation(other_key.public_key(), att.manifest_bytes, att.payload)

    sbom = _sbom(img)
    assert sbom.doc["artifactType"] == SPDX and sbom.doc["annotations"] == CREATED
    assert sbom.doc["config"] == artifacts.EMPTY_BLOB.descriptor()
    # the subject is the image's descriptor without its platform
    assert sbom.subject == {
        "mediaType": img.media_type,
        "digest": img.digest,
        "size": len(img.manifest_bytes),
    }
    assert sbom.referrer_descriptor() == {
        **sbom.descriptor(),
        "artifactType": SPDX,
        "annotations": CREATED,
    }
    # a signature of the SBOM: a referrer of a referrer
    sbom_sig = artifacts.oci_signature(key, sbom.descriptor(), "registry.test/app")
    assert sbom_sig.subject is not None and sbom_sig.subject["digest"] == sbom.digest
    assert sbom_sig.artifact_type == COSIGN_SIG_ARTIFACT_TYPE
    artifacts.verify_cosign_signature(
        key.public_key(), sbom_sig.manifest_bytes, sbom_sig.payload, sbom.digest
    )
    # a cosign artifact's referrers-list artifactType is its config's media type
    assert sig.referrer_descriptor()["artifactType"] == images.OCI_CONFIG


# --- cosign's tags and the fallback tag, on Distribution 2.8 -----------------------------------


def test_signature_and_fallback_tag_referrers(
    basic_registry: Registry, image_cache: str, unique_repo: str
) -> None:
    backdoor = basic_registry.backdoor_url
    img = _image(image_cache, 41)
    images.push(backdoor, unique_repo, "v1", img)
    key = artifacts.generate_key()
    reference = f"{basic_registry.host}/{unique_repo}"

    sig = artifacts.cosign_signature(key, img.digest, reference)
    assert sig.tag is not None
    digest, headers = artifacts.push_artifact(backdoor, unique_repo, sig.tag, sig)
    assert digest == sig.digest and headers.get("OCI-Subject") is None  # Distribution 2.8
    assert skopeo.inspect_raw_digest(basic_registry, f"{unique_repo}:{sig.tag}") == sig.digest
    assert images.read_back(backdoor, unique_repo, sig.digest) == set(sig.blobs)
    # the signature read back from the registry verifies, and only for this image and key
    manifest, (payload,) = artifacts.fetch_artifact(backdoor, unique_repo, sig.tag)
    assert manifest == sig.manifest_bytes
    artifacts.verify_cosign_signature(key.public_key(), manifest, payload, img.digest)
    with pytest.raises(VerificationError):
        artifacts.verify_cosign_signature(
            artifacts.generate_key().public_key(), manifest, payload, img.digest
        )

    # two referrers of the image and a signature of one of them, through fallback tags
    sbom = _sbom(img)
    provenance = artifacts.oci_referrer(img.descriptor(), PROVENANCE, b'{"built":1}', PROVENANCE)
    sbom_sig = artifacts.oci_signature(key, sbom.descriptor(), reference)
    first = artifacts.attach_by_fallback_tag(backdoor, unique_repo, sbom)
    second = artifacts.attach_by_fallback_tag(backdoor, unique_repo, provenance)
    assert first != second
    assert artifacts.attach_by_fallback_tag(backdoor, unique_repo, sbom) == second  # no duplicate
    of_sbom = artifacts.attach_by_fallback_tag(backdoor, unique_repo, sbom_sig)

    raw = skopeo.inspect_raw(basic_registry, f"{unique_repo}:{fallback_tag(img.digest)}")
    assert images.sha256_digest(raw) == second
    index = json.loads(raw)
    assert (index["schemaVersion"], index["mediaType"]) == (2, images.OCI_INDEX)
    assert index["manifests"] == [
        {
            "mediaType": images.OCI_MANIFEST,
            "digest": sbom.digest,
            "size": len(sbom.manifest_bytes),
            "artifactType": SPDX,
            "annotations": CREATED,
        },
        {
            "mediaType": images.OCI_MANIFEST,
            "digest": provenance.digest,
            "size": len(provenance.manifest_bytes),
            "artifactType": PROVENANCE,
        },
    ]
    raw = skopeo.inspect_raw(basic_registry, f"{unique_repo}:{fallback_tag(sbom.digest)}")
    assert images.sha256_digest(raw) == of_sbom
    assert json.loads(raw)["manifests"] == [sbom_sig.referrer_descriptor()]
    assert sbom_sig.referrer_descriptor()["artifactType"] == COSIGN_SIG_ARTIFACT_TYPE
    for referrer in (sbom, provenance, sbom_sig):
        got = skopeo.inspect_raw_digest(basic_registry, f"{unique_repo}@{referrer.digest}")
        assert got == referrer.digest
        assert images.read_back(backdoor, unique_repo, referrer.digest) == set(referrer.blobs)
    manifest, (payload,) = artifacts.fetch_artifact(backdoor, unique_repo, sbom_sig.digest)
    artifacts.verify_cosign_signature(key.public_key(), manifest, payload, sbom.digest)
    assert images.tags(backdoor, unique_repo) == sorted(
        ["v1", sig.tag, fallback_tag(img.digest), fallback_tag(sbom.digest)]
    )


def test_attestation_and_sbom_at_cosign_tags(
    plain_registry: Registry, image_cache: str, unique_repo: str
) -> None:
    backdoor = plain_registry.backdoor_url
    img = _image(image_cache, 42)
    images.push(backdoor, unique_repo, "v1", img)
    key = artifacts.generate_key()
    att = artifacts.cosign_attestation(key, img.digest, f"{plain_registry.host}/{unique_repo}")
    sbom = artifacts.cosign_sbom(img.digest, packages=("libfoo", "libbar"))
    for artifact in (att, sbom):
        assert artifact.tag is not None
        artifacts.push_artifact(backdoor, unique_repo, artifact.tag, artifact)
        got = skopeo.inspect_raw_digest(plain_registry, f"{unique_repo}:{artifact.tag}")
        assert got == artifact.digest
        assert images.read_back(backdoor, unique_repo, artifact.digest) == set(artifact.blobs)

    manifest, (envelope,) = artifacts.fetch_artifact(backdoor, unique_repo, f"{att.tag}")
    statement = artifacts.verify_dsse_attestation(key.public_key(), manifest, envelope, img.digest)
    assert statement["predicateType"] == artifacts.SLSA_PROVENANCE
    with pytest.raises(VerificationError):
        artifacts.verify_dsse_attestation(key.public_key(), manifest, envelope, sbom.digest)
    # a statement swapped inside the envelope no longer verifies (nor matches the manifest)
    doc = json.loads(envelope)
    doc["payload"] = base64.b64encode(b'{"subject":[]}').decode()
    with pytest.raises(VerificationError):
        artifacts.verify_dsse_attestation(key.public_key(), manifest, json.dumps(doc).encode())

    manifest, (document,) = artifacts.fetch_artifact(backdoor, unique_repo, f"{sbom.tag}")
    assert json.loads(manifest)["layers"][0]["mediaType"] == "text/spdx+json"
    spdx = json.loads(document)
    assert img.digest in spdx["documentNamespace"]
    assert [p["name"] for p in spdx["packages"]] == ["libfoo", "libbar"]
    with pytest.raises(LookupError):
        artifacts.fetch_artifact(backdoor, unique_repo, "nope")


# --- the referrers API -------------------------------------------------------------------------


def test_referrers_proxy_api_and_pagination(
    plain_registry: Registry,
    image_cache: str,
    unique_repo: str,
    referrers_proxy: ReferrersProxyFactory,
) -> None:
    proxy = referrers_proxy(plain_registry, page_size=1)
    img = _image(image_cache, 43)
    headers = images.put_manifest(
        proxy.url, unique_repo, "v1", img.manifest_bytes, img.media_type, img.blobs.values()
    )
    assert headers.get("OCI-Subject") is None  # not a referrer
    key, key2 = artifacts.generate_key(), artifacts.generate_key()
    reference = f"{proxy.host}/{unique_repo}"
    sbom = _sbom(img)
    sig1 = artifacts.oci_signature(key, img.descriptor(), reference)
    sig2 = artifacts.oci_signature(key2, img.descriptor(), reference)
    sbom_sig = artifacts.oci_signature(key, sbom.descriptor(), reference)
    for referrer in (sbom, sig1, sig2, sbom_sig):
        assert referrer.subject is not None
        digest, headers = artifacts.push_artifact(proxy.url, unique_repo, None, referrer)
        assert headers.get("OCI-Subject") == referrer.subject["digest"]
        assert headers.get("Docker-Content-Digest") == digest == referrer.digest
    expected = sorted(
        (r.referrer_descriptor() for r in (sbom, sig1, sig2)), key=lambda d: str(d["digest"])
    )

    # page_size=1, 3 referrers: 3 pages, linked, together the whole sorted list
    pages = get_referrers(proxy.url, unique_repo, img.digest)
    assert [len(p.manifests) for p in pages] == [1, 1, 1]
    assert [m for p in pages for m in p.manifests] == expected
    assert [p.next is not None for p in pages] == [True, True, False]
    link = pages[0].headers["Link"]
    assert link.startswith(f"</v2/{unique_repo}/referrers/{img.digest}?") and link.endswith(
        '; rel="next"'
    )
    for page in pages:
        assert page.headers["Content-Type"] == images.OCI_INDEX
        assert page.headers.get("OCI-Filters-Applied") is None
    # the index is a proper OCI image index
    with urllib.request.urlopen(pages[-1].url, timeout=10) as resp:
        index = json.loads(resp.read())
    assert (index["schemaVersion"], index["mediaType"]) == (2, images.OCI_INDEX)

    # filtered by artifactType: the filter is said, and kept across pages
    signed = get_referrers(
        proxy.url, unique_repo, img.digest, artifact_type=COSIGN_SIG_ARTIFACT_TYPE
    )
    assert [_digests(p.manifests) for p in signed] == [
        [d["digest"]] for d in expected if d["artifactType"] == COSIGN_SIG_ARTIFACT_TYPE
    ]
    assert all(p.headers["OCI-Filters-Applied"] == "artifactType" for p in signed)
    (only,) = get_referrers(proxy.url, unique_repo, img.digest, artifact_type=SPDX)
    assert only.manifests == [sbom.referrer_descriptor()] and only.next is None

    # a referrer of a referrer is listed under its own subject only; none: an empty list
    (page,) = get_referrers(proxy.url, unique_repo, sbom.digest)
    assert page.manifests == [sbom_sig.referrer_descriptor()]
    (page,) = get_referrers(proxy.url, unique_repo, "sha256:" + "0" * 64)
    assert page.manifests == [] and page.headers["Content-Type"] == images.OCI_INDEX

    # one page when it fits; a referrer deleted from the registry is no longer listed
    proxy.page_size = 10
    (page,) = get_referrers(proxy.url, unique_repo, img.digest)
    assert page.manifests == expected
    assert images.delete_manifest(plain_registry.backdoor_url, unique_repo, sig2.digest)
    (page,) = get_referrers(proxy.url, unique_repo, img.digest)
    assert _digests(page.manifests) == sorted([sbom.digest, sig1.digest])

    # what a verifier reads through the API verifies
    manifest, (payload,) = artifacts.fetch_artifact(proxy.url, unique_repo, sig1.digest)
    artifacts.verify_cosign_signature(key.public_key(), manifest, payload, img.digest)

    with pytest.raises(urllib.error.HTTPError) as exc:
        get_referrers(proxy.url, unique_repo, "not-a-digest")
    assert exc.value.code == 400
    seen = proxy.seen_referrer_requests
    assert len(seen) == 3 + 2 + 1 + 1 + 1 + 1 + 1 + 1 + 1  # every GET above, the 400 included
    assert [e.status for e in seen].count(400) == 1
    assert seen[0].method == "GET" and seen[0].path == f"/v2/{unique_repo}/referrers/{img.digest}"
    assert "last=" in seen[1].query


def test_referrers_proxy_subject_announcement_and_attach(
    plain_registry: Registry,
    image_cache: str,
    unique_repo: str,
    referrers_proxy: ReferrersProxyFactory,
) -> None:
    backdoor = plain_registry.backdoor_url
    img = _image(image_cache, 44)
    images.push(backdoor, unique_repo, "v1", img)
    # the bare Distribution 2.8 has no referrers API
    req = urllib.request.Request(f"{plain_registry.url}/v2/{unique_repo}/referrers/{img.digest}")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=10)
    assert exc.value.code == 404

    # a registry serving the API without announcing it: the client falls back to the tag
    quiet = referrers_proxy(plain_registry, announce_subject=False)
    sbom = _sbom(img)
    _, headers = artifacts.push_artifact(quiet.url, unique_repo, None, sbom)
    assert headers.get("OCI-Subject") is None
    (page,) = get_referrers(quiet.url, unique_repo, img.digest)
    assert page.manifests == [sbom.referrer_descriptor()]
    provenance = artifacts.oci_referrer(img.descriptor(), PROVENANCE, b"{}", PROVENANCE)
    assert artifacts.attach(quiet.url, unique_repo, provenance)  # fallback tag used
    got = images.get_manifest(backdoor, unique_repo, fallback_tag(img.digest))
    assert got is not None
    assert _digests(json.loads(got[0])["manifests"]) == [provenance.digest]

    # one that announces it: no fallback tag
    proxy = referrers_proxy(plain_registry)
    other = _image(image_cache, 45)
    images.push(proxy.url, unique_repo, "v2", other)
    assert not artifacts.attach(proxy.url, unique_repo, _sbom(other))
    assert not images.manifest_exists(backdoor, unique_repo, fallback_tag(other.digest))
    # ... unless a fault drops the announcement (the fault proxy's rules apply)
    rule = proxy.add(
        faultproxy.drop_header("OCI-Subject", method="PUT", path="/manifests/", times=1)
    )
    assert artifacts.attach(
        proxy.url,
        unique_repo,
        artifacts.oci_signature(artifacts.generate_key(), other.descriptor(), "x"),
    )
    assert rule.hits == 1
    assert images.manifest_exists(backdoor, unique_repo, fallback_tag(other.digest))
    assert len(get_referrers(proxy.url, unique_repo, other.digest)[0].manifests) == 2


def test_referrers_proxy_tls_auth_upstream(
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    referrers_proxy: ReferrersProxyFactory,
) -> None:
    backdoor = basic_registry.backdoor_url
    img = _image(image_cache, 46)
    images.push(backdoor, unique_repo, "v1", img)
    proxy = referrers_proxy(basic_registry)
    sbom = _sbom(img)
    artifacts.push_artifact(backdoor, unique_repo, None, sbom)  # around the proxy...
    assert proxy.referrers(unique_repo, img.digest) == []
    assert proxy.remember(unique_repo, sbom.manifest_bytes) == sbom.referrer_descriptor()
    assert proxy.remember(unique_repo, img.manifest_bytes) is None  # ...then told of it

    # the registry still decides who may read
    with pytest.raises(urllib.error.HTTPError) as exc:
        get_referrers(proxy.url, unique_repo, img.digest)
    assert exc.value.code == 401 and "Basic" in exc.value.headers["WWW-Authenticate"]
    assert basic_registry.username is not None and basic_registry.password is not None
    credentials = f"{basic_registry.username}:{basic_registry.password}".encode()
    auth = {"Authorization": "Basic " + base64.b64encode(credentials).decode()}
    (page,) = get_referrers(proxy.url, unique_repo, img.digest, headers=auth)
    assert page.manifests == [sbom.referrer_descriptor()]
    # everything else is forwarded as it was (here: skopeo with the proxy's credentials)
    assert skopeo.inspect_raw_digest(proxy, f"{unique_repo}@{sbom.digest}") == sbom.digest

    assert images.delete_manifest(backdoor, unique_repo, sbom.digest)
    (page,) = get_referrers(proxy.url, unique_repo, img.digest, headers=auth)
    assert page.manifests == []
    assert [e.status for e in proxy.seen_referrer_requests] == [401, 200, 200]
