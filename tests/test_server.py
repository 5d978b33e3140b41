"""The HTTPS server: endpoints, limits, TLS versions and certificate rotation, over real sockets.

The reviewer here is a stand-in; the review logic has its own tests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import aiohttp
import orjson
import pytest
import yaml
from cryptography import x509

from tests.support.tls import (
    TLSFiles,
    client_ssl_context,
    generate_tls,
    issue_server_certificate,
)
from webhook.admission.errors import BadReview
from webhook.metrics import Metrics
from webhook.server import INTERNAL_ERROR, Mode, WebhookServer
from webhook.tls import CertificateError, ReloadingCertificate

LIMIT = 4096
ANSWER_OF_2_BYTES = orjson.dumps(
    {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": "u-1", "allowed": True, "mode": "enforce", "bytes": 2},
    }
)
RETRY = 0.3  # readiness_retry_seconds
POLL = 0.05  # certificate poll interval


class StandInReviewer:
    """Echoes a minimal response; "bad" is a BadReview, "boom" a bug."""

    def __init__(self) -> None:
        self.reviews: list[tuple[bytes, Mode]] = []
        self.answers = False
        self.asked = 0
        self.gate = asyncio.Event()  # "slow" waits for it

    async def review(self, body: bytes, mode: Mode) -> bytes:
        self.reviews.append((body, mode))
        if body == b"bad":
            raise BadReview(400, "not an AdmissionReview:\n  expected a JSON object")
        if body == b"slow":
            await self.gate.wait()
        if body == b"boom":
            raise RuntimeError("token=s3cr3t\nsecond line")
        response = {"uid": "u-1", "allowed": True, "mode": mode, "bytes": len(body)}
        return orjson.dumps(
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
        )

    async def backup_registry_answers(self) -> bool:
        self.asked += 1
        return self.answers


class Served:
    def __init__(self, server: WebhookServer, reviewer: StandInReviewer, ca_file: str) -> None:
        self.server = server
        self.reviewer = reviewer
        self.ca_file = ca_file
        self.url = f"https://127.0.0.1:{server.port}"

    def session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(ssl=client_ssl_context(self.ca_file))
        return aiohttp.ClientSession(self.url, connector=connector)

    async def connect(self, context: ssl.SSLContext | None = None) -> Connection:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1",
            self.server.port,
            ssl=context or client_ssl_context(self.ca_file),
        )
        return Connection(reader, writer)


class Connection:
    """One raw HTTP/1.1 keep-alive connection, so a test knows it is the same one."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        fields = {"Host": "127.0.0.1", "Content-Length": str(len(body)), **(headers or {})}
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
        self.writer.write(head.encode() + b"\r\n" + body)
        return await self.response()

    async def response(self) -> tuple[int, bytes]:
        async with asyncio.timeout(5):
            raw = await self.reader.readuntil(b"\r\n\r\n")
            lines = raw.decode().split("\r\n")
            length = next(
                int(line.split(":", 1)[1])
                for line in lines
                if line.lower().startswith("content-length:")
            )
            return int(lines[0].split()[1]), await self.reader.readexactly(length)

    def serial(self) -> int:
        peer = self.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(peer).serial_number

    async def close(self) -> None:
        self.writer.close()
        with suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


def serial_of(cert_file: str | Path) -> int:
    return x509.load_pem_x509_certificate(Path(cert_file).read_bytes()).serial_number


@asynccontextmanager
async def running(
    pki: TLSFiles,
    cert_file: str,
    key_file: str,
    *,
    keep_alive: float = 60,
    body_timeout: float = 60,
) -> AsyncIterator[Served]:
    reviewer = StandInReviewer()
    certificate = ReloadingCertificate(cert_file, key_file, interval=POLL)
    server = WebhookServer(
        reviewer,
        Metrics(),
        certificate,
        host="127.0.0.1",
        port=0,
        max_body_bytes=LIMIT,
        keep_alive_seconds=keep_alive,
        body_timeout_seconds=body_timeout,
        readiness_retry_seconds=RETRY,
        shutdown_timeout=1,
    )
    await server.start()
    try:
        yield Served(server, reviewer, pki.ca_file)
    finally:
        await server.stop()


async def until(condition: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.fixture
def pki(tmp_path: Path) -> TLSFiles:
    return generate_tls(str(tmp_path / "pki"))


@pytest.fixture
async def webhook(pki: TLSFiles) -> AsyncIterator[Served]:
    async with running(pki, pki.cert_file, pki.key_file) as served:
        yield served


# --- endpoints ---------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "mode"), [("/mutate", "enforce"), ("/audit", "audit")])
async def test_review_answers_with_the_reviewers_bytes(
    webhook: Served, path: str, mode: Mode
) -> None:
    async with webhook.session() as session, session.post(path, data=b'{"x": 1}') as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        answer = await resp.read()
    assert orjson.loads(answer)["response"] == {
        "uid": "u-1",
        "allowed": True,
        "mode": mode,
        "bytes": 8,
    }
    assert webhook.reviewer.reviews == [(b'{"x": 1}', mode)]


async def test_wrong_method_is_405(webhook: Served) -> None:
    async with webhook.session() as session:
        for method, path in [("GET", "/mutate"), ("PUT", "/audit"), ("POST", "/healthz")]:
            async with session.request(method, path) as resp:
                assert resp.status == 405, (method, path)
                assert resp.headers["Allow"] == ("GET" if path == "/healthz" else "POST")
        async with session.get("/nowhere") as resp:
            assert resp.status == 404
        async with session.head("/healthz") as resp:
            assert resp.status == 200  # as GET, without the body
    assert webhook.reviewer.reviews == []


async def test_a_body_at_the_limit_is_reviewed_one_byte_more_is_413(webhook: Served) -> None:
    async with webhook.session() as session:
        async with session.post("/mutate", data=b"x" * LIMIT) as resp:
            assert resp.status == 200
        async with session.post("/mutate", data=b"x" * (LIMIT + 1)) as resp:
            assert resp.status == 413
            assert await resp.text() == f"request body larger than {LIMIT} bytes\n"
    assert [len(body) for body, _ in webhook.reviewer.reviews] == [LIMIT]


async def test_a_declared_length_over_the_limit_is_refused_before_any_body(
    webhook: Served,
) -> None:
    connection = await webhook.connect()
    # Headers only: an answer proves the server did not wait for the gigabyte.
    connection.writer.write(
        b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n"
    )
    status, _ = await connection.response()
    await connection.close()
    assert status == 413
    assert webhook.reviewer.reviews == []


async def test_a_chunked_body_is_cut_off_at_the_limit(webhook: Served) -> None:
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        while sent < 64 * LIMIT:
            sent += 1024
            yield b"x" * 1024

    async with webhook.session() as session:
        async with session.post("/mutate", data=endless()) as resp:
            assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
            assert resp.status == 413
        small = [b"{", b"}"]

        async def two_chunks() -> AsyncIterator[bytes]:
            for chunk in small:
                yield chunk

        async with session.post("/audit", data=two_chunks()) as resp:
            assert resp.status == 200
    assert webhook.reviewer.reviews == [(b"{}", "audit")]


async def test_bad_review_is_its_status_with_one_line(webhook: Served) -> None:
    async with webhook.session() as session, session.post("/mutate", data=b"bad") as resp:
        assert resp.status == 400
        assert resp.content_type == "text/plain"
        assert await resp.text() == "not an AdmissionReview: expected a JSON object\n"


async def test_a_bug_is_500_with_a_generic_line_and_the_traceback_in_the_log(
    webhook: Served, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="image_backup.server"):
        async with webhook.session() as session, session.post("/audit", data=b"boom") as resp:
            assert resp.status == 500
            body = await resp.text()
    assert body == INTERNAL_ERROR + "\n"
    assert "s3cr3t" not in body and "Traceback" not in body and "RuntimeError" not in body
    [record] = [r for r in caplog.records if r.exc_info]
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)


# --- slow and vanishing clients ----------------------------------------------------------


async def closed_by_the_server(connection: Connection) -> bool:
    """True once the server has closed the connection (EOF), False if it is still open
    after a few seconds (far longer than the deadlines under test)."""
    try:
        async with asyncio.timeout(5):
            return await connection.reader.read() == b""
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        return True


async def test_an_idle_keep_alive_connection_is_closed_after_the_timeout(pki: TLSFiles) -> None:
    async with running(pki, pki.cert_file, pki.key_file, keep_alive=0.3) as served:
        connection = await served.connect()
        assert await connection.request("GET", "/healthz") == (200, b"ok\n")
        assert await closed_by_the_server(connection)
        # Requests sent without pausing are served as before.
        connection = await served.connect()
        for _ in range(3):
            assert await connection.request("POST", "/mutate", b"{}") == (200, ANSWER_OF_2_BYTES)
        await connection.close()


async def test_headers_trickling_in_are_cut_off(pki: TLSFiles) -> None:
    async with running(pki, pki.cert_file, pki.key_file, keep_alive=0.3) as served:
        connection = await served.connect()
        head = b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n"

        async def trickle() -> None:
            for byte in head:
                connection.writer.write(bytes([byte]))
                await asyncio.sleep(0.1)

        sending = asyncio.create_task(trickle())
        try:
            assert await closed_by_the_server(connection)
            assert not sending.done()  # cut off mid-head, long before the last byte
        finally:
            sending.cancel()
        assert served.reviewer.reviews == []


async def test_a_body_trickling_in_is_answered_408_and_closed(pki: TLSFiles) -> None:
    async with running(pki, pki.cert_file, pki.key_file, body_timeout=0.3) as served:
        connection = await served.connect()
        connection.writer.write(
            b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n"
        )

        async def trickle() -> None:
            for _ in range(100):
                connection.writer.write(b" ")
                await asyncio.sleep(0.1)

        sending = asyncio.create_task(trickle())
        try:
            status, body = await connection.response()
            assert (status, body) == (408, b"request body not received within 0.3 s\n")
            assert await closed_by_the_server(connection)
        finally:
            sending.cancel()
        assert served.reviewer.reviews == []
        # A body sent at once is in time.
        connection = await served.connect()
        assert await connection.request("POST", "/mutate", b"{}") == (200, ANSWER_OF_2_BYTES)
        await connection.close()


async def test_a_client_leaving_mid_body_is_one_info_line(
    webhook: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    context = client_ssl_context(webhook.ca_file)

    def half_a_request() -> None:  # a plain socket, closed the moment the bytes are out
        with (
            socket.create_connection(("127.0.0.1", webhook.server.port)) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            tls.sendall(b"x" * 50)

    await asyncio.to_thread(half_a_request)
    await until(lambda: bool(caplog.records))
    await asyncio.sleep(0.1)  # anything logged after the first line shows up too
    [record] = caplog.records
    assert record.levelno == logging.INFO and record.exc_info is None
    assert orjson.loads(record.getMessage())["event"] == "request_body_incomplete"
    assert webhook.reviewer.reviews == []


async def test_healthz(webhook: Served) -> None:
    async with webhook.session() as session, session.get("/healthz") as resp:
        assert (resp.status, await resp.text()) == (200, "ok\n")


async def test_readyz_waits_for_the_backup_registry_then_stays_ready(webhook: Served) -> None:
    reviewer = webhook.reviewer
    async with webhook.session() as session:
        async with session.get("/readyz") as resp:
            assert resp.status == 503
            reason = await resp.text()
            assert reason.count("\n") == 1 and "backup registry" in reason
        assert reviewer.asked == 1
        for _ in range(5):  # probes within the retry interval do not ask again
            async with session.get("/readyz") as resp:
                assert resp.status == 503
        assert reviewer.asked == 1

        reviewer.answers = True
        async with session.get("/readyz") as resp:
            assert resp.status == 503  # still the cached "no"
        await asyncio.sleep(RETRY)
        async with session.get("/readyz") as resp:
            assert (resp.status, await resp.text()) == (200, "ok\n")
        assert reviewer.asked == 2

        reviewer.answers = False  # once ready, a registry hiccup does not unready the pod
        await asyncio.sleep(RETRY)
        async with session.get("/readyz") as resp:
            assert resp.status == 200
        assert reviewer.asked == 2


async def test_metrics_are_prometheus_text(webhook: Served) -> None:
    async with webhook.session() as session, session.get("/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        text = await resp.text()
    assert "# TYPE image_backup_admissions_total counter" in text


async def test_stopping_lets_a_review_in_flight_finish(pki: TLSFiles) -> None:
    async with running(pki, pki.cert_file, pki.key_file) as served:
        connection = await served.connect()
        answer = asyncio.create_task(connection.request("POST", "/mutate", b"slow"))
        await until(lambda: len(served.reviewer.reviews) == 1)
        stopping = asyncio.create_task(served.server.stop())
        await asyncio.sleep(0.1)
        with pytest.raises(OSError):  # no longer accepting
            await served.connect()
        assert not stopping.done()
        served.reviewer.gate.set()
        status, _ = await answer
        await stopping
        assert status == 200
        await connection.close()


# --- TLS ---------------------------------------------------------------------------------


def pinned(ca_file: str, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = client_ssl_context(ca_file)
    context.minimum_version = context.maximum_version = version
    if version < ssl.TLSVersion.TLSv1_2:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client at least offer it
    return context


MODERN = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]
OLD = [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1]


@pytest.mark.parametrize("version", MODERN, ids=lambda v: v.name)
async def test_tls_1_2_and_1_3_are_accepted(webhook: Served, version: ssl.TLSVersion) -> None:
    connection = await webhook.connect(pinned(webhook.ca_file, version))
    expected = {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
    assert connection.writer.get_extra_info("ssl_object").version() == expected
    assert await connection.request("GET", "/healthz") == (200, b"ok\n")
    await connection.close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("version", OLD, ids=lambda v: v.name)
async def test_older_tls_is_refused(
    webhook: Served, pki: TLSFiles, version: ssl.TLSVersion
) -> None:
    # Control: the same client does complete a handshake with a server that allows it.
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.minimum_version = ssl.TLSVersion.TLSv1
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    permissive.load_cert_chain(pki.cert_file, pki.key_file)
    control = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0, ssl=permissive)
    async with control:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", control.sockets[0].getsockname()[1], ssl=pinned(pki.ca_file, version)
        )
        assert writer.get_extra_info("ssl_object").version() in ("TLSv1", "TLSv1.1")
        writer.close()

    with pytest.raises((ssl.SSLError, ConnectionError)):
        await webhook.connect(pinned(webhook.ca_file, version))


# --- certificate rotation ----------------------------------------------------------------


def replace_pair(pki: TLSFiles, cert_file: str, key_file: str) -> int:
    """Like cert-manager writing a Secret's files: new files, then an atomic rename each."""
    serial = issue_server_certificate(pki, cert_file + ".new", key_file + ".new")
    os.replace(key_file + ".new", key_file)
    os.replace(cert_file + ".new", cert_file)
    return serial


class SecretVolume:
    """The kubelet's layout: tls.crt -> ..data/tls.crt, ..data -> ..<timestamp>/."""

    def __init__(self, root: Path, pki: TLSFiles) -> None:
        self.root = root
        self.pki = pki
        self.generation = 0
        root.mkdir()
        self.serial = self.update()
        for name in ("tls.crt", "tls.key"):
            (root / name).symlink_to(f"..data/{name}")
        self.cert_file, self.key_file = str(root / "tls.crt"), str(root / "tls.key")

    def update(self) -> int:
        """Write a new timestamped dir, swap ..data atomically, delete the old dir."""
        self.generation += 1
        new = self.root / f"..2024_01_01_00_00_0{self.generation}"
        new.mkdir()
        serial = issue_server_certificate(self.pki, str(new / "tls.crt"), str(new / "tls.key"))
        data = self.root / "..data"
        old = data.resolve() if data.is_symlink() else None
        (self.root / "..data_tmp").symlink_to(new.name)
        os.replace(self.root / "..data_tmp", data)
        if old is not None:
            shutil.rmtree(old)
        return serial


async def assert_rotation_keeps_the_connection(
    served: Served, old: int, rotate: Callable[[], int]
) -> None:
    kept = await served.connect()
    assert await kept.request("GET", "/healthz") == (200, b"ok\n")
    assert kept.serial() == old
    generation = served.server.certificate.generation

    new = rotate()
    await until(lambda: served.server.certificate.generation > generation)

    # The established connection goes on, unbroken, with the certificate it started with...
    assert await kept.request("POST", "/mutate", b"{}") == (200, mutate_answer())
    assert kept.serial() == old
    # ...and every new handshake gets the new one.
    fresh = await served.connect()
    assert fresh.serial() == new != old
    assert await fresh.request("GET", "/healthz") == (200, b"ok\n")
    await kept.close()
    await fresh.close()


def mutate_answer() -> bytes:
    """What the stand-in answers for `{}` on /mutate."""
    response = {"uid": "u-1", "allowed": True, "mode": "enforce", "bytes": 2}
    return orjson.dumps(
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
    )


async def test_renamed_files_are_served_to_new_connections_only(pki: TLSFiles) -> None:
    async with running(pki, pki.cert_file, pki.key_file) as served:
        await assert_rotation_keeps_the_connection(
            served,
            serial_of(pki.cert_file),
            lambda: replace_pair(pki, pki.cert_file, pki.key_file),
        )


async def test_a_secret_volume_update_is_served_to_new_connections_only(
    pki: TLSFiles, tmp_path: Path
) -> None:
    volume = SecretVolume(tmp_path / "secret", pki)
    async with running(pki, volume.cert_file, volume.key_file) as served:
        await assert_rotation_keeps_the_connection(served, volume.serial, volume.update)
        await assert_rotation_keeps_the_connection(
            served, serial_of(volume.cert_file), volume.update
        )


async def test_a_garbage_certificate_keeps_the_old_one_serving(
    pki: TLSFiles, caplog: pytest.LogCaptureFixture
) -> None:
    old = serial_of(pki.cert_file)
    async with running(pki, pki.cert_file, pki.key_file) as served:
        certificate = served.server.certificate
        Path(pki.cert_file + ".new").write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n")
        os.replace(pki.cert_file + ".new", pki.cert_file)
        await until(lambda: certificate.last_error is not None)
        assert certificate.last_error == f"{pki.cert_file} is not a PEM certificate"
        await asyncio.sleep(5 * POLL)
        rejections = [r for r in caplog.records if "certificate_rejected" in r.getMessage()]
        assert len(rejections) == 1  # one line, not one per poll

        connection = await served.connect()
        assert connection.serial() == old
        assert await connection.request("GET", "/healthz") == (200, b"ok\n")
        await connection.close()

        # A good pair later is picked up.
        new = replace_pair(pki, pki.cert_file, pki.key_file)
        await until(lambda: certificate.last_error is None)
        connection = await served.connect()
        assert connection.serial() == new
        await connection.close()


async def test_a_certificate_without_its_key_yet_keeps_the_old_pair(pki: TLSFiles) -> None:
    """A renewal writing the certificate first and the key a moment later."""
    old = serial_of(pki.cert_file)
    async with running(pki, pki.cert_file, pki.key_file) as served:
        certificate = served.server.certificate
        new = issue_server_certificate(pki, pki.cert_file + ".new", pki.key_file + ".new")
        os.replace(pki.cert_file + ".new", pki.cert_file)
        await until(lambda: certificate.last_error is not None)
        assert certificate.last_error is not None
        assert "key does not match the certificate" in certificate.last_error

        connection = await served.connect()
        assert connection.serial() == old  # the live context was not half-updated
        await connection.close()

        os.replace(pki.key_file + ".new", pki.key_file)
        await until(lambda: certificate.last_error is None)
        connection = await served.connect()
        assert connection.serial() == new
        await connection.close()


# --- start-up ----------------------------------------------------------------------------


def test_a_missing_or_broken_certificate_is_a_one_line_error(pki: TLSFiles, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.crt")
    with pytest.raises(CertificateError) as caught:
        ReloadingCertificate(missing, pki.key_file).load()
    assert str(caught.value) == f"cannot read certificate {missing}: No such file or directory"

    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key\n")
    with pytest.raises(CertificateError) as caught:
        ReloadingCertificate(pki.cert_file, garbage).load()
    assert str(caught.value) == f"{garbage} is not an unencrypted PEM private key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def serve_config(
    tmp_path: Path, pki: TLSFiles, cert_file: str, port: int, address: str | None = None
) -> str:
    path = tmp_path / "config.yaml"
    settings = {"port": port, "certFile": cert_file, "keyFile": pki.key_file}
    if address is not None:
        settings["address"] = address
    document = {"backupRegistry": {"host": "127.0.0.1:1"}, "server": settings}
    path.write_text(yaml.safe_dump(document))
    return str(path)


def test_serve_without_a_usable_certificate_is_bad_input(pki: TLSFiles, tmp_path: Path) -> None:
    """Exit 2 with one line, like every other mistake in what the command was given."""
    missing = str(tmp_path / "tls.crt")
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate\n")
    for cert_file, error in [
        (missing, f"cannot read certificate {missing}: No such file or directory"),
        (str(garbage), f"{garbage} is not a PEM certificate"),
    ]:
        config = serve_config(tmp_path, pki, cert_file, free_port())
        done = subprocess.run(
            [sys.executable, "-m", "webhook", "serve", "--config", config],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (done.returncode, done.stderr) == (2, f"image-backup: error: {error}\n")


@pytest.mark.parametrize(
    ("address", "reach", "listening"),
    [
        (None, "127.0.0.1", "0.0.0.0:{port}"),  # the default: every IPv4 interface
        ("127.0.0.2", "127.0.0.2", "127.0.0.2:{port}"),
        ("::1", "::1", "[::1]:{port}"),
    ],
)
def test_serve_runs_until_sigterm(
    pki: TLSFiles, tmp_path: Path, address: str | None, reach: str, listening: str
) -> None:
    port = free_port()
    config = serve_config(tmp_path, pki, pki.cert_file, port, address)
    process = subprocess.Popen(
        [sys.executable, "-m", "webhook", "serve", "--config", config],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        context = client_ssl_context(pki.ca_file)
        deadline = time.monotonic() + 30
        while True:
            try:
                with (
                    socket.create_connection((reach, port), timeout=5) as raw,
                    context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
                ):
                    tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    answer = b""
                    while chunk := tls.recv(4096):
                        answer += chunk
                break
            except (ConnectionRefusedError, ssl.SSLError):
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert answer.endswith(b"\r\n\r\nok\n")
        if address is not None:  # that address only
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    events = [orjson.loads(line) for line in stdout.splitlines()]
    server_events = [e for e in events if e["logger"] == "image_backup.server"]
    assert [e.get("event") for e in server_events] == ["listening", "stopping"]
    assert server_events[0]["address"] == listening.format(port=port)
    # No cluster here: said once, and serving goes on without one.
    assert [e["event"] for e in events if e["logger"] == "image_backup.cluster"] == [
        "no_kubernetes_api"
    ]


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /mutate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nxx\r\n",
        b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"BR\x00KEN\r\n\r\n",
    ],
    ids=["bad chunk size", "negative length", "not HTTP"],
)
async def test_a_malformed_request_is_400_and_one_info_line(
    webhook: Served, caplog: pytest.LogCaptureFixture, request_bytes: bytes
) -> None:
    """Bytes that are not HTTP are the client's fault: a 400 and at most one info line,
    never an error with a traceback."""
    caplog.set_level(logging.INFO)
    context = client_ssl_context(webhook.ca_file)

    def send() -> bytes:
        with (
            socket.create_connection(("127.0.0.1", webhook.server.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(request_bytes)
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
            return answer

    answer = await asyncio.to_thread(send)
    await asyncio.sleep(0.2)  # anything logged after the answer shows up too
    assert re.match(rb"HTTP/1\.[01] 400 ", answer), answer[:100]
    assert [r for r in caplog.records if r.levelno > logging.INFO or r.exc_info] == []
    if request_bytes.startswith(b"POST"):  # not HTTP at all is aiohttp's debug noise
        [record] = caplog.records
        assert orjson.loads(record.getMessage())["event"] == "request_malformed"
    assert webhook.reviewer.reviews == []
