"""Bounded retries: exponential backoff with full jitter, never past the caller's deadline."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

from .errors import DeadlineExceeded, TransientError

T = TypeVar("T")

MAX_ATTEMPTS = 5
BASE_DELAY = 0.2
MAX_DELAY = 5.0


async def retrying(operation: Callable[[], Awaitable[T]], *, deadline: float) -> T:
    """Run `operation`, retrying transient failures while the deadline allows another try."""
    attempt = 1
    while True:
        try:
            return await operation()
        except TransientError as exc:
            if attempt >= MAX_ATTEMPTS:
                raise
            if exc.retry_after is not None:
                delay = exc.retry_after
            else:
                delay = random.uniform(0, min(MAX_DELAY, BASE_DELAY * 2 ** (attempt - 1)))
            if time.monotonic() + delay >= deadline:
                raise
            await asyncio.sleep(delay)
            attempt += 1


def remaining(deadline: float) -> float:
    """Seconds left before `deadline`, or DeadlineExceeded (the request it cuts short
    names the operation)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("ran out of time before it could finish")
    return left


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds from now; it may be delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
