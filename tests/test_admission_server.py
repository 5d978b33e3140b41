"""The reviewer behind `image-backup serve`, as the API server (or an attacker) reaches it."""

from __future__ import annotations

import http.client
import queue
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.admission_helpers import body, sample
from tests.support.registries import Registry
from tests.support.strategies import arbitrary_objects, hostile_bodies
from tests.support.tls import TLSFiles
from tests.support.webhooks import Webhook, running_webhook

MiB = 1024 * 1024
REVIEWS = st.sampled_from(["deployment-create", "pod-create-bare", "cronjob-create"]).map(sample)


def served(work: Path, registry: Registry, tls_ca: TLSFiles) -> Any:
    """`image-backup serve` backing up to `registry`, which also serves Docker Hub's images
    (none: every copy fails at once), with a short budget."""
    config = {
        "backupRegistry": {
            "host": registry.host,
            "prefix": f"srv{secrets.token_hex(3)}",
            "insecure": True,
        },
        "registries": [{"host": "docker.io", "endpoint": registry.url, "insecure": True}],
        "admissionBudgetSeconds": 0.5,
        "copy": {"timeoutSeconds": 2},
    }
    return running_webhook(work, config, tls_ca)


@pytest.fixture(scope="module")
def webhook(
    plain_registry: Registry, tls_ca: TLSFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Webhook]:
    with served(tmp_path_factory.mktemp("served"), plain_registry, tls_ca) as hook:
        yield hook


@pytest.fixture
def fresh_webhook(plain_registry: Registry, tls_ca: TLSFiles, tmp_path: Path) -> Iterator[Webhook]:
    with served(tmp_path, plain_registry, tls_ca) as hook:
        yield hook


class Client:
    """One keep-alive connection to the webhook, as the API server holds them."""

    def __init__(self, hook: Webhook) -> None:
        address = urllib.parse.urlsplit(hook.url)
        assert address.hostname is not None
        self._connection = http.client.HTTPSConnection(
            address.hostname, address.port, context=hook.context, timeout=60
        )

    def post(self, payload: bytes) -> tuple[int, bytes]:
        self._connection.request(
            "POST", "/mutate", body=payload, headers={"Content-Type": "application/json"}
        )
        answer = self._connection.getresponse()
        return answer.status, answer.read()

    def close(self) -> None:
        self._connection.close()


def rss(hook: Webhook) -> int:
    """The server process's resident memory, in bytes."""
    for line in Path(f"/proc/{hook.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def warmed_up(hook: Webhook) -> Client:
    """A client, after a few reviews of every kind have loaded what answering takes."""
    client = Client(hook)
    for name in ("deployment-create", "pod-create-bare", "cronjob-create"):
        for image in ("nginx:1.25", "Upper/Case", "x" * 1000):
            review = sample(name)
            review["request"]["object"]["spec"] = {"containers": [{"name": "c", "image": image}]}
            client.post(body(review))
    time.sleep(1.5)  # records are flushed in batches
    return client


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


def pod_with_image(image: str) -> bytes:
    review = sample("pod-create-bare")
    review["request"]["object"]["spec"]["containers"][0]["image"] = image
    return body(review)


@pytest.mark.memory
def test_distinct_huge_invalid_images_do_not_grow_memory(fresh_webhook: Webhook) -> None:
    """1,000 Pods, each with its own 100 KB invalid image: each is denied (and remembered)
    but memory stays within the caches' byte bounds, not 1,000 times the image."""
    client = warmed_up(fresh_webhook)
    before = rss(fresh_webhook)
    denials = set()
    for index in range(1000):
        status, answer = client.post(pod_with_image(f"{index:06}" + "A" * 99_994))
        assert status == 200
        denials.add(orjson.loads(answer)["response"]["status"]["message"])
    client.close()
    time.sleep(1.5)
    after = rss(fresh_webhook)
    print(f"1,000 distinct 100 KB images: RSS {before / MiB:.0f} -> {after / MiB:.0f} MiB")
    assert after - before < 30 * MiB, f"{before / MiB:.0f} -> {after / MiB:.0f} MiB"
    # The denials quote each image by its start and size.
    assert len(denials) == 1000 and max(map(len, denials)) < 500
    assert all("… (100000 bytes)" in denial for denial in denials)


FUZZED_BODIES = st.one_of(
    hostile_bodies(REVIEWS), arbitrary_objects(REVIEWS).map(orjson.dumps), st.binary(max_size=300)
)


@pytest.mark.memory
def test_fuzzed_bodies_do_not_grow_memory(fresh_webhook: Webhook) -> None:
    """12,000 bodies from the fuzz strategies (the same ones each run), valid and not."""
    client = warmed_up(fresh_webhook)
    before = rss(fresh_webhook)
    statuses: dict[int, int] = {}
    unexpected: list[bytes] = []
    pending: queue.Queue[bytes | None] = queue.Queue(maxsize=100)

    def send() -> None:  # while the next bodies are generated
        while (payload := pending.get()) is not None:
            status, answer = client.post(payload)
            statuses[status] = statuses.get(status, 0) + 1
            if status not in (200, 400):
                unexpected.append(answer)

    sender = threading.Thread(target=send)
    sender.start()

    @settings(
        max_examples=12_000,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(payload=FUZZED_BODIES)
    def generate(payload: bytes) -> None:
        pending.put(payload)

    try:
        generate()
    finally:
        pending.put(None)
        sender.join()
    client.close()
    time.sleep(1.5)
    after = rss(fresh_webhook)
    print(
        f"{sum(statuses.values())} fuzzed bodies {statuses}:"
        f" RSS {before / MiB:.0f} -> {after / MiB:.0f} MiB"
    )
    assert not unexpected
    assert sum(statuses.values()) == 12_000 and statuses[200] > 1000 and statuses[400] > 1000
    assert after - before < 64 * MiB, f"{before / MiB:.0f} -> {after / MiB:.0f} MiB"
