from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.support.strategies import digests, registries, repository_paths, tags
from webhook.reference import MAX_REFERENCE_LENGTH, InvalidReference, Reference, parse
from webhook.text import quoted

SHA256 = "sha256:" + "0123456789abcdef" * 4
SHA512 = "sha512:" + "0123456789abcdef" * 8


def looks_like_registry(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost"


@given(
    registry=st.none() | registries,
    path=repository_paths,
    tag=st.none() | tags,
    digest=st.none() | digests,
)
def test_parse_normalizes_and_round_trips(
    registry: str | None, path: str, tag: str | None, digest: str | None
) -> None:
    if registry is None:
        assume(not ("/" in path and looks_like_registry(path.split("/")[0])))
    text = path if registry is None else f"{registry}/{path}"
    expected_registry = registry or "docker.io"
    expected_repository = path
    if expected_registry == "docker.io" and "/" not in path:
        expected_repository = f"library/{path}"
    assume(len(f"{expected_registry}/{expected_repository}") <= 255)
    text += (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")

    reference = parse(text)

    assert reference == Reference(
        expected_registry,
        expected_repository,
        tag=tag if tag or digest else "latest",
        digest=digest,
    )
    assert reference.registry == expected_registry
    assert reference.repository == expected_repository
    assert parse(str(reference)) == reference
    assert str(parse(str(reference))) == str(reference)


@given(st.text(alphabet="aA0.-_/:@[]f ", max_size=30) | st.text(max_size=30))
def test_parse_either_round_trips_or_raises_invalid_reference(text: str) -> None:
    try:
        reference = parse(text)
    except InvalidReference as error:
        assert error.reference == text
        assert json.dumps(text, ensure_ascii=False) in str(error)
    else:
        assert parse(str(reference)) == reference


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("nginx", "docker.io/library/nginx:latest"),
        ("nginx:1.25", "docker.io/library/nginx:1.25"),
        ("library/nginx", "docker.io/library/nginx:latest"),
        ("docker.io/nginx", "docker.io/library/nginx:latest"),
        ("docker.io/library/nginx", "docker.io/library/nginx:latest"),
        ("index.docker.io/nginx", "docker.io/library/nginx:latest"),
        ("index.docker.io/user/app:v1", "docker.io/user/app:v1"),
        ("user/app", "docker.io/user/app:latest"),
        ("a/b/c/d", "docker.io/a/b/c/d:latest"),
        (f"nginx@{SHA256}", f"docker.io/library/nginx@{SHA256}"),
        (f"nginx:1.25@{SHA256}", f"docker.io/library/nginx:1.25@{SHA256}"),
        (f"nginx@{SHA512}", f"docker.io/library/nginx@{SHA512}"),
        ("nginx:Tag_1.0-rc.1", "docker.io/library/nginx:Tag_1.0-rc.1"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/app:v1", "localhost:5000/app:v1"),
        ("registry:5000/app", "registry:5000/app:latest"),
        ("127.0.0.1:5000/a/b", "127.0.0.1:5000/a/b:latest"),
        ("[fe80::1]:5000/foo", "[fe80::1]:5000/foo:latest"),
        ("[::1]/foo:bar", "[::1]/foo:bar"),
        ("Registry.Example.COM/app", "Registry.Example.COM/app:latest"),
        ("quay.io/org/app", "quay.io/org/app:latest"),
        ("example.com/a.b/c_d/e__f/g---h", "example.com/a.b/c_d/e__f/g---h:latest"),
        (
            "image-registry.openshift-image-registry.svc:5000/ns/app:v1",
            "image-registry.openshift-image-registry.svc:5000/ns/app:v1",
        ),
        # Without a "/" there is no registry part, exactly as in distribution.
        ("example.com", "docker.io/library/example.com:latest"),
        ("localhost:5000", "docker.io/library/localhost:5000"),
    ],
)
def test_normalization(text: str, canonical: str) -> None:
    reference = parse(text)
    assert str(reference) == canonical
    assert parse(canonical) == reference


def test_fields_of_a_tagged_and_digested_reference() -> None:
    reference = parse(f"quay.io/org/app:v1@{SHA256}")
    assert reference.registry == "quay.io"
    assert reference.repository == "org/app"
    assert reference.tag == "v1"
    assert reference.digest == SHA256
    assert reference.name == "quay.io/org/app"


def test_digest_only_reference_has_no_tag() -> None:
    reference = parse(f"quay.io/org/app@{SHA256}")
    assert reference.tag is None
    assert str(reference) == f"quay.io/org/app@{SHA256}"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "reference is empty"),
        ("Foo/bar", "repository path must be lowercase"),
        ("Nginx", "repository path must be lowercase"),
        ("example.com/App", "repository path must be lowercase"),
        ("docker.io/Foo", "repository path must be lowercase"),
        ("nginx ", "whitespace"),
        (" nginx", "whitespace"),
        ("ng\tinx", "whitespace"),
        ("nginx:1.25\n", "whitespace"),
        ("a//b", "empty component"),
        ("a/", "empty component"),
        ("/a", "empty component"),
        ("example.com//a", "empty component"),
        ("example.com/", "repository path is empty"),
        ("nginx:", "tag is empty"),
        ("nginx@", "digest is empty"),
        ("nginx:.bad", 'tag ".bad" is invalid'),
        ("nginx:-bad", 'tag "-bad" is invalid'),
        ("nginx:a+b", 'tag "a+b" is invalid'),
        ("nginx:" + "a" * 129, "tag is 129 characters, longer than 128"),
        ("nginx@sha256:abc", "sha256 needs 64 lowercase hex digits"),
        ("nginx@sha256:" + "A" * 64, "sha256 needs 64 lowercase hex digits"),
        ("nginx@sha256:" + "g" * 64, "sha256 needs 64 lowercase hex digits"),
        ("nginx@sha512:" + "a" * 64, "sha512 needs 128 lowercase hex digits"),
        ("nginx@md5:" + "a" * 32, "is not sha256:<hex> or sha512:<hex>"),
        ("nginx@sha256", "is not sha256:<hex> or sha512:<hex>"),
        (f"nginx@{SHA256}@{SHA256}", "is invalid"),
        ("a_-b", 'component "a_-b" is invalid'),
        ("a..b", 'component "a..b" is invalid'),
        ("a___b", 'component "a___b" is invalid'),
        ("-a", 'component "-a" is invalid'),
        ("a-", 'component "a-" is invalid'),
        ("example.com/a./b", 'component "a." is invalid'),
        ("nginx:1:2", 'component "nginx:1" is invalid'),
        ("example.com:port/x", 'registry host "example.com:port" is invalid'),
        ("exa_mple.com/x", 'registry host "exa_mple.com" is invalid'),
        ("-example.com/x", 'registry host "-example.com" is invalid'),
        ("[zz::1]/x", 'registry host "[zz::1]" is invalid'),
        ("[fe80:::1]:5000/x", "not a valid IPv6 address"),
        ("example.com/" + "a" * 244, "name is 256 characters, longer than 255"),
        ("0123456789abcdef" * 4, "image ID"),
    ],
)
def test_rejections_quote_the_reference_and_say_why(text: str, problem: str) -> None:
    with pytest.raises(InvalidReference) as raised:
        parse(text)
    assert raised.value.reference == text
    message = str(raised.value)
    assert message.startswith(
        f"invalid image reference {json.dumps(quoted(text), ensure_ascii=False)}: "
    )
    assert problem in message


def test_a_reference_longer_than_any_valid_one_is_refused_first_and_quoted_short() -> None:
    """The length is the first thing looked at: this one also has whitespace and upper case."""
    text = "Example.com/" + "a b" * 40_000
    with pytest.raises(InvalidReference) as raised:
        parse(text)
    assert raised.value.problem == (
        f"reference is {len(text)} characters, longer than any valid one"
        f" ({MAX_REFERENCE_LENGTH}: a 255-character name, a 128-character tag and a digest)"
    )
    assert str(raised.value).startswith(f'invalid image reference "{text[:100]}… (120012 bytes)": ')
    assert len(str(raised.value)) < 400


def test_the_longest_reference_is_valid() -> None:
    name = "index.docker.io/library/" + "a" * (255 - len("docker.io/library/"))
    text = f"{name}:{'t' * 128}@sha512:{'0' * 128}"
    assert len(text) == MAX_REFERENCE_LENGTH
    assert len(parse(text).name) == 255
    with pytest.raises(InvalidReference, match="reference is 527 characters"):
        parse(text + "0")


def test_longest_name_is_accepted() -> None:
    assert parse("example.com/" + "a" * 243).repository == "a" * 243


def test_construction_normalizes_like_parse() -> None:
    assert Reference("docker.io", "nginx") == parse("nginx")
    assert Reference("index.docker.io", "nginx", tag="1.25") == parse("nginx:1.25")


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        (("myhost", "app"), "would be read as a Docker Hub namespace"),
        (("example.com", "App"), "must be lowercase"),
        (("example.com", "app", "bad tag"), "is invalid"),
        (("example.com", "app", None, "sha256:abc"), "sha256 needs 64"),
    ],
)
def test_construction_rejects_invalid_fields(
    fields: tuple[str, str] | tuple[str, str, str | None] | tuple[str, str, str | None, str],
    problem: str,
) -> None:
    with pytest.raises(InvalidReference, match=problem):
        Reference(*fields)


def test_with_digest_keeps_the_tag() -> None:
    pinned = parse("nginx:1.25").with_digest(SHA256)
    assert pinned == Reference("docker.io", "library/nginx", tag="1.25", digest=SHA256)
    assert str(pinned) == f"docker.io/library/nginx:1.25@{SHA256}"


def test_with_tag() -> None:
    reference = parse(f"nginx:1.25@{SHA256}")
    assert reference.with_tag("1.26").tag == "1.26"
    assert str(reference.with_tag(None)) == f"docker.io/library/nginx@{SHA256}"
    # Without a digest, "no tag" means latest, as it does for docker pull.
    assert parse("nginx:1.25").with_tag(None) == parse("nginx:latest")


def test_with_methods_validate() -> None:
    reference = parse("nginx")
    with pytest.raises(InvalidReference, match="sha256 needs 64"):
        reference.with_digest("sha256:abc")
    with pytest.raises(InvalidReference, match="tag is empty"):
        reference.with_tag("")


def test_references_are_immutable_values() -> None:
    reference = parse("nginx")
    with pytest.raises(dataclasses.FrozenInstanceError):
        reference.tag = "1.25"  # type: ignore[misc]
    assert {parse("nginx"), parse("docker.io/library/nginx:latest")} == {reference}
