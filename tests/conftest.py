"""Shared fixtures: real registries, a token server, test images, a fault proxy, a referrers
proxy and a fake Kubernetes API server.

Everything lives under one session temp dir in /tmp, removed at the end of the session.
Nothing here imports the product (``webhook``).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.admission_helpers import SAMPLE_IMAGES
from tests.support import images
from tests.support.accounts import (
    PUSHER,
    PUSHER_PASSWORD,
    READER,
    READER_PASSWORD,
    TOKEN_POLICY,
)
from tests.support.fakekube import FakeKube
from tests.support.faultproxy import FaultProxy, FaultProxyFactory
from tests.support.referrersproxy import DEFAULT_PAGE_SIZE, ReferrersProxy, ReferrersProxyFactory
from tests.support.registries import AuthMode, Registry, RegistryFactory, start_registry
from tests.support.tls import TLSFiles, generate_tls
from tests.support.tokenserver import TokenServer

_token_servers: list[TokenServer] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "container: builds and runs the container image (minutes, root, podman): run by"
        " `make container-test`, skipped unless selected with -m container",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Container tests run only when asked for by name (``-m container``)."""
    if "container" in config.getoption("markexpr", ""):
        return
    skip = pytest.mark.skip(reason="builds the container image: `make container-test` runs it")
    for item in items:
        if item.get_closest_marker("container"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def session_tmp() -> Iterator[str]:
    """The single temp dir of this test session (under /tmp); removed at the end."""
    path = tempfile.mkdtemp(prefix="ibw-tests-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tls_ca(session_tmp: str) -> TLSFiles:
    """Test CA + loopback server certificate: ``.ca_file``, ``.cert_file``, ``.key_file``."""
    return generate_tls(os.path.join(session_tmp, "tls"))


@pytest.fixture(scope="session")
def plain_registry(session_tmp: str) -> Iterator[Registry]:
    """Plain HTTP, no auth."""
    reg = start_registry(os.path.join(session_tmp, "reg-plain"), tls=False, auth="none")
    try:
        yield reg
    finally:
        reg.close()


@pytest.fixture(scope="session")
def basic_registry(session_tmp: str, tls_ca: TLSFiles) -> Iterator[Registry]:
    """HTTPS (test CA) + htpasswd basic auth (``.username`` / ``.password``)."""
    reg = start_registry(
        os.path.join(session_tmp, "reg-basic"), tls=True, auth="basic", tls_dir=tls_ca.directory
    )
    try:
        yield reg
    finally:
        reg.close()


@pytest.fixture(scope="session")
def token_server(session_tmp: str, tls_ca: TLSFiles) -> Iterator[TokenServer]:
    """HTTPS token server: ``pusher`` may pull/push/delete everywhere, ``reader`` may pull,
    anonymous gets nothing. Its state (users, policy, expires_in, failures, log) is reset
    around every test."""
    ts = TokenServer.start(
        os.path.join(session_tmp, "token-server"),
        users={PUSHER: PUSHER_PASSWORD, READER: READER_PASSWORD},
        policy=TOKEN_POLICY,
        tls_dir=tls_ca.directory,
    )
    _token_servers.append(ts)
    try:
        yield ts
    finally:
        _token_servers.remove(ts)
        ts.stop()


@pytest.fixture(autouse=True)
def _reset_token_servers() -> Iterator[None]:
    for ts in _token_servers:
        ts.reset()
    yield
    for ts in _token_servers:
        ts.reset()


@pytest.fixture(scope="session")
def token_registry(
    session_tmp: str, tls_ca: TLSFiles, token_server: TokenServer
) -> Iterator[Registry]:
    """HTTPS + token auth via ``token_server``; credentials (docker_config) are ``pusher``'s."""
    reg = start_registry(
        os.path.join(session_tmp, "reg-token"),
        tls=True,
        auth="token",
        token_server=token_server,
        username=PUSHER,
        password=PUSHER_PASSWORD,
        tls_dir=tls_ca.directory,
    )
    try:
        yield reg
    finally:
        reg.close()


@pytest.fixture
def registry_factory(
    request: pytest.FixtureRequest, session_tmp: str, tls_ca: TLSFiles
) -> Iterator[RegistryFactory]:
    """``registry_factory(tls=False, auth="none", token_server=None, **kw) -> Registry``.

    Extra registries for one test, killed and deleted at its end. ``auth="token"`` without
    a token server uses the session ``token_server``. ``**kw`` goes to ``start_registry``
    (``username``, ``password``, ``service``...).
    """
    started: list[Registry] = []

    def factory(
        *,
        tls: bool = False,
        auth: AuthMode = "none",
        token_server: TokenServer | None = None,
        **kw: Any,
    ) -> Registry:
        if auth == "token" and token_server is None:
            token_server = request.getfixturevalue("token_server")
            kw.setdefault("username", PUSHER)
            kw.setdefault("password", PUSHER_PASSWORD)
        kw.setdefault("tls_dir", tls_ca.directory)
        workdir = tempfile.mkdtemp(prefix="reg-", dir=session_tmp)
        try:
            reg = start_registry(workdir, tls=tls, auth=auth, token_server=token_server, **kw)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        started.append(reg)
        return reg

    try:
        yield factory
    finally:
        for reg in started:
            reg.close()
            shutil.rmtree(reg.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def image_cache(session_tmp: str) -> str:
    """Directory for generated test images (set IBW_TEST_IMAGE_CACHE to keep one across
    sessions; otherwise it is inside the session temp dir)."""
    path = os.environ.get("IBW_TEST_IMAGE_CACHE") or os.path.join(session_tmp, "images")
    os.makedirs(path, exist_ok=True)
    return path


@pytest.fixture
def fault_proxy() -> Iterator[FaultProxyFactory]:
    """``fault_proxy(target, ca_file=None, *, credentials=True) -> FaultProxy``.

    ``target`` is a :class:`Registry` (its front door, CA and - unless ``credentials`` is
    False - its username/password for the proxy's ``docker_config``) or an upstream URL.
    Proxies are stopped at the end of the test.
    """
    proxies: list[FaultProxy] = []

    def factory(
        target: Registry | str, ca_file: str | None = None, *, credentials: bool = True
    ) -> FaultProxy:
        upstream, ca, username, password = _upstream(target, ca_file, credentials)
        proxy = FaultProxy.start(upstream, ca, username=username, password=password)
        proxies.append(proxy)
        return proxy

    try:
        yield factory
    finally:
        for proxy in proxies:
            proxy.stop()


@pytest.fixture
def referrers_proxy() -> Iterator[ReferrersProxyFactory]:
    """``referrers_proxy(target, ca_file=None, *, credentials=True, page_size=1000,
    announce_subject=True) -> ReferrersProxy``.

    ``target`` as for ``fault_proxy``: with the proxy in front, the registry has OCI 1.1's
    referrers API. Proxies are stopped at the end of the test.
    """
    proxies: list[ReferrersProxy] = []

    def factory(
        target: Registry | str,
        ca_file: str | None = None,
        *,
        credentials: bool = True,
        page_size: int = DEFAULT_PAGE_SIZE,
        announce_subject: bool = True,
    ) -> ReferrersProxy:
        upstream, ca, username, password = _upstream(target, ca_file, credentials)
        proxy = ReferrersProxy.start(
            upstream,
            ca,
            username=username,
            password=password,
            page_size=page_size,
            announce_subject=announce_subject,
        )
        proxies.append(proxy)
        return proxy

    try:
        yield factory
    finally:
        for proxy in proxies:
            proxy.stop()


def _upstream(
    target: Registry | str, ca_file: str | None, credentials: bool
) -> tuple[str, str | None, str | None, str | None]:
    """(url, CA, username, password) of what a proxy fronts: a registry's front door (with
    its credentials, for the proxy's docker_config, unless not ``credentials``) or a URL."""
    if isinstance(target, Registry):
        return (
            target.url,
            ca_file or target.ca_file,
            target.username if credentials else None,
            target.password if credentials else None,
        )
    return target, ca_file, None, None


@pytest.fixture
def unique_repo(request: pytest.FixtureRequest) -> str:
    """A fresh repository name: ``t/<test-name-slug>-<random>``."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    return f"t/{slug or 'test'}-{secrets.token_hex(4)}"


@pytest.fixture
def fake_kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKube]:
    """A fake Kubernetes API server, empty; KUBECONFIG points at it for this test and the
    processes it starts."""
    yield from _fake_kube(tmp_path, monkeypatch, openshift=False)


@pytest.fixture
def openshift_kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKube]:
    """The same, serving OpenShift's groups too (DeploymentConfigs, ImageStreams)."""
    yield from _fake_kube(tmp_path, monkeypatch, openshift=True)


def _fake_kube(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, openshift: bool
) -> Iterator[FakeKube]:
    kube = FakeKube.start(openshift=openshift)
    try:
        monkeypatch.setenv("KUBECONFIG", kube.write_kubeconfig(tmp_path / "kubeconfig"))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield kube
    finally:
        kube.stop()


@pytest.fixture(scope="session")
def hub(plain_registry: Registry, session_tmp: str) -> dict[str, images.Image]:
    """The samples' Docker Hub images, pushed into the local stand-in for Docker Hub."""
    pushed = {}
    for seed, (name, layers) in enumerate(SAMPLE_IMAGES.items(), start=900):
        repository, tag = name.split(":")
        image = images.make_image(f"{session_tmp}/hub", layers, seed=seed, fmt="docker")
        images.push(plain_registry.backdoor_url, repository, tag, image)
        pushed[name] = image
    return pushed
