"""No admission waits on a re-check: a tag's backup past its lifetime is answered from
memory while one re-check runs in the background (real registries, a controlled clock)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.admission_helpers import body, images_of, patched, response_of, sample
from tests.helpers import deadline, make_config, plain
from tests.support import images, skopeo
from tests.support.faultproxy import FaultProxy, FaultProxyFactory, delay, status
from tests.support.registries import Registry
from webhook.admission.handler import Admission
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


def moved_tag_setup(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    repo: str,
    fault_proxy: FaultProxyFactory,
) -> tuple[FaultProxy, images.Image, images.Image, Reference]:
    old = images.make_image(image_cache, [3_000], seed=71, fmt="oci")
    new = images.make_image(image_cache, [4_000], seed=72, fmt="oci")
    images.push(plain_registry.backdoor_url, repo, "v1", old)
    proxy = fault_proxy(plain_registry)
    return proxy, old, new, parse(f"{proxy.host}/{repo}:v1")


async def test_a_tag_past_its_lifetime_is_answered_while_one_recheck_picks_up_the_move(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
) -> None:
    proxy, old, new, source = moved_tag_setup(
        plain_registry, basic_registry, image_cache, unique_repo, fault_proxy
    )
    config = make_config(
        basic_registry,
        sources=[plain(proxy)],
        docker_config=basic_registry.docker_config,
        tagCacheSeconds=TTL,
    )
    async with open_engine(config, clock=(clock := Clock(0.0))) as engine:
        await engine.backup(source, deadline=deadline())
        fresh = engine.cached(source)
        images.push(plain_registry.backdoor_url, unique_repo, "v1", new)  # the tag moves
        proxy.clear_log()
        proxy.add(delay(1.0))  # every source request is slow
        clock.now = TTL  # the end of its lifetime
        answers = [engine.cached(source) for _ in range(100)]
        asked_meanwhile = list(proxy.log)
        result = await settled(engine, source, lambda r: r is not None and r.digest != old.digest)
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


async def test_a_refresh_starts_before_the_lifetime_ends(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
) -> None:
    proxy, old, new, source = moved_tag_setup(
        plain_registry, basic_registry, image_cache, unique_repo, fault_proxy
    )
    config = make_config(
        basic_registry,
        sources=[plain(proxy)],
        docker_config=basic_registry.docker_config,
        tagCacheSeconds=TTL,
    )
    async with open_engine(config, clock=(clock := Clock(0.0))) as engine:
        await engine.backup(source, deadline=deadline())
        images.push(plain_registry.backdoor_url, unique_repo, "v1", new)
        clock.now = TTL * 0.5
        early = engine.cached(source)
        await asyncio.sleep(0.2)
        clock.now = TTL * 0.8  # the last quarter: used, so refreshed ahead
        due = engine.cached(source)
        result = await settled(engine, source, lambda r: r is not None and r.digest != old.digest)

    assert early is not None and early[0].digest == old.digest
    assert due is not None and due[0].digest == old.digest and due[1] == TTL
    assert result is not None and result.digest == new.digest


async def test_an_unreachable_source_keeps_the_backup_one_lifetime_then_it_expires(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
) -> None:
    proxy, old, _, source = moved_tag_setup(
        plain_registry, basic_registry, image_cache, unique_repo, fault_proxy
    )
    config = make_config(
        basic_registry,
        sources=[plain(proxy)],
        docker_config=basic_registry.docker_config,
        tagCacheSeconds=TTL,
    )
    async with open_engine(config, clock=(clock := Clock(0.0))) as engine:
        await engine.backup(source, deadline=deadline(5))
        proxy.add(status(503))  # the source is down
        clock.now = TTL
        engine.cached(source)
        await settled(engine, source, lambda _: len(proxy.log) > 0 and not engine_busy(engine))
        attempts = len(proxy.requests("HEAD", "/manifests/v1$"))
        during = engine.cached(source)  # too soon for another attempt
        clock.now = TTL * 2 - 0.001
        late = engine.cached(source)
        clock.now = TTL * 2
        gone = engine.cached(source)

    assert during is not None and during[0].digest == old.digest
    assert attempts >= 1 and not engine_busy(engine)
    assert late is not None and late[0].digest == old.digest
    assert gone is None


def engine_busy(engine: CopyEngine) -> bool:
    return bool(engine._rechecks._running)


@pytest.mark.parametrize("refusal", [401, 404])
async def test_a_source_that_refuses_the_recheck_ends_the_entry_at_once(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
    refusal: int,
) -> None:
    proxy, _, _, source = moved_tag_setup(
        plain_registry, basic_registry, image_cache, unique_repo, fault_proxy
    )
    config = make_config(
        basic_registry,
        sources=[plain(proxy)],
        docker_config=basic_registry.docker_config,
        tagCacheSeconds=TTL,
    )
    async with open_engine(config, clock=(clock := Clock(0.0))) as engine:
        await engine.backup(source, deadline=deadline())
        proxy.add(status(refusal, method="HEAD", path="/manifests/"))
        clock.now = TTL
        assert engine.cached(source) is not None
        await settled(engine, source, lambda r: r is None)


async def test_a_backup_gone_from_the_backup_registry_is_not_served_while_copied_again(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
) -> None:
    proxy, old, _, source = moved_tag_setup(
        plain_registry, basic_registry, image_cache, unique_repo, fault_proxy
    )
    target = fault_proxy(basic_registry)
    config = make_config(
        target,
        sources=[plain(proxy)],
        docker_config=target.docker_config,
        tagCacheSeconds=TTL,
    )
    async with open_engine(config, clock=(clock := Clock(0.0))) as engine:
        await engine.backup(source, deadline=deadline())
        target.add(status(404, method="HEAD", path="/manifests/sha256-", times=1))  # deleted
        proxy.add(delay(1.0, method="HEAD"))  # asking the source again is slow
        clock.now = TTL
        assert engine.cached(source) is not None
        await settled(engine, source, lambda r: r is None)  # forgotten before the copy lands
        again = await settled(engine, source, lambda r: r is not None)

    assert again is not None and again.digest == old.digest


async def test_an_admission_past_the_lifetime_gets_its_answer_without_a_registry(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    fault_proxy: FaultProxyFactory,
) -> None:
    source_proxy, old, new, source = moved_tag_setup(
        plain_registry, basic_registry, image_cache, unique_repo, fault_proxy
    )
    target = fault_proxy(basic_registry)
    config = make_config(
        target,
        sources=[plain(source_proxy)],
        docker_config=target.docker_config,
        tagCacheSeconds=TTL,
    )
    first, second, third = (sample("pod-create-bare") for _ in range(3))
    for n, review in enumerate((first, second, third)):  # distinct answers, none reused
        container = review["request"]["object"]["spec"]["containers"][0]
        container["image"], container["name"] = str(source), f"app-{n}"
    async with open_engine(config, clock=(clock := Clock(0.0))) as engine:
        webhook = Admission(engine, config, Metrics())
        await webhook.review(body(first), "enforce")  # backs it up
        images.push(plain_registry.backdoor_url, unique_repo, "v1", new)
        for proxy in (source_proxy, target):
            proxy.clear_log()
            proxy.add(delay(1.0))  # a request to either registry takes a second
        clock.now = TTL
        at_expiry = response_of(await webhook.review(body(second), "enforce"), second)
        asked_meanwhile = source_proxy.log + target.log
        await settled(engine, source, lambda r: r is not None and r.digest == new.digest)
        later = response_of(await webhook.review(body(third), "enforce"), third)

    assert asked_meanwhile == []
    assert images_of(patched(second, at_expiry)["spec"])["app-1"].endswith(old.digest)
    assert images_of(patched(third, later)["spec"])["app-2"].endswith(new.digest)
