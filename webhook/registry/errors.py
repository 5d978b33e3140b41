"""Registry errors whose messages are fit to show an operator.

Every message says which registry failed (the source or the backup one), what was being
done there, and why, in words; none ever contains a credential. None names the image the
caller asked about: the caller (the admission, the CLI) names it once, before the message.
"""

from __future__ import annotations

import copy
import enum
from dataclasses import dataclass
from typing import Self


class Side(enum.Enum):
    SOURCE = "source"
    BACKUP = "backup"


@dataclass(frozen=True, slots=True)
class Operation:
    """What a request was for: `doing` (in words) on which registry, and which side it is."""

    doing: str  # "reading blob sha256:…", "writing the backup tag for sha256:…"
    host: str
    side: Side | None = None  # None: a registry in no particular role
    repository: str | None = None  # named for a backup: the caller does not know it

    def __str__(self) -> str:
        if self.side is Side.SOURCE:
            return f"{self.doing} from the source registry {self.host}"
        place = f" in {self.repository}" if self.repository else ""
        registry = f"the {self.side.value} registry" if self.side else "registry"
        return f"{self.doing}{place} on {registry} {self.host}"


class RegistryError(Exception):
    """A registry operation failed for a reason that retrying will not fix.

    `reason` says why in words; `operation`, once known, says where: the message is
    "{operation}: {reason}".
    """

    def __init__(self, reason: str, operation: Operation | None = None) -> None:
        super().__init__(f"{operation}: {reason}" if operation else reason)
        self.reason = reason
        self.operation = operation

    @property
    def host(self) -> str | None:
        return self.operation.host if self.operation else None

    @property
    def side(self) -> Side | None:
        return self.operation.side if self.operation else None

    def during(self, operation: Operation) -> Self:
        """This error as a failure of `operation`, unless it already names its own (a
        streamed body's source, failing inside an upload, keeps the source's)."""
        if self.operation is not None:
            return self
        named = copy.copy(self)
        named.operation = operation
        named.args = (f"{operation}: {self.reason}",)
        return named


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

    def __init__(
        self,
        reason: str,
        operation: Operation | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason, operation)
        self.retry_after = retry_after


class CorruptTransfer(TransientError, DigestMismatch):
    """Streamed bytes did not match their digest; a fresh attempt may get good bytes."""


class DeadlineExceeded(RegistryError):
    """The caller's deadline passed before the operation could finish."""
