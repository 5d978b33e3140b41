"""Artifacts that refer to an image: cosign signatures, attestations and SBOMs, and OCI 1.1
referrers, made in memory and pushed with :mod:`tests.support.images`' stdlib HTTP.

No cosign binary: the bytes are not cosign's own (ECDSA signatures are randomized anyway),
but the shapes are cosign's and OCI 1.1's, so a copy tool sees what it would see in the wild:

* cosign's tag scheme: an image manifest at ``sha256-<hex>.sig`` / ``.att`` / ``.sbom`` next
  to the image ``sha256:<hex>``, its one layer a simple-signing payload (signature in the
  ``dev.cosignproject.cosign/signature`` annotation), a DSSE envelope or an SPDX document;
* OCI 1.1 referrers: an image manifest with ``artifactType``, the empty config and a
  ``subject``, found through the referrers API or, on a registry without it (Distribution
  2.8), through the fallback tag ``sha256-<hex>``, an image index a signing tool keeps up.

Signatures verify with :func:`verify_cosign_signature` / :func:`verify_dsse_attestation`, so
a test can show one still verifies when read back from a backup registry.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support import images
from tests.support.images import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, Blob, sha256_digest

__all__ = [
    "COSIGN_SIGNATURE_ANNOTATION",
    "COSIGN_SIG_ARTIFACT_TYPE",
    "DIGEST_RE",
    "DSSE_ENVELOPE",
    "EMPTY_BLOB",
    "IN_TOTO",
    "OCI_EMPTY",
    "SIMPLESIGNING",
    "SLSA_PROVENANCE",
    "SPDX_JSON",
    "ArtifactManifest",
    "VerificationError",
    "attach",
    "attach_by_fallback_tag",
    "cosign_attestation",
    "cosign_sbom",
    "cosign_signature",
    "cosign_tag",
    "fallback_tag",
    "fetch_artifact",
    "generate_key",
    "listed_by_fallback_tag",
    "oci_referrer",
    "oci_signature",
    "public_pem",
    "push_artifact",
    "referrer_descriptor",
    "simple_signing_payload",
    "spdx_document",
    "subject_of",
    "verify_cosign_signature",
    "verify_dsse_attestation",
]

OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_BLOB = Blob.in_memory(b"{}", OCI_EMPTY)  # OCI 1.1's empty descriptor: sha256:44136fa3...
SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
DSSE_ENVELOPE = "application/vnd.dsse.envelope.v1+json"
IN_TOTO = "application/vnd.in-toto+json"
SPDX_JSON = "text/spdx+json"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v0.2"
COSIGN_SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
# what cosign's OCI 1.1 mode gives a signature pushed as a referrer
COSIGN_SIG_ARTIFACT_TYPE = "application/vnd.dev.cosign.artifact.sig.v1+json"
_SIGNATURE_TYPE = "cosign container image signature"
DIGEST_RE = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")


class VerificationError(Exception):
    """A signature or attestation does not verify, or it is about another image."""


@dataclass(frozen=True)
class ArtifactManifest:
    """One OCI image manifest carrying an artifact rather than a runnable image.

    Its blobs are in memory. It pushes with :func:`push_artifact` (or :func:`images.push`)
    and :func:`images.read_back` checks it like any image.
    """

    digest: str
    media_type: str
    manifest_bytes: bytes
    config: Blob
    layers: tuple[Blob, ...]
    tag: str | None = None  # the tag cosign pushes it at (sha256-<hex>.sig...); None: by digest

    @property
    def blobs(self) -> dict[str, Blob]:
        """digest -> blob, config first then layers."""
        out = {self.config.digest: self.config}
        for layer in self.layers:
            out[layer.digest] = layer
        return out

    @property
    def manifests(self) -> dict[str, bytes]:
        return {self.digest: self.manifest_bytes}

    @property
    def doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.manifest_bytes)
        return doc

    @property
    def payload(self) -> bytes:
        """The bytes of the first (for these artifacts: the only) layer."""
        return self.layers[0].read_bytes()

    @property
    def subject(self) -> dict[str, Any] | None:
        subject: dict[str, Any] | None = self.doc.get("subject")
        return subject

    @property
    def artifact_type(self) -> str:
        """``artifactType``, or else the config's media type (as the referrers API says)."""
        return str(self.doc.get("artifactType") or self.config.media_type)

    def descriptor(self) -> dict[str, Any]:
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.manifest_bytes),
        }

    def referrer_descriptor(self) -> dict[str, Any]:
        """How a referrers list (API answer or fallback tag index) describes it."""
        return referrer_descriptor(self.manifest_bytes)


# --------------------------------------------------------------------------------------------
# Keys, tags and descriptors


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A P-256 signing key (what ``cosign generate-key-pair`` makes)."""
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The public key as PEM (what ``cosign verify --key`` reads)."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _tag_base(digest: str) -> str:
    if not DIGEST_RE.fullmatch(digest):
        raise ValueError(f"not a digest: {digest!r}")
    algorithm, encoded = digest.split(":", 1)
    return f"{algorithm}-{encoded}"


def fallback_tag(digest: str) -> str:
    """OCI 1.1's referrers fallback tag of ``digest``: ``sha256-<hex>``."""
    return _tag_base(digest)


def cosign_tag(digest: str, suffix: str) -> str:
    """cosign's tag for ``digest``'s signature, attestation or SBOM: ``suffix`` is ``sig``,
    ``att`` or ``sbom`` (with or without the dot)."""
    suffix = suffix.lstrip(".")
    if suffix not in ("sig", "att", "sbom"):
        raise ValueError(f"cosign tags end in .sig, .att or .sbom, not .{suffix}")
    return f"{_tag_base(digest)}.{suffix}"


def referrer_descriptor(manifest_bytes: bytes, media_type: str | None = None) -> dict[str, Any]:
    """The descriptor a referrers list holds for a manifest: mediaType, digest, size,
    ``artifactType`` (the manifest's, or else its config's media type) and its annotations.

    ``media_type`` is for a manifest without a ``mediaType`` field (the request's
    Content-Type).
    """
    doc = json.loads(manifest_bytes)
    kind = doc.get("mediaType") or media_type
    if not kind:
        raise ValueError("manifest without a media type")
    out: dict[str, Any] = {
        "mediaType": kind,
        "digest": sha256_digest(manifest_bytes),
        "size": len(manifest_bytes),
    }
    config = doc.get("config")
    artifact_type = doc.get("artifactType") or (
        config.get("mediaType") if isinstance(config, dict) else None
    )
    if artifact_type:
        out["artifactType"] = artifact_type
    if doc.get("annotations"):
        out["annotations"] = doc["annotations"]
    return out


def subject_of(manifest_bytes: bytes) -> str | None:
    """The digest a manifest refers to (its ``subject``), or None (also for non-JSON)."""
    try:
        doc = json.loads(manifest_bytes)
    except ValueError:
        return None
    subject = doc.get("subject") if isinstance(doc, dict) else None
    if not isinstance(subject, dict) or not isinstance(subject.get("digest"), str):
        return None
    return str(subject["digest"])


# --------------------------------------------------------------------------------------------
# Making artifacts


def _compact(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _artifact(
    config: Blob,
    layers: Sequence[tuple[Blob, Mapping[str, str] | None]],
    *,
    artifact_type: str | None = None,
    subject: Mapping[str, Any] | None = None,
    annotations: Mapping[str, str] | None = None,
    tag: str | None = None,
) -> ArtifactManifest:
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
    if artifact_type is not None:
        doc["artifactType"] = artifact_type
    doc["config"] = config.descriptor()
    doc["layers"] = []
    for blob, layer_annotations in layers:
        desc = blob.descriptor()
        if layer_annotations is not None:
            desc["annotations"] = dict(layer_annotations)
        doc["layers"].append(desc)
    if subject is not None:
        doc["subject"] = {k: subject[k] for k in ("mediaType", "digest", "size")}
    if annotations:
        doc["annotations"] = dict(annotations)
    body = _compact(doc)
    return ArtifactManifest(
        sha256_digest(body), OCI_MANIFEST, body, config, tuple(b for b, _ in layers), tag
    )


def _cosign_config(layers: Sequence[Blob]) -> Blob:
    """The config cosign gives its signature images (an empty image plus static layers)."""
    doc = {
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
        "config": {},
    }
    return Blob.in_memory(_compact(doc), OCI_CONFIG)


def _sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> str:
    return base64.b64encode(key.sign(data, ec.ECDSA(hashes.SHA256()))).decode()


def simple_signing_payload(subject_digest: str, reference: str) -> bytes:
    """cosign's simple-signing payload: what its signatures sign."""
    doc = {
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": subject_digest},
            "type": _SIGNATURE_TYPE,
        },
        "optional": None,
    }
    return _compact(doc)


def cosign_signature(
    key: ec.EllipticCurvePrivateKey, subject_digest: str, reference: str
) -> ArtifactManifest:
    """``cosign sign --key``: to be pushed at its ``tag``, ``sha256-<hex>.sig``.

    ``reference`` is the repository the image was signed as (``host/repo``, no tag).
    """
    payload = simple_signing_payload(subject_digest, reference)
    layer = Blob.in_memory(payload, SIMPLESIGNING)
    return _artifact(
        _cosign_config([layer]),
        [(layer, {COSIGN_SIGNATURE_ANNOTATION: _sign(key, payload)})],
        tag=cosign_tag(subject_digest, "sig"),
    )


def _pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what a DSSE signature signs."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def cosign_attestation(
    key: ec.EllipticCurvePrivateKey,
    subject_digest: str,
    reference: str = "",
    *,
    predicate_type: str = SLSA_PROVENANCE,
    predicate: Mapping[str, Any] | None = None,
) -> ArtifactManifest:
    """``cosign attest --key``: an in-toto statement about the image in a signed DSSE
    envelope, to be pushed at its ``tag``, ``sha256-<hex>.att``."""
    algorithm, encoded = subject_digest.split(":", 1)
    statement = {
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": predicate_type,
        "subject": [{"name": reference, "digest": {algorithm: encoded}}],
        "predicate": dict(
            predicate
            or {
                "builder": {"id": "https://ibw.test/builder"},
                "buildType": "https://ibw.test/build",
            }
        ),
    }
    payload = _compact(statement)
    envelope = {
        "payloadType": IN_TOTO,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": "", "sig": _sign(key, _pae(IN_TOTO, payload))}],
    }
    layer = Blob.in_memory(_compact(envelope), DSSE_ENVELOPE)
    return _artifact(
        _cosign_config([layer]),
        [(layer, {COSIGN_SIGNATURE_ANNOTATION: "", "predicateType": predicate_type})],
        tag=cosign_tag(subject_digest, "att"),
    )


def spdx_document(
    subject_digest: str, name: str = "ibw-test-image", packages: Sequence[str] = ("ibw-test-lib",)
) -> bytes:
    """A small SPDX 2.3 JSON document about the image (its namespace names the digest, so
    two images never share an SBOM blob)."""
    doc = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": f"https://ibw.test/spdx/{name}/{subject_digest}",
        "creationInfo": {"created": "1970-01-01T00:00:00Z", "creators": ["Tool: ibw-tests"]},
        "packages": [
            {
                "name": package,
                "SPDXID": f"SPDXRef-Package-{i}",
                "versionInfo": "1.0",
                "downloadLocation": "NOASSERTION",
            }
            for i, package in enumerate(packages)
        ],
    }
    return _compact(doc)


def cosign_sbom(
    subject_digest: str,
    *,
    name: str = "ibw-test-image",
    packages: Sequence[str] = ("ibw-test-lib",),
) -> ArtifactManifest:
    """``cosign attach sbom``: an unsigned SPDX document, to be pushed at its ``tag``,
    ``sha256-<hex>.sbom``."""
    layer = Blob.in_memory(spdx_document(subject_digest, name, packages), SPDX_JSON)
    return _artifact(
        _cosign_config([layer]), [(layer, None)], tag=cosign_tag(subject_digest, "sbom")
    )


def oci_referrer(
    subject: Mapping[str, Any],
    artifact_type: str,
    payload: bytes,
    layer_media_type: str,
    annotations: Mapping[str, str] | None = None,
    *,
    layer_annotations: Mapping[str, str] | None = None,
) -> ArtifactManifest:
    """An OCI 1.1 artifact referring to ``subject`` (a descriptor: mediaType, digest, size;
    other keys are dropped), e.g. ``image.descriptor()``, or another referrer's.

    The config is the empty descriptor, the one layer is ``payload``; ``annotations`` go on
    the manifest (and so into referrers lists), ``layer_annotations`` on the layer.
    """
    layer = Blob.in_memory(payload, layer_media_type)
    return _artifact(
        EMPTY_BLOB,
        [(layer, layer_annotations)],
        artifact_type=artifact_type,
        subject=subject,
        annotations=annotations,
    )


def oci_signature(
    key: ec.EllipticCurvePrivateKey,
    subject: Mapping[str, Any],
    reference: str,
    annotations: Mapping[str, str] | None = None,
) -> ArtifactManifest:
    """A signature pushed as an OCI 1.1 referrer (cosign's OCI 1.1 mode): a simple-signing
    payload naming ``subject``'s digest, signed in the layer's cosign annotation."""
    payload = simple_signing_payload(str(subject["digest"]), reference)
    return oci_referrer(
        subject,
        COSIGN_SIG_ARTIFACT_TYPE,
        payload,
        SIMPLESIGNING,
        annotations,
        layer_annotations={COSIGN_SIGNATURE_ANNOTATION: _sign(key, payload)},
    )


# --------------------------------------------------------------------------------------------
# Pushing and attaching


def push_artifact(
    url: str, repository: str, tag: str | None, artifact: ArtifactManifest
) -> tuple[str, http.client.HTTPMessage]:
    """Push the blobs, then the manifest by ``tag`` (or by digest if None).

    Returns the manifest digest and the headers of the manifest PUT's answer (where a
    registry with the referrers API says ``OCI-Subject``). ``url`` is plain HTTP without
    auth: a registry's backdoor, or a proxy in front of it.
    """
    headers = images.put_manifest(
        url,
        repository,
        tag or artifact.digest,
        artifact.manifest_bytes,
        artifact.media_type,
        artifact.blobs.values(),
    )
    return artifact.digest, headers


def _add_to_fallback_index(
    url: str, repository: str, subject_digest: str, descriptor: Mapping[str, Any]
) -> str:
    """Read-modify-write of ``subject_digest``'s fallback tag (no lock: as racy as the tools
    that do it). Returns the digest of the index now at the tag."""
    tag = fallback_tag(subject_digest)
    got = images.get_manifest(url, repository, tag)
    entries: list[dict[str, Any]] = []
    if got is not None:
        body, content_type = got
        doc = json.loads(body)
        if (doc.get("mediaType") or content_type) != OCI_INDEX:
            raise ValueError(f"{repository}:{tag} is not an OCI image index: {content_type}")
        entries = list(doc.get("manifests") or [])
        if any(e.get("digest") == descriptor["digest"] for e in entries):
            return sha256_digest(body)
    entries.append(dict(descriptor))
    body = _compact({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
    images.put_manifest(url, repository, tag, body, OCI_INDEX)
    return sha256_digest(body)


def attach_by_fallback_tag(url: str, repository: str, artifact: ArtifactManifest) -> str:
    """What a signing tool does on a registry without the referrers API: push the referrer
    by digest, then add it to its subject's fallback tag ``sha256-<hex>`` (an OCI image
    index, made if absent; entries kept, none twice).

    Returns the digest of the fallback index now at the tag.
    """
    subject = subject_of(artifact.manifest_bytes)
    if subject is None:
        raise ValueError(f"{artifact.digest} has no subject: it refers to nothing")
    push_artifact(url, repository, None, artifact)
    return _add_to_fallback_index(url, repository, subject, artifact.referrer_descriptor())


def attach(url: str, repository: str, artifact: ArtifactManifest) -> bool:
    """What an OCI 1.1 client does: push the referrer by digest, and keep the fallback tag
    up only if the registry did not answer ``OCI-Subject`` (it has no referrers API).

    Returns whether the fallback tag was used.
    """
    subject = subject_of(artifact.manifest_bytes)
    if subject is None:
        raise ValueError(f"{artifact.digest} has no subject: it refers to nothing")
    _, headers = push_artifact(url, repository, None, artifact)
    if headers.get("OCI-Subject") == subject:
        return False
    _add_to_fallback_index(url, repository, subject, artifact.referrer_descriptor())
    return True


def listed_by_fallback_tag(url: str, repository: str, digest: str) -> list[str]:
    """The digests the fallback tag index of ``digest`` lists there, in its order ([] if
    there is no such tag): what a verifier without the referrers API finds."""
    got = images.get_manifest(url, repository, fallback_tag(digest))
    return [] if got is None else [entry["digest"] for entry in json.loads(got[0])["manifests"]]


def fetch_artifact(url: str, repository: str, reference: str) -> tuple[bytes, list[bytes]]:
    """A manifest as the registry serves it and its layers' bytes (digests checked): what
    a verifier reads. Raises LookupError if the manifest or a layer is missing."""
    got = images.get_manifest(url, repository, reference)
    if got is None:
        raise LookupError(f"no manifest {repository}:{reference}")
    body = got[0]
    layers: list[bytes] = []
    for desc in json.loads(body).get("layers") or []:
        data = images.get_blob(url, repository, desc["digest"])
        if data is None:
            raise LookupError(f"layer {desc['digest']} of {repository}:{reference} is missing")
        layers.append(data)
    return body, layers


# --------------------------------------------------------------------------------------------
# Verification


def _layer_of(manifest_bytes: bytes, blob: bytes, media_type: str) -> dict[str, Any]:
    """The layer descriptor of ``blob`` in the manifest (so the blob belongs to it)."""
    try:
        doc = json.loads(manifest_bytes)
    except ValueError as e:
        raise VerificationError(f"manifest is not JSON: {e}") from e
    digest = sha256_digest(blob)
    for layer in doc.get("layers") or []:
        if layer.get("digest") == digest:
            if layer.get("mediaType") != media_type:
                raise VerificationError(f"layer {digest} is {layer.get('mediaType')}")
            if int(layer.get("size", -1)) != len(blob):
                raise VerificationError(f"layer {digest} has the wrong size")
            found: dict[str, Any] = layer
            return found
    raise VerificationError(f"no layer of the manifest is {digest}")


def _check_subject(manifest_bytes: bytes, signed_digest: str) -> None:
    subject = subject_of(manifest_bytes)
    if subject is not None and subject != signed_digest:
        raise VerificationError(f"manifest refers to {subject} but signs {signed_digest}")


def _verify(public_key: ec.EllipticCurvePublicKey, signature_b64: str, data: bytes) -> None:
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError) as e:
        raise VerificationError(f"signature does not verify: {e!r}") from e


def verify_cosign_signature(
    public_key: ec.EllipticCurvePublicKey,
    manifest_bytes: bytes,
    payload: bytes,
    expected_digest: str | None = None,
) -> None:
    """``cosign verify --key`` for one signature (at a ``.sig`` tag or an OCI 1.1
    referrer): ``payload`` is a simple-signing layer of the manifest, its annotation's
    signature verifies, and it names ``expected_digest`` if given. Raises
    :class:`VerificationError`."""
    layer = _layer_of(manifest_bytes, payload, SIMPLESIGNING)
    signature = (layer.get("annotations") or {}).get(COSIGN_SIGNATURE_ANNOTATION)
    if not signature:
        raise VerificationError("the layer carries no cosign signature")
    _verify(public_key, signature, payload)
    try:
        critical = json.loads(payload)["critical"]
        kind, signed = critical["type"], critical["image"]["docker-manifest-digest"]
    except (ValueError, KeyError, TypeError) as e:
        raise VerificationError(f"not a simple-signing payload: {e!r}") from e
    if kind != _SIGNATURE_TYPE:
        raise VerificationError(f"payload type is {kind!r}")
    if expected_digest is not None and signed != expected_digest:
        raise VerificationError(f"signature is for {signed}, not {expected_digest}")
    _check_subject(manifest_bytes, signed)


def verify_dsse_attestation(
    public_key: ec.EllipticCurvePublicKey,
    manifest_bytes: bytes,
    envelope: bytes,
    expected_digest: str | None = None,
) -> dict[str, Any]:
    """``cosign verify-attestation --key`` for one attestation: ``envelope`` is a DSSE layer
    of the manifest, a signature in it verifies over the DSSE PAE, and the in-toto
    statement's subject has ``expected_digest`` if given. Returns the statement; raises
    :class:`VerificationError`."""
    layer = _layer_of(manifest_bytes, envelope, DSSE_ENVELOPE)
    try:
        env = json.loads(envelope)
        payload_type, payload = env["payloadType"], base64.b64decode(env["payload"])
        signatures = [str(s["sig"]) for s in env["signatures"]]
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        raise VerificationError(f"not a DSSE envelope: {e!r}") from e
    if payload_type != IN_TOTO:
        raise VerificationError(f"payload type is {payload_type!r}")
    errors: list[VerificationError] = []
    for signature in signatures:
        try:
            _verify(public_key, signature, _pae(payload_type, payload))
            break
        except VerificationError as e:
            errors.append(e)
    else:
        raise VerificationError(f"no signature of the envelope verifies: {errors}")
    try:
        statement: dict[str, Any] = json.loads(payload)
        subjects = [s["digest"] for s in statement["subject"]]
    except (ValueError, KeyError, TypeError) as e:
        raise VerificationError(f"not an in-toto statement: {e!r}") from e
    predicate_type = (layer.get("annotations") or {}).get("predicateType")
    if predicate_type is not None and predicate_type != statement.get("predicateType"):
        raise VerificationError(f"layer says {predicate_type}, statement otherwise")
    if expected_digest is not None:
        algorithm, encoded = expected_digest.split(":", 1)
        if not any(s.get(algorithm) == encoded for s in subjects):
            raise VerificationError(f"statement is about {subjects}, not {expected_digest}")
    return statement
