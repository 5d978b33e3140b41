"""The configuration file: YAML, validated with msgspec; every problem is listed by its key.

msgspec stops at a document's first problem, so `parse` converts each field on its own
(sections key by key, lists item by item) and reports all it finds; rules that involve
several fields run when a section is built (`__post_init__`). msgspec is already what reads
admission reviews, and it loads in a few milliseconds: every command reads a configuration
first, and start-up is most of a small `image-backup copy`.
"""

from __future__ import annotations

import ipaddress
import os
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from .naming import Scheme
from .reference import InvalidReference, Reference
from .registry.endpoint import Endpoint
from .text import one_line, quoted

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_NAMESPACE = "image-backup"

Seconds = Annotated[float, msgspec.Meta(gt=0)]


class ConfigError(ValueError):
    """The configuration cannot be used; one line per problem, each naming its key."""


class Invalid(ValueError):
    """A section's rule is broken; `key` (a field's name) says where, else the section."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class _Section(
    msgspec.Struct, rename="camel", forbid_unknown_fields=True, frozen=True, kw_only=True
):
    pass


def _registry_host(value: str) -> None:
    try:
        parsed = Reference(value, "x/y")
    except InvalidReference as exc:
        raise Invalid(f"not a registry host: {exc.problem}", "host") from None
    if parsed.registry != value:
        raise Invalid(f"not a registry host (would be read as {parsed.registry!r})", "host")


def _file(path: str | None, key: str) -> None:
    """Files named in the configuration exist when it is read: a typo fails at start."""
    if path is not None and not os.path.isfile(path):
        raise Invalid("no such file" if not os.path.exists(path) else "not a file", key)


class BackupRegistry(_Section, frozen=True):
    host: str
    prefix: str = ""
    path_style: Literal["nested", "flat"] = "nested"
    insecure: bool = False
    ca_file: str | None = None

    def __post_init__(self) -> None:
        _registry_host(self.host)
        _file(self.ca_file, "caFile")
        msgspec.structs.force_setattr(self, "prefix", self.prefix.strip("/"))
        self.scheme()  # raises ValueError, reported against this section

    def scheme(self) -> Scheme:
        return Scheme(self.host, self.prefix, self.path_style)


class SourceRegistry(_Section, frozen=True):
    host: str
    endpoint: str | None = None
    insecure: bool = False
    ca_file: str | None = None
    token_file: str | None = None  # may appear later: a projected token is mounted at start
    # Anyone may pull from it: its backups may be given to any namespace when it is gone.
    public: bool = False

    def __post_init__(self) -> None:
        _registry_host(self.host)
        _file(self.ca_file, "caFile")
        endpoint = self.endpoint
        if endpoint is None:
            return
        if "://" in endpoint and not endpoint.startswith(("http://", "https://")):
            raise Invalid("must be an http:// or https:// URL, or host[:port]", "endpoint")
        if endpoint.startswith("http://") and not self.insecure:
            raise Invalid("a plain http:// endpoint needs insecure: true")


class Credentials(_Section, frozen=True):
    docker_config: str | None = None
    # How long a workload's pull secrets are used before they are read again.
    pull_secrets_cache_seconds: Seconds = 60.0

    def __post_init__(self) -> None:
        _file(self.docker_config, "dockerConfig")


class CopySettings(_Section, frozen=True):
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=128)] = 8
    timeout_seconds: Seconds = 600.0
    tag_cache_seconds: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    # Signatures, attestations and SBOMs travel with each image (OCI 1.1 referrers and
    # cosign's tags); `artifact_types` limits which (empty: all).
    referrers: bool = True
    artifact_types: tuple[Annotated[str, msgspec.Meta(min_length=1)], ...] = ()


class Records(_Section, frozen=True):
    """ImageBackup records, through which replicas share copies."""

    # A Copying record whose holder has not renewed it for this long is taken over.
    stale_after_seconds: Seconds = 60.0
    heartbeat_seconds: Seconds = 10.0

    def __post_init__(self) -> None:
        if self.heartbeat_seconds * 2 > self.stale_after_seconds:
            raise Invalid("heartbeatSeconds must be at most half of staleAfterSeconds")


class Server(_Section, frozen=True):
    address: str = "0.0.0.0"  # all IPv4 interfaces; "::" for IPv6 (and IPv4 where dual-stack)
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8443
    cert_file: str = "/etc/image-backup/tls/tls.crt"
    key_file: str = "/etc/image-backup/tls/tls.key"
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 3 * 1024 * 1024
    # Longer than the kube-apiserver keeps an idle connection to a webhook (Go's
    # IdleConnTimeout, 90 s): were the server first, a review sent just as it closes would
    # fail. A client that has begun a request but not finished its headers by then is cut
    # off too (it holds the connection no longer than an idle one may).
    keep_alive_seconds: Seconds = 120.0
    # The API server sends a review in one go; a body still arriving after this is answered
    # 408 and its connection closed.
    request_body_timeout_seconds: Seconds = 10.0

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            raise Invalid(
                "must be an IP address: 0.0.0.0 (all IPv4), :: (all IPv6) or one interface's",
                "address",
            ) from None


class BackfillSettings(_Section, frozen=True):
    """The pass over what already runs (see webhook/backfill.py)."""

    interval_seconds: Annotated[float, msgspec.Meta(ge=0)] = 600.0  # 0: no pass in serve
    # Also update top-level workloads to run from their backups; each update rolls out.
    rewrite: bool = False
    rewrites_per_minute: Annotated[int, msgspec.Meta(ge=1)] = 10


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


class Exclude(_Section, frozen=True):
    namespaces: list[str] = msgspec.field(
        default_factory=lambda: [own_namespace() or DEFAULT_NAMESPACE, "kube-system"]
    )
    images: list[str] = []  # glob patterns on the normalized reference


class Config(_Section, frozen=True):
    backup_registry: BackupRegistry
    registries: list[SourceRegistry] = []
    credentials: Credentials = msgspec.field(default_factory=Credentials)
    copy_settings: CopySettings = msgspec.field(default_factory=CopySettings, name="copy")
    server: Server = msgspec.field(default_factory=Server)
    records: Records = msgspec.field(default_factory=Records)
    admission_budget_seconds: Seconds = 25.0
    on_failure: Literal["deny", "allow"] = "deny"
    fallback: Literal["backup", "deny"] = "backup"  # when a source cannot be read
    exclude: Exclude = msgspec.field(default_factory=Exclude)
    backfill: BackfillSettings = msgspec.field(default_factory=BackfillSettings)

    def __post_init__(self) -> None:
        hosts = [r.host for r in self.registries]
        duplicates = sorted({h for h in hosts if hosts.count(h) > 1})
        if duplicates:
            raise Invalid(f"host listed more than once: {', '.join(duplicates)}", "registries")

    def public_registries(self) -> frozenset[str]:
        """Source registries marked public: anyone may pull from them."""
        return frozenset(r.host for r in self.registries if r.public)

    def endpoints(self) -> list[Endpoint]:
        backup = self.backup_registry
        endpoints = {
            r.host: Endpoint(
                r.host,
                r.endpoint,
                r.insecure,
                r.ca_file,
                r.token_file,
            )
            for r in self.registries
        }
        # The backup registry's own section wins: its TLS settings are what we push with.
        listed = endpoints.get(backup.host)
        endpoints[backup.host] = Endpoint(
            backup.host,
            listed.url if listed else None,
            backup.insecure,
            backup.ca_file,
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
    problems: list[str] = []
    config = _converted(document, Config, "", problems)
    if problems:
        raise ConfigError("\n".join(f"{source}: {problem}" for problem in problems))
    assert isinstance(config, Config)
    return config


_INVALID: Any = object()


def _converted(value: object, kind: Any, key: str, problems: list[str]) -> Any:
    """`value` as `kind`, or _INVALID with every problem found appended to `problems`:
    sections key by key, lists item by item, anything else by msgspec in one go."""
    if isinstance(kind, type) and issubclass(kind, _Section):
        if not isinstance(value, dict):
            problems.append(f"{key or '(top level)'}: expected a mapping")
            return _INVALID
        return _section(value, kind, key, problems)
    if typing.get_origin(kind) is list and isinstance(value, list):
        (item,) = typing.get_args(kind)
        items = [_converted(v, item, f"{key}[{i}]", problems) for i, v in enumerate(value)]
        return _INVALID if any(i is _INVALID for i in items) else items
    if typing.get_origin(kind) is Literal:
        if value in typing.get_args(kind):
            return value
        choices = " or ".join(repr(choice) for choice in typing.get_args(kind))
        problems.append(f"{key}: must be {choices}, not {quoted(repr(value))}")
        return _INVALID
    try:
        return msgspec.convert(value, kind, strict=False)
    except msgspec.ValidationError as exc:
        message, _, at = str(exc).partition(" - at `$")
        problems.append(f"{key}{at.rstrip('`')}: {message}")
        return _INVALID


def _section(document: dict[Any, Any], kind: type[_Section], key: str, problems: list[str]) -> Any:
    fields = {f.encode_name: f for f in msgspec.structs.fields(kind)}
    found = len(problems)
    for name in document:
        if name not in fields:
            problems.append(f"{_join(key, str(name))}: unknown key")
    values = {}
    for name, field in fields.items():
        if name in document:
            values[field.name] = _converted(document[name], field.type, _join(key, name), problems)
        elif field.required:
            problems.append(f"{_join(key, name)}: required")
    if len(problems) > found:
        return _INVALID
    try:
        return kind(**values)  # defaults fill the rest; __post_init__ checks the whole section
    except ValueError as exc:
        where = _join(key, exc.key) if isinstance(exc, Invalid) and exc.key else key
        problems.append(f"{where or '(top level)'}: {exc}")
        return _INVALID


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name
