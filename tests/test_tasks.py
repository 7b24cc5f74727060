"""Background tasks: a failure is reported when it happens, never lost with the task."""

from __future__ import annotations

import asyncio
import logging

import pytest

from licensing_server.tasks import TaskSet, spawn


def test_a_failed_task_is_logged_and_settled_at_once(caplog: pytest.LogCaptureFixture) -> None:
    failures: list[BaseException] = []

    async def fails() -> None:
        raise ValueError("boom")

    async def main() -> None:
        task = spawn(fails(), name="provision-x", on_failure=failures.append)
        await asyncio.wait({task})
        await asyncio.sleep(0)  # done-callbacks run on the next loop iteration

    with caplog.at_level(logging.ERROR, logger="licensing_server.tasks"):
        asyncio.run(main())
    assert [type(exc) for exc in failures] == [ValueError]
    assert "background task provision-x failed" in caplog.text
    assert "boom" in caplog.text


def test_a_cancelled_or_finished_task_is_not_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    failures: list[BaseException] = []

    async def main() -> None:
        tasks = TaskSet()
        tasks.spawn(asyncio.sleep(0), name="quick", on_failure=failures.append)
        tasks.spawn(asyncio.sleep(60), name="slow", on_failure=failures.append)
        await asyncio.sleep(0.05)
        assert len(tasks) == 1  # the finished one is no longer held
        await tasks.cancel_all()
        assert len(tasks) == 0

    with caplog.at_level(logging.ERROR, logger="licensing_server.tasks"):
        asyncio.run(main())
    assert failures == []
    assert "failed" not in caplog.text


def test_a_failing_settle_is_logged_too(caplog: pytest.LogCaptureFixture) -> None:
    def settle(_: BaseException) -> None:
        raise RuntimeError("settling broke")

    async def fails() -> None:
        raise ValueError("boom")

    async def main() -> None:
        task = spawn(fails(), name="t", on_failure=settle)
        await asyncio.wait({task})
        await asyncio.sleep(0)

    with caplog.at_level(logging.ERROR, logger="licensing_server.tasks"):
        asyncio.run(main())
    assert "settling after background task t failed" in caplog.text
