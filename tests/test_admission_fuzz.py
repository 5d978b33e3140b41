"""Fuzzing the review path: any body gives a valid AdmissionReview or a 4xx, never a crash."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.admission_helpers import body, patched, sample
from tests.support.strategies import (
    arbitrary_objects,
    hostile_bodies,
    json_values,
    unreadable_text,
)
from webhook import config as config_module
from webhook.admission.errors import BadReview
from webhook.admission.handler import Admission
from webhook.engine import open_engine
from webhook.metrics import Metrics

MODES = st.sampled_from(["enforce", "audit"])
REVIEWS = st.sampled_from(["deployment-create", "pod-create-bare", "cronjob-create"]).map(sample)


@dataclass
class Webhook:
    loop: asyncio.AbstractEventLoop
    admission: Admission


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    """Backup registry unreachable, tiny budget: every copy fails fast, nothing blocks."""
    config = config_module.parse(
        {
            "backupRegistry": {"host": "127.0.0.1:1", "prefix": "backup", "insecure": True},
            "admissionBudgetSeconds": 0.01,
            "copy": {"timeoutSeconds": 0.5},
        }
    )
    loop = asyncio.new_event_loop()
    engine_context = open_engine(config)
    engine = loop.run_until_complete(engine_context.__aenter__())
    yield Webhook(loop, Admission(engine, config, Metrics()))

    async def drain() -> None:  # copies left running in the background
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        await asyncio.gather(*others, return_exceptions=True)

    loop.run_until_complete(drain())
    loop.run_until_complete(engine_context.__aexit__(None, None, None))
    loop.close()


def review_sync(webhook: Webhook, payload: bytes, mode: str) -> dict[str, Any] | BadReview:
    async def run() -> dict[str, Any] | BadReview:
        try:
            answer = await webhook.admission.review(payload, mode)  # type: ignore[arg-type]
        except BadReview as exc:
            return exc
        document: dict[str, Any] = orjson.loads(answer)
        return document

    return webhook.loop.run_until_complete(run())


def assert_valid(outcome: dict[str, Any] | BadReview, uid: object = None) -> None:
    if isinstance(outcome, BadReview):
        assert 400 <= outcome.status < 500
        assert outcome.reason and "\n" not in outcome.reason
        return
    assert outcome["apiVersion"] == "admission.k8s.io/v1" and outcome["kind"] == "AdmissionReview"
    response = outcome["response"]
    assert isinstance(response["allowed"], bool)
    if uid is not None:
        assert response["uid"] == uid
    if not response["allowed"]:
        assert response["status"]["message"]
    for warning in response.get("warnings", []):
        assert len(warning) < 256


FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(payload=st.binary(max_size=200) | json_values.map(orjson.dumps), mode=MODES)
def test_arbitrary_bodies(webhook: Webhook, payload: bytes, mode: str) -> None:
    assert_valid(review_sync(webhook, payload, mode))


@FUZZ
@given(
    request=st.dictionaries(
        st.sampled_from(
            ["uid", "kind", "operation", "object", "namespace", "name", "dryRun", "subResource"]
        ),
        json_values,
    ),
    mode=MODES,
)
def test_arbitrary_requests(webhook: Webhook, request: dict[str, Any], mode: str) -> None:
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
    assert_valid(review_sync(webhook, orjson.dumps(review), mode))


@FUZZ
@given(review=arbitrary_objects(st.builds(sample, st.just("deployment-create"))), mode=MODES)
def test_arbitrary_objects_in_valid_reviews(
    webhook: Webhook, review: dict[str, Any], mode: str
) -> None:
    outcome = review_sync(webhook, orjson.dumps(review), mode)
    assert_valid(outcome, review["request"]["uid"])
    assert not isinstance(outcome, BadReview)
    response = outcome["response"]
    if "patch" in response:
        after = patched(review, response)  # the patch applies to the object it was made for
        assert after["kind"] == review["request"]["kind"]["kind"]


def test_a_type_error_then_a_body_cut_short_is_400(webhook: Webhook) -> None:
    """The type error sends the reviewer to read the envelope alone, which meets the cut."""
    review = sample("pod-create-bare")
    review["request"]["object"]["metadata"]["name"] = 5
    outcome = review_sync(webhook, body(review)[:-10], "enforce")
    assert isinstance(outcome, BadReview)
    assert (outcome.status, outcome.reason) == (
        400,
        "body is not valid JSON: Input data was truncated",
    )


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_nesting_deeper_than_the_decoder_follows_is_400(webhook: Webhook, depth: int) -> None:
    payload = b'{"request":' * depth + b"{}" + b"}" * depth
    outcome = review_sync(webhook, payload, "enforce")
    assert isinstance(outcome, BadReview)
    assert (outcome.status, outcome.reason) == (400, "body is nested too deeply to read")


HOSTILE = settings(FUZZ, max_examples=1000)


@HOSTILE
@given(payload=hostile_bodies(REVIEWS), mode=MODES)
def test_hostile_bodies_get_an_answer_or_a_4xx(webhook: Webhook, payload: bytes, mode: str) -> None:
    """Deep nesting, a type error before a syntax error, text that is not JSON: the
    reviewer answers or refuses with a 4xx and one line; nothing else escapes."""
    assert_valid(review_sync(webhook, payload, mode))


@FUZZ
@given(payload=unreadable_text(REVIEWS), mode=MODES)
def test_text_that_is_not_json_is_refused_wherever_it_is(
    webhook: Webhook, payload: bytes, mode: str
) -> None:
    """Invalid UTF-8, a lone surrogate escape, NaN or Infinity: 400, even in a field the
    reviewer does not read."""
    outcome = review_sync(webhook, payload, mode)
    assert isinstance(outcome, BadReview) and outcome.status == 400, outcome
