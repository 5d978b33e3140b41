"""Registry failures name the side that failed and what it was doing, once, in words.

Every fault the fault proxy can inject (and a few the network makes on its own) is run
through a real copy; the error must name the registry that failed (source or backup) and
the operation, in one line, without Python's text of internal objects and without
starting with the image the caller asked about (the caller names that one).
"""

from __future__ import annotations

import errno
import json
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.helpers import deadline, engine_for, make_config, plain
from tests.support import images
from tests.support.faultproxy import (
    FaultProxy,
    FaultProxyFactory,
    corrupt,
    cut_request,
    delay,
    reset_after,
    status,
)
from tests.support.registries import Registry, free_port
from webhook import cli
from webhook.admission.handler import Admission
from webhook.config import Config
from webhook.engine import open_engine
from webhook.metrics import Metrics
from webhook.reference import parse
from webhook.registry.errors import RegistryError, Side
from webhook.registry.transport import describe

NOBODY = f"127.0.0.1:{free_port()}"  # a port nothing listens on
DIGEST = r"sha256:[0-9a-f]{{64}}"  # braces doubled: patterns go through str.format


@dataclass(frozen=True)
class Stage:
    """A copy from `source` (host) to `backup` (host), with the proxies faults go into."""

    source: FaultProxy
    backup: FaultProxy
    image: images.Image
    repo: str

    @property
    def big_layer(self) -> str:
        return self.image.layers[0].digest


@dataclass(frozen=True)
class Fault:
    """What to break, the side that then fails, and the start of the error it must give (a
    regex; `{source}`, `{backup}`, `{big}` (the big layer) and `{digest}` filled in)."""

    inject: Callable[[Stage], None]
    side: Side
    expected: str
    config: Callable[[Stage], Config] | None = None
    seconds: float = 30


def _through_proxies(stage: Stage) -> Config:
    return make_config(
        stage.backup, sources=[plain(stage.source)], docker_config=stage.backup.docker_config
    )


def _backup_refusing(stage: Stage) -> Config:
    return make_config(Endpoint(NOBODY), sources=[plain(stage.source)], backup_insecure=True)


def _source_refusing(stage: Stage) -> Config:
    return _with_source(stage, NOBODY)


def _source_unknown(stage: Stage) -> Config:
    return _with_source(stage, "no-such-registry.invalid:5000")


def _with_source(stage: Stage, host: str) -> Config:
    return make_config(
        stage.backup,
        sources=[{"host": host, "insecure": True}],
        docker_config=stage.backup.docker_config,
    )


def _plain_http_source(stage: Stage) -> Config:
    # The source proxy speaks plain HTTP, but the configuration says nothing about it.
    return make_config(stage.backup, sources=[], docker_config=stage.backup.docker_config)


@dataclass(frozen=True)
class Endpoint:
    """A registry section for a host where nothing listens."""

    host: str
    ca_file: str | None = None


def _nothing(stage: Stage) -> None:
    return None


FROM_SOURCE = "from the source registry {source}: "
ON_BACKUP = r"in backup/[^ ]+ on the backup registry {backup}: "

FAULTS: dict[str, Fault] = {
    "source resets mid-blob": Fault(
        lambda s: _add(s.source, reset_after(100_000, method="GET", path=f"/blobs/{s.big_layer}$")),
        Side.SOURCE,
        "reading blob {big} " + FROM_SOURCE + "the connection ended before the whole body",
    ),
    "backup resets mid-upload": Fault(
        lambda s: _add(s.backup, cut_request(100_000, method="PUT", path="/blobs/uploads/")),
        Side.BACKUP,
        # Which the client sees first (a reset, a broken pipe, an early close) is a race.
        f"writing blob {DIGEST} "
        + ON_BACKUP
        + "(connection reset|the registry closed the connection)$",
    ),
    "backup refuses connections": Fault(
        _nothing,
        Side.BACKUP,
        "reading the backup tag for {digest} " + ON_BACKUP + "cannot connect: connection refused",
        config=_backup_refusing,
    ),
    "source refuses connections": Fault(
        _nothing,
        Side.SOURCE,
        "reading tag v1 " + FROM_SOURCE + "cannot connect: connection refused",
        config=_source_refusing,
    ),
    "source name not resolved": Fault(
        _nothing,
        Side.SOURCE,
        "reading tag v1 " + FROM_SOURCE + "cannot connect: name not resolved",
        config=_source_unknown,
    ),
    "source answers 503 for a blob": Fault(
        lambda s: _add(s.source, status(503, method="GET", path=f"/blobs/{s.big_layer}$")),
        Side.SOURCE,
        "reading blob {big} " + FROM_SOURCE + "the registry answered HTTP 503",
    ),
    "backup answers 503 for manifests": Fault(
        lambda s: _add(s.backup, status(503, method="PUT", path="/manifests/")),
        Side.BACKUP,
        "writing the backup tag for {digest} " + ON_BACKUP + "the registry answered HTTP 503",
    ),
    "source answers 401": Fault(
        lambda s: _add(s.source, status(401, method="HEAD", path="/manifests/")),
        Side.SOURCE,
        "reading tag v1 " + FROM_SOURCE + r"unauthorized \(HTTP 401\)",
    ),
    "source's token service refuses connections": Fault(
        lambda s: _add(
            s.source,
            status(
                401,
                {"WWW-Authenticate": f'Bearer realm="http://{NOBODY}/token"'},
                method="HEAD",
                path="/manifests/",
            ),
        ),
        Side.SOURCE,
        "reading tag v1 "
        + FROM_SOURCE
        + rf"cannot connect: connection refused \(token service {re.escape(NOBODY)}\)$",
    ),
    "source sends corrupt bytes": Fault(
        lambda s: _add(s.source, corrupt(method="GET", path=f"/blobs/{s.big_layer}$")),
        Side.SOURCE,
        "reading blob {big} " + FROM_SOURCE + "the registry sent corrupt data",
    ),
    "source stalls before sending a blob": Fault(
        lambda s: _add(s.source, delay(6, method="GET", path=f"/blobs/{s.big_layer}$")),
        Side.SOURCE,
        "reading blob {big} " + FROM_SOURCE + "(timed out|ran out of time)",
        seconds=3,
    ),
    "source speaks plain HTTP, configured for TLS": Fault(
        _nothing,
        Side.SOURCE,
        "reading tag v1 "
        + FROM_SOURCE
        + "cannot connect: TLS handshake failed: the registry speaks plain HTTP; "
        + "set insecure: true for this registry",
        config=_plain_http_source,
    ),
}


def _add(proxy: FaultProxy, rule: Any) -> None:
    proxy.add(rule)


@pytest.fixture
def stage(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
) -> Stage:
    image = images.make_image(image_cache, [600_000, 5_000], seed=909, fmt="oci")
    images.push(plain_registry.backdoor_url, unique_repo, "v1", image)
    return Stage(fault_proxy(plain_registry), fault_proxy(basic_registry), image, unique_repo)


@pytest.mark.parametrize("name", list(FAULTS))
async def test_every_fault_names_the_failing_registry_and_operation(
    name: str, stage: Stage
) -> None:
    fault = FAULTS[name]
    fault.inject(stage)
    config = (fault.config or _through_proxies)(stage)
    source_host = config.registries[0].host if config.registries else stage.source.host
    image = f"{source_host}/{stage.repo}:v1"
    async with engine_for(config) as engine:
        with pytest.raises(RegistryError) as caught:
            await engine.backup(parse(image), deadline=deadline(fault.seconds))

    message = str(caught.value)
    expected = fault.expected.format(
        source=re.escape(source_host),
        backup=re.escape(config.backup_registry.host),
        big=stage.big_layer,
        digest=stage.image.digest,
    )
    assert re.match(expected, message), message
    failed = source_host if fault.side is Side.SOURCE else config.backup_registry.host
    assert (caught.value.side, caught.value.host) == (fault.side, failed)
    assert "\n" not in message and " at 0x" not in message and "<" not in message
    assert not message.startswith(image)


async def test_a_denial_names_the_image_once(stage: Stage) -> None:
    stage.source.add(status(401, method="HEAD", path="/manifests/"))
    image = f"{stage.source.host}/{stage.repo}:v1"
    review = _pod_review(image)
    async with open_engine(config := _through_proxies(stage)) as engine:
        answer = await Admission(engine, config, Metrics()).review(orjson.dumps(review), "enforce")

    response = orjson.loads(answer)["response"]
    assert response["allowed"] is False
    message = response["status"]["message"]
    assert message.count(image) == 1, message
    assert f"{image}: reading tag v1 from the source registry {stage.source.host}: " in message


def _pod_review(image: str) -> dict[str, Any]:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app", "namespace": "team"},
        "spec": {"containers": [{"name": "app", "image": image}]},
    }
    kind = {"group": "", "version": "v1", "kind": "Pod"}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": kind,
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": kind,
            "namespace": "team",
            "operation": "CREATE",
            "userInfo": {"username": "tester"},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
        },
    }


def test_the_cli_never_names_the_internal_anchor_tag(
    stage: Stage, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stage.backup.add(status(503, method="PUT", path="/manifests/"))
    config = {
        "backupRegistry": {"host": stage.backup.host, "insecure": True},
        "registries": [plain(stage.source)],
        "credentials": {"dockerConfig": stage.backup.docker_config},
        "copy": {"timeoutSeconds": 20},
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))

    code = cli.main(["copy", f"{stage.source.host}/{stage.repo}:v1", "--config", str(path)])

    error = capsys.readouterr().err.strip()
    assert code == 1
    assert "sha256-" not in error
    assert f"writing the backup tag for {stage.image.digest} in " in error
    assert f" on the backup registry {stage.backup.host}: " in error
    assert len(error.splitlines()) == 1


def _caused(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


# Failures as aiohttp raises them when a connection breaks mid-request (their text, where
# they have one, is what messages showed before: connection keys, SSL context reprs).
INTERNAL = "Connection<ConnectionKey(host='r', ssl=<ssl.SSLContext object at 0x7f62e290ce60>)>"


@pytest.mark.parametrize(
    ("failure", "words"),
    [
        (aiohttp.ClientOSError(errno.ECONNRESET, "Can not write request body"), "connection reset"),
        (
            _caused(
                aiohttp.ClientConnectionError(f"Failed to send bytes into {INTERNAL}"),
                ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
            ),
            "connection reset",
        ),
        (aiohttp.ClientConnectionResetError("Cannot write to closing"), "connection reset"),
        (aiohttp.ServerTimeoutError("Timeout on reading data from socket"), "timed out"),
        (aiohttp.ClientOSError(errno.EHOSTUNREACH, INTERNAL), "host unreachable"),
        (aiohttp.ClientOSError(errno.EMFILE, INTERNAL), os.strerror(errno.EMFILE).lower()),
        (aiohttp.ServerDisconnectedError(), "the registry closed the connection"),
        (aiohttp.ClientOSError(errno.EPIPE, INTERNAL), "the registry closed the connection"),
        (aiohttp.ClientConnectionError(INTERNAL), "connection lost"),
        (aiohttp.ClientResponseError(None, (), message=INTERNAL), "failed (ClientResponseError)"),  # type: ignore[arg-type]
    ],
)
def test_transport_failures_are_described_in_words(failure: BaseException, words: str) -> None:
    assert describe(failure) == words
