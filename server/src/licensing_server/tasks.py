"""Background tasks that cannot fail unseen.

asyncio keeps only weak references to tasks and reports a failed one's exception
only if it is garbage-collected unretrieved ("Task exception was never retrieved"),
long after the harm. Every task the servers start goes through ``spawn``: its
failure is logged at once with its name, and an ``on_failure`` callback can settle
what the task left behind. ``TaskSet`` holds the references of many.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["TaskSet", "spawn"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

OnFailure = Callable[[BaseException], None]


def _report(on_failure: OnFailure | None, task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()  # retrieved here, so asyncio never complains later
    if exc is None:
        return
    _log.error("background task %s failed", task.get_name(), exc_info=exc)
    if on_failure is not None:
        try:
            on_failure(exc)
        except Exception:
            _log.exception("settling after background task %s failed", task.get_name())


def spawn(
    coro: Coroutine[Any, Any, _T], *, name: str, on_failure: OnFailure | None = None
) -> asyncio.Task[_T]:
    """``asyncio.create_task`` whose failure is logged (and handed to ``on_failure``).

    The caller keeps the returned task (or uses ``TaskSet``): an unreferenced task
    may be collected while it runs.
    """
    task = asyncio.create_task(coro, name=name)
    task.add_done_callback(functools.partial(_report, on_failure))
    return task


class TaskSet:
    """Strong references to running tasks, dropped as each ends; cancelled together."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(
        self, coro: Coroutine[Any, Any, _T], *, name: str, on_failure: OnFailure | None = None
    ) -> asyncio.Task[_T]:
        task = spawn(coro, name=name, on_failure=on_failure)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task  # failures were logged by their done-callback
