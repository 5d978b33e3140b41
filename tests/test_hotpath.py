"""No admission waits on a re-check: a tag's backup past its lifetime is answered from
memory while one re-check runs in the background (real registries, a controlled clock)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.admission_helpers import body, images_of, patched, response_of, sample
from tests.helpers import deadline, make_config, plain
from tests.support import images, skopeo
from tests.support.faultproxy import FaultProxy, FaultProxyFactory, delay, status
from tests.support.registries import Registry
from webhook.admission.handler import Admission
from webhook.config import Config
from webhook.engine import open_engine
from webhook.metrics import Metrics
from webhook.reference import Reference, parse
from webhook.registry.copy import CopyEngine, CopyResult

TTL = 60.0


class Clock:
    """Starts at the real monotonic time (deadlines are real), moves only when told."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


async def settled(
    engine: CopyEngine, source: Reference, done: Callable[[CopyResult | None], bool]
) -> CopyResult | None:
    """The engine's cached answer once `done` says the background re-check landed."""
    for _ in range(600):
        cached = engine.cached(source)
        result = cached[0] if cached is not None else None
        if done(result):
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"the re-check of {source} never landed")


@dataclass(frozen=True)
class MovingTag:
    """An image tagged v1 in the source, behind a proxy, whose tag `move()` points at
    another image; the backup registry behind a proxy too; tags live TTL seconds."""

    source_proxy: FaultProxy
    backup_proxy: FaultProxy
    old: images.Image
    new: images.Image
    source: Reference
    config: Config
    move: Callable[[], object]  # points the tag at `new`

    def moved(self, result: CopyResult | None) -> bool:
        """Whether `result` is the backup of the tag after the move."""
        return result is not None and result.digest == self.new.digest


@pytest.fixture
def moving(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
) -> MovingTag:
    old = images.make_image(image_cache, [3_000], seed=71, fmt="oci")
    new = images.make_image(image_cache, [4_000], seed=72, fmt="oci")
    images.push(plain_registry.backdoor_url, unique_repo, "v1", old)
    source, backup = fault_proxy(plain_registry), fault_proxy(basic_registry)
    config = make_config(
        backup, sources=[plain(source)], docker_config=backup.docker_config, tagCacheSeconds=TTL
    )
    return MovingTag(
        source,
        backup,
        old,
        new,
        parse(f"{source.host}/{unique_repo}:v1"),
        config,
        lambda: images.push(plain_registry.backdoor_url, unique_repo, "v1", new),
    )


async def test_a_tag_past_its_lifetime_is_answered_while_one_recheck_picks_up_the_move(
    moving: MovingTag, basic_registry: Registry
) -> None:
    proxy, old, new, source = moving.source_proxy, moving.old, moving.new, moving.source
    async with open_engine(moving.config, clock=(clock := Clock(0.0))) as engine:
        await engine.backup(source, deadline=deadline())
        fresh = engine.cached(source)
        moving.move()
        proxy.clear_log()
        proxy.add(delay(1.0))  # every source request is slow
        clock.now = TTL  # the end of its lifetime
        answers = [engine.cached(source) for _ in range(100)]
        asked_meanwhile = list(proxy.log)
        result = await settled(engine, source, moving.moved)
        after = engine.cached(source)

    assert fresh is not None and fresh[1] == TTL * 0.75  # reused until the refresh is due
    assert all(a is not None and a[0].digest == old.digest for a in answers)
    assert answers[0] is not None and answers[0][1] == TTL + 1  # the re-check lands soon
    assert asked_meanwhile == []  # nobody waited for the source
    assert len(proxy.requests("HEAD", "/manifests/v1$")) == 1  # one re-check for 100 uses
    assert result is not None and result.digest == new.digest
    assert after is not None and after[1] == TTL + TTL * 0.75
    assert skopeo.inspect_raw_digest(basic_registry, f"{result.backup.repository}:v1") == (
        new.digest
    )


async def test_a_refresh_starts_before_the_lifetime_ends(moving: MovingTag) -> None:
    async with open_engine(moving.config, clock=(clock := Clock(0.0))) as engine:
        await engine.backup(moving.source, deadline=deadline())
        moving.move()
        clock.now = TTL * 0.5
        early = engine.cached(moving.source)
        await asyncio.sleep(0.2)
        clock.now = TTL * 0.8  # the last quarter: used, so refreshed ahead
        due = engine.cached(moving.source)
        result = await settled(engine, moving.source, moving.moved)

    assert early is not None and early[0].digest == moving.old.digest
    assert due is not None and due[0].digest == moving.old.digest and due[1] == TTL
    assert result is not None


async def test_an_unreachable_source_keeps_the_backup_one_lifetime_then_it_expires(
    moving: MovingTag,
) -> None:
    proxy, source = moving.source_proxy, moving.source
    async with open_engine(moving.config, clock=(clock := Clock(0.0))) as engine:
        await engine.backup(source, deadline=deadline(5))
        proxy.add(status(503))  # the source is down
        clock.now = TTL
        engine.cached(source)
        await settled(engine, source, lambda _: len(proxy.log) > 0 and not rechecking(engine))
        attempts = len(proxy.requests("HEAD", "/manifests/v1$"))
        during = engine.cached(source)  # too soon for another attempt
        clock.now = TTL * 2 - 0.001
        late = engine.cached(source)
        clock.now = TTL * 2
        gone = engine.cached(source)

    assert during is not None and during[0].digest == moving.old.digest
    assert attempts >= 1 and not rechecking(engine)
    assert late is not None and late[0].digest == moving.old.digest
    assert gone is None


def rechecking(engine: CopyEngine) -> bool:
    return bool(engine._rechecks._running)


@pytest.mark.parametrize("refusal", [401, 404])
async def test_a_source_that_refuses_the_recheck_ends_the_entry_at_once(
    moving: MovingTag, refusal: int
) -> None:
    async with open_engine(moving.config, clock=(clock := Clock(0.0))) as engine:
        await engine.backup(moving.source, deadline=deadline())
        moving.source_proxy.add(status(refusal, method="HEAD", path="/manifests/"))
        clock.now = TTL
        assert engine.cached(moving.source) is not None
        await settled(engine, moving.source, lambda r: r is None)


async def test_a_backup_gone_from_the_backup_registry_is_not_served_while_copied_again(
    moving: MovingTag,
) -> None:
    async with open_engine(moving.config, clock=(clock := Clock(0.0))) as engine:
        await engine.backup(moving.source, deadline=deadline())
        moving.backup_proxy.add(
            status(404, method="HEAD", path="/manifests/backup-sha256-", times=1)
        )
        moving.source_proxy.add(delay(1.0, method="HEAD"))  # asking the source again is slow
        clock.now = TTL
        assert engine.cached(moving.source) is not None
        await settled(engine, moving.source, lambda r: r is None)  # forgotten at once
        again = await settled(engine, moving.source, lambda r: r is not None)

    assert again is not None and again.digest == moving.old.digest


async def test_an_admission_past_the_lifetime_gets_its_answer_without_a_registry(
    moving: MovingTag,
) -> None:
    first, second, third = (sample("pod-create-bare") for _ in range(3))
    for n, review in enumerate((first, second, third)):  # distinct answers, none reused
        container = review["request"]["object"]["spec"]["containers"][0]
        container["image"], container["name"] = str(moving.source), f"app-{n}"
    async with open_engine(moving.config, clock=(clock := Clock(0.0))) as engine:
        webhook = Admission(engine, moving.config, Metrics())
        await webhook.review(body(first), "enforce")  # backs it up
        moving.move()
        for proxy in (moving.source_proxy, moving.backup_proxy):
            proxy.clear_log()
            proxy.add(delay(1.0))  # a request to either registry takes a second
        clock.now = TTL
        at_expiry = response_of(await webhook.review(body(second), "enforce"), second)
        asked_meanwhile = moving.source_proxy.log + moving.backup_proxy.log
        await settled(engine, moving.source, moving.moved)
        later = response_of(await webhook.review(body(third), "enforce"), third)

    assert asked_meanwhile == []
    assert images_of(patched(second, at_expiry)["spec"])["app-1"].endswith(moving.old.digest)
    assert images_of(patched(third, later)["spec"])["app-2"].endswith(moving.new.digest)


async def test_audits_and_dry_runs_start_no_recheck(moving: MovingTag) -> None:
    """A re-check may copy a moved tag: only an admission that may copy starts one."""
    reviews = [sample("pod-create-bare") for _ in range(3)]
    for n, review in enumerate(reviews):
        container = review["request"]["object"]["spec"]["containers"][0]
        container["image"], container["name"] = str(moving.source), f"app-{n}"
    reviews[2]["request"]["dryRun"] = True
    async with open_engine(moving.config, clock=(clock := Clock(0.0))) as engine:
        webhook = Admission(engine, moving.config, Metrics())
        await webhook.review(body(reviews[0]), "enforce")  # backs it up
        moving.move()
        moving.source_proxy.clear_log()
        clock.now = TTL * 0.8  # due for a re-check
        audited = response_of(await webhook.review(body(reviews[1]), "audit"), reviews[1])
        dry = response_of(await webhook.review(body(reviews[2]), "enforce"), reviews[2])
        await asyncio.sleep(0.5)  # a re-check, had one started, would have asked by now
        asked = list(moving.source_proxy.log)

    assert asked == []
    assert audited["allowed"] and "patch" not in audited
    assert images_of(patched(reviews[2], dry)["spec"])["app-2"].endswith(moving.old.digest)
