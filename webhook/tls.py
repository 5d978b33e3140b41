"""The serving certificate, re-read whenever its files change on disk.

cert-manager renews certificates and the kubelet swaps a Secret volume's ``..data`` symlink;
the webhook must pick the new pair up without a restart and without dropping connections.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .events import event_message

log = logging.getLogger("image_backup.tls")

# (st_ino, st_mtime_ns, st_size) of the certificate and of the key, symlinks followed.
_Stamp = tuple[tuple[int, int, int], tuple[int, int, int]]


class CertificateError(Exception):
    """The certificate or key cannot be used; the message is one line naming the file."""


def server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class ReloadingCertificate:
    """One server ``SSLContext`` whose certificate follows ``cert_file`` and ``key_file``.

    The context itself is never replaced, only reloaded: the listening socket keeps it, each
    new handshake takes the pair current at that moment, and established connections keep the
    one they started with. A changed pair is first loaded into a scratch context, because a
    certificate whose key does not match (or is not written yet) would leave the live context
    with a certificate and no key.

    Everything runs on the event loop thread: handshakes read the context there too, and
    loading two small PEM files takes well under a millisecond.
    """

    def __init__(
        self,
        cert_file: str | os.PathLike[str],
        key_file: str | os.PathLike[str],
        *,
        interval: float = 1.0,
    ) -> None:
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)
        self.interval = interval
        self.context = server_context()
        self.loaded = False
        self.generation = 0  # pairs that went live, the first included
        self.last_error: str | None = None  # why the files on disk are not being served
        self._seen: _Stamp | None = None

    def load(self) -> None:
        """Load the pair now (at start-up); raises CertificateError."""
        try:
            self._seen = self._stamp()
        except OSError as exc:
            raise CertificateError(self._describe(exc)) from None
        error = self._reload()
        if error is not None:
            raise CertificateError(error)

    def poll(self) -> bool:
        """Reload if either file changed since the last attempt; True if a new pair went live.

        A pair that fails is logged once and retried when the files change again.
        """
        try:
            stamp = self._stamp()
        except OSError as exc:
            self._seen = None  # whatever comes back is new
            self._reject(self._describe(exc))
            return False
        if stamp == self._seen:
            return False
        self._seen = stamp
        error = self._reload()
        if error is not None:
            self._reject(error)
            return False
        log.info(event_message("certificate_reloaded", certFile=str(self.cert_file)))
        return True

    async def watch(self) -> None:
        """Poll until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.poll()
            except Exception:
                log.exception(event_message("certificate_watch_failed"))

    def _stamp(self) -> _Stamp:
        cert, key = os.stat(self.cert_file), os.stat(self.key_file)
        return (
            (cert.st_ino, cert.st_mtime_ns, cert.st_size),
            (key.st_ino, key.st_mtime_ns, key.st_size),
        )

    def _reload(self) -> str | None:
        try:
            server_context().load_cert_chain(self.cert_file, self.key_file)
        except OSError as exc:
            return self._describe(exc)
        try:
            self.context.load_cert_chain(self.cert_file, self.key_file)
        except OSError as exc:
            # The files changed between the two reads; the live context may hold half a pair.
            self._seen = None
            return self._describe(exc)
        self.loaded = True
        self.generation += 1
        self.last_error = None
        return None

    def _reject(self, error: str) -> None:
        if error != self.last_error:
            log.warning(
                event_message("certificate_rejected", error=f"{error}; keeping the previous one")
            )
        self.last_error = error

    def _describe(self, exc: OSError) -> str:
        """One line naming the file at fault (OpenSSL only says "PEM lib")."""
        try:
            cert = self.cert_file.read_bytes()
        except OSError as err:
            return f"cannot read certificate {self.cert_file}: {err.strerror}"
        try:
            key = self.key_file.read_bytes()
        except OSError as err:
            return f"cannot read key {self.key_file}: {err.strerror}"
        try:
            x509.load_pem_x509_certificates(cert)
        except ValueError:
            return f"{self.cert_file} is not a PEM certificate"
        try:
            serialization.load_pem_private_key(key, password=None)
        except (ValueError, TypeError):
            return f"{self.key_file} is not an unencrypted PEM private key"
        reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
        if reason == "KEY_VALUES_MISMATCH":
            reason = "key does not match the certificate"
        return f"cannot use {self.cert_file} with {self.key_file}: {reason}"
