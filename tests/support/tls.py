"""Throw-away TLS material for tests: a CA and a loopback server certificate (EC P-256)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "TLSFiles",
    "client_ssl_context",
    "generate_tls",
    "issue_server_certificate",
    "load_private_key",
    "self_signed_certificate",
    "server_ssl_context",
]

_VALIDITY = datetime.timedelta(days=2)
_BACKDATE = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class TLSFiles:
    """Paths of the PEM files written by :func:`generate_tls`."""

    ca_file: str  # ca.crt
    cert_file: str  # server.crt (leaf only)
    key_file: str  # server.key (PKCS#8, unencrypted)
    directory: str
    ca_key_file: str = ""  # ca.key, for issue_server_certificate


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(path: str, data: bytes, mode: int = 0o644) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(path: str) -> ec.EllipticCurvePrivateKey:
    with open(path, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{path}: not an EC private key")
    return key


def self_signed_certificate(
    key: ec.EllipticCurvePrivateKey, common_name: str, *, ca: bool = False
) -> x509.Certificate:
    """A self-signed certificate for ``key`` (used e.g. for the token-signing key)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = _builder(key, name, name, ca=ca, key_agreement=False)
    return builder.sign(key, hashes.SHA256())


def _builder(
    key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    issuer: x509.Name,
    *,
    ca: bool,
    key_agreement: bool,
) -> x509.CertificateBuilder:
    """What every test certificate has: validity, constraints, key usage, key identifier."""
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=key_agreement,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def generate_tls(directory: str) -> TLSFiles:
    """Write ``ca.crt``, ``ca.key``, ``server.crt`` and ``server.key`` into ``directory``.

    The server certificate is valid for ``127.0.0.1`` (IP SAN), ``::1`` and ``localhost``.
    Files already present are reused, so calling this twice on one directory is cheap.
    """
    os.makedirs(directory, exist_ok=True)
    files = TLSFiles(
        ca_file=os.path.join(directory, "ca.crt"),
        cert_file=os.path.join(directory, "server.crt"),
        key_file=os.path.join(directory, "server.key"),
        directory=directory,
        ca_key_file=os.path.join(directory, "ca.key"),
    )
    paths = (files.ca_file, files.cert_file, files.key_file, files.ca_key_file)
    if all(os.path.exists(p) for p in paths):
        return files

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = self_signed_certificate(ca_key, "image-backup-webhook test CA", ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _server_certificate(key, ca_cert, ca_key, "127.0.0.1")

    _write(files.key_file, _key_pem(key), 0o600)
    _write(files.cert_file, cert.public_bytes(serialization.Encoding.PEM))
    _write(files.ca_file, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(files.ca_key_file, _key_pem(ca_key), 0o600)
    return files


def issue_server_certificate(
    files: TLSFiles, cert_file: str, key_file: str, *, common_name: str = "127.0.0.1"
) -> int:
    """Write a fresh key and loopback server certificate from the CA of ``files``.

    For certificate rotation: it is trusted like the first one but has its own key and
    serial number, which is returned.
    """
    with open(files.ca_file, "rb") as f:
        ca_cert = x509.load_pem_x509_certificate(f.read())
    ca_key = load_private_key(files.ca_key_file)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _server_certificate(key, ca_cert, ca_key, common_name)
    _write(key_file, _key_pem(key), 0o600)
    _write(cert_file, cert.public_bytes(serialization.Encoding.PEM))
    return cert.serial_number


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
) -> x509.Certificate:
    """Valid for ``127.0.0.1`` (IP SAN), ``::1`` and ``localhost``."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return (
        _builder(key, subject, ca_cert.subject, ca=False, key_agreement=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                    x509.DNSName("localhost"),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def client_ssl_context(ca_file: str) -> ssl.SSLContext:
    """A verifying client context trusting only ``ca_file``."""
    return ssl.create_default_context(cafile=ca_file)


def server_ssl_context(files: TLSFiles) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(files.cert_file, files.key_file)
    return ctx
