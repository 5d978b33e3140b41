"""Docker config.json lookups, as kubelet and the docker CLI resolve them."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from webhook.registry.credentials import Credential, CredentialsError, DockerConfig


def load(tmp_path: Path, auths: object) -> DockerConfig:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": auths}))
    return DockerConfig.load(path)


def auth(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_auth_field_and_username_password_fields(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        {
            "a.example.com": auth("alice", "pw:with:colons"),
            "b.example.com": {"username": "bob", "password": "pw"},
        },
    )
    assert config.lookup("a.example.com") == Credential("alice", "pw:with:colons")
    assert config.lookup("b.example.com") == Credential("bob", "pw")
    assert config.lookup("c.example.com") is None


@pytest.mark.parametrize("key", ["https://index.docker.io/v1/", "index.docker.io", "docker.io"])
def test_docker_hub_keys(tmp_path: Path, key: str) -> None:
    config = load(tmp_path, {key: auth("hubuser", "pw")})
    assert config.lookup("docker.io", "library/nginx") == Credential("hubuser", "pw")


def test_wildcards_match_one_label_each_and_exact_hosts_win(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        {
            "*.example.com": auth("wild", "1"),
            "registry.example.com": auth("exact", "2"),
            "*.*.corp.io:5000": auth("deep", "3"),
        },
    )
    assert config.lookup("registry.example.com") == Credential("exact", "2")
    assert config.lookup("other.example.com") == Credential("wild", "1")
    assert config.lookup("a.b.example.com") is None  # one label per *
    assert config.lookup("example.com") is None
    assert config.lookup("x.y.corp.io:5000") == Credential("deep", "3")
    assert config.lookup("x.y.corp.io") is None  # ports must match


def test_repository_scoped_keys_prefer_the_longest_prefix(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        {
            "reg.io": auth("all", "1"),
            "reg.io/team": auth("team", "2"),
            "reg.io/team/app": auth("app", "3"),
        },
    )
    assert config.lookup("reg.io", "team/app") == Credential("app", "3")
    assert config.lookup("reg.io", "team/app2") == Credential("team", "2")
    assert config.lookup("reg.io", "other") == Credential("all", "1")


def test_identity_and_registry_tokens(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        {
            "id.example.com": {"identitytoken": "refresh"},
            "tok.example.com": {"registrytoken": "bearer"},
        },
    )
    assert config.lookup("id.example.com") == Credential(identity_token="refresh")
    assert config.lookup("tok.example.com") == Credential(registry_token="bearer")


def test_secrets_stay_out_of_repr(tmp_path: Path) -> None:
    config = load(
        tmp_path, {"a.io": {"username": "u", "password": "hunter2", "identitytoken": "t0k"}}
    )
    text = repr(config)
    assert "hunter2" not in text and "t0k" not in text


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"auths": []}), "'auths' must be an object"),
        (json.dumps({"auths": {"a.io": {"auth": "%%%"}}}), "not base64"),
        (
            json.dumps({"auths": {"a.io": {"auth": base64.b64encode(b"nocolon").decode()}}}),
            "user:password",
        ),
    ],
)
def test_bad_files_give_clear_errors_without_secrets(
    tmp_path: Path, content: str, problem: str
) -> None:
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(CredentialsError, match=problem) as caught:
        DockerConfig.load(path)
    assert "nocolon" not in str(caught.value)


def test_a_long_key_is_quoted_short(tmp_path: Path) -> None:
    key = "r" * 10_000 + ".io"
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {key: {"auth": "%%%"}}}))
    with pytest.raises(CredentialsError, match="not base64") as caught:
        DockerConfig.load(path)
    assert len(str(caught.value)) < 300 and "(10003 bytes)" in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="cannot read docker config"):
        DockerConfig.load(tmp_path / "absent.json")


def test_then_puts_the_first_config_ahead_on_equally_specific_matches() -> None:
    workload = DockerConfig.parse(
        json.dumps({"auths": {"reg.example.com": auth("workload", "a")}}).encode(), "secret"
    )
    configured = DockerConfig.parse(
        json.dumps(
            {"auths": {"reg.example.com": auth("webhook", "b"), "other.io": auth("o", "c")}}
        ).encode(),
        "config",
    )
    keyring = workload.then(configured)
    assert keyring.lookup("reg.example.com", "team/app") == Credential("workload", "a")
    assert keyring.lookup("other.io", "x") == Credential("o", "c")
    # A more specific entry further back still wins, as kubelet matches.
    specific = DockerConfig.parse(
        json.dumps({"auths": {"reg.example.com/team": auth("team", "d")}}).encode(), "config"
    )
    assert workload.then(specific).lookup("reg.example.com", "team/app") == Credential("team", "d")


def test_legacy_dockercfg_is_the_auths_map_alone() -> None:
    raw = json.dumps({"https://index.docker.io/v1/": auth("hub", "pw")}).encode()
    assert DockerConfig.parse(raw, "secret ns/old", legacy=True).lookup(
        "docker.io", "library/nginx"
    ) == Credential("hub", "pw")
    with pytest.raises(CredentialsError, match=r"^secret ns/old: 'auths' must be an object$"):
        DockerConfig.parse(b"[]", "secret ns/old", legacy=True)
