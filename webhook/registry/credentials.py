"""Registry credentials from a docker `config.json`, matched the way kubelet does.

Credential helpers (`credsStore`, `credHelpers`) run external programs and are
not consulted: a webhook pod has none, and a pull secret never names one.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ..text import quoted

DOCKER_HUB = "docker.io"
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


class CredentialsError(ValueError):
    """The docker config file cannot be used; the message never quotes a secret."""


@dataclass(frozen=True, slots=True)
class Credential:
    """What a registry may be shown. Secrets are kept out of repr()."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    identity_token: str | None = field(default=None, repr=False)  # OAuth2 refresh token
    registry_token: str | None = field(default=None, repr=False)  # bearer token as-is


@dataclass(frozen=True, slots=True)
class _Entry:
    host_pattern: str  # host[:port], labels may be "*" globs
    path: str  # repository prefix ("" for the whole registry)
    credential: Credential

    def matches(self, host: str, repository: str) -> bool:
        return _host_matches(self.host_pattern, host) and (
            not self.path or repository == self.path or repository.startswith(self.path + "/")
        )

    def specificity(self) -> tuple[int, int]:
        # Exact hosts beat globs; longer repository prefixes beat shorter ones.
        return ("*" not in self.host_pattern, len(self.path))


@dataclass(frozen=True, slots=True)
class DockerConfig:
    entries: tuple[_Entry, ...] = ()

    @classmethod
    def load(cls, path: str | Path) -> DockerConfig:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise CredentialsError(f"cannot read docker config {path}: {exc.strerror}") from None
        return cls.parse(raw, f"docker config {path}")

    @classmethod
    def parse(cls, raw: bytes, where: str, *, legacy: bool = False) -> DockerConfig:
        """A `config.json` document, or with `legacy` a `.dockercfg` one (the `auths` map
        alone, as old `kubernetes.io/dockercfg` Secrets hold it). `where` names it in errors."""
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise CredentialsError(f"{where} is not valid JSON") from None
        if legacy:
            auths = document
        else:
            auths = document.get("auths", {}) if isinstance(document, dict) else None
        if not isinstance(auths, dict):
            raise CredentialsError(f"{where}: 'auths' must be an object")
        entries = []
        for key, value in auths.items():
            if not isinstance(value, dict):
                raise CredentialsError(f"{where}: auths[{quoted(key)!r}] must be an object")
            host, repo_path = _split_key(key)
            entries.append(_Entry(host, repo_path, _credential(value, key, where)))
        return cls(tuple(entries))

    def then(self, fallback: DockerConfig) -> DockerConfig:
        """This config first; `fallback` answers what this one does not match as well."""
        return DockerConfig(self.entries + fallback.entries)

    def lookup(self, host: str, repository: str = "") -> Credential | None:
        """The credential for a registry host (as in image references) and repository."""
        host = DOCKER_HUB if host.lower() in _DOCKER_HUB_ALIASES else host.lower()
        candidates = [e for e in self.entries if e.matches(host, repository)]
        if not candidates:
            return None
        # max() keeps the first of equals: earlier entries win ties (see then()).
        return max(candidates, key=_Entry.specificity).credential


def _split_key(key: str) -> tuple[str, str]:
    """`https://index.docker.io/v1/` -> (docker.io, ""); `reg.io/team` -> (reg.io, team)."""
    for scheme in ("https://", "http://"):
        if key.startswith(scheme):
            key = key[len(scheme) :]
    host, _, path = key.partition("/")
    host = host.lower()
    if host in _DOCKER_HUB_ALIASES:
        return DOCKER_HUB, ""
    path = path.strip("/")
    # Docker CLI keys carry API paths (`/v1/`, `/v2/`) that are not repositories.
    if path in ("v1", "v2"):
        path = ""
    return host, path


def _credential(value: dict[str, object], key: str, where: str) -> Credential:
    def text(name: str) -> str | None:
        item = value.get(name)
        return item if isinstance(item, str) and item else None

    username, password = text("username"), text("password")
    encoded = text("auth")
    if encoded:
        bad = CredentialsError(
            f"{where}: auths[{quoted(key)!r}].auth is not base64 of user:password"
        )
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise bad from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise bad
    return Credential(username, password, text("identitytoken"), text("registrytoken"))


def _host_matches(pattern: str, host: str) -> bool:
    """Kubelet semantics: same number of labels, each label a glob; ports must be equal."""
    pattern_name, pattern_port = _split_port(pattern)
    host_name, host_port = _split_port(host)
    if pattern_port != host_port:
        return False
    pattern_labels, host_labels = pattern_name.split("."), host_name.split(".")
    return len(pattern_labels) == len(host_labels) and all(
        fnmatch.fnmatchcase(h, p) for p, h in zip(pattern_labels, host_labels, strict=True)
    )


def _split_port(host: str) -> tuple[str, str]:
    # "[::1]:5000" has a port and "[::1]" has none; other hosts have at most one colon.
    if host.rsplit("]", 1)[-1].count(":") == 1:
        name, _, port = host.rpartition(":")
        return name, port
    return host, ""
