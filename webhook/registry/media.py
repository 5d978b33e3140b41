"""Manifest media types and the parts of a manifest the copy engine needs."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import orjson

from ..text import quoted
from .errors import DigestMismatch, UnsupportedManifest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
IMAGE_CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})

# Schema 1 is deliberately not accepted: asking for it would let a registry
# down-convert and hand us bytes with a digest nobody references.
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
SCHEMA1 = "legacy Docker schema 1 manifest; re-push the image with a current client"

# Layers that registries are not allowed to serve (Windows base layers);
# pulling clients fetch them from the URLs in the descriptor instead.
NON_DISTRIBUTABLE_TYPES = frozenset(
    {
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)


_SHA256_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: str = ""  # "linux/arm64/v8", for the manifests of an index that say
    artifact_type: str = ""  # what a referrers index says a referrer is


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest's exact bytes plus what it points at."""

    media_type: str
    digest: str
    raw: bytes
    children: tuple[Descriptor, ...]  # manifests of an index
    blobs: tuple[Descriptor, ...]  # config and layers of an image manifest

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parse_manifest(raw: bytes, content_type: str | None) -> Manifest:
    """Parse manifest bytes; errors say what is wrong with them (the caller says where)."""
    declared = (content_type or "").split(";")[0].strip()
    if declared in SCHEMA1_TYPES:
        raise UnsupportedManifest(SCHEMA1)
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UnsupportedManifest(f"the manifest is not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise UnsupportedManifest("the manifest is not a JSON object")
    if document.get("schemaVersion") == 1:
        raise UnsupportedManifest(SCHEMA1)
    media_type = document.get("mediaType") or declared or _guess_media_type(document)
    try:
        if media_type in INDEX_TYPES:
            children = tuple(_descriptor(d) for d in document["manifests"])
            return Manifest(media_type, digest_of(raw), raw, children, ())
        if media_type in IMAGE_TYPES:
            layers = [_descriptor(d) for d in document.get("layers", [])]
            distributable = [d for d in layers if d.media_type not in NON_DISTRIBUTABLE_TYPES]
            blobs = (_descriptor(document["config"]), *distributable)
            return Manifest(media_type, digest_of(raw), raw, (), blobs)
    except KeyError as exc:
        raise UnsupportedManifest(f"malformed {media_type} manifest (no {exc})") from None
    except (TypeError, ValueError) as exc:
        raise UnsupportedManifest(f"malformed {media_type} manifest ({exc})") from None
    raise UnsupportedManifest(f"unsupported manifest media type {quoted(str(media_type))}")


def verify_digest(manifest: Manifest, expected: str) -> None:
    if manifest.digest != expected:
        raise DigestMismatch(
            f"the registry served a manifest hashing to {manifest.digest}, not {expected}"
        )


def _guess_media_type(document: dict[str, object]) -> str:
    # OCI allows omitting mediaType; the shape tells index from image.
    return OCI_INDEX if "manifests" in document else OCI_MANIFEST


def _descriptor(value: object) -> Descriptor:
    if not isinstance(value, dict):
        raise TypeError("descriptor is not an object")
    digest, size = value["digest"], value["size"]
    if not isinstance(digest, str) or not _SHA256_DIGEST.fullmatch(digest):
        raise ValueError(f"unsupported descriptor digest {quoted(str(digest))}")
    if not isinstance(size, int) or size < 0:
        raise ValueError(f"bad descriptor size {quoted(str(size))}")
    artifact_type = value.get("artifactType")
    return Descriptor(
        str(value.get("mediaType", "")),
        digest,
        size,
        _platform(value.get("platform")),
        artifact_type if isinstance(artifact_type, str) else "",
    )


def platform_of_config(raw: bytes) -> str:
    """The platform an image config names (a single-platform image says it nowhere else),
    "" if it names none."""
    try:
        return _platform(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return ""


def _platform(fields: object) -> str:
    """ "os/architecture[/variant]" from an index's platform object or an image config."""
    if not isinstance(fields, dict):
        return ""
    parts = (fields.get("os"), fields.get("architecture"), fields.get("variant"))
    return "/".join(part for part in parts if isinstance(part, str) and part)
