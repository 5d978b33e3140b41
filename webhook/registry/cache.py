"""A bounded map whose entries may expire."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def footprint(*objects: object) -> int:
    """Roughly the bytes `objects` hold, walking tuples, lists, dicts and dataclasses; a
    `weigh` for any cache. An object reached twice counts twice: it bounds, not accounts."""
    total = 0
    for value in objects:
        total += sys.getsizeof(value)
        if isinstance(value, tuple | list | set | frozenset):
            total += footprint(*value)
        elif isinstance(value, dict):
            total += footprint(*value.keys(), *value.values())
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            total += footprint(*(getattr(value, f.name) for f in dataclasses.fields(value)))
    return total


class ExpiringCache(Generic[K, V]):
    """Least-recently-used eviction; each entry has its own lifetime or none.

    Bounded by entries and, with `weigh`, by bytes too: the keys and values of a cache that
    hostile input can fill (image names, messages) may be of any size, so a count alone
    does not bound memory. An entry heavier than `max_bytes` by itself is not kept.
    """

    def __init__(
        self,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_bytes: int | None = None,
        weigh: Callable[[K, V], int] | None = None,
    ) -> None:
        if (max_bytes is None) != (weigh is None):
            raise ValueError("max_bytes and weigh go together")
        self._entries: OrderedDict[K, tuple[V, float | None, int]] = OrderedDict()
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._weigh = weigh
        self._bytes = 0
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def weight(self) -> int:
        """Bytes held, as `weigh` estimates them (0 for a cache bounded by count only)."""
        return self._bytes

    def put(self, key: K, value: V, ttl: float | None) -> None:
        expires = None if ttl is None else self._clock() + ttl
        weight = self._weigh(key, value) if self._weigh is not None else 0
        self.discard(key)
        if self._max_bytes is not None and weight > self._max_bytes:
            return
        self._entries[key] = (value, expires, weight)
        self._bytes += weight
        while len(self._entries) > self._max_entries or (
            self._max_bytes is not None and self._bytes > self._max_bytes
        ):
            _, (_, _, evicted) = self._entries.popitem(last=False)
            self._bytes -= evicted

    def get(self, key: K) -> tuple[V, float | None] | None:
        """A fresh value and when it goes stale (None: never); a stale one is dropped."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires = entry[1]
        if expires is not None and self._clock() >= expires:
            self.discard(key)
            return None
        self._entries.move_to_end(key)
        return entry[0], expires

    def discard(self, key: K) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry[2]
