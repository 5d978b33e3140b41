"""Generate test images, push them to a registry and read them back (stdlib HTTP only).

Images are deterministic functions of ``(layer_sizes, seed, fmt, platform)`` and are cached in
``cache_dir``: blobs live in ``cache_dir/blobs/sha256/<hex>`` and are always streamed from
disk, never held whole in memory (the benchmarks use 200 MB layers). Only the small blobs of
signatures, attestations and SBOMs (``tests/support/artifacts.py``) live in memory.

Each layer is a tar holding one file of seeded random bytes, wrapped in gzip with zlib level 0
(stored blocks: fast to produce, still valid gzip, so copy tools keep it byte-for-byte).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import random
import secrets
import tarfile
import threading
import urllib.parse
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal, Protocol

__all__ = [
    "ALL_MANIFEST_TYPES",
    "DOCKER_CONFIG",
    "DOCKER_LAYER",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_MANIFEST",
    "SCHEMA1_SIGNED_MANIFEST",
    "Artifact",
    "Blob",
    "Format",
    "Image",
    "Index",
    "Pushable",
    "blob_exists",
    "delete_manifest",
    "get_blob",
    "get_manifest",
    "make_image",
    "make_index",
    "manifest_exists",
    "push",
    "put_manifest",
    "read_back",
    "schema1_manifest_body",
    "sha256_digest",
    "tags",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
SCHEMA1_SIGNED_MANIFEST = "application/vnd.docker.distribution.manifest.v1+prettyjws"
ALL_MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
_INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)

Format = Literal["oci", "docker"]

_CHUNK = 1 << 20
_CACHE_VERSION = 1
_memo: dict[tuple[str, str], Image] = {}
_memo_lock = threading.Lock()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# Model


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    path: str  # file holding exactly the blob's bytes ("" for an in-memory blob)
    media_type: str
    # the bytes themselves, for small blobs made in memory (signatures, SBOMs): no cache dir
    data: bytes | None = field(default=None, repr=False, compare=False)

    @classmethod
    def in_memory(cls, data: bytes, media_type: str) -> Blob:
        return cls(sha256_digest(data), len(data), "", media_type, data)

    def open(self) -> BinaryIO:
        """The blob's bytes as a binary file, from memory or from disk."""
        if self.data is not None:
            return io.BytesIO(self.data)
        return open(self.path, "rb")

    def read_bytes(self) -> bytes:
        with self.open() as f:
            return f.read()

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Image:
    """A single-platform image manifest (OCI or Docker schema 2) and its blobs."""

    digest: str
    media_type: str
    manifest_bytes: bytes
    config: Blob
    layers: tuple[Blob, ...]
    platform: tuple[str, ...]  # (os, architecture[, variant])
    seed: int

    @property
    def blobs(self) -> dict[str, Blob]:
        """digest -> blob, config first then layers."""
        out = {self.config.digest: self.config}
        for layer in self.layers:
            out[layer.digest] = layer
        return out

    @property
    def manifests(self) -> dict[str, bytes]:
        """digest -> manifest bytes (just this one)."""
        return {self.digest: self.manifest_bytes}

    @property
    def size(self) -> int:
        """Total bytes: manifest + config + layers."""
        return len(self.manifest_bytes) + sum(b.size for b in self.blobs.values())

    def descriptor(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.manifest_bytes),
        }
        plat: dict[str, str] = {"architecture": self.platform[1], "os": self.platform[0]}
        if len(self.platform) > 2:
            plat["variant"] = self.platform[2]
        d["platform"] = plat
        return d


@dataclass(frozen=True)
class Index:
    """An OCI image index or Docker manifest list over :class:`Image` children."""

    digest: str
    media_type: str
    manifest_bytes: bytes
    images: tuple[Image, ...]

    @property
    def blobs(self) -> dict[str, Blob]:
        out: dict[str, Blob] = {}
        for image in self.images:
            out.update(image.blobs)
        return out

    @property
    def manifests(self) -> dict[str, bytes]:
        """digest -> manifest bytes, children first, this index last."""
        out: dict[str, bytes] = {}
        for image in self.images:
            out[image.digest] = image.manifest_bytes
        out[self.digest] = self.manifest_bytes
        return out

    @property
    def size(self) -> int:
        return (
            len(self.manifest_bytes)
            + sum(len(m.manifest_bytes) for m in self.images)
            + sum(b.size for b in self.blobs.values())
        )


Artifact = Image | Index


class Pushable(Protocol):
    """What :func:`push` needs: an :class:`Image`, an :class:`Index`, or one of the
    signatures, attestations and referrers of ``tests/support/artifacts.py``."""

    @property
    def digest(self) -> str: ...
    @property
    def media_type(self) -> str: ...
    @property
    def manifest_bytes(self) -> bytes: ...
    @property
    def blobs(self) -> Mapping[str, Blob]: ...


# --------------------------------------------------------------------------------------------
# Generation


def _blob_dir(cache_dir: str) -> str:
    d = os.path.join(cache_dir, "blobs", "sha256")
    os.makedirs(d, exist_ok=True)
    return d


def _blob_path(cache_dir: str, digest: str) -> str:
    return os.path.join(_blob_dir(cache_dir), digest.split(":", 1)[1])


def _store_bytes(cache_dir: str, data: bytes) -> tuple[str, str]:
    digest = sha256_digest(data)
    path = _blob_path(cache_dir, digest)
    if not os.path.exists(path):
        tmp = f"{path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return digest, path


def _random_chunks(seed: int, index: int, size: int) -> Iterator[bytes]:
    rng = random.Random(f"ibw-test-layer:{seed}:{index}")
    left = size
    while left > 0:
        n = min(_CHUNK, left)
        yield rng.randbytes(n)
        left -= n


def _tar_stream(seed: int, index: int, size: int) -> Iterator[bytes]:
    info = tarfile.TarInfo(f"data/layer-{seed}-{index}.bin")
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    header = info.tobuf(format=tarfile.PAX_FORMAT)
    yield header
    yield from _random_chunks(seed, index, size)
    written = 512 * ((size + 511) // 512)
    pad = written - size
    # end-of-archive (two zero blocks), then pad the whole to a tar record like tarfile does
    total = len(header) + written + 1024
    record_pad = (-total) % tarfile.RECORDSIZE
    yield b"\0" * (pad + 1024 + record_pad)


def _make_layer(cache_dir: str, seed: int, index: int, size: int) -> tuple[str, str, int]:
    """Write one layer blob; returns (digest, diff_id, compressed size). Cached on disk."""
    meta_dir = os.path.join(cache_dir, "layers")
    os.makedirs(meta_dir, exist_ok=True)
    meta = os.path.join(meta_dir, f"v{_CACHE_VERSION}-{seed}-{index}-{size}.json")
    try:
        with open(meta) as f:
            m = json.load(f)
        if os.path.getsize(_blob_path(cache_dir, m["digest"])) == m["size"]:
            return str(m["digest"]), str(m["diff_id"]), int(m["size"])
    except (OSError, ValueError, KeyError):
        pass

    blob_dir = _blob_dir(cache_dir)
    tmp = os.path.join(blob_dir, f"layer.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    tar_hash = hashlib.sha256()
    gz_hash = hashlib.sha256()
    comp = zlib.compressobj(0, zlib.DEFLATED, 31)  # gzip wrapper, stored blocks
    written = 0
    try:
        with open(tmp, "wb") as f:
            for chunk in _tar_stream(seed, index, size):
                tar_hash.update(chunk)
                out = comp.compress(chunk)
                if out:
                    gz_hash.update(out)
                    f.write(out)
                    written += len(out)
            out = comp.flush()
            gz_hash.update(out)
            f.write(out)
            written += len(out)
        digest = "sha256:" + gz_hash.hexdigest()
        os.replace(tmp, _blob_path(cache_dir, digest))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    diff_id = "sha256:" + tar_hash.hexdigest()
    with open(f"{meta}.tmp-{os.getpid()}", "w") as f:
        json.dump({"digest": digest, "diff_id": diff_id, "size": written}, f)
    os.replace(f"{meta}.tmp-{os.getpid()}", meta)
    return digest, diff_id, written


def _dumps(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, indent=2, sort_keys=False).encode()


def make_image(
    cache_dir: str,
    layer_sizes: Sequence[int],
    *,
    seed: int,
    fmt: Format,
    platform: tuple[str, ...] = ("linux", "amd64"),
) -> Image:
    """A deterministic image with one layer per entry of ``layer_sizes``.

    ``layer_sizes`` are the sizes of the random payload file in each layer (the blob is a
    little larger: tar headers and gzip framing). Layers depend only on
    ``(seed, position, size)``, so the OCI and Docker variants of an image share their layer
    blobs; use different seeds for images that must not share layers.
    """
    if fmt not in ("oci", "docker"):
        raise ValueError(f"fmt must be 'oci' or 'docker', not {fmt!r}")
    if len(platform) not in (2, 3):
        raise ValueError("platform is (os, architecture) or (os, architecture, variant)")
    cache_dir = os.path.abspath(cache_dir)
    key = json.dumps([_CACHE_VERSION, list(layer_sizes), seed, fmt, list(platform)])
    with _memo_lock:
        hit = _memo.get((cache_dir, key))
    if hit is not None and all(os.path.exists(b.path) for b in hit.blobs.values()):
        return hit

    layer_type = OCI_LAYER if fmt == "oci" else DOCKER_LAYER
    layers: list[Blob] = []
    diff_ids: list[str] = []
    for i, size in enumerate(layer_sizes):
        digest, diff_id, csize = _make_layer(cache_dir, seed, i, int(size))
        layers.append(Blob(digest, csize, _blob_path(cache_dir, digest), layer_type))
        diff_ids.append(diff_id)

    config_doc: dict[str, Any] = {
        "architecture": platform[1],
        "os": platform[0],
        "created": "1970-01-01T00:00:00Z",
        "config": {"Labels": {"ibw.test.seed": str(seed)}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": "1970-01-01T00:00:00Z", "created_by": f"ibw-test layer {i}"}
            for i in range(len(layer_sizes))
        ],
    }
    if len(platform) > 2:
        config_doc["variant"] = platform[2]
    config_bytes = _dumps(config_doc)
    config_digest, config_path = _store_bytes(cache_dir, config_bytes)
    config = Blob(
        config_digest,
        len(config_bytes),
        config_path,
        OCI_CONFIG if fmt == "oci" else DOCKER_CONFIG,
    )
    media_type = OCI_MANIFEST if fmt == "oci" else DOCKER_MANIFEST
    manifest = _dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": config.descriptor(),
            "layers": [layer.descriptor() for layer in layers],
        }
    )
    image = Image(
        digest=sha256_digest(manifest),
        media_type=media_type,
        manifest_bytes=manifest,
        config=config,
        layers=tuple(layers),
        platform=tuple(platform),
        seed=seed,
    )
    with _memo_lock:
        _memo[(cache_dir, key)] = image
    return image


def make_index(cache_dir: str, images: Sequence[Image], fmt: Format) -> Index:
    """An OCI image index (``fmt="oci"``) or Docker manifest list (``"docker"``)."""
    if fmt not in ("oci", "docker"):
        raise ValueError(f"fmt must be 'oci' or 'docker', not {fmt!r}")
    media_type = OCI_INDEX if fmt == "oci" else DOCKER_MANIFEST_LIST
    body = _dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": [image.descriptor() for image in images],
        }
    )
    _store_bytes(os.path.abspath(cache_dir), body)
    return Index(sha256_digest(body), media_type, body, tuple(images))


def schema1_manifest_body(name: str = "library/legacy", tag: str = "latest") -> bytes:
    """A legacy schema-1 signed manifest body, for a :class:`FaultProxy` ``serve`` rule.

    Distribution 2.8 refuses to store these without a valid signature, so tests present
    them to clients through the fault proxy instead (content type
    :data:`SCHEMA1_SIGNED_MANIFEST`). The signature is syntactically shaped but not valid.
    """
    doc = {
        "schemaVersion": 1,
        "name": name,
        "tag": tag,
        "architecture": "amd64",
        "fsLayers": [
            {"blobSum": "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"}
        ],
        "history": [{"v1Compatibility": json.dumps({"id": "0" * 64, "os": "linux"})}],
        "signatures": [
            {
                "header": {
                    "jwk": {"crv": "P-256", "kty": "EC", "x": "AA", "y": "AA"},
                    "alg": "ES256",
                },
                "signature": "AAAA",
                "protected": "eyJmb3JtYXRMZW5ndGgiOjEsImZvcm1hdFRhaWwiOiJDbjAifQ",
            }
        ],
    }
    return json.dumps(doc, indent=3).encode()


# --------------------------------------------------------------------------------------------
# Registry I/O (stdlib http.client against the plain-HTTP backdoor)


class _Conn:
    def __init__(self, base_url: str, timeout: float = 120) -> None:
        u = urllib.parse.urlsplit(base_url)
        if u.scheme != "http" or u.hostname is None:
            raise ValueError(f"expected a plain http:// backdoor URL, got {base_url!r}")
        self.base = base_url.rstrip("/")
        self.conn = http.client.HTTPConnection(
            u.hostname, u.port or 80, timeout=timeout, blocksize=_CHUNK
        )

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> http.client.HTTPResponse:
        self.conn.request(method, path, body=body, headers=dict(headers or {}))
        return self.conn.getresponse()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> _Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _path_of(location: str, base: str) -> str:
    u = urllib.parse.urlsplit(urllib.parse.urljoin(base + "/", location))
    return u.path + (f"?{u.query}" if u.query else "")


def _fail(what: str, resp: http.client.HTTPResponse) -> RuntimeError:
    body = resp.read(2000).decode(errors="replace")
    return RuntimeError(f"{what}: HTTP {resp.status} {resp.reason}: {body}")


def _push_blob(c: _Conn, repository: str, blob: Blob) -> None:
    resp = c.request("HEAD", f"/v2/{repository}/blobs/{blob.digest}")
    resp.read()
    if resp.status == 200:
        return
    resp = c.request("POST", f"/v2/{repository}/blobs/uploads/", headers={"Content-Length": "0"})
    resp.read()
    if resp.status != 202:
        raise _fail(f"start upload of {blob.digest} to {repository}", resp)
    location = resp.getheader("Location")
    if not location:
        raise RuntimeError("upload start returned no Location")
    path = _path_of(location, c.base)
    path += ("&" if "?" in path else "?") + urllib.parse.urlencode({"digest": blob.digest})
    with blob.open() as f:
        resp = c.request(
            "PUT",
            path,
            body=f,
            headers={"Content-Length": str(blob.size), "Content-Type": "application/octet-stream"},
        )
        body = resp.read()
    if resp.status != 201:
        raise RuntimeError(
            f"upload of {blob.digest} to {repository}: HTTP {resp.status}: {body[:2000]!r}"
        )


def _put_manifest(
    c: _Conn, repository: str, ref: str, body: bytes, media_type: str
) -> http.client.HTTPMessage:
    resp = c.request(
        "PUT",
        f"/v2/{repository}/manifests/{ref}",
        body=body,
        headers={"Content-Type": media_type, "Content-Length": str(len(body))},
    )
    if resp.status != 201:
        raise _fail(f"PUT manifest {repository}:{ref}", resp)
    resp.read()
    got = resp.getheader("Docker-Content-Digest")
    if got is not None and got != sha256_digest(body):
        raise RuntimeError(f"registry computed {got} for manifest {sha256_digest(body)}")
    return resp.headers


def push(backdoor_url: str, repository: str, tag: str | None, artifact: Pushable) -> str:
    """Push an image, index or artifact (blobs, then children by digest, then the top level).

    The top level is pushed by ``tag`` if given, otherwise by digest. Returns its digest.
    """
    with _Conn(backdoor_url) as c:
        for blob in artifact.blobs.values():
            _push_blob(c, repository, blob)
        if isinstance(artifact, Index):
            for image in artifact.images:
                _put_manifest(c, repository, image.digest, image.manifest_bytes, image.media_type)
        _put_manifest(
            c, repository, tag or artifact.digest, artifact.manifest_bytes, artifact.media_type
        )
    return artifact.digest


def put_manifest(
    backdoor_url: str,
    repository: str,
    ref: str,
    body: bytes,
    media_type: str,
    blobs: Iterable[Blob] = (),
) -> http.client.HTTPMessage:
    """Push ``blobs`` (those not there yet), then one manifest at ``ref`` (tag or digest).

    Returns the headers of the manifest PUT's answer, for what a registry says there (such
    as OCI 1.1's ``OCI-Subject``).
    """
    with _Conn(backdoor_url) as c:
        for blob in blobs:
            _push_blob(c, repository, blob)
        return _put_manifest(c, repository, ref, body, media_type)


def get_manifest(backdoor_url: str, repository: str, reference: str) -> tuple[bytes, str] | None:
    """``(body, content type)`` of a manifest by tag or digest, or None if absent."""
    with _Conn(backdoor_url) as c:
        resp = c.request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            headers={"Accept": ", ".join(ALL_MANIFEST_TYPES)},
        )
        if resp.status == 404:
            resp.read()
            return None
        if resp.status != 200:
            raise _fail(f"GET manifest {repository}:{reference}", resp)
        return resp.read(), resp.getheader("Content-Type", "")


def manifest_exists(backdoor_url: str, repository: str, reference: str) -> bool:
    with _Conn(backdoor_url) as c:
        resp = c.request(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            headers={"Accept": ", ".join(ALL_MANIFEST_TYPES)},
        )
        resp.read()
        if resp.status not in (200, 404):
            raise _fail(f"HEAD manifest {repository}:{reference}", resp)
        return resp.status == 200


def _read_back(c: _Conn, repository: str, digest: str, blobs: set[str], depth: int) -> None:
    resp = c.request(
        "GET",
        f"/v2/{repository}/manifests/{digest}",
        headers={"Accept": ", ".join(ALL_MANIFEST_TYPES)},
    )
    body = resp.read()
    if resp.status != 200:
        raise AssertionError(
            f"manifest {digest} missing from {repository}: HTTP {resp.status}: {body[:500]!r}"
        )
    got = sha256_digest(body)
    if got != digest:
        raise AssertionError(f"manifest {repository}@{digest} has wrong content (sha256 {got})")
    doc = json.loads(body)
    media_type = doc.get("mediaType") or resp.getheader("Content-Type", "")
    if media_type in _INDEX_TYPES or "manifests" in doc:
        if depth > 2:
            raise AssertionError(f"index nesting too deep at {repository}@{digest}")
        for child in doc["manifests"]:
            _read_back(c, repository, child["digest"], blobs, depth + 1)
        return
    descriptors = [doc["config"], *doc.get("layers", [])]
    for desc in descriptors:
        bd, bsize = desc["digest"], int(desc["size"])
        blobs.add(bd)
        resp = c.request("GET", f"/v2/{repository}/blobs/{bd}")
        if resp.status != 200:
            body = resp.read(500)
            raise AssertionError(
                f"blob {bd} (of manifest {digest}) missing from {repository}: "
                f"HTTP {resp.status}: {body!r}"
            )
        h = hashlib.sha256()
        n = 0
        while chunk := resp.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
        if "sha256:" + h.hexdigest() != bd or n != bsize:
            raise AssertionError(
                f"blob {bd} in {repository} is corrupt: got sha256:{h.hexdigest()} "
                f"({n} bytes, expected {bsize})"
            )


def read_back(backdoor_url: str, repository: str, digest: str) -> set[str]:
    """Fetch ``repository@digest`` recursively, verifying every manifest and blob digest.

    Returns the digests of all blobs (configs and layers) reached. Raises AssertionError
    naming what is missing or corrupt.
    """
    blobs: set[str] = set()
    with _Conn(backdoor_url) as c:
        _read_back(c, repository, digest, blobs, 0)
    return blobs


def delete_manifest(backdoor_url: str, repository: str, digest: str) -> bool:
    """DELETE a manifest by digest. True if deleted, False if it did not exist."""
    with _Conn(backdoor_url) as c:
        resp = c.request("DELETE", f"/v2/{repository}/manifests/{digest}")
        if resp.status == 404:
            resp.read()
            return False
        if resp.status != 202:
            raise _fail(f"DELETE manifest {repository}@{digest}", resp)
        resp.read()
        return True


def delete_blob(backdoor_url: str, repository: str, digest: str) -> bool:
    """Unlink a blob from one repository. True if deleted, False if it was not there."""
    with _Conn(backdoor_url) as c:
        resp = c.request("DELETE", f"/v2/{repository}/blobs/{digest}")
        resp.read()
        if resp.status == 404:
            return False
        if resp.status != 202:
            raise _fail(f"DELETE blob {repository}@{digest}", resp)
        return True


def tags(backdoor_url: str, repository: str) -> list[str]:
    """Sorted tags of ``repository`` ([] if the repository does not exist)."""
    with _Conn(backdoor_url) as c:
        resp = c.request("GET", f"/v2/{repository}/tags/list?n=10000")
        if resp.status == 404:
            resp.read()
            return []
        if resp.status != 200:
            raise _fail(f"GET tags of {repository}", resp)
        doc = json.loads(resp.read())
        return sorted(doc.get("tags") or [])


def get_blob(backdoor_url: str, repository: str, digest: str) -> bytes | None:
    """A (small) blob's bytes, checked against its digest; None if absent."""
    with _Conn(backdoor_url) as c:
        resp = c.request("GET", f"/v2/{repository}/blobs/{digest}")
        if resp.status == 404:
            resp.read()
            return None
        if resp.status != 200:
            raise _fail(f"GET blob {repository}@{digest}", resp)
        data = resp.read()
    if sha256_digest(data) != digest:
        raise AssertionError(f"blob {repository}@{digest} has wrong content")
    return data


def blob_exists(backdoor_url: str, repository: str, digest: str) -> bool:
    with _Conn(backdoor_url) as c:
        resp = c.request("HEAD", f"/v2/{repository}/blobs/{digest}")
        resp.read()
        if resp.status not in (200, 404):
            raise _fail(f"HEAD blob {repository}@{digest}", resp)
        return resp.status == 200
