"""Where the backup of an image lives in the backup registry.

The mapping must be injective: if two source repositories shared a backup
repository, one workload could be pinned to the other's image. Both path styles
are therefore reversible encodings of the source host and path, never hashes or
truncations.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal, get_args

from webhook.reference import MAX_NAME_LENGTH, InvalidReference, Reference

PathStyle = Literal["nested", "flat"]

_DASH_RUN_OR_SLASH = re.compile(r"-+|/")
_DASH_RUN = re.compile(r"-+")
IPV6_GROUPS = 8


class BackupNameError(ValueError):
    """No valid backup name exists for a source reference."""


@dataclass(frozen=True, slots=True)
class Scheme:
    """Backups of `HOST/PATH` go to `host/prefix/...`, encoded per `path_style`.

    "nested" keeps the source path readable as `prefix/HOST'/PATH`; "flat" packs
    `HOST'/PATH` into one component for registries (Docker Hub) that only allow
    `namespace/name`.
    """

    host: str
    prefix: str
    path_style: PathStyle = "nested"

    def __post_init__(self) -> None:
        if self.path_style not in get_args(PathStyle):
            raise ValueError(f"invalid backup scheme: unknown path style {self.path_style!r}")
        # The smallest repository this scheme can produce must survive parsing
        # unchanged, otherwise backup references would not round-trip.
        sample = self._under_prefix("x" if self.path_style == "flat" else "x/y")
        try:
            normalized = Reference(self.host, sample).name
        except InvalidReference as error:
            raise ValueError(f"invalid backup scheme: {error.problem}") from None
        if normalized != f"{self.host}/{sample}":
            raise ValueError(
                f"invalid backup scheme: a backup named {self.host}/{sample}"
                f" would be read as {normalized}"
            )

    def repository_for(self, source: Reference) -> str:
        """The backup repository path (without host) for `source`."""
        if self.is_backup(source):
            raise BackupNameError("it is already a backup")
        path = f"{_encode_host(source.registry)}/{source.repository}"
        if self.path_style == "flat":
            path = _flatten(path)
        repository = self._under_prefix(path)
        name_length = len(self.host) + 1 + len(repository)
        if name_length > MAX_NAME_LENGTH:
            raise BackupNameError(
                f"its backup name would be {name_length} characters,"
                f" over the {MAX_NAME_LENGTH}-character limit"
            )
        return repository

    def reference_for(self, source: Reference, digest: str) -> Reference:
        """The digest-pinned backup of `source`; the source tag is kept for readability."""
        return Reference(self.host, self.repository_for(source), tag=source.tag, digest=digest)

    def source_of(self, repository: str) -> Reference:
        """The source repository whose backups live in `repository` (a path without host),
        as a reference with the default tag: the inverse of `repository_for`, for a
        restore that has nothing but the backup registry. Raises BackupNameError for a
        repository this scheme cannot have made."""
        path = repository
        if self.prefix:
            if not repository.startswith(f"{self.prefix}/"):
                raise BackupNameError(f"{repository} is not under the prefix {self.prefix}")
            path = repository.removeprefix(f"{self.prefix}/")
        if self.path_style == "flat":
            path = _unflatten(path)
        encoded_host, _, source_path = path.partition("/")
        try:
            source = Reference(_decode_host(encoded_host), source_path)
            made = self.repository_for(source)
        except (InvalidReference, ValueError) as error:
            raise BackupNameError(f"{repository} is not a backup name: {error}") from None
        if made != repository:  # a spelling the scheme never writes: not one of its backups
            raise BackupNameError(f"{repository} is not a backup name (it would be {made})")
        return source

    def is_backup(self, reference: Reference) -> bool:
        """Whether `reference` already lives in the backup area, so must not be backed up again."""
        if not same_registry(reference.registry, self.host):
            return False
        return not self.prefix or reference.repository.startswith(f"{self.prefix}/")

    def _under_prefix(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path


def same_registry(first: str, second: str) -> bool:
    """Whether two registry hosts are the same one (DNS case, IPv6 spellings)."""
    return _encode_host(first) == _encode_host(second)


def _encode_host(registry: str) -> str:
    """The registry host as one path component, identical for hosts that are the same.

    DNS names are case-insensitive, so they are lower-cased; IPv6 literals are
    written out in full, which also gives them at least seven "_" where a DNS
    host (at most one, before the port) has far fewer.
    """
    if registry.startswith("["):
        address, _, port_suffix = registry[1:].partition("]")
        host = ipaddress.IPv6Address(address).exploded
        return f"{host}{port_suffix}".replace(":", "_")
    return registry.lower().replace(":", "_")


def _decode_host(encoded: str) -> str:
    """The registry host `_encode_host` wrote: an IPv6 literal (eight groups) in brackets,
    compressed, with its port; any other host with ":" for "_" (a DNS name has no "_")."""
    parts = encoded.split("_")
    if len(parts) < IPV6_GROUPS:
        return encoded.replace("_", ":")
    address = ipaddress.IPv6Address(":".join(parts[:IPV6_GROUPS]))
    return f"[{address.compressed}]" + "".join(f":{port}" for port in parts[IPV6_GROUPS:])


def _unflatten(component: str) -> str:
    """The path `_flatten` packed into `component`: a lone "-" was "/", n + 1 dashes were n."""
    return _DASH_RUN.sub(lambda match: "/" if match[0] == "-" else match[0][1:], component)


def _flatten(path: str) -> str:
    """Encode `path` as a single component, reversibly.

    Components only ever meet at "/" between alphanumerics, so "/" can become
    "-" as long as every existing run of n dashes becomes n + 1 dashes.
    """
    return _DASH_RUN_OR_SLASH.sub(lambda match: "-" if match[0] == "/" else f"{match[0]}-", path)
