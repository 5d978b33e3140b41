"""A bounded map whose entries may expire."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ExpiringCache(Generic[K, V]):
    """Least-recently-used eviction; each entry has its own lifetime or none."""

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: OrderedDict[K, tuple[V, float | None]] = OrderedDict()
        self._max_entries = max_entries
        self._clock = clock

    def put(self, key: K, value: V, ttl: float | None) -> None:
        expires = None if ttl is None else self._clock() + ttl
        self._entries[key] = (value, expires)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def get(self, key: K) -> tuple[V, float | None] | None:
        """A fresh value and when it goes stale (None: never); a stale one is dropped."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires = entry[1]
        if expires is not None and self._clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry
