"""The reviewer behind `image-backup serve`, as the API server (or an attacker) reaches it."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.admission_helpers import body, sample
from tests.support.registries import Registry
from tests.support.tls import TLSFiles
from tests.support.webhooks import Webhook, running_webhook


@pytest.fixture(scope="module")
def webhook(
    plain_registry: Registry, tls_ca: TLSFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Webhook]:
    config = {
        "backupRegistry": {
            "host": plain_registry.host,
            "prefix": f"srv{secrets.token_hex(3)}",
            "insecure": True,
        },
    }
    with running_webhook(tmp_path_factory.mktemp("served"), config, tls_ca) as hook:
        yield hook


def cut_after_a_type_error() -> bytes:
    review = sample("pod-create-bare")
    review["request"]["object"]["metadata"]["name"] = 5
    return body(review)[:-10]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (cut_after_a_type_error(), "body is not valid JSON: Input data was truncated"),
        (b'{"request":' * 1000 + b"{}" + b"}" * 1000, "body is nested too deeply to read"),
        (body(sample("pod-create-bare")).replace(b"bare", b"\xff", 1), "body is not UTF-8"),
    ],
    ids=["type-error-then-cut", "nested", "not-utf-8"],
)
def test_unreadable_bodies_are_400_with_one_line(
    webhook: Webhook, payload: bytes, reason: str
) -> None:
    status, answer = webhook.post("/mutate", payload)
    assert (status, answer.decode().startswith(reason)) == (400, True), answer
    assert b"\n" not in answer.rstrip(b"\n")
