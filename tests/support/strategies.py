"""Hypothesis strategies for valid image-reference parts, shared by the property tests."""

from __future__ import annotations

from hypothesis import strategies as st

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
