"""The webhook's own TLS: issuing, renewing and sharing it through a Secret, against the fake
Kubernetes API server, and a real handshake with `image-backup serve --self-signed`."""

from __future__ import annotations

import base64
import datetime
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs.authority import (
    DEFAULT_VALIDITY,
    KeyPair,
    Validity,
    ca_renewal_reason,
    create_ca,
    issue_serving,
    serving_renewal_reason,
)
from certs.bootstrap import Names, Stored, ensure_certificate
from tests.support.fakekube import (
    MUTATING_WEBHOOK_CONFIGURATIONS,
    SECRETS,
    FakeKube,
    KubeError,
    Query,
)
from webhook.kube.client import KubeError as ClientError
from webhook.kube.client import api_client

NS = SVC = WEBHOOK_CONFIG = "image-backup"
HOSTNAME = "image-backup.image-backup.svc"
NAMES = Names(NS, SVC, WEBHOOK_CONFIG)
CLI = [sys.executable, "-m", "webhook"]
MERGE = "application/merge-patch+json"
HOUR = datetime.timedelta(hours=1)
DAY = datetime.timedelta(days=1)


@pytest.fixture
def kube(fake_kube: FakeKube) -> FakeKube:
    """The fake API server with the webhook configuration the manifests create."""
    webhooks = [
        {
            "name": f"{mode}.image-backup.io",
            "clientConfig": {"service": {"namespace": NS, "name": SVC, "path": f"/{mode}"}},
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
        }
        for mode in ("mutate", "audit")
    ]
    fake_kube.store.create(
        MUTATING_WEBHOOK_CONFIGURATIONS,
        "",
        {"metadata": {"name": WEBHOOK_CONFIG}, "webhooks": webhooks},
    )
    return fake_kube


def ensure(validity: Validity = DEFAULT_VALIDITY) -> Stored:
    with api_client() as api:
        return ensure_certificate(api, NAMES, validity)


def secret_data(kube: FakeKube) -> dict[str, bytes]:
    data = kube.store.get(SECRETS, NS, NAMES.secret)["data"]
    return {key: base64.b64decode(value) for key, value in data.items()}


def ca_bundles(kube: FakeKube) -> list[bytes]:
    configuration = kube.store.get(MUTATING_WEBHOOK_CONFIGURATIONS, "", WEBHOOK_CONFIG)
    return [base64.b64decode(w["clientConfig"]["caBundle"]) for w in configuration["webhooks"]]


def the_ca_bundle(kube: FakeKube) -> bytes:
    bundles = ca_bundles(kube)
    assert len(bundles) == 2 and bundles[0] == bundles[1]  # every webhook, the same
    return bundles[0]


def secret_writes(kube: FakeKube) -> list[str]:
    """ADDED, MODIFIED or DELETED for every write of the Secret so far."""
    query = Query(SECRETS, NS, [], [("metadata.name", "=", NAMES.secret)])
    return [change.type for change in kube.store.changes_since(0, query)[0]]


def certificates(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def assert_trusted(cert_pem: bytes, bundle: bytes) -> None:
    """The serving certificate chains to one CA of the bundle (Python's ssl checks the rest
    in the handshake tests)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    issuers = [ca for ca in certificates(bundle) if ca.subject == cert.issuer and _signed(cert, ca)]
    assert len(issuers) == 1


def _signed(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except InvalidSignature:
        return False
    return True


# --- the authority ------------------------------------------------------------------------


def test_ca_and_serving_certificate() -> None:
    ca = create_ca()
    serving = issue_serving(ca, SVC, NS)
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    cert = x509.load_pem_x509_certificate(serving.cert)
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca_cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    cert.verify_directly_issued_by(ca_cert)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [
        "image-backup",
        "image-backup.image-backup",
        "image-backup.image-backup.svc",
        "image-backup.image-backup.svc.cluster.local",
    ]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(days=364) < lifetime <= datetime.timedelta(days=365)
    assert serving_renewal_reason(serving, ca.cert, SVC, NS) is None
    assert ca_renewal_reason(ca) is None


def test_renewal_reasons() -> None:
    ca = create_ca()
    serving = issue_serving(ca, SVC, NS)
    other_ca = create_ca()
    other = issue_serving(other_ca, SVC, NS)

    def reason(pair: KeyPair, ca_cert: bytes = ca.cert, service: str = SVC) -> str | None:
        return serving_renewal_reason(pair, ca_cert, service, NS)

    assert (
        reason(serving, service="other")
        == "the certificate is not for the Service other.image-backup"
    )
    assert reason(KeyPair(serving.cert, other.key)) == "the key does not match the certificate"
    assert reason(serving, other_ca.cert) == "the certificate is not signed by the CA"
    assert reason(KeyPair(b"garbage", serving.key)) == (
        "the certificate, key or CA is not readable PEM"
    )
    # Thirty days before the end by default, or whenever the policy says.
    in_336_days = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=336)
    due = serving_renewal_reason(serving, ca.cert, SVC, NS, now=in_336_days)
    assert due is not None and due.startswith("the certificate expires at ")
    assert serving_renewal_reason(serving, ca.cert, SVC, NS, now=in_336_days - 2 * DAY) is None
    assert ca_renewal_reason(KeyPair(ca.cert, other_ca.key)) == (
        "the CA key does not match the CA certificate"
    )
    assert ca_renewal_reason(KeyPair(serving.cert, serving.key)) == "the CA certificate is not a CA"
    short = Validity(ca=datetime.timedelta(seconds=10), renew_before=datetime.timedelta(seconds=20))
    assert (ca_renewal_reason(create_ca(short), short) or "").startswith("the CA expires at ")


def test_a_serving_certificate_never_outlives_its_ca() -> None:
    ca = create_ca(Validity(ca=datetime.timedelta(days=10)))
    cert = x509.load_pem_x509_certificate(issue_serving(ca, SVC, NS).cert)
    assert cert.not_valid_after_utc == x509.load_pem_x509_certificate(ca.cert).not_valid_after_utc


# --- bootstrap ----------------------------------------------------------------------------


def test_bootstrap_from_nothing_with_the_cli(kube: FakeKube, tmp_path: Path) -> None:
    done = run_cli(
        "certs",
        "--namespace",
        NS,
        "--service",
        SVC,
        "--webhook-config",
        WEBHOOK_CONFIG,
        "--write-dir",
        str(tmp_path / "tls"),
    )
    assert done.returncode == 0, done.stderr
    secret = kube.store.get(SECRETS, NS, NAMES.secret)
    assert secret["type"] == "kubernetes.io/tls"
    data = secret_data(kube)
    assert sorted(data) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]
    assert the_ca_bundle(kube) == data["ca.crt"]
    assert (tmp_path / "tls" / "tls.crt").read_bytes() == data["tls.crt"]
    assert (tmp_path / "tls" / "tls.key").read_bytes() == data["tls.key"]
    assert (tmp_path / "tls" / "tls.key").stat().st_mode & 0o777 == 0o600
    assert_trusted(data["tls.crt"], the_ca_bundle(kube))
    assert (
        serving_renewal_reason(KeyPair(data["tls.crt"], data["tls.key"]), data["ca.crt"], SVC, NS)
        is None
    )

    # Run again: nothing to do, nothing written.
    calls = len(kube.calls)
    assert (
        run_cli(
            "certs", "--namespace", NS, "--service", SVC, "--webhook-config", WEBHOOK_CONFIG
        ).returncode
        == 0
    )
    assert [c.method for c in kube.calls[calls:]] == ["GET", "GET"]
    assert secret_writes(kube) == ["ADDED"]


def test_two_replicas_racing_agree_on_one_secret(kube: FakeKube) -> None:
    for round_ in range(3):
        if round_:
            kube.store.delete(SECRETS, NS, NAMES.secret)
        before = len(secret_writes(kube))
        results = race(ensure, ensure)
        assert results[0] == results[1]
        assert secret_writes(kube)[before:] == ["ADDED"]  # exactly one version won
        assert secret_data(kube)["tls.crt"] == results[0].serving.cert
        assert the_ca_bundle(kube) == results[0].ca.cert


def test_two_replicas_renewing_at_once_write_one_renewal(kube: FakeKube) -> None:
    first = ensure(Validity(serving=20 * DAY))  # due under the default policy's 30 days
    results = race(ensure, ensure)
    assert results[0] == results[1] != first
    assert secret_writes(kube) == ["ADDED", "MODIFIED"]
    assert results[0].ca == first.ca  # the CA stays: no caBundle change needed
    assert the_ca_bundle(kube) == first.ca.cert


def race(*work: Any) -> list[Stored]:
    barrier = threading.Barrier(len(work))
    results: list[Any] = [None] * len(work)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = work[index]()
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(work))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(isinstance(r, Stored) for r in results), results
    return results


def test_serving_renewal_keeps_the_ca(kube: FakeKube) -> None:
    short = Validity(
        ca=HOUR, serving=datetime.timedelta(seconds=3), renew_before=datetime.timedelta(seconds=1)
    )
    first = ensure(short)
    assert ensure(short) == first  # not due yet
    time.sleep(2.2)
    patches = len(kube.calls_to("PATCH", WEBHOOK_CONFIG))
    renewed = ensure(short)
    assert renewed.ca == first.ca
    assert renewed.serving != first.serving
    assert secret_data(kube)["tls.crt"] == renewed.serving.cert
    assert len(kube.calls_to("PATCH", WEBHOOK_CONFIG)) == patches  # caBundle unchanged
    assert_trusted(renewed.serving.cert, the_ca_bundle(kube))


def test_ca_renewal_overlaps_old_and_new_ca_until_the_old_expires(kube: FakeKube) -> None:
    old = ensure(Validity(ca=datetime.timedelta(seconds=3), renew_before=datetime.timedelta(0)))
    renewed = ensure()  # with a month's notice the 3-second CA is due
    assert renewed.ca != old.ca
    assert renewed.previous_ca == old.ca.cert
    assert secret_data(kube)["ca-previous.crt"] == old.ca.cert
    bundle = the_ca_bundle(kube)
    assert certificates(bundle) == certificates(renewed.ca.cert + old.ca.cert)
    # Replicas still serving the old pair and those serving the new one are both trusted.
    assert_trusted(old.serving.cert, bundle)
    assert_trusted(renewed.serving.cert, bundle)

    time.sleep(3.2)  # the old CA has expired: it leaves the bundle, nothing else changes
    assert ensure() == renewed
    assert the_ca_bundle(kube) == renewed.ca.cert
    assert secret_writes(kube) == ["ADDED", "MODIFIED"]


def test_a_conflicting_write_of_a_valid_pair_is_adopted(kube: FakeKube) -> None:
    ensure(Validity(serving=20 * DAY))  # due under the default policy
    theirs = Stored(issue_serving(ca := create_ca(), SVC, NS), ca)
    kube.interceptors.append(
        once(kube, "PUT", f"/secrets/{NAMES.secret}", lambda: put_secret(kube, theirs))
    )
    assert ensure() == theirs  # valid: used as it is, not renewed again
    assert len(kube.calls_to("PUT", f"/secrets/{NAMES.secret}")) == 1
    assert secret_data(kube)["tls.crt"] == theirs.serving.cert
    assert the_ca_bundle(kube) == theirs.ca.cert


def test_a_conflicting_write_of_a_pair_due_for_renewal_is_renewed(kube: FakeKube) -> None:
    first = ensure(Validity(serving=20 * DAY))
    theirs = Stored(issue_serving(first.ca, "other", NS), first.ca)  # not for this Service
    kube.interceptors.append(
        once(kube, "PUT", f"/secrets/{NAMES.secret}", lambda: put_secret(kube, theirs))
    )
    ours = ensure()
    assert ours not in (first, theirs)
    assert ours.ca == first.ca
    assert len(kube.calls_to("PUT", f"/secrets/{NAMES.secret}")) == 2
    assert secret_writes(kube) == ["ADDED", "MODIFIED", "MODIFIED"]  # theirs, then ours
    assert secret_data(kube)["tls.crt"] == ours.serving.cert


def test_a_conflicting_create_uses_the_winner(kube: FakeKube) -> None:
    theirs = Stored(issue_serving(ca := create_ca(), SVC, NS), ca)

    def create_theirs() -> None:
        kube.store.create(SECRETS, NS, secret_body(theirs))

    kube.interceptors.append(once(kube, "POST", "/secrets", create_theirs))
    assert ensure() == theirs
    assert [c.method for c in kube.calls if "/secrets" in c.path] == ["GET", "POST", "GET"]


def test_a_conflicting_webhook_configuration_change_is_reread(kube: FakeKube) -> None:
    def label_it() -> None:
        patch = {"metadata": {"labels": {"changed": "meanwhile"}}}
        kube.store.patch(MUTATING_WEBHOOK_CONFIGURATIONS, "", WEBHOOK_CONFIG, patch, MERGE)

    kube.interceptors.append(once(kube, "PATCH", WEBHOOK_CONFIG, label_it))
    stored = ensure()
    assert len(kube.calls_to("PATCH", WEBHOOK_CONFIG)) == 2
    configuration = kube.store.get(MUTATING_WEBHOOK_CONFIGURATIONS, "", WEBHOOK_CONFIG)
    assert configuration["metadata"]["labels"] == {"changed": "meanwhile"}
    assert the_ca_bundle(kube) == stored.ca.cert


def once(kube: FakeKube, method: str, path_suffix: str, action: Any) -> Any:
    def intercept(call: Any) -> None:
        if call.to(method, path_suffix):
            kube.interceptors.remove(intercept)
            action()

    return intercept


def secret_body(stored: Stored) -> dict[str, Any]:
    parts = {
        "tls.crt": stored.serving.cert,
        "tls.key": stored.serving.key,
        "ca.crt": stored.ca.cert,
        "ca.key": stored.ca.key,
    }
    data = {key: base64.b64encode(value).decode() for key, value in parts.items()}
    return {"metadata": {"name": NAMES.secret}, "type": "kubernetes.io/tls", "data": data}


def put_secret(kube: FakeKube, stored: Stored) -> None:
    kube.store.replace(SECRETS, NS, NAMES.secret, secret_body(stored))


# --- errors -------------------------------------------------------------------------------


def test_an_unreachable_api_server_is_one_line_without_the_token(
    kube: FakeKube, tmp_path: Path
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    kubeconfig = Path(os.environ["KUBECONFIG"])
    kubeconfig.write_text(kubeconfig.read_text().replace(kube.url, f"http://127.0.0.1:{port}"))
    done = run_cli("certs", "--namespace", NS, "--service", SVC, "--webhook-config", WEBHOOK_CONFIG)
    assert done.returncode == 1
    assert done.stderr.startswith(
        f"image-backup: error: reading Secret {NS}/{NAMES.secret}: cannot reach the Kubernetes "
        f"API at http://127.0.0.1:{port}: "
    )
    assert "Connection refused" in done.stderr
    assert done.stderr.count("\n") == 1
    assert kube.token not in done.stderr + done.stdout


def test_forbidden_is_one_line_with_the_api_servers_message(kube: FakeKube) -> None:
    def forbid(call: Any) -> None:
        if "/secrets/" in call.path:
            raise KubeError(403, "Forbidden", 'secrets "image-backup-tls" is forbidden: no')

    kube.interceptors.append(forbid)
    done = run_cli("certs", "--namespace", NS, "--service", SVC, "--webhook-config", WEBHOOK_CONFIG)
    assert (done.returncode, done.stderr) == (
        1,
        f"image-backup: error: reading Secret {NS}/{NAMES.secret}: 403 "
        'secrets "image-backup-tls" is forbidden: no\n',
    )
    with pytest.raises(ClientError) as caught:
        ensure()
    assert (caught.value.status, caught.value.reason) == (403, "Forbidden")


def test_a_missing_webhook_configuration_is_an_error(fake_kube: FakeKube) -> None:
    with pytest.raises(ClientError) as caught:
        ensure()
    assert str(caught.value) == (
        f"reading MutatingWebhookConfiguration {WEBHOOK_CONFIG}: 404 "
        f'mutatingwebhookconfigurations.admissionregistration.k8s.io "{WEBHOOK_CONFIG}" not found'
    )


def test_the_namespace_is_needed_outside_a_pod(
    kube: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    done = run_cli("certs", "--service", SVC, "--webhook-config", WEBHOOK_CONFIG)
    assert done.returncode == 2
    assert "--namespace is needed outside a pod" in done.stderr
    monkeypatch.setenv("POD_NAMESPACE", NS)
    assert run_cli("certs", "--service", SVC, "--webhook-config", WEBHOOK_CONFIG).returncode == 0
    assert secret_data(kube)["tls.crt"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, check=False)


# --- serve --self-signed ------------------------------------------------------------------


@pytest.fixture
def self_signed_server(kube: FakeKube, tmp_path: Path) -> Iterator[int]:
    """`image-backup serve --self-signed` with certFile and keyFile not there yet; its port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    server: dict[str, Any] = {
        "port": port,
        "certFile": str(tmp_path / "tls" / "serving.pem"),
        "keyFile": str(tmp_path / "keys" / "serving-key.pem"),
    }
    config = tmp_path / "config.yaml"
    # The registry does not need to answer for the server to listen.
    config.write_text(yaml.safe_dump({"backupRegistry": {"host": "127.0.0.1:1"}, "server": server}))
    process = subprocess.Popen(
        [
            *CLI,
            "serve",
            "--config",
            str(config),
            "--self-signed",
            "--namespace",
            NS,
            "--cert-check-interval",
            "0.3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                handshake(port, the_ca_bundle(kube))
                break
            except (OSError, KeyError, AssertionError):
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert Path(server["certFile"]).read_bytes() == secret_data(kube)["tls.crt"]
        assert Path(server["keyFile"]).read_bytes() == secret_data(kube)["tls.key"]
        yield port
        process.send_signal(signal.SIGTERM)
        _stdout, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def handshake(port: int, ca_bundle: bytes) -> x509.Certificate:
    """GET /healthz over TLS trusting only the caBundle, for the Service's name."""
    context = ssl.create_default_context(cadata=ca_bundle.decode())
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=HOSTNAME) as tls,
    ):
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := tls.recv(4096):
            answer += chunk
        peer = tls.getpeercert(binary_form=True)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert peer is not None
    return x509.load_der_x509_certificate(peer)


def test_serve_self_signed_answers_tls_trusting_the_ca_bundle(
    kube: FakeKube, self_signed_server: int
) -> None:
    served = handshake(self_signed_server, the_ca_bundle(kube))
    assert served == x509.load_pem_x509_certificate(secret_data(kube)["tls.crt"])
    wrong_name = ssl.create_default_context(cadata=the_ca_bundle(kube).decode())
    with (
        socket.create_connection(("127.0.0.1", self_signed_server), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        wrong_name.wrap_socket(raw, server_hostname="elsewhere.example.com")


def test_serve_self_signed_picks_up_a_renewal_without_restart(
    kube: FakeKube, self_signed_server: int
) -> None:
    first = handshake(self_signed_server, the_ca_bundle(kube))
    data = secret_data(kube)
    ca = KeyPair(data["ca.crt"], data["ca.key"])
    wrong = Stored(issue_serving(ca, "other", NS), ca)
    put_secret(kube, wrong)  # due for renewal: the running server renews it
    deadline = time.monotonic() + 20
    while (served := handshake(self_signed_server, the_ca_bundle(kube))) == first:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    renewed = x509.load_pem_x509_certificate(secret_data(kube)["tls.crt"])
    assert served == renewed
    assert renewed != x509.load_pem_x509_certificate(wrong.serving.cert)
