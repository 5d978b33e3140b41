"""Registry errors whose messages are fit to show an operator.

Every message names what failed and why; none ever contains a credential.
"""


class RegistryError(Exception):
    """A registry operation failed for a reason that retrying will not fix."""


class NotFound(RegistryError):
    """The manifest, blob or repository does not exist."""


class Unauthorized(RegistryError):
    """Credentials are missing, wrong, or lack the needed scope."""


class UnsupportedManifest(RegistryError):
    """A manifest we must not or cannot copy (legacy schema 1, unknown type)."""


class DigestMismatch(RegistryError):
    """Bytes did not hash to the digest they were fetched by."""


class TransientError(RegistryError):
    """A failure worth retrying: connection trouble, 5xx, 429, corruption in transit."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CorruptTransfer(TransientError, DigestMismatch):
    """Streamed bytes did not match their digest; a fresh attempt may get good bytes."""


class DeadlineExceeded(RegistryError):
    """The caller's deadline passed before the operation could finish."""
