"""Fast self-tests of the test infrastructure in tests/support (no product code)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support import faultproxy, images, skopeo
from tests.support.accounts import PUSHER, PUSHER_PASSWORD, READER, READER_PASSWORD
from tests.support.faultproxy import FaultProxyFactory
from tests.support.registries import Registry, RegistryFactory
from tests.support.tokenserver import TokenServer

SMALL = [1024, 20_000]


def _get(
    url: str,
    *,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    context: ssl.SSLContext | None = None,
    data: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {}, method=method, data=data)
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            return int(resp.status), dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers.items()), e.read()


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _token(ts: TokenServer, service: str, scope: str, user: str | None, password: str) -> str:
    ctx = ssl.create_default_context(cafile=ts.ca_file)
    q = urllib.parse.urlencode({"service": service, "scope": scope})
    status, _, body = _get(
        f"{ts.realm}?{q}", headers=_basic(user, password) if user else {}, context=ctx
    )
    assert status == 200, body
    token: str = json.loads(body)["token"]
    return token


# --- images ----------------------------------------------------------------------------------


def test_images_are_deterministic_and_valid(image_cache: str) -> None:
    a = images.make_image(image_cache, SMALL, seed=11, fmt="oci")
    b = images.make_image(image_cache, SMALL, seed=11, fmt="oci")
    d = images.make_image(image_cache, SMALL, seed=11, fmt="docker")
    other = images.make_image(image_cache, SMALL, seed=12, fmt="oci")
    assert a.digest == b.digest
    assert a.digest != d.digest and [x.digest for x in a.layers] == [x.digest for x in d.layers]
    assert not set(x.digest for x in a.layers) & set(x.digest for x in other.layers)
    assert json.loads(a.manifest_bytes)["mediaType"] == images.OCI_MANIFEST
    assert json.loads(d.manifest_bytes)["layers"][0]["mediaType"] == images.DOCKER_LAYER
    # each layer is valid gzip of a tar whose sha256 is the config's diff_id
    import gzip
    import io
    import tarfile

    config = json.loads(Path(a.config.path).read_bytes())
    for layer, diff_id in zip(a.layers, config["rootfs"]["diff_ids"], strict=True):
        raw = gzip.decompress(Path(layer.path).read_bytes())
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == diff_id
        with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
            (member,) = tf.getmembers()
            assert member.size in SMALL
        assert os.path.getsize(layer.path) == layer.size
        assert layer.digest == images.sha256_digest(Path(layer.path).read_bytes())


def test_push_read_back_oci_image(
    plain_registry: Registry, image_cache: str, unique_repo: str
) -> None:
    img = images.make_image(image_cache, SMALL, seed=1, fmt="oci")
    assert images.push(plain_registry.backdoor_url, unique_repo, "v1", img) == img.digest
    assert images.read_back(plain_registry.backdoor_url, unique_repo, img.digest) == set(img.blobs)
    assert images.tags(plain_registry.backdoor_url, unique_repo) == ["v1"]
    assert images.blob_exists(plain_registry.backdoor_url, unique_repo, img.layers[0].digest)
    assert skopeo.inspect_raw_digest(plain_registry, f"{unique_repo}:v1") == img.digest
    # the front door sees what the backdoor wrote
    assert images.manifest_exists(plain_registry.url, unique_repo, img.digest)
    # pushing again is idempotent (blobs skipped)
    images.push(plain_registry.backdoor_url, unique_repo, "v1", img)
    assert images.delete_manifest(plain_registry.backdoor_url, unique_repo, img.digest)
    assert not images.manifest_exists(plain_registry.backdoor_url, unique_repo, img.digest)
    with pytest.raises(AssertionError, match="missing"):
        images.read_back(plain_registry.backdoor_url, unique_repo, img.digest)
    assert images.tags(plain_registry.backdoor_url, "t/never-pushed") == []


def test_push_read_back_docker_manifest_list(
    plain_registry: Registry, image_cache: str, unique_repo: str
) -> None:
    amd = images.make_image(image_cache, SMALL, seed=2, fmt="docker")
    arm = images.make_image(image_cache, [3000], seed=3, fmt="docker", platform=("linux", "arm64"))
    idx = images.make_index(image_cache, [amd, arm], "docker")
    assert idx.media_type == images.DOCKER_MANIFEST_LIST
    images.push(plain_registry.backdoor_url, unique_repo, None, idx)  # by digest only
    assert images.tags(plain_registry.backdoor_url, unique_repo) == []
    blobs = images.read_back(plain_registry.backdoor_url, unique_repo, idx.digest)
    assert blobs == set(amd.blobs) | set(arm.blobs) == set(idx.blobs)
    assert skopeo.inspect_raw_digest(plain_registry, f"{unique_repo}@{idx.digest}") == idx.digest
    got = images.get_manifest(plain_registry.backdoor_url, unique_repo, arm.digest)
    assert got is not None and got[0] == arm.manifest_bytes


def test_read_back_detects_corrupt_blob(
    plain_registry: Registry, image_cache: str, unique_repo: str
) -> None:
    img = images.make_image(image_cache, [5000], seed=4, fmt="oci")
    images.push(plain_registry.backdoor_url, unique_repo, "v1", img)
    layer = img.layers[0].digest.split(":")[1]
    data_file = os.path.join(
        plain_registry.storage_dir,
        "docker/registry/v2/blobs/sha256",
        layer[:2],
        layer,
        "data",
    )
    with open(data_file, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    try:
        with pytest.raises(AssertionError, match="corrupt"):
            images.read_back(plain_registry.backdoor_url, unique_repo, img.digest)
    finally:
        with open(data_file, "r+b") as f:
            f.seek(100)
            f.write(byte)


# --- registries --------------------------------------------------------------------------


def test_basic_registry_front_door(
    basic_registry: Registry, image_cache: str, unique_repo: str
) -> None:
    img = images.make_image(image_cache, SMALL, seed=5, fmt="oci")
    images.push(basic_registry.backdoor_url, unique_repo, "v1", img)
    ctx = basic_registry.ssl_context()
    assert basic_registry.url.startswith("https://") and basic_registry.auth == "basic"
    assert _get(f"{basic_registry.url}/v2/", context=ctx)[0] == 401
    assert basic_registry.username and basic_registry.password
    creds = _basic(basic_registry.username, basic_registry.password)
    assert _get(f"{basic_registry.url}/v2/", context=ctx, headers=creds)[0] == 200
    assert _get(f"{basic_registry.url}/v2/", context=ctx, headers=_basic("x", "y"))[0] == 401
    with open(basic_registry.docker_config) as f:
        auths = json.load(f)["auths"]
    assert list(auths) == [basic_registry.host]
    assert skopeo.inspect_raw_digest(basic_registry, f"{unique_repo}:v1") == img.digest


def test_token_registry_front_door(
    token_registry: Registry, token_server: TokenServer, image_cache: str, unique_repo: str
) -> None:
    img = images.make_image(image_cache, SMALL, seed=6, fmt="docker")
    images.push(token_registry.backdoor_url, unique_repo, "v1", img)
    ctx = token_registry.ssl_context()
    status, headers, _ = _get(f"{token_registry.url}/v2/", context=ctx)
    assert status == 401
    assert headers["Www-Authenticate"].startswith(f'Bearer realm="{token_server.realm}"')
    assert skopeo.inspect_raw_digest(token_registry, f"{unique_repo}:v1") == img.digest
    reqs = token_server.log
    assert reqs and all(r.user == PUSHER and r.status == 200 for r in reqs)
    assert any(f"repository:{unique_repo}:pull" in r.scopes for r in reqs)
    assert {r.service for r in reqs} == {token_registry.service}


def test_token_grants_are_enforced_by_registry(
    token_registry: Registry, token_server: TokenServer, unique_repo: str
) -> None:
    assert token_registry.service is not None
    ctx = token_registry.ssl_context()
    scope = f"repository:{unique_repo}:pull,push"
    url = f"{token_registry.url}/v2/{unique_repo}/blobs/uploads/"

    def start_upload(token: str) -> int:
        h = {"Authorization": f"Bearer {token}", "Content-Length": "0"}
        return _get(url, method="POST", headers=h, context=ctx, data=b"")[0]

    pusher = _token(token_server, token_registry.service, scope, PUSHER, PUSHER_PASSWORD)
    reader = _token(token_server, token_registry.service, scope, READER, READER_PASSWORD)
    anon = _token(token_server, token_registry.service, scope, None, "")
    assert start_upload(pusher) == 202
    assert start_upload(reader) == 401
    assert start_upload(anon) == 401
    granted = [r.granted[0].actions for r in token_server.log]
    assert granted == [("pull", "push"), ("pull",), ()]
    assert [r.user for r in token_server.log] == [PUSHER, READER, None]

    # the JWT verifies with the signing certificate and carries the expected claims
    with open(token_server.signing_cert_file, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    claims = jwt.decode(pusher, public_key, algorithms=["ES256"], audience=token_registry.service)
    assert claims["iss"] == token_server.issuer and claims["sub"] == PUSHER
    assert claims["access"] == [
        {"type": "repository", "name": unique_repo, "actions": ["pull", "push"]}
    ]
    assert "x5c" in jwt.get_unverified_header(pusher)


def test_token_server_refuses_wrong_password(token_server: TokenServer) -> None:
    ctx = ssl.create_default_context(cafile=token_server.ca_file)
    q = urllib.parse.urlencode({"service": "s", "scope": "repository:a/b:pull"})
    for user, password in [(PUSHER, "wrong"), ("nobody", PUSHER_PASSWORD)]:
        status, _, _ = _get(
            f"{token_server.realm}?{q}", headers=_basic(user, password), context=ctx
        )
        assert status == 401
    assert [(r.user, r.status) for r in token_server.log] == [(PUSHER, 401), ("nobody", 401)]

    token_server.fail(503, times=1)
    assert (
        _get(f"{token_server.realm}?{q}", headers=_basic(PUSHER, PUSHER_PASSWORD), context=ctx)[0]
        == 503
    )
    status, _, body = _get(
        f"{token_server.realm}?{q}", headers=_basic(PUSHER, PUSHER_PASSWORD), context=ctx
    )
    assert status == 200
    doc = json.loads(body)
    assert doc["token"] == doc["access_token"] and doc["expires_in"] == token_server.expires_in

    # OAuth2 password grant
    form = urllib.parse.urlencode(
        {
            "grant_type": "password",
            "username": READER,
            "password": READER_PASSWORD,
            "service": "s",
            "scope": "repository:a/b:pull,push",
            "client_id": "tests",
        }
    ).encode()
    status, _, body = _get(token_server.realm, method="POST", data=form, context=ctx)
    assert status == 200 and "access_token" in json.loads(body)
    assert token_server.log[-1].granted[0].actions == ("pull",)


def test_registry_factory_stop_keeps_backdoor(
    registry_factory: RegistryFactory, image_cache: str, unique_repo: str
) -> None:
    reg = registry_factory(tls=True, auth="token")
    assert reg.auth == "token" and reg.username == PUSHER
    img = images.make_image(image_cache, [100], seed=7, fmt="oci")
    images.push(reg.backdoor_url, unique_repo, "v1", img)
    reg.stop()
    assert not reg.running
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{reg.url}/v2/", timeout=2, context=reg.ssl_context())
    assert images.read_back(reg.backdoor_url, unique_repo, img.digest) == set(img.blobs)
    reg.restart()
    assert skopeo.inspect_raw_digest(reg, f"{unique_repo}:v1") == img.digest


def test_skopeo_copy_between_registries(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    tmp_path: Path,
) -> None:
    a = images.make_image(image_cache, SMALL, seed=8, fmt="oci")
    b = images.make_image(image_cache, [4096], seed=9, fmt="oci", platform=("linux", "arm64", "v8"))
    idx = images.make_index(image_cache, [a, b], "oci")
    images.push(plain_registry.backdoor_url, unique_repo, "multi", idx)
    result = skopeo.copy(
        plain_registry,
        f"{unique_repo}:multi",
        basic_registry,
        f"{unique_repo}:copy",
        all_platforms=True,
        home=str(tmp_path),
    )
    assert result.digest == idx.digest
    assert images.read_back(basic_registry.backdoor_url, unique_repo, idx.digest) == set(idx.blobs)
    # skopeo kept its blob-info cache in the state directory it was given, not machine-wide
    assert os.path.getsize(skopeo.blob_info_cache(str(tmp_path))) > 0


# --- fault proxy -------------------------------------------------------------------------


def test_fault_proxy_faults(
    plain_registry: Registry,
    image_cache: str,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
) -> None:
    img = images.make_image(image_cache, [300_000], seed=10, fmt="oci")
    images.push(plain_registry.backdoor_url, unique_repo, "v1", img)
    proxy = fault_proxy(plain_registry)
    layer = img.layers[0]
    blob_url = f"{proxy.url}/v2/{unique_repo}/blobs/{layer.digest}"
    with open(layer.path, "rb") as f:
        original = f.read()

    # pass-through, streamed, with Location pointing back at the proxy
    assert _get(blob_url)[2] == original
    status, headers, _ = _get(
        f"{proxy.url}/v2/{unique_repo}/blobs/uploads/", method="POST", data=b""
    )
    assert status == 202 and headers["Location"].startswith(f"{proxy.url}/v2/{unique_repo}/")

    # 429 once, then normal
    rule = proxy.add(faultproxy.status(429, {"Retry-After": "1"}, path=r"/blobs/", times=1))
    status, headers, _ = _get(blob_url)
    assert (status, headers["Retry-After"]) == (429, "1")
    assert _get(blob_url)[0] == 200 and rule.hits == 1

    # corrupt: same length, one byte differs
    proxy.add(faultproxy.corrupt(method="GET", path=r"/blobs/sha256:", times=1))
    status, _, body = _get(blob_url)
    assert status == 200 and len(body) == len(original) and body != original
    assert sum(x != y for x, y in zip(body, original, strict=True)) == 1

    # reset after 1000 body bytes
    proxy.add(faultproxy.reset_after(1000, path=r"/blobs/", times=1))
    u = urllib.parse.urlsplit(proxy.url)
    conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=10)
    conn.request("GET", f"/v2/{unique_repo}/blobs/{layer.digest}")
    resp = conn.getresponse()
    assert resp.status == 200 and int(resp.getheader("Content-Length") or 0) == layer.size
    with pytest.raises((http.client.IncompleteRead, ConnectionError)) as exc:
        resp.read()
    if isinstance(exc.value, http.client.IncompleteRead):
        assert len(exc.value.partial) == 1000
    conn.close()

    # canned schema-1 manifest
    body1 = images.schema1_manifest_body()
    proxy.add(faultproxy.serve(body1, images.SCHEMA1_SIGNED_MANIFEST, path=r"/manifests/legacy$"))
    status, headers, body = _get(f"{proxy.url}/v2/{unique_repo}/manifests/legacy")
    assert (status, headers["Content-Type"], body) == (200, images.SCHEMA1_SIGNED_MANIFEST, body1)

    # proxy still healthy; the log saw every request
    assert _get(blob_url)[2] == original
    log = proxy.log
    assert [e.fault for e in log] == [
        None,
        None,
        "status",
        None,
        "corrupt",
        "reset_after",
        "serve",
        None,
    ]
    assert [e.status for e in log][:4] == [200, 202, 429, 200]
    assert log[1].method == "POST" and log[0].path.endswith(layer.digest)
    proxy.clear()
    assert proxy.log == [] and proxy.rules == []


def test_fault_proxy_https_upstream_with_auth(
    basic_registry: Registry, image_cache: str, unique_repo: str, fault_proxy: FaultProxyFactory
) -> None:
    img = images.make_image(image_cache, SMALL, seed=13, fmt="docker")
    images.push(basic_registry.backdoor_url, unique_repo, "v1", img)
    proxy = fault_proxy(basic_registry)
    assert skopeo.inspect_raw_digest(proxy, f"{unique_repo}:v1") == img.digest
    assert any(e.path.endswith("/manifests/v1") and e.status == 200 for e in proxy.log)
    proxy.add(faultproxy.status(503, path="/manifests/", times=None))
    with pytest.raises(skopeo.SkopeoError):
        skopeo.inspect_raw_digest(proxy, f"{unique_repo}:v1")


def test_fault_proxy_streams_uploads(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
) -> None:
    img = images.make_image(image_cache, [2_000_000, 1000], seed=14, fmt="oci")
    images.push(plain_registry.backdoor_url, unique_repo, "v1", img)
    proxy = fault_proxy(basic_registry)
    result = skopeo.copy(plain_registry, f"{unique_repo}:v1", proxy, f"{unique_repo}:v1")
    assert result.digest == img.digest
    assert images.read_back(basic_registry.backdoor_url, unique_repo, img.digest) == set(img.blobs)
    methods = {e.method for e in proxy.log}
    assert {"POST", "PUT"} <= methods
