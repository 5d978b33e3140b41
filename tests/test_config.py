"""The configuration file: every problem is reported against the key that has it."""

from __future__ import annotations

from pathlib import Path

import pytest

from webhook import config
from webhook.registry.endpoint import Endpoint


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_full_config(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    docker = tmp_path / "config.json"
    docker.write_text("{}")
    loaded = config.load(
        write(
            tmp_path,
            f"""
backupRegistry:
  host: backup.example.com:5000
  prefix: /mirror/
  pathStyle: flat
  caFile: {ca}
registries:
  - host: docker.io
    endpoint: https://mirror.internal:5000
  - host: image-registry.openshift-image-registry.svc:5000
    caFile: {ca}
    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token
credentials:
  dockerConfig: {docker}
copy:
  concurrency: 4
""",
        )
    )
    assert loaded.backup_registry.prefix == "mirror"
    assert loaded.backup_registry.scheme().path_style == "flat"
    assert loaded.copy_settings.concurrency == 4
    assert set(loaded.endpoints()) == {
        Endpoint("docker.io", "https://mirror.internal:5000"),
        Endpoint(
            "image-registry.openshift-image-registry.svc:5000",
            None,
            False,
            str(ca),
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
        ),
        Endpoint("backup.example.com:5000", None, False, str(ca)),
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("registries: []", "test.yaml: backupRegistry: required"),
        (
            "backupRegistry: {host: b.io, pathStyle: deep}",
            "backupRegistry.pathStyle: must be 'nested' or 'flat', not 'deep'",
        ),
        (
            "backupRegistry: {host: b.io, prefx: m}",
            "backupRegistry.prefx: unknown key",
        ),
        ("backupRegistry: {host: 'B_AD'}", "backupRegistry.host: not a registry host"),
        ("backupRegistry: {host: b.io, prefix: UPPER}", "backupRegistry: invalid backup scheme"),
        (
            "backupRegistry: {host: b.io, caFile: /nonexistent/ca.crt}",
            "backupRegistry.caFile: no such file",
        ),
        (
            "backupRegistry: {host: b.io}\nregistries: [{host: a.io, endpoint: 'http://m:5000'}]",
            "registries[0]: a plain http:// endpoint needs insecure: true",
        ),
        (
            "backupRegistry: {host: b.io}\nregistries: [{host: a.io}, {host: a.io}]",
            "registries: host listed more than once: a.io",
        ),
        (
            "backupRegistry: {host: b.io}\ncopy: {concurrency: 0}",
            "copy.concurrency: Expected `int` >= 1",
        ),
        (
            "backupRegistry: {host: b.io}\ncopy: {artifactTypes: ['']}",
            "copy.artifactTypes[0]: Expected `str` of length >= 1",
        ),
        (
            "backupRegistry: {host: b.io}\ncopy: {artifactTypes: x}",
            "copy.artifactTypes: Expected `array`, got `str`",
        ),
        (
            "backupRegistry: {host: b.io}\ncopy: {referrers: 'yes'}",
            "copy.referrers: Expected `bool`, got `str`",
        ),
        (
            "backupRegistry: {host: b.io}\ncredentials: {dockerConfig: /nonexistent.json}",
            "credentials.dockerConfig: no such file",
        ),
        ("- just\n- a list", "expected a mapping at the top level"),
        ("backupRegistry: {host: b.io}\ncopy: 5", "test.yaml: copy: expected a mapping"),
        (
            "backupRegistry: {host: b.io}\nexclude: {images: [nginx, 7]}",
            "exclude.images[1]: Expected `str`, got `int`",
        ),
        (
            "backupRegistry: {host: b.io, caFile: /}",
            "backupRegistry.caFile: not a file",
        ),
        (
            "backupRegistry: [unclosed",
            "test.yaml:1:26: not valid YAML: expected ',' or ']', but got '<stream end>'",
        ),
        (
            "backupRegistry: {host: b.io}\nexclude: \x07",
            "test.yaml:2:10: not valid YAML: character U+0007: special characters are not allowed",
        ),
        (
            "backupRegistry: {host: b.io}\nserver: {address: localhost}",
            "server.address: must be an IP address",
        ),
        (
            "backupRegistry: {host: b.io}\nserver: {keepAliveSeconds: 0}",
            "server.keepAliveSeconds: Expected `float` > 0.0",
        ),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "test.yaml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as caught:
        config.load(path)
    assert expected in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="cannot read config"):
        config.load(tmp_path / "nope.yaml")


def test_later_files_merge_over_earlier_ones(tmp_path: Path) -> None:
    """What a kustomize overlay's second file relies on: it adds, the first file keeps the rest."""
    first = tmp_path / "config.yaml"
    first.write_text(
        "backupRegistry: {host: backup.example.com, prefix: mirror}\n"
        "registries: [{host: a.example.com, insecure: true}]\n"
        "onFailure: allow\n"
    )
    second = tmp_path / "overlay.yaml"
    second.write_text(
        "backupRegistry: {pathStyle: flat}\nregistries: [{host: b.example.com}]\nonFailure: deny\n"
    )
    loaded = config.load(first, second)
    assert (loaded.backup_registry.host, loaded.backup_registry.prefix) == (
        "backup.example.com",
        "mirror",
    )
    assert loaded.backup_registry.path_style == "flat"
    assert [(r.host, r.insecure) for r in loaded.registries] == [
        ("a.example.com", True),
        ("b.example.com", False),
    ]
    assert loaded.on_failure == "deny"
    second.write_text("registries: [{host: a.example.com}]\n")
    with pytest.raises(config.ConfigError, match=r"overlay.yaml: registries: .*a\.example\.com"):
        config.load(first, second)


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "127.0.0.1", "fd00::1"])
def test_server_address(tmp_path: Path, address: str) -> None:
    loaded = config.load(
        write(tmp_path, f"backupRegistry: {{host: b.io}}\nserver: {{address: '{address}'}}")
    )
    assert loaded.server.address == address


def test_server_defaults(tmp_path: Path) -> None:
    server = config.load(write(tmp_path, "backupRegistry: {host: b.io}")).server
    assert server.address == "0.0.0.0"  # every IPv4 interface, as before the key existed
    assert server.keep_alive_seconds > 90  # the kube-apiserver's idle timeout: it closes first
    assert server.request_body_timeout_seconds == 10


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    # In different sections, in one section, in a list's items: all of them, one per line,
    # and a section's own rules only where its keys are sound.
    path = write(
        tmp_path,
        """
backupRegistry: {host: b.io, pathStyle: deep, insecure: maybe}
registries: [{host: a.io, endpoint: 'http://m'}, {host: 'B_AD'}]
copy: {concurrency: 0, timeoutSeconds: -1}
records: {heartbeatSeconds: 40}
surprise: 1
""",
    )
    with pytest.raises(config.ConfigError) as caught:
        config.load(path)
    assert str(caught.value).splitlines() == [
        f"{path}: surprise: unknown key",
        f"{path}: backupRegistry.pathStyle: must be 'nested' or 'flat', not 'deep'",
        f"{path}: backupRegistry.insecure: Expected `bool`, got `str`",
        f"{path}: registries[0]: a plain http:// endpoint needs insecure: true",
        f'{path}: registries[1].host: not a registry host: registry host "B_AD" is invalid',
        f"{path}: copy.concurrency: Expected `int` >= 1",
        f"{path}: copy.timeoutSeconds: Expected `float` > 0.0",
        f"{path}: records: heartbeatSeconds must be at most half of staleAfterSeconds",
    ]


def test_values_as_yaml_strings_are_read_as_their_type(tmp_path: Path) -> None:
    loaded = config.load(
        write(tmp_path, "backupRegistry: {host: b.io, insecure: 'true'}\nserver: {port: '9443'}")
    )
    assert loaded.backup_registry.insecure is True and loaded.server.port == 9443


def test_referrer_settings(tmp_path: Path) -> None:
    """Referrers travel by default, of every type; both keys are read as written."""
    default = config.load(write(tmp_path, "backupRegistry: {host: b.io}")).copy_settings
    assert (default.referrers, default.artifact_types) == (True, ())
    given = config.load(
        write(
            tmp_path,
            "backupRegistry: {host: b.io}\n"
            "copy: {referrers: false, artifactTypes: [application/spdx+json, text/spdx+json]}",
        )
    ).copy_settings
    assert given.referrers is False
    assert given.artifact_types == ("application/spdx+json", "text/spdx+json")
