"""Many watchers of enclaves whose events another process writes share one database poll."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from licensing_server.events import EventTail, Wake
from licensing_server.provisioning import terminal_phases
from licensing_server.storage import (
    EventRecord,
    Phase,
)
from tests.support import AFTER_ACCEPTED, TwoProcessDatabase, migrated_database

_NOW = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with migrated_database(request.param, tmp_path) as url:
        yield url


class _Processes(TwoProcessDatabase):
    async def settled(self, watchers: int) -> None:
        """Wait until every watcher has read, then for three quiet 100 ms windows in a row."""
        start, quiet = self.frontend_statements, 0
        for _ in range(100):
            before = self.frontend_statements
            await asyncio.sleep(0.1)
            busy = self.frontend_statements - before > 4
            read = self.frontend_statements - start >= watchers
            quiet = quiet + 1 if read and not busy else 0
            if quiet == 3:
                return
        raise AssertionError("the watchers never settled")


@pytest.fixture
async def processes(database_url: str) -> AsyncIterator[_Processes]:
    both = _Processes(database_url)
    yield both
    await both.close()


async def _watch(tail: EventTail, enclave_id: str) -> list[EventRecord]:
    return [e async for e in tail.follow(enclave_id, 0, terminal_phases().__contains__)]


async def test_fifty_watchers_see_every_phase_and_cost_one_poll_between_them(
    processes: _Processes,
) -> None:
    enclave_id = await processes.new_enclave()
    tail = EventTail(processes.frontend, poll_seconds=0.1)
    watchers = [asyncio.create_task(_watch(tail, enclave_id)) for _ in range(50)]
    await processes.settled(50)  # everyone has read ACCEPTED and waits

    # Nothing happens for a second: the watchers wait on the shared tail, not on the database.
    before = processes.frontend_statements
    await asyncio.sleep(1.0)
    idle_statements = processes.frontend_statements - before
    # One query per 100 ms tick at most (~10, plus a pool ping each on PostgreSQL);
    # fifty watchers polling on their own every 100 ms would make ~1000.
    assert idle_statements <= 30, idle_statements

    for phase in AFTER_ACCEPTED:
        await processes.backend.advance(enclave_id, phase, f"now {phase}", _NOW)
        await asyncio.sleep(0.02)
    seen = await asyncio.wait_for(asyncio.gather(*watchers), 10)

    expected = [Phase.ACCEPTED, *AFTER_ACCEPTED]
    for events in seen:
        assert [e.phase for e in events] == expected
        assert [e.sequence for e in events] == list(range(1, len(expected) + 1))
    await asyncio.sleep(0.2)
    assert tail.watched == 0
    await tail.close()


async def test_deleting_the_enclave_ends_every_watch_with_deleted(processes: _Processes) -> None:
    enclave_id = await processes.new_enclave()
    tail = EventTail(processes.frontend, poll_seconds=0.05)
    watchers = [asyncio.create_task(_watch(tail, enclave_id)) for _ in range(5)]
    await processes.settled(5)

    await processes.backend.remove(enclave_id)
    seen = await asyncio.wait_for(asyncio.gather(*watchers), 10)

    for events in seen:
        assert [e.phase for e in events] == [Phase.ACCEPTED, Phase.DELETED]
    await tail.close()


async def test_a_ring_for_an_unread_event_is_kept_until_the_watcher_waits() -> None:
    wake = Wake(seen=4, fallback_seconds=30)
    wake.ring(5)  # event 5 was written while the watcher was still reading up to 4
    await asyncio.wait_for(wake.wait(4), 1)  # returns at once: 5 is unread


async def test_a_ring_for_an_event_already_read_does_not_wake_the_watcher() -> None:
    wake = Wake(seen=4, fallback_seconds=0.3)
    wake.ring(4)
    started = asyncio.get_running_loop().time()
    await wake.wait(4)
    assert asyncio.get_running_loop().time() - started >= 0.25  # it waited for the fallback
