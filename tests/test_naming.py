from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.support.strategies import digests, registries, repository_paths, tags
from webhook.naming import BackupNameError, PathStyle, Scheme
from webhook.reference import InvalidReference, Reference, parse

DIGEST = "sha256:" + "0123456789abcdef" * 4
BACKUP = Scheme("backup.example.com", "mirror")
FLAT_BACKUP = Scheme("backup.example.com", "mirror", "flat")

# Hosts an encoding could confuse (case, ports versus dots or dashes, IPv6
# spellings) and few, short path tokens, so that generated sources often differ
# only in a separator or in "/" versus "-".
COLLIDING_HOSTS = [
    "docker.io",
    "quay.io",
    "QUAY.io",
    "quay.io:5000",
    "quay.io.5000",
    "quay.io-a",
    "a.b:1",
    "a-b.c",
    "localhost",
    "localhost:5000",
    "127.0.0.1:5000",
    "[fe80::1]",
    "[fe80::1]:5000",
    "[FE80:0::1]:5000",
    "[fe80::1:5000]",
    "fe80:1",
    "[::1]:1",
]
COLLIDING_RUNS = ["a", "b", "1", "io"]
# Every token that can separate two alphanumeric runs somewhere in "HOST/PATH".
SEPARATORS = [".", "_", "__", "-", "--", "---", "/", ":"]
_SEPARATOR_TOKEN = re.compile(r"([^a-zA-Z0-9]+)")


@st.composite
def colliding_paths(draw: st.DrawFn) -> str:
    runs = draw(st.lists(st.sampled_from(COLLIDING_RUNS), min_size=1, max_size=6))
    path_separators = [separator for separator in SEPARATORS if separator != ":"]
    return runs[0] + "".join(draw(st.sampled_from(path_separators)) + run for run in runs[1:])


colliding_sources = st.builds(
    Reference, st.sampled_from(COLLIDING_HOSTS) | registries, colliding_paths() | repository_paths
)


def lookalikes(source: Reference) -> list[Reference]:
    """`source` and the valid references one separator edit away from its
    "HOST/PATH", its upper-cased host, or its host without IPv6 brackets: the
    pairs an encoding could merge."""
    starts = {
        source.name,
        f"{source.registry.upper()}/{source.repository}",
        source.name.replace("[", "").replace("]", ""),
    }
    texts = set(starts)
    for start in starts:
        tokens = _SEPARATOR_TOKEN.split(start)
        for index in range(1, len(tokens), 2):
            for separator in SEPARATORS:
                texts.add("".join([*tokens[:index], separator, *tokens[index + 1 :]]))
    references = []
    for text in sorted(texts):
        try:
            references.append(parse(text))
        except InvalidReference:
            continue
    return references


schemes = st.builds(
    Scheme,
    st.sampled_from(["backup.example.com", "localhost:5000", "[::1]:5000", "docker.io"]),
    st.sampled_from(["mirror", "team/mirror", "a-b/c.d"]),
    st.sampled_from(["nested", "flat"]),
) | st.builds(
    Scheme,
    st.sampled_from(["backup.example.com", "registry.local:5000"]),
    st.just(""),
    st.sampled_from(["nested", "flat"]),
)


HostIdentity = str | tuple[ipaddress.IPv6Address, str]


def host_identity(registry: str) -> HostIdentity:
    """Hosts are the same registry if they differ only in DNS case or IPv6 spelling."""
    if registry.startswith("["):
        address, _, port_suffix = registry[1:].partition("]")
        return ipaddress.IPv6Address(address), port_suffix
    return registry.lower()


def repository_identity(reference: Reference) -> tuple[HostIdentity, str]:
    return host_identity(reference.registry), reference.repository


def decode_backup(scheme: Scheme, repository: str) -> tuple[HostIdentity, str]:
    """Invert `repository_for`; that an inverse exists is what makes the mapping injective."""
    path = repository.removeprefix(f"{scheme.prefix}/") if scheme.prefix else repository
    if scheme.path_style == "flat":
        assert "/" not in path
        path = re.sub("-+", lambda dashes: "/" if dashes[0] == "-" else dashes[0][1:], path)
    encoded_host, _, source_repository = path.partition("/")
    host_parts = encoded_host.split("_")
    if len(host_parts) >= 8:
        address = ipaddress.IPv6Address(":".join(host_parts[:8]))
        port_suffix = "".join(f":{port}" for port in host_parts[8:])
        return (address, port_suffix), source_repository
    return encoded_host.replace("_", ":"), source_repository


@pytest.mark.parametrize(
    ("scheme", "source", "backup"),
    [
        (
            BACKUP,
            "nginx:1.25",
            f"backup.example.com/mirror/docker.io/library/nginx:1.25@{DIGEST}",
        ),
        (
            BACKUP,
            f"quay.io/org/app@{DIGEST}",
            f"backup.example.com/mirror/quay.io/org/app@{DIGEST}",
        ),
        (
            BACKUP,
            "image-registry.openshift-image-registry.svc:5000/ns/app:v1",
            "backup.example.com/mirror/image-registry.openshift-image-registry.svc_5000/ns/app:v1"
            f"@{DIGEST}",
        ),
        (
            BACKUP,
            "[fe80::1]:5000/foo",
            "backup.example.com/mirror/fe80_0000_0000_0000_0000_0000_0000_0001_5000/foo:latest"
            f"@{DIGEST}",
        ),
        (
            BACKUP,
            "[::1]/foo",
            "backup.example.com/mirror/0000_0000_0000_0000_0000_0000_0000_0001/foo:latest"
            f"@{DIGEST}",
        ),
        (
            BACKUP,
            "Quay.IO/org/app:v1",
            f"backup.example.com/mirror/quay.io/org/app:v1@{DIGEST}",
        ),
        (
            Scheme("backup.example.com", "team/mirror"),
            "localhost:5000/app:v1",
            f"backup.example.com/team/mirror/localhost_5000/app:v1@{DIGEST}",
        ),
        (
            Scheme("backup.example.com", ""),
            "nginx",
            f"backup.example.com/docker.io/library/nginx:latest@{DIGEST}",
        ),
        (
            FLAT_BACKUP,
            "nginx:1.25",
            f"backup.example.com/mirror/docker.io-library-nginx:1.25@{DIGEST}",
        ),
        (
            FLAT_BACKUP,
            "quay.io/my-org/app:v1",
            f"backup.example.com/mirror/quay.io-my--org-app:v1@{DIGEST}",
        ),
        (
            FLAT_BACKUP,
            "example.com:5000/a---b/c__d.e",
            f"backup.example.com/mirror/example.com_5000-a----b-c__d.e:latest@{DIGEST}",
        ),
        (
            Scheme("docker.io", "myorg", "flat"),
            "ghcr.io/owner/tool:v2",
            f"docker.io/myorg/ghcr.io-owner-tool:v2@{DIGEST}",
        ),
        (
            Scheme("registry.local:5000", "", "flat"),
            "quay.io/org/app",
            f"registry.local:5000/quay.io-org-app:latest@{DIGEST}",
        ),
    ],
)
def test_backup_names(scheme: Scheme, source: str, backup: str) -> None:
    assert str(scheme.reference_for(parse(source), DIGEST)) == backup


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("quay.io/a-b", "quay.io/a/b"),
        ("quay.io/a--b", "quay.io/a-b"),
        ("quay.io-a/b", "quay.io/a/b"),
        ("a.b-c/d", "a.b/c/d"),
        ("a.b:5000/c", "a.b/5000/c"),
        ("localhost:5000/a", "localhost/5000/a"),
        ("[fe80::1]:5000/c", "[fe80::1:5000]/c"),
        ("[fe80::1]/c", "fe80:1/c"),
        ("quay.io:5000/c", "quay.io.5000/c"),
    ],
)
@pytest.mark.parametrize("path_style", ["nested", "flat"])
def test_lookalike_sources_get_distinct_backups(
    first: str, second: str, path_style: PathStyle
) -> None:
    scheme = Scheme("backup.example.com", "mirror", path_style)
    assert scheme.repository_for(parse(first)) != scheme.repository_for(parse(second))


@settings(max_examples=300)
@given(
    scheme=schemes,
    sources=st.builds(Reference, st.sampled_from(COLLIDING_HOSTS), colliding_paths()).map(
        lookalikes
    )
    | st.lists(colliding_sources, min_size=2, max_size=20),
)
def test_distinct_sources_never_share_a_backup(scheme: Scheme, sources: list[Reference]) -> None:
    owners: dict[str, tuple[HostIdentity, str]] = {}
    for source in sources:
        if scheme.is_backup(source):
            continue
        identity = repository_identity(source)
        assert owners.setdefault(scheme.repository_for(source), identity) == identity


@given(scheme=schemes, source=colliding_sources)
def test_backup_repository_decodes_to_its_source(scheme: Scheme, source: Reference) -> None:
    assume(not scheme.is_backup(source))
    assert decode_backup(scheme, scheme.repository_for(source)) == repository_identity(source)


@given(
    scheme=schemes,
    source=colliding_sources,
    tag=st.none() | tags,
    source_digest=st.none() | digests,
    digest=digests,
)
def test_backup_references_are_valid_stable_and_recognized(
    scheme: Scheme, source: Reference, tag: str | None, source_digest: str | None, digest: str
) -> None:
    source = Reference(source.registry, source.repository, tag, source_digest)
    assume(not scheme.is_backup(source))

    backup = scheme.reference_for(source, digest)

    assert parse(str(backup)) == backup
    assert backup.registry == scheme.host
    assert backup.tag == source.tag
    assert backup.digest == digest
    assert scheme.reference_for(source, digest) == backup
    assert scheme.is_backup(backup)
    with pytest.raises(BackupNameError, match="already a backup"):
        scheme.repository_for(backup)


@given(scheme=schemes, source=colliding_sources)
def test_sources_outside_the_backup_host_are_not_backups(scheme: Scheme, source: Reference) -> None:
    assume(host_identity(source.registry) != host_identity(scheme.host))
    assert not scheme.is_backup(source)


@pytest.mark.parametrize(
    ("reference", "is_backup"),
    [
        ("backup.example.com/mirror/docker.io/library/nginx", True),
        ("Backup.Example.COM/mirror/quay.io-app", True),
        ("backup.example.com/mirror", False),
        ("backup.example.com/mirrors/x", False),
        ("backup.example.com/other/mirror/x", False),
        ("backup.example.com:5000/mirror/x", False),
        ("other.example.com/mirror/x", False),
    ],
)
def test_is_backup_matches_host_and_whole_prefix_components(
    reference: str, is_backup: bool
) -> None:
    assert BACKUP.is_backup(parse(reference)) is is_backup


def test_empty_prefix_claims_the_whole_backup_host() -> None:
    scheme = Scheme("backup.example.com", "")
    assert scheme.is_backup(parse("backup.example.com/anything/at/all"))
    assert not scheme.is_backup(parse("quay.io/anything"))


def test_ipv6_backup_host_is_recognized_in_any_spelling() -> None:
    scheme = Scheme("[::1]:5000", "mirror")
    assert scheme.is_backup(parse("[0:0::1]:5000/mirror/x"))
    assert not scheme.is_backup(parse("[::1]/mirror/x"))


@pytest.mark.parametrize("path_style", ["nested", "flat"])
def test_overlong_backup_names_are_refused_not_truncated(path_style: PathStyle) -> None:
    source = parse("quay.io/" + "a" * 240)
    scheme = Scheme("backup.example.com", "mirror", path_style)
    with pytest.raises(BackupNameError) as raised:
        scheme.repository_for(source)
    # The caller (admission, CLI) names the image: the reason does not repeat it.
    assert str(raised.value) == (
        "its backup name would be 274 characters, over the 255-character limit"
    )


def test_longest_backup_name_is_accepted() -> None:
    # backup.example.com/mirror/quay.io/ is 34 characters.
    backup = BACKUP.reference_for(parse("quay.io/" + "a" * 221), DIGEST)
    assert len(backup.name) == 255


@pytest.mark.parametrize(
    ("host", "prefix", "path_style", "problem"),
    [
        ("index.docker.io", "mirror", "nested", "would be read as docker.io/mirror/x/y"),
        ("docker.io", "", "flat", "would be read as docker.io/library/x"),
        ("myhost", "mirror", "nested", "would be read as a Docker Hub namespace"),
        ("bad_host.com", "mirror", "nested", 'registry host "bad_host.com" is invalid'),
        ("backup.example.com", "Mirror", "nested", "must be lowercase"),
        ("backup.example.com", "mirror/", "nested", "empty component"),
        ("backup.example.com", "/mirror", "nested", "empty component"),
        ("backup.example.com", "mirror", "deep", "unknown path style 'deep'"),
    ],
)
def test_invalid_schemes_are_refused(host: str, prefix: str, path_style: str, problem: str) -> None:
    with pytest.raises(ValueError, match="invalid backup scheme") as raised:
        Scheme(host, prefix, path_style)  # type: ignore[arg-type]
    assert problem in str(raised.value)


@settings(max_examples=300)
@given(scheme=schemes, source=colliding_sources)
def test_source_of_inverts_repository_for(scheme: Scheme, source: Reference) -> None:
    assume(not scheme.is_backup(source))
    repository = scheme.repository_for(source)

    decoded = scheme.source_of(repository)

    assert repository_identity(decoded) == repository_identity(source)
    assert scheme.repository_for(decoded) == repository
    assert decoded.name == parse(decoded.name).name  # a host as references spell it


@pytest.mark.parametrize(
    ("scheme", "repository", "source"),
    [
        (BACKUP, "mirror/docker.io/library/nginx", "docker.io/library/nginx"),
        (BACKUP, "mirror/localhost_5000/a--b/c", "localhost:5000/a--b/c"),
        (
            BACKUP,
            "mirror/fe80_0000_0000_0000_0000_0000_0000_0001_5000/foo",
            "[fe80::1]:5000/foo",
        ),
        (FLAT_BACKUP, "mirror/quay.io-my--org-app", "quay.io/my-org/app"),
        (FLAT_BACKUP, "mirror/example.com_5000-a----b-c__d.e", "example.com:5000/a---b/c__d.e"),
        (
            Scheme("registry.local:5000", ""),
            "image-registry.openshift-image-registry.svc_5000/shop/app",
            "image-registry.openshift-image-registry.svc:5000/shop/app",
        ),
    ],
)
def test_source_of_examples(scheme: Scheme, repository: str, source: str) -> None:
    assert scheme.source_of(repository).name == source


@pytest.mark.parametrize(
    ("scheme", "repository"),
    [
        (BACKUP, "other/docker.io/library/nginx"),  # not under the prefix
        (BACKUP, "mirror/docker.io"),  # a host and no path
        (BACKUP, "mirror/Quay.io/app"),  # a spelling the scheme never writes
        (BACKUP, "mirror/fe80_0_0_0_0_0_0_1/foo"),  # an IPv6 host not written out in full
        (BACKUP, "mirror/zz_zz_zz_zz_zz_zz_zz_zz/foo"),  # eight groups, not an address
        (FLAT_BACKUP, "mirror/quay.io/org/app"),  # nested under a flat scheme
        (FLAT_BACKUP, "mirror/quay.io"),
    ],
)
def test_source_of_refuses_what_the_scheme_cannot_have_made(
    scheme: Scheme, repository: str
) -> None:
    with pytest.raises(BackupNameError):
        scheme.source_of(repository)
