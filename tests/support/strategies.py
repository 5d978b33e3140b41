"""Hypothesis strategies shared by the property tests: valid image-reference parts, and
hostile AdmissionReview bodies (the kinds of input that once escaped the reviewer)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import orjson
from hypothesis import strategies as st

from webhook.admission.pods import POD_SPEC_PATHS

ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
PATH_SEPARATORS = [".", "_", "__", "-", "--", "---"]


@st.composite
def path_components(draw: st.DrawFn) -> str:
    runs = draw(st.lists(st.text(ALNUM, min_size=1, max_size=4), min_size=1, max_size=4))
    separators = [draw(st.sampled_from(PATH_SEPARATORS)) for _ in runs[1:]]
    return runs[0] + "".join(sep + run for sep, run in zip(separators, runs[1:], strict=True))


repository_paths = st.lists(path_components(), min_size=1, max_size=4).map("/".join)
ports = st.integers(min_value=0, max_value=65535).map(str)
dns_labels = st.from_regex(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?", fullmatch=True)
ipv6_literals = st.builds(
    lambda address, spelling: f"[{spelling(address)}]",
    st.ip_addresses(v=6).filter(lambda address: "." not in address.compressed),
    st.sampled_from(
        [
            lambda address: address.compressed,
            lambda address: address.exploded,
            lambda address: address.compressed.upper(),
        ]
    ),
)
registries = st.one_of(
    st.lists(dns_labels, min_size=2, max_size=3)
    .map(".".join)
    .filter(lambda host: host not in {"docker.io", "index.docker.io"}),
    st.just("localhost"),
    st.ip_addresses(v=4).map(str),
    ipv6_literals,
).flatmap(lambda host: st.sampled_from([host]) | ports.map(lambda port: f"{host}:{port}"))
registries |= st.builds(lambda label, port: f"{label}:{port}", dns_labels, ports)
tags = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", fullmatch=True)
digests = st.one_of(
    st.binary(min_size=32, max_size=32).map(lambda raw: f"sha256:{raw.hex()}"),
    st.binary(min_size=64, max_size=64).map(lambda raw: f"sha512:{raw.hex()}"),
)


# Hostile bodies. Each starts from a real review and breaks it one way; `reviews` draws the
# review (a JSON object) to break.

# Fields the reviewer decodes with a type (webhook/admission/objects.py and review.py): a
# value of the wrong type there is a type error, elsewhere it is skipped.
TYPED_FIELDS = frozenset(
    {
        "apiVersion", "kind", "request", "uid", "group", "operation", "subResource",
        "namespace", "name", "dryRun", "object", "metadata", "generateName", "annotations",
        "ownerReferences", "controller", "spec", "template", "jobTemplate", "containers",
        "initContainers", "ephemeralContainers", "image", "imagePullSecrets",
        "serviceAccountName", "serviceAccount",
    }
)  # fmt: skip
# Fields whose values an answer kept in memory is keyed by (with annotations).
KEPT_FIELDS = frozenset({"image", "name", "namespace", "serviceAccountName"})
IMAGE_FIELD = frozenset({"image"})
MARKER = "hypothesis-marker-7c1e"
WRONG_TYPES = st.sampled_from([5, -1.5, True, [], ["x"], {}, {"x": 1}, "text"])
# Not UTF-8: a stray continuation byte, an overlong "/", an encoded surrogate (CESU-8),
# a sequence cut short, bytes that never occur.
INVALID_UTF8 = st.sampled_from([b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xff"])
LONE_SURROGATES = st.sampled_from([b"\\ud800", b"\\udfff", b"\\ud800\\u0041", b"\\udc00\\ud800"])
NON_FINITE = st.sampled_from([b"NaN", b"Infinity", b"-Infinity"])
# What opens one level, and what closes it.
NESTING = st.sampled_from(
    [(b'{"request":', b"}"), (b"[", b"]"), (b'{"object":', b"}"), (b'{"a":[', b"]}")]
)


def _places(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Every path to a value inside `value`."""
    if isinstance(value, dict):
        items: list[tuple[str | int, Any]] = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    else:
        return
    for key, inner in items:
        yield (*path, key)
        yield from _places(inner, (*path, key))


def _replaced(document: Any, path: tuple[str | int, ...], value: Any) -> Any:
    changed = copy.deepcopy(document)
    node = changed
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return changed


@st.composite
def _marked(
    draw: st.DrawFn, reviews: st.SearchStrategy[Any], *, fields: frozenset[str] | None = None
) -> bytes:
    """A review encoded with MARKER (a JSON string) where one value was; with `fields`, the
    value of one of these fields, or of an annotation."""
    review = draw(reviews)
    places = [
        path
        for path in _places(review)
        if fields is None or path[-1] in fields or (len(path) > 1 and path[-2] == "annotations")
    ]
    path = draw(st.sampled_from(places))
    return orjson.dumps(_replaced(review, path, MARKER))


@st.composite
def type_error_then_broken(draw: st.DrawFn, reviews: st.SearchStrategy[Any]) -> bytes:
    """A field of the wrong type, and after it the body cut short or a syntax error."""
    body = draw(_marked(reviews, fields=TYPED_FIELDS))
    wrong = orjson.dumps(draw(WRONG_TYPES))
    start = body.index(orjson.dumps(MARKER))
    body = body.replace(orjson.dumps(MARKER), wrong, 1)
    cut = draw(st.integers(min_value=start + len(wrong), max_value=len(body) - 1))
    breaking = draw(
        st.sampled_from([b""]) | INVALID_UTF8 | NON_FINITE | LONE_SURROGATES.map(b'"'.__add__)
    )
    if not breaking:
        return body[:cut]
    return body[:cut] + breaking + body[cut:]


@st.composite
def deeply_nested(draw: st.DrawFn, reviews: st.SearchStrategy[Any]) -> bytes:
    """A value nested up to thousands of levels deep, in place of one value of a review
    (or as the whole body), closed or cut off."""
    opener, closer = draw(NESTING)
    depth = draw(st.integers(min_value=1, max_value=5000))
    nested = opener * depth + b"1" + (closer * depth if draw(st.booleans()) else b"")
    if draw(st.booleans()):
        return nested
    return draw(_marked(reviews)).replace(orjson.dumps(MARKER), nested, 1)


@st.composite
def unreadable_text(draw: st.DrawFn, reviews: st.SearchStrategy[Any]) -> bytes:
    """A review whose text is not JSON: bytes that are not UTF-8, a lone surrogate escape,
    or NaN or Infinity, in place of one value or inside a string anywhere."""
    body = draw(_marked(reviews))
    kind = draw(st.sampled_from(["utf-8", "surrogate", "non-finite"]))
    if kind == "utf-8":
        start = body.index(orjson.dumps(MARKER)) + 1  # inside the string
        return body[:start] + draw(INVALID_UTF8) + body[start:]
    if kind == "surrogate":
        return body.replace(MARKER.encode(), draw(LONE_SURROGATES), 1)
    return body.replace(orjson.dumps(MARKER), draw(NON_FINITE), 1)


@st.composite
def long_values(draw: st.DrawFn, reviews: st.SearchStrategy[Any]) -> bytes:
    """A review with a string of up to 200 KB, each different, in a field an answer kept in
    memory depends on: valid JSON, and costly if kept or repeated."""
    # Half of them an image: the field most answers hinge on.
    body = draw(_marked(reviews, fields=draw(st.sampled_from([IMAGE_FIELD, KEPT_FIELDS]))))
    size = draw(st.integers(min_value=1_000, max_value=200_000))
    start = draw(st.text(ALNUM, min_size=12, max_size=12))
    return body.replace(MARKER.encode(), (start + "a" * size).encode(), 1)


def hostile_bodies(reviews: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        type_error_then_broken(reviews),
        deeply_nested(reviews),
        unreadable_text(reviews),
        long_values(reviews),
    )


# Reviews whose object is anything of the right kind: values of every JSON type where the
# reviewer expects containers, images and annotations.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
image_strings = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["nginx", "nginx:1.25", "Bad/Upper", "a@sha256:xyz", "", "127.0.0.1:1/backup/x"]
    ),
)
containers = st.lists(
    st.fixed_dictionaries(
        {},
        optional={"name": st.text(max_size=8) | json_scalars, "image": image_strings | json_values},
    )
    | json_values,
    max_size=4,
)
pod_specs = st.fixed_dictionaries(
    {},
    optional={
        "containers": containers | json_values,
        "initContainers": containers,
        "ephemeralContainers": containers,
    },
)


@st.composite
def arbitrary_objects(draw: st.DrawFn, reviews: st.SearchStrategy[Any]) -> Any:
    """A review (drawn from `reviews`) carrying an object of a kind the reviewer handles,
    whose pod spec, metadata, operation and dry run are arbitrary."""
    group, name = kind = draw(st.sampled_from(sorted(POD_SPEC_PATHS)))
    metadata = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "annotations": json_values
                | st.dictionaries(
                    st.sampled_from(
                        ["image-backup.io/original-images", "image-backup.io/skip", "x"]
                    ),
                    st.text(max_size=20),
                )
            },
        )
    )
    obj: dict[str, Any] = {"kind": name, "metadata": metadata}
    node = obj
    path = POD_SPEC_PATHS[kind]
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = draw(pod_specs)
    review = copy.deepcopy(draw(reviews))
    review["request"].update(
        kind={"group": group, "version": "v1", "kind": name},
        object=obj,
        operation=draw(st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT"])),
        dryRun=draw(st.booleans()),
    )
    return review
