"""Image references: parsing and normalization by the distribution/reference grammar.

Every `Reference` is held in canonical form, so two spellings of the same image
("nginx", "docker.io/library/nginx:latest", "index.docker.io/nginx") compare equal
and `parse(str(reference)) == reference` holds for any reference.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from dataclasses import dataclass

from .text import quoted

DOCKER_HUB = "docker.io"
LEGACY_DOCKER_HUB = "index.docker.io"
OFFICIAL_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255
MAX_TAG_LENGTH = 128
_DIGEST_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
# The longest text that can be a valid reference: a name of MAX_NAME_LENGTH once normalized
# (written with the legacy Docker Hub host, it is longer by as much), a tag and a digest.
MAX_REFERENCE_LENGTH = (
    MAX_NAME_LENGTH
    + len(LEGACY_DOCKER_HUB)
    - len(DOCKER_HUB)
    + len(":") + MAX_TAG_LENGTH
    + len("@sha512:") + _DIGEST_HEX_LENGTHS["sha512"]
)  # fmt: skip

_DOMAIN_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_REGISTRY = re.compile(
    rf"(?:{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*|\[(?P<ipv6>[a-fA-F0-9:]+)\])(?::[0-9]+)?"
)
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_LOWER_HEX = re.compile(r"[0-9a-f]+")
# Docker reads a bare 64-hex string as an image ID, so distribution refuses it as a name.
_IMAGE_ID = re.compile(r"[0-9a-f]{64}")


def _quote(text: str) -> str:
    """`text` in double quotes, escaped, and cut short if long (text.quoted)."""
    return json.dumps(quoted(text), ensure_ascii=False)


class InvalidReference(ValueError):
    """A string that is not a valid image reference; `problem` says why."""

    def __init__(self, reference: str, problem: str) -> None:
        super().__init__(f"invalid image reference {_quote(reference)}: {problem}")
        self.reference = reference
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Reference:
    """A validated image reference in canonical form.

    Construction normalizes like `docker pull` does: the legacy Docker Hub host
    becomes "docker.io", one-component Docker Hub paths gain "library/", and a
    reference with neither tag nor digest means ":latest".
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __post_init__(self) -> None:
        registry = DOCKER_HUB if self.registry == LEGACY_DOCKER_HUB else self.registry
        repository = self.repository
        if registry == DOCKER_HUB and "/" not in repository:
            repository = f"{OFFICIAL_NAMESPACE}/{repository}"
        tag = DEFAULT_TAG if self.tag is None and self.digest is None else self.tag
        object.__setattr__(self, "registry", registry)
        object.__setattr__(self, "repository", repository)
        object.__setattr__(self, "tag", tag)

        # Lengths first: they bound the work of the patterns.
        problem = (
            _name_length_problem(self.name)
            or _tag_length_problem(self.tag)
            or _registry_problem(self.registry)
            or _repository_problem(self.repository)
            or _tag_problem(self.tag)
            or _digest_problem(self.digest)
        )
        if problem:
            raise InvalidReference(str(self), problem)

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    def with_digest(self, digest: str) -> Reference:
        """The same image pinned to `digest`; the tag is kept for readability."""
        return dataclasses.replace(self, digest=digest)

    def with_tag(self, tag: str | None) -> Reference:
        """The same repository with `tag`; None drops it (":latest" if there is no digest)."""
        return dataclasses.replace(self, tag=tag)


def parse(text: str) -> Reference:
    """Parse `text` by the distribution/reference grammar into its canonical form."""
    if not text:
        raise InvalidReference(text, "reference is empty")
    if len(text) > MAX_REFERENCE_LENGTH:
        # Before anything else looks at it: a workload may carry megabytes here.
        raise InvalidReference(
            text,
            f"reference is {len(text)} characters, longer than any valid one"
            f" ({MAX_REFERENCE_LENGTH}: a {MAX_NAME_LENGTH}-character name,"
            f" a {MAX_TAG_LENGTH}-character tag and a digest)",
        )
    if any(character.isspace() for character in text):
        raise InvalidReference(text, "reference contains whitespace")
    if _IMAGE_ID.fullmatch(text):
        raise InvalidReference(text, "a 64-character hex string is an image ID, not a name")

    remainder, at, digest = text.partition("@")
    last_slash = remainder.rfind("/")
    tag_colon = remainder.rfind(":")
    tag = None
    if tag_colon > last_slash:
        remainder, tag = remainder[:tag_colon], remainder[tag_colon + 1 :]
    registry, repository = _split_registry(remainder)

    try:
        return Reference(registry, repository, tag, digest if at else None)
    except InvalidReference as error:
        raise InvalidReference(text, error.problem) from None


def _split_registry(name: str) -> tuple[str, str]:
    """Split off the registry: the first component is a host only when it has a "."
    or ":" (which covers "[ipv6]") or is "localhost". Newer distribution releases
    also take an upper-case first component for a host; here it stays part of the
    path and is refused as upper case, the stricter reading."""
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return DOCKER_HUB, name


def _registry_problem(registry: str) -> str | None:
    match = _REGISTRY.fullmatch(registry)
    if match is None:
        return f"registry host {_quote(registry)} is invalid"
    if match["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            return f"registry host {_quote(registry)} is not a valid IPv6 address"
    elif "." not in registry and ":" not in registry and registry != "localhost":
        return (
            f"registry host {_quote(registry)} would be read as a Docker Hub namespace;"
            ' it needs a "." or a port, or must be "localhost"'
        )
    return None


def _repository_problem(repository: str) -> str | None:
    if not repository:
        return "repository path is empty"
    if repository != repository.lower():
        return "repository path must be lowercase"
    for component in repository.split("/"):
        if not component:
            return "repository path has an empty component"
        if not _PATH_COMPONENT.fullmatch(component):
            return (
                f"repository path component {_quote(component)} is invalid; components are"
                ' lowercase letters and digits separated by ".", "_", "__" or dashes'
            )
    return None


def _name_length_problem(name: str) -> str | None:
    if len(name) > MAX_NAME_LENGTH:
        return f"name is {len(name)} characters, longer than {MAX_NAME_LENGTH}"
    return None


def _tag_length_problem(tag: str | None) -> str | None:
    if tag is not None and len(tag) > MAX_TAG_LENGTH:
        return f"tag is {len(tag)} characters, longer than {MAX_TAG_LENGTH}"
    return None


def _tag_problem(tag: str | None) -> str | None:
    if tag is None:
        return None
    if not tag:
        return "tag is empty"
    if not _TAG.fullmatch(tag):
        return (
            f"tag {_quote(tag)} is invalid; tags are up to {MAX_TAG_LENGTH} letters, digits, "
            '"_", "." and "-", not starting with "." or "-"'
        )
    return None


def _digest_problem(digest: str | None) -> str | None:
    if digest is None:
        return None
    if not digest:
        return "digest is empty"
    algorithm, colon, hex_digits = digest.partition(":")
    expected_length = _DIGEST_HEX_LENGTHS.get(algorithm)
    if not colon or expected_length is None:
        return f"digest {_quote(digest)} is not sha256:<hex> or sha512:<hex>"
    if len(hex_digits) != expected_length or not _LOWER_HEX.fullmatch(hex_digits):
        return (
            f"digest {_quote(digest)} is invalid; {algorithm} needs"
            f" {expected_length} lowercase hex digits"
        )
    return None
