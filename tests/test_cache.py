"""ExpiringCache: bounded by entries, by bytes, and by time."""

from __future__ import annotations

import pytest

from webhook.registry.cache import ExpiringCache, footprint
from webhook.registry.client import Repository


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _weigh(key: str, value: str) -> int:
    return len(key) + len(value)


def test_least_recently_used_entry_goes_first() -> None:
    cache: ExpiringCache[str, str] = ExpiringCache(2)
    cache.put("a", "1", None)
    cache.put("b", "2", None)
    assert cache.get("a") == ("1", None)
    cache.put("c", "3", None)
    assert cache.get("b") is None
    assert cache.get("a") == ("1", None)


def test_bytes_bound_evicts_until_it_holds() -> None:
    cache: ExpiringCache[str, str] = ExpiringCache(100, max_bytes=10, weigh=_weigh)
    cache.put("a", "1234", None)  # 5
    cache.put("b", "1234", None)  # 10
    assert cache.weight == 10
    cache.put("c", "12", None)  # 13 > 10: "a" goes
    assert cache.get("a") is None
    assert cache.weight == 8
    assert len(cache) == 2


def test_an_entry_heavier_than_the_bound_is_not_kept() -> None:
    cache: ExpiringCache[str, str] = ExpiringCache(100, max_bytes=10, weigh=_weigh)
    cache.put("a", "1", None)
    cache.put("big", "x" * 100, None)
    assert cache.get("big") is None
    assert cache.get("a") == ("1", None)
    assert cache.weight == 2


def test_replacing_an_entry_counts_its_weight_once() -> None:
    cache: ExpiringCache[str, str] = ExpiringCache(100, max_bytes=100, weigh=_weigh)
    for _ in range(10):
        cache.put("a", "12345", None)
    assert cache.weight == 6


def test_an_expired_entry_is_dropped_with_its_weight() -> None:
    clock = Clock()
    cache: ExpiringCache[str, str] = ExpiringCache(10, clock, max_bytes=100, weigh=_weigh)
    cache.put("a", "1", 5.0)
    assert cache.get("a") == ("1", 5.0)
    clock.now = 5.0
    assert cache.get("a") is None
    assert cache.weight == 0


def test_max_bytes_needs_weigh() -> None:
    with pytest.raises(ValueError):
        ExpiringCache(10, max_bytes=10)


def test_footprint_grows_with_what_a_value_holds() -> None:
    small = footprint(Repository("r.example", "a"))
    assert footprint(Repository("r.example", "a" * 1_000)) > small + 900
    assert footprint(("k", [Repository("r.example", "a")] * 3)) > 3 * small
    assert footprint({"k": "v" * 500}) > 500


def test_discard_drops_an_entry_and_its_weight() -> None:
    cache: ExpiringCache[str, str] = ExpiringCache(10, max_bytes=100, weigh=_weigh)
    cache.put("a", "1", None)
    cache.discard("a")
    cache.discard("missing")
    assert cache.get("a") is None and cache.weight == 0
