"""Helpers of the leader election stories: candidates campaigning, work recorded per term."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from licensing_server.leadership import LeaderElection, while_leading

_C = TypeVar("_C", bound=LeaderElection)


@dataclass
class Terms:
    """When each candidate's leader-only work ran: (identity, start, end) by monotonic clock."""

    intervals: list[tuple[str, float, float]] = field(default_factory=list)
    running: dict[str, float] = field(default_factory=dict)

    def work(self, identity: str) -> Callable[[], Awaitable[None]]:
        async def pass_() -> None:
            self.running[identity] = time.monotonic()
            try:
                await asyncio.Event().wait()
            finally:
                self.intervals.append((identity, self.running.pop(identity), time.monotonic()))

        return pass_

    def assert_never_overlapping(self) -> None:
        ordered = sorted(self.intervals, key=lambda i: i[1])
        for (a, _, a_end), (b, b_start, _) in itertools.pairwise(ordered):
            assert a_end <= b_start, f"{a} still ran when {b} began ({a_end - b_start:.3f}s)"
        assert len(self.running) <= 1, f"running at once: {sorted(self.running)}"


async def wait_for_leader(candidates: Sequence[_C], within: float) -> _C:
    """The one candidate that leads, once one does; fails if two ever do meanwhile."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        leaders = [c for c in candidates if c.is_leader]
        assert len(leaders) <= 1, f"two leaders: {[c.identity for c in leaders]}"
        if leaders:
            return leaders[0]
        await asyncio.sleep(0.02)
    raise AssertionError(f"no leader within {within}s")


async def until(condition: Callable[[], bool], within: float) -> float:
    """Seconds until ``condition()`` held; fails after ``within``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within, f"not within {within}s"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def other(candidates: Sequence[_C], one: _C) -> _C:
    (rest,) = [c for c in candidates if c is not one]
    return rest


@contextlib.asynccontextmanager
async def campaigning(
    candidates: Sequence[LeaderElection], terms: Terms | None = None
) -> AsyncIterator[dict[str, asyncio.Task[None]]]:
    """Each candidate's ``run`` (and, with ``terms``, its leader-only work) as tasks."""
    tasks: dict[str, asyncio.Task[None]] = {}
    workers: list[asyncio.Task[None]] = []
    for c in candidates:
        tasks[c.identity] = asyncio.create_task(c.run())
        if terms is not None:
            workers.append(asyncio.create_task(while_leading(c, terms.work(c.identity))))
    try:
        yield tasks
    finally:
        for t in [*tasks.values(), *workers]:
            t.cancel()
        await asyncio.gather(*tasks.values(), *workers, return_exceptions=True)
