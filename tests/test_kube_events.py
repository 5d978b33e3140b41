"""Kubernetes Events about admitted objects: queued without blocking, sent by one worker
thread through the real client to the fake API server, repeats counted on one Event."""

from __future__ import annotations

import datetime
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest

from tests.support.fakekube import EVENTS, Call, FakeKube, KubeError, Query
from webhook.kube import events
from webhook.kube.client import api_client
from webhook.kube.events import InvolvedObject, KubeEvents

NS = "team"
CREATED = InvolvedObject("apps/v1", "Deployment", NS, "web")  # on CREATE: no uid yet
UPDATED = InvolvedObject("apps/v1", "Deployment", NS, "web", uid="3f1c-uid")
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@pytest.fixture
def recorder(fake_kube: FakeKube) -> Iterator[KubeEvents]:
    with api_client() as api:
        recorder = KubeEvents(api, instance="webhook-0")
        try:
            yield recorder
        finally:
            recorder.close()


def stored(kube: FakeKube, namespace: str = NS) -> list[dict[str, Any]]:
    items, _ = kube.store.list_objects(Query(EVENTS, namespace, [], []))
    return items


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def blocking(kube: FakeKube) -> tuple[threading.Event, threading.Event]:
    """An interceptor holding every event request until `release` is set; `entered` is set
    once one is held."""
    entered, release = threading.Event(), threading.Event()

    def hold(call: Call) -> None:
        if "/events" in call.path:
            entered.set()
            release.wait(10)

    kube.interceptors.append(hold)
    return entered, release


def test_an_event_has_every_field(fake_kube: FakeKube, recorder: KubeEvents) -> None:
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    recorder.emit(CREATED, "ImageBackedUp", "backed up nginx:1.27 to backup/nginx:1.27")
    recorder.emit(UPDATED, "ImageBackupFailed", "x" * 2000, warning=True)
    recorder.close()
    after = datetime.datetime.now(datetime.UTC)

    by_reason = {e["reason"]: e for e in stored(fake_kube)}
    assert set(by_reason) == {"ImageBackedUp", "ImageBackupFailed"}
    normal, warning = by_reason["ImageBackedUp"], by_reason["ImageBackupFailed"]
    assert normal["involvedObject"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "namespace": NS,
        "name": "web",
    }
    assert warning["involvedObject"]["uid"] == "3f1c-uid"
    assert normal["message"] == "backed up nginx:1.27 to backup/nginx:1.27"
    assert warning["message"] == "x" * 1023 + "…"
    assert (normal["type"], warning["type"]) == ("Normal", "Warning")
    for event in (normal, warning):
        assert re.fullmatch(r"web\.[0-9a-f]{16}", event["metadata"]["name"])
        assert event["metadata"]["namespace"] == NS
        assert event["count"] == 1
        assert event["source"] == {"component": "image-backup-webhook"}
        assert event["reportingComponent"] == "image-backup-webhook"
        assert event["reportingInstance"] == "webhook-0"
        assert "eventTime" not in event and "action" not in event
        assert event["firstTimestamp"] == event["lastTimestamp"]
        at = datetime.datetime.fromisoformat(event["firstTimestamp"])
        assert at.utcoffset() == datetime.timedelta(0)
        assert before <= at <= after and at.microsecond == 0
    assert normal["metadata"]["name"] != warning["metadata"]["name"]


def test_event_names_are_dns_subdomains(fake_kube: FakeKube, recorder: KubeEvents) -> None:
    long_name = "a" * 235 + "-" + "b" * 17  # 253: the longest name an object can have
    recorder.emit(InvolvedObject("v1", "Pod", NS, long_name), "ImageBackedUp", "long")
    recorder.emit(InvolvedObject("v1", "Pod", NS, "", uid="9a0e"), "ImageBackedUp", "no name")
    recorder.emit(InvolvedObject("v1", "Pod", NS, ""), "ImageBackedUp", "nothing to attach to")
    recorder.close()

    names = {e["message"]: e["metadata"]["name"] for e in stored(fake_kube)}
    assert set(names) == {"long", "no name"}  # neither a name nor a uid: skipped
    assert names["long"] == f"{'a' * 235}.{names['long'][-16:]}"  # cut, and no "-" before "."
    assert re.fullmatch(r"pod\.[0-9a-f]{16}", names["no name"])
    for name in names.values():
        assert len(name) <= 253 and NAME.fullmatch(name)
    assert recorder.dropped == 0


async def test_emit_does_not_wait_for_a_slow_api_server(
    fake_kube: FakeKube, recorder: KubeEvents
) -> None:
    fake_kube.interceptors.append(lambda call: time.sleep(0.5))
    started = time.perf_counter()
    for n in range(20):
        recorder.emit(CREATED, "ImageBackedUp", f"image {n}")
    elapsed = time.perf_counter() - started
    assert elapsed < 0.05
    assert stored(fake_kube) == []  # the first is still on its way

    fake_kube.interceptors.clear()
    recorder.close()
    assert sorted(e["message"] for e in stored(fake_kube)) == sorted(
        f"image {n}" for n in range(20)
    )
    assert recorder.dropped == 0


def test_a_repeat_counts_on_the_same_event(fake_kube: FakeKube, recorder: KubeEvents) -> None:
    recorder.emit(CREATED, "ImageBackedUp", "backed up nginx:1.27")
    recorder.emit(CREATED, "ImageBackedUp", "backed up nginx:1.27")
    recorder.emit(CREATED, "ImageBackedUp", "backed up redis:7")
    recorder.emit(UPDATED, "ImageBackedUp", "backed up redis:7")  # another object (uid)
    recorder.close()

    counts = sorted((e["message"], e["count"]) for e in stored(fake_kube))
    assert counts == [
        ("backed up nginx:1.27", 2),
        ("backed up redis:7", 1),
        ("backed up redis:7", 1),
    ]
    assert len(fake_kube.calls_to("POST", f"/namespaces/{NS}/events")) == 3
    (patch,) = [c for c in fake_kube.calls if c.method == "PATCH"]
    assert patch.content_type == "application/strategic-merge-patch+json"
    assert set(patch.body) == {"count", "lastTimestamp"}


def test_a_repeat_after_the_window_is_a_new_event(
    fake_kube: FakeKube, recorder: KubeEvents, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "CORRELATION_SECONDS", 0.0)
    recorder.emit(CREATED, "ImageBackedUp", "backed up nginx:1.27")
    recorder.emit(CREATED, "ImageBackedUp", "backed up nginx:1.27")
    recorder.close()
    assert [e["count"] for e in stored(fake_kube)] == [1, 1]
    assert not [c for c in fake_kube.calls if c.method == "PATCH"]


def test_only_the_most_recent_events_are_remembered(
    fake_kube: FakeKube, recorder: KubeEvents, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "MAX_CORRELATED", 1)
    for message in ("one", "two", "one"):  # "two" pushes "one" out
        recorder.emit(CREATED, "ImageBackedUp", message)
    recorder.close()
    assert sorted(e["message"] for e in stored(fake_kube)) == ["one", "one", "two"]


def test_a_repeat_of_a_deleted_event_creates_a_new_one(
    fake_kube: FakeKube, recorder: KubeEvents
) -> None:
    recorder.emit(CREATED, "ImageBackedUp", "backed up nginx:1.27")
    wait_until(lambda: len(stored(fake_kube)) == 1)
    (first,) = stored(fake_kube)
    fake_kube.store.delete(EVENTS, NS, first["metadata"]["name"])  # expired

    recorder.emit(CREATED, "ImageBackedUp", "backed up nginx:1.27")
    recorder.emit(CREATED, "ImageBackedUp", "backed up nginx:1.27")
    recorder.close()
    (second,) = stored(fake_kube)
    assert second["metadata"]["name"] != first["metadata"]["name"]
    assert second["count"] == 2  # the recreated Event is the one counted on next
    assert [c.method for c in fake_kube.calls] == ["POST", "PATCH", "POST", "PATCH"]


def test_a_full_queue_drops_and_counts(fake_kube: FakeKube) -> None:
    entered, release = blocking(fake_kube)
    with api_client() as api:
        recorder = KubeEvents(api, max_pending=2)
        try:
            recorder.emit(CREATED, "ImageBackedUp", "sending")
            assert entered.wait(5)  # the worker is stuck on it; the queue is empty
            for n in range(10):
                recorder.emit(CREATED, "ImageBackedUp", f"queued {n}")
            assert recorder.dropped == 8
        finally:
            release.set()
            recorder.close()
    assert sorted(e["message"] for e in stored(fake_kube)) == ["queued 0", "queued 1", "sending"]
    assert recorder.dropped == 8


def test_close_gives_up_after_its_timeout(fake_kube: FakeKube) -> None:
    entered, release = blocking(fake_kube)
    with api_client() as api:
        recorder = KubeEvents(api)
        try:
            recorder.emit(CREATED, "ImageBackedUp", "stuck")
            assert entered.wait(5)
            recorder.emit(CREATED, "ImageBackedUp", "never sent")
            started = time.monotonic()
            recorder.close(timeout=0.2)
            assert time.monotonic() - started < 0.5
        finally:
            release.set()
    recorder.emit(CREATED, "ImageBackedUp", "after close")  # ignored, and no error
    assert recorder.dropped == 0


def test_an_api_error_is_logged_and_the_next_event_sent(
    fake_kube: FakeKube, recorder: KubeEvents, caplog: pytest.LogCaptureFixture
) -> None:
    def forbid_once(call: Call) -> None:
        if call.to("POST", "/events"):
            fake_kube.interceptors.remove(forbid_once)
            raise KubeError(403, "Forbidden", 'events is forbidden: User "webhook" cannot')

    fake_kube.interceptors.append(forbid_once)
    caplog.set_level(logging.WARNING, logger=events.log.name)
    recorder.emit(CREATED, "ImageBackedUp", "refused")
    recorder.emit(CREATED, "ImageBackedUp", "accepted")
    recorder.close()

    assert [e["message"] for e in stored(fake_kube)] == ["accepted"]
    (record,) = caplog.records
    line = record.getMessage()
    assert record.levelno == logging.WARNING and "\n" not in line
    assert (
        f"creating Event ImageBackedUp for Deployment {NS}/web: 403 events is forbidden: "
        'User \\"webhook\\" cannot'
    ) in line
    assert fake_kube.token not in line


def test_a_failure_outside_the_api_does_not_stop_the_worker(
    fake_kube: FakeKube, recorder: KubeEvents, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=events.log.name)
    unusable = InvolvedObject(cast(Any, 1), "Deployment", NS, "web")  # refused by the client
    recorder.emit(unusable, "ImageBackedUp", "refused")
    recorder.emit(CREATED, "ImageBackedUp", "accepted")
    recorder.close()

    assert [e["message"] for e in stored(fake_kube)] == ["accepted"]
    (record,) = caplog.records
    assert "ValidationError" in record.getMessage() and "\n" not in record.getMessage()
