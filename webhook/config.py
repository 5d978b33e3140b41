"""The configuration file: one YAML document, validated with errors that name the key."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from .naming import Scheme
from .reference import InvalidReference, Reference
from .registry.endpoint import Endpoint
from .text import one_line

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_NAMESPACE = "image-backup"


class ConfigError(ValueError):
    """The configuration cannot be used; one line per problem, each naming its key."""


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True
    )


def _registry_host(value: str) -> str:
    try:
        parsed = Reference(value, "x/y")
    except InvalidReference as exc:
        raise ValueError(f"not a registry host: {exc.problem}") from None
    if parsed.registry != value:
        raise ValueError(f"not a registry host (would be read as {parsed.registry!r})")
    return value


class BackupRegistry(_Section):
    host: str
    prefix: str = ""
    path_style: Literal["nested", "flat"] = "nested"
    insecure: bool = False
    ca_file: FilePath | None = None

    _check_host = field_validator("host")(_registry_host)

    @field_validator("prefix")
    @classmethod
    def _strip_slashes(cls, value: str) -> str:
        return value.strip("/")

    @model_validator(mode="after")
    def _check_scheme(self) -> BackupRegistry:
        self.scheme()  # raises ValueError, reported against this section
        return self

    def scheme(self) -> Scheme:
        return Scheme(self.host, self.prefix, self.path_style)


class SourceRegistry(_Section):
    host: str
    endpoint: str | None = None
    insecure: bool = False
    ca_file: FilePath | None = None
    token_file: Path | None = None  # may appear later: a projected token is mounted at start

    _check_host = field_validator("host")(_registry_host)

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is not None and "://" in value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL, or host[:port]")
        return value

    @model_validator(mode="after")
    def _plain_http_needs_insecure(self) -> SourceRegistry:
        if self.endpoint and self.endpoint.startswith("http://") and not self.insecure:
            raise ValueError("a plain http:// endpoint needs insecure: true")
        return self


class Credentials(_Section):
    docker_config: FilePath | None = None
    # How long a workload's pull secrets are used before they are read again.
    pull_secrets_cache_seconds: float = Field(60.0, gt=0)


class CopySettings(_Section):
    concurrency: int = Field(8, ge=1, le=128)
    timeout_seconds: float = Field(600.0, gt=0)
    tag_cache_seconds: float = Field(60.0, ge=0)


class Records(_Section):
    """ImageBackup records, through which replicas share copies."""

    # A Copying record whose holder has not renewed it for this long is taken over.
    stale_after_seconds: float = Field(60.0, gt=0)
    heartbeat_seconds: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _heartbeat_within_staleness(self) -> Records:
        if self.heartbeat_seconds * 2 > self.stale_after_seconds:
            raise ValueError("heartbeatSeconds must be at most half of staleAfterSeconds")
        return self


class Server(_Section):
    address: str = "0.0.0.0"  # all IPv4 interfaces; "::" for IPv6 (and IPv4 where dual-stack)
    port: int = Field(8443, ge=1, le=65535)
    cert_file: Path = Path("/etc/image-backup/tls/tls.crt")
    key_file: Path = Path("/etc/image-backup/tls/tls.key")
    max_body_bytes: int = Field(3 * 1024 * 1024, ge=1024)
    # Longer than the kube-apiserver keeps an idle connection to a webhook (Go's
    # IdleConnTimeout, 90 s): were the server first, a review sent just as it closes would
    # fail. A client that has begun a request but not finished its headers by then is cut
    # off too (it holds the connection no longer than an idle one may).
    keep_alive_seconds: float = Field(120.0, gt=0)
    # The API server sends a review in one go; a body still arriving after this is answered
    # 408 and its connection closed.
    request_body_timeout_seconds: float = Field(10.0, gt=0)

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(
                "must be an IP address: 0.0.0.0 (all IPv4), :: (all IPv6) or one interface's"
            ) from None
        return value


def own_namespace() -> str | None:
    """The namespace this webhook runs in (downward API or the service-account mount), or
    None outside a pod."""
    namespace = os.environ.get("POD_NAMESPACE")
    if namespace:
        return namespace
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or None
    except OSError:
        return None


class Exclude(_Section):
    namespaces: list[str] = Field(
        default_factory=lambda: [own_namespace() or DEFAULT_NAMESPACE, "kube-system"]
    )
    images: list[str] = []  # glob patterns on the normalized reference


class Config(_Section):
    backup_registry: BackupRegistry
    registries: list[SourceRegistry] = []
    credentials: Credentials = Credentials()
    copy_settings: CopySettings = Field(CopySettings(), alias="copy")
    server: Server = Server()
    records: Records = Records()
    admission_budget_seconds: float = Field(25.0, gt=0)
    on_failure: Literal["deny", "allow"] = "deny"
    exclude: Exclude = Field(default_factory=Exclude)

    @field_validator("registries")
    @classmethod
    def _unique_hosts(cls, value: list[SourceRegistry]) -> list[SourceRegistry]:
        hosts = [r.host for r in value]
        duplicates = sorted({h for h in hosts if hosts.count(h) > 1})
        if duplicates:
            raise ValueError(f"host listed more than once: {', '.join(duplicates)}")
        return value

    def endpoints(self) -> list[Endpoint]:
        backup = self.backup_registry
        endpoints = {
            r.host: Endpoint(
                r.host,
                r.endpoint,
                r.insecure,
                str(r.ca_file) if r.ca_file else None,
                str(r.token_file) if r.token_file else None,
            )
            for r in self.registries
        }
        # The backup registry's own section wins: its TLS settings are what we push with.
        listed = endpoints.get(backup.host)
        endpoints[backup.host] = Endpoint(
            backup.host,
            listed.url if listed else None,
            backup.insecure,
            str(backup.ca_file) if backup.ca_file else None,
            listed.token_file if listed else None,
        )
        return list(endpoints.values())


def load(*paths: str | Path) -> Config:
    """The configuration in one file, or in several merged in order (see :func:`merged`)."""
    document: dict[str, object] = {}
    for path in paths:
        document = merged(document, _read(path))
    return parse(document, " + ".join(str(path) for path in paths))


def _read(path: str | Path) -> dict[str, object]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(path, text, exc)) from None
    if not isinstance(document, dict):
        raise ConfigError(f"config {path}: expected a mapping at the top level")
    return document


def merged(earlier: dict[str, object], later: dict[str, object]) -> dict[str, object]:
    """`later` laid over `earlier`: mappings merge key by key, lists are extended, any other
    value is replaced. So a second file (a kustomize overlay's) adds what it must, a source
    registry say, and every other setting still comes from the first."""
    result = dict(earlier)
    for key, value in later.items():
        before = result.get(key)
        if isinstance(before, dict) and isinstance(value, dict):
            result[key] = merged(before, value)
        elif isinstance(before, list) and isinstance(value, list):
            result[key] = before + value
        else:
            result[key] = value
    return result


def _yaml_error(path: str | Path, text: str, exc: yaml.YAMLError) -> str:
    """`FILE:LINE:COLUMN: not valid YAML: PROBLEM`, as compilers say it (yaml's own text
    names the file `<unicode string>` and spreads over several lines)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark and exc.problem:
        line, column, problem = exc.problem_mark.line, exc.problem_mark.column, exc.problem
    elif isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position)
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1)
        problem = f"character U+{exc.character:04X}: {exc.reason}"
    else:
        return f"{path}: not valid YAML: {one_line(str(exc))}"
    return f"{path}:{line + 1}:{column + 1}: not valid YAML: {one_line(problem)}"


def parse(document: dict[str, object], source: str = "config") -> Config:
    try:
        return Config.model_validate(document)
    except ValidationError as exc:
        lines = [f"{source}: {_key(e['loc'])}: {_message(e)}" for e in exc.errors()]
        raise ConfigError("\n".join(lines)) from None


def _key(location: tuple[int | str, ...]) -> str:
    key = ""
    for part in location:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key or "(top level)"


def _message(error: object) -> str:
    assert isinstance(error, dict)
    message = str(error["msg"])
    return message.removeprefix("Value error, ")
