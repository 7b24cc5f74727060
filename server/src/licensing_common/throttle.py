"""Token buckets: how many requests a key may make, refilled at a steady rate.

``BucketStore`` is what the access guard and the login throttle count with.
``TokenBuckets`` keeps them in memory, per process: right for one process (the
enclave, an embedded SQLite deployment). Replicas sharing one PostgreSQL use
``licensing_server.storage.SharedBuckets`` instead, so that N of them together
allow the configured rate, not N times it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["BucketStore", "Rate", "TokenBuckets"]


@dataclass(frozen=True, slots=True)
class Rate:
    """``burst`` requests at once, then ``per_second`` on average."""

    per_second: float
    burst: int

    def scaled(self, percent: int) -> Rate:
        factor = percent / 100
        return Rate(self.per_second * factor, max(1, round(self.burst * factor)))


class BucketStore(Protocol):
    """Where buckets live; keys are opaque strings the caller namespaces."""

    async def take(self, key: str, rate: Rate) -> float:
        """Take one token if there is one (returns 0.0), else the seconds to wait."""
        ...

    def take_now(self, key: str, rate: Rate) -> float | None:
        """``take`` answered from this process's memory, or None when only ``take`` can
        answer (it needs the store): the guard takes one on every call, most of them
        without a coroutine."""
        ...

    async def wait_time(self, key: str, rate: Rate) -> float:
        """Seconds until ``key`` may make a request (0.0: now), taking nothing."""
        ...


class TokenBuckets:
    """One bucket per key, forgotten least recently used first beyond ``max_keys``.

    A forgotten bucket comes back full, so the bound must exceed the keys active in
    one refill period for the limit to hold; 100 000 does for any sane deployment.
    """

    def __init__(self, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic):
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def _level(self, key: Hashable, rate: Rate, now: float) -> float:
        tokens, then = self._buckets.get(key, (float(rate.burst), now))
        return min(float(rate.burst), tokens + (now - then) * rate.per_second)

    @staticmethod
    def _wait(level: float, rate: Rate) -> float:
        if level >= 1:
            return 0.0
        return (1 - level) / rate.per_second if rate.per_second > 0 else float("inf")

    async def wait_time(self, key: Hashable, rate: Rate) -> float:
        """Seconds until ``key`` may make a request (0.0: now), taking nothing."""
        return self._wait(self._level(key, rate, self._clock()), rate)

    async def take(self, key: Hashable, rate: Rate) -> float:
        """Take one token if there is one (returns 0.0), else the seconds to wait."""
        return self.take_now(key, rate)

    def take_now(self, key: Hashable, rate: Rate) -> float:
        """``take`` without a coroutine: the access guard takes one on every call."""
        now = self._clock()
        tokens, then = self._buckets.get(key, (float(rate.burst), now))
        level = min(float(rate.burst), tokens + (now - then) * rate.per_second)
        if level < 1:
            return self._wait(level, rate)
        self._buckets[key] = (level - 1, now)
        self._buckets.move_to_end(key)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return 0.0
