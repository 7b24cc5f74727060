"""PostgreSQL notifications: another process hears a commit at once, and never a rollback."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from unittest import mock

import pytest
import sqlalchemy as sa

from licensing_server.events import EventTail, Wake
from licensing_server.provisioning import terminal_phases
from licensing_server.storage import (
    ENCLAVE_EVENTS,
    SESSIONS_REVOKED,
    Database,
    EventRecord,
    Notifications,
    Phase,
    UserStore,
    notifications,
    parse_event_payload,
)
from tests.support import TwoProcessDatabase, migrated_database

_IS_TERMINAL = terminal_phases().__contains__
#: Long enough that only a notification can deliver within a test's patience.
NEVER = 3600.0


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with migrated_database("postgresql", tmp_path_factory.mktemp("notify")) as url:
        yield url


@pytest.fixture
async def two(postgres_url: str) -> AsyncIterator[TwoProcessDatabase]:
    pair = TwoProcessDatabase(postgres_url)
    try:
        yield pair
    finally:
        await pair.close()


class Heard:
    """What one process's listener was told, channel by channel."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.reconnected = asyncio.Event()

    def subscribe(self, listener: Notifications) -> None:
        listener.subscribe(ENCLAVE_EVENTS, functools.partial(self._put, ENCLAVE_EVENTS))
        listener.subscribe(SESSIONS_REVOKED, functools.partial(self._put, SESSIONS_REVOKED))
        listener.on_reconnect(self._reconnected)

    def _put(self, channel: str, payload: str) -> None:
        self.messages.put_nowait((channel, payload))

    def _reconnected(self) -> None:
        self.reconnected.set()

    async def next(self) -> tuple[str, str]:
        async with asyncio.timeout(10):
            return await self.messages.get()


async def test_a_committed_event_is_heard_by_another_process_and_a_rollback_never(
    two: TwoProcessDatabase,
) -> None:
    heard = Heard()
    async with notifications(two.frontend_db, heard.subscribe) as listener:
        assert listener is not None
        assert listener.connected
        enclave_id = await two.new_enclave()

        with contextlib.suppress(RuntimeError):
            async with two.backend_db.session() as session:
                await session.execute(
                    sa.select(sa.func.pg_notify(ENCLAVE_EVENTS, f"{enclave_id} 99"))
                )
                raise RuntimeError("the writer changed its mind")
        scheduled = await two.backend.advance(
            enclave_id, Phase.SCHEDULED, "placed", dt.datetime.now(dt.UTC)
        )

        channel, payload = await heard.next()
        assert channel == ENCLAVE_EVENTS
        assert parse_event_payload(payload) == scheduled  # the event itself, not only a hint
        await two.backend.remove(enclave_id)
        assert await heard.next() == (
            ENCLAVE_EVENTS,
            json.dumps({"id": enclave_id, "deleted": True}),
        )
        assert heard.messages.empty()


async def test_a_revoked_session_is_heard(two: TwoProcessDatabase) -> None:
    heard = Heard()
    async with notifications(two.frontend_db, heard.subscribe):
        users = UserStore(two.backend_db)
        now = dt.datetime.now(dt.UTC)
        user = await users.create_user("notified", "not-a-real-hash", now)
        session = await users.create_session(
            user, b"c" * 32, b"r" * 32, now, now + dt.timedelta(hours=1)
        )
        await users.revoke_session(session.id, now, "logout")
        assert await heard.next() == (SESSIONS_REVOKED, session.id)


async def test_the_listener_comes_back_after_its_connection_is_killed(
    two: TwoProcessDatabase,
) -> None:
    heard = Heard()
    async with notifications(two.frontend_db, heard.subscribe) as listener:
        assert listener is not None
        async with two.backend_db.session() as session:
            await session.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query LIKE 'LISTEN%' AND datname = current_database()"
                )
            )
        async with asyncio.timeout(15):
            await heard.reconnected.wait()
        assert listener.connected

        enclave_id = await two.new_enclave()
        await two.backend.advance(enclave_id, Phase.SCHEDULED, "placed", dt.datetime.now(dt.UTC))
        channel, payload = await heard.next()
        assert channel == ENCLAVE_EVENTS
        assert parse_event_payload(payload) == EventRecord(
            enclave_id, 2, Phase.SCHEDULED, "placed", mock.ANY
        )


async def test_a_watcher_hears_the_backend_without_waiting_for_the_poll(
    two: TwoProcessDatabase,
) -> None:
    """The tail polls once an hour here: only the notification can bring the phases."""
    tail = EventTail(two.frontend, poll_seconds=NEVER)
    tail.NOTIFIED_POLL_SECONDS = NEVER
    async with notifications(two.frontend_db, tail.listen):
        enclave_id = await two.new_enclave()
        events = tail.follow(enclave_id, 0, _IS_TERMINAL)
        assert isinstance(events, AsyncGenerator)

        async def next_phase() -> Phase:
            async with asyncio.timeout(10):
                event: EventRecord = await anext(events)
                return event.phase

        assert await next_phase() is Phase.ACCEPTED  # the first read, before the tail waits
        for phase in (Phase.SCHEDULED, Phase.RUNNING):
            await two.backend.advance(enclave_id, phase, phase.name, dt.datetime.now(dt.UTC))
            assert await next_phase() is phase
        await two.backend.remove(enclave_id)
        assert await next_phase() is Phase.DELETED
        await events.aclose()
        await tail.close()


async def test_sqlite_has_no_listener(tmp_path_factory: pytest.TempPathFactory) -> None:
    with migrated_database("sqlite", tmp_path_factory.mktemp("notify-sqlite")) as url:
        database = Database.connect(url)
        try:
            async with notifications(database, lambda _: None) as listener:
                assert listener is None
        finally:
            await database.close()


def test_an_offered_event_after_a_gap_is_not_taken_as_the_next_one() -> None:
    """A lost notification must not make a watcher skip an event: it reads the database."""
    now = dt.datetime.now(dt.UTC)
    wake = Wake(seen=1)
    wake.offer(EventRecord("e", 3, Phase.RUNNING, "running", now))
    assert wake.offered_after(1) == []  # sequence 2 was never offered: read from 1
    wake.offer(EventRecord("e", 2, Phase.SCHEDULED, "placed", now))
    wake.offer(EventRecord("e", 3, Phase.RUNNING, "running", now))
    assert [e.sequence for e in wake.offered_after(1)] == [2, 3]
    assert wake.offered_after(3) == []
