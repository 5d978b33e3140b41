"""A private CA and the webhook's serving certificate (ECDSA P-256), as PEM.

Pure: no Kubernetes, no files. Everything takes ``now`` so that lifetimes of seconds can be
tested; the defaults are what a cluster wants.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Kubernetes nodes' clocks drift a little: a certificate is valid from a moment ago.
BACKDATE = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class Validity:
    """How long certificates live, and how long before their end they are renewed."""

    ca: datetime.timedelta = datetime.timedelta(days=5 * 365)
    serving: datetime.timedelta = datetime.timedelta(days=365)
    renew_before: datetime.timedelta = datetime.timedelta(days=30)


DEFAULT_VALIDITY = Validity()


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both PEM."""

    cert: bytes
    key: bytes


def dns_names(service: str, namespace: str) -> list[str]:
    """Every name the API server may use for the webhook's Service."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def create_ca(
    validity: Validity = DEFAULT_VALIDITY, now: datetime.datetime | None = None
) -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    now = now or _now()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "image-backup webhook CA")])
    public = key.public_key()
    cert = (
        _builder(name, name, public, now, now + validity.ca)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(_cert_pem(cert), _key_pem(key))


def issue_serving(
    ca: KeyPair,
    service: str,
    namespace: str,
    validity: Validity = DEFAULT_VALIDITY,
    now: datetime.datetime | None = None,
) -> KeyPair:
    """A serving certificate signed by ``ca``; it never outlives the CA."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    ca_key = _load_key(ca.key)
    key = ec.generate_private_key(ec.SECP256R1())
    now = now or _now()
    names = dns_names(service, namespace)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[2])])
    not_after = min(now + validity.serving, ca_cert.not_valid_after_utc)
    cert = (
        _builder(subject, ca_cert.subject, key.public_key(), now, not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(_cert_pem(cert), _key_pem(key))


def ca_renewal_reason(
    ca: KeyPair, validity: Validity = DEFAULT_VALIDITY, now: datetime.datetime | None = None
) -> str | None:
    """Why the CA must be replaced, or None while it can go on signing."""
    try:
        cert = x509.load_pem_x509_certificate(ca.cert)
        key = _load_key(ca.key)
    except (ValueError, TypeError):
        return "the CA certificate or key is not readable PEM"
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        return "the CA certificate is not a CA"
    if not _same_key(cert, key):
        return "the CA key does not match the CA certificate"
    return _expiry_reason("CA", cert, validity, now or _now())


def serving_renewal_reason(
    serving: KeyPair,
    ca_cert: bytes,
    service: str,
    namespace: str,
    validity: Validity = DEFAULT_VALIDITY,
    now: datetime.datetime | None = None,
) -> str | None:
    """Why the serving pair must be reissued, or None while it can be served as it is."""
    try:
        cert = x509.load_pem_x509_certificate(serving.cert)
        key = _load_key(serving.key)
        ca = x509.load_pem_x509_certificate(ca_cert)
    except (ValueError, TypeError):
        return "the certificate, key or CA is not readable PEM"
    if not _same_key(cert, key):
        return "the key does not match the certificate"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "the certificate is not signed by the CA"
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = x509.SubjectAlternativeName([])
    if sorted(names.get_values_for_type(x509.DNSName)) != sorted(dns_names(service, namespace)):
        return f"the certificate is not for the Service {service}.{namespace}"
    return _expiry_reason("certificate", cert, validity, now or _now())


def still_valid(cert_pem: bytes, now: datetime.datetime | None = None) -> bool:
    """Whether a certificate is readable and within its validity period."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return False
    now = now or _now()
    return cert.not_valid_before_utc <= now < cert.not_valid_after_utc


def _expiry_reason(
    what: str, cert: x509.Certificate, validity: Validity, now: datetime.datetime
) -> str | None:
    left = cert.not_valid_after_utc - now
    if left <= validity.renew_before:
        return f"the {what} expires at {cert.not_valid_after_utc.isoformat()}"
    if cert.not_valid_before_utc > now:
        return f"the {what} is not valid before {cert.not_valid_before_utc.isoformat()}"
    return None


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an EC private key")
    return key


def _same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    return cert.public_key() == key.public_key()


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
