"""`image-backup serve` as a child process over TLS, for tests that talk to it as the API
server would; and registered with the fake API server as the manifests register it."""

from __future__ import annotations

import base64
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

from tests.support.fakekube import MUTATING_WEBHOOK_CONFIGURATIONS, FakeKube
from tests.support.registries import free_port
from tests.support.tls import TLSFiles

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


@dataclass
class Webhook:
    url: str
    context: ssl.SSLContext
    process: subprocess.Popen[bytes]
    log_file: Path

    def post(self, path: str, payload: bytes) -> tuple[int, bytes]:
        request = urllib.request.Request(
            self.url + path, data=payload, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=60) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(
                self.url + path, context=self.context, timeout=10
            ) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()


@contextmanager
def running_webhook(
    work: Path, config: dict[str, Any], tls_ca: TLSFiles, env: dict[str, str] | None = None
) -> Iterator[Webhook]:
    """Serve `config` (server port and certificate filled in) until the block ends; ready
    (the backup registry answered) when the block starts."""
    port = free_port()
    config = {
        **config,
        "server": {"port": port, "certFile": tls_ca.cert_file, "keyFile": tls_ca.key_file},
    }
    config_file = work / f"config-{port}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    log_file = work / f"webhook-{port}.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "webhook", "serve", "--config", str(config_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    context = ssl.create_default_context(cafile=tls_ca.ca_file)
    hook = Webhook(f"https://127.0.0.1:{port}", context, process, log_file)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if hook.get("/readyz")[0] == 200:
                    break
            except OSError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, log_file.read_text()
            time.sleep(0.1)
        yield hook
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def register_webhook(
    kube: FakeKube, hook: Webhook, tls_ca: TLSFiles, *, openshift: bool = False
) -> None:
    """The base manifests' MutatingWebhookConfiguration (with the openshift overlay's
    DeploymentConfigs: `openshift`), pointed at `hook` by URL."""
    document = yaml.safe_load((MANIFESTS / "base/mutatingwebhookconfiguration.yaml").read_text())
    if openshift:
        overlay = MANIFESTS / "overlays/openshift/mutatingwebhookconfiguration.yaml"
        document = jsonpatch.apply_patch(document, yaml.safe_load(overlay.read_text()))
    ca_bundle = base64.b64encode(Path(tls_ca.ca_file).read_bytes()).decode()
    for webhook in document["webhooks"]:
        path = webhook["clientConfig"]["service"]["path"]
        webhook["clientConfig"] = {"url": f"{hook.url}{path}", "caBundle": ca_bundle}
    kube.store.create(MUTATING_WEBHOOK_CONFIGURATIONS, "", document)
