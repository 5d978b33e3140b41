"""Reading an AdmissionReview: what decoding leaves for the garbage collector."""

from __future__ import annotations

import gc

import orjson

from tests.admission_helpers import SAMPLES
from webhook.admission.review import parse_review


def test_a_decoded_object_is_not_tracked_by_the_garbage_collector() -> None:
    """Every review decodes dozens of objects; tracked, they would feed collections that
    grow with the reviews in flight (bench.admission, concurrency 64)."""
    body = (SAMPLES / "deployment-create.json").read_bytes()
    request = parse_review(body)
    obj = request.object
    assert obj is not None and obj.metadata is not None and obj.spec is not None
    template = obj.spec.template
    assert template is not None and template.spec is not None
    containers = template.spec.containers
    assert containers
    for decoded in (obj, obj.metadata, obj.spec, template, template.spec, *containers):
        assert not gc.is_tracked(decoded), type(decoded).__name__
    assert orjson.loads(body)["request"]["object"]["metadata"]["name"] == obj.metadata.name
