"""Many writers at once on a slow event loop: every write lands, none fails as "locked".

The embedded SQLite database takes one writer at a time, and a transaction holds its
lock across the event loop's turns (each statement is a round trip to the driver's
thread). When 20 enclaves are provisioned at once on two busy cores those turns are
slow, and a writer that waited longer than SQLite's busy timeout used to fail, so an
enclave ended FAILED / PROVISIONING_INTERRUPTED. The store must queue its writers
instead; PostgreSQL runs the same story. SQLite's busy timeout is cut to 100 ms here so
that the story takes seconds, not the minutes its real 5 s would need to show.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from licensing_server.storage import (
    Database,
    EnclaveRecord,
    EnclaveStore,
    Limits,
    Phase,
    UserRecord,
    UserStore,
    _database,
)
from tests.storage.conftest import NOW, new_user

_PHASES = (Phase.SCHEDULED, Phase.RUNNING, Phase.CERTIFICATE_ISSUED)


@pytest.fixture
async def impatient_database(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Database]:
    """The module's database on connections whose SQLite busy timeout is 100 ms."""
    monkeypatch.setattr(_database, "SQLITE_BUSY_TIMEOUT_MS", 100)
    db = Database.connect(database_url)
    try:
        yield db
    finally:
        await db.close()


async def _hog_the_loop(stop: asyncio.Event) -> None:
    """Stand-in for a busy backend: each turn of the loop takes 10 ms of CPU."""
    while not stop.is_set():
        time.sleep(0.01)  # noqa: ASYNC251 - blocking the loop is the point
        await asyncio.sleep(0)


async def _accepted_enclaves(
    store: EnclaveStore, owner: UserRecord, count: int
) -> list[EnclaveRecord]:
    limits = Limits(max_enclaves=100, enclave_ttl=dt.timedelta(hours=1))
    return [
        (
            await store.reserve(
                owner_id=owner.id, request_id=uuid.uuid4().hex, nonce=b"", limits=limits, now=NOW
            )
        )[0]
        for _ in range(count)
    ]


async def _provision(store: EnclaveStore, enclave_id: str) -> None:
    for phase in _PHASES:
        await store.advance(enclave_id, phase, f"reached {phase.value}", NOW)


async def test_twenty_enclaves_advancing_at_once_on_a_slow_loop_all_land(
    impatient_database: Database,
) -> None:
    database = impatient_database
    store = EnclaveStore(database)
    owner = await new_user(database)
    records = await _accepted_enclaves(store, owner, 20)

    stop = asyncio.Event()
    hogs = [asyncio.create_task(_hog_the_loop(stop))]
    try:
        results = await asyncio.gather(
            *(_provision(store, r.id) for r in records), return_exceptions=True
        )
    finally:
        stop.set()
        await asyncio.gather(*hogs)
    assert [r for r in results if r is not None] == []
    for record in records:
        current = await store.get(record.id)
        assert current is not None
        assert (current.phase, current.last_sequence) == (_PHASES[-1], 1 + len(_PHASES))


async def test_logins_beside_enclaves_advancing_on_a_slow_loop_all_land(
    impatient_database: Database,
) -> None:
    """A login's session is written in one hop to a thread (``Database.run``): it queues
    with the event loop's writers, so neither side fails as "locked"."""
    database = impatient_database
    store, users = EnclaveStore(database), UserStore(database)
    owner = await new_user(database)
    records = await _accepted_enclaves(store, owner, 10)

    async def log_in() -> str:
        session = await users.create_session(
            owner, os.urandom(32), os.urandom(32), NOW, NOW + dt.timedelta(hours=1)
        )
        return session.id

    stop = asyncio.Event()
    hogs = [asyncio.create_task(_hog_the_loop(stop))]
    try:
        results = await asyncio.gather(
            *(_provision(store, r.id) for r in records),
            *(log_in() for _ in range(30)),
            return_exceptions=True,
        )
    finally:
        stop.set()
        await asyncio.gather(*hogs)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == []
    sessions = [r for r in results if isinstance(r, str)]
    assert len(set(sessions)) == 30
    for session_id in sessions:
        assert await users.session_is_active(session_id, NOW)
    for record in records:
        current = await store.get(record.id)
        assert current is not None
        assert current.phase is _PHASES[-1]


async def test_two_processes_advancing_one_enclave_at_once_each_take_the_next_sequence(
    database: Database, database_url: str
) -> None:
    """The backend and the frontend (two processes, two ``Database``s) may both write an
    enclave's next phase. Each takes the next sequence in the UPDATE that writes it: no
    event is lost or numbered twice, and on SQLite no writer fails because another
    committed between its read and its write."""
    store = EnclaveStore(database)
    (record,) = await _accepted_enclaves(store, await new_user(database), 1)
    other_process = Database.connect(database_url)
    try:
        stores = (store, EnclaveStore(other_process))
        results = await asyncio.gather(
            *(
                stores[i % 2].advance(record.id, Phase.RUNNING, f"write {i}", NOW)
                for i in range(40)
            ),
            return_exceptions=True,
        )
    finally:
        await other_process.close()
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert sorted(r.sequence for r in results if not isinstance(r, BaseException)) == list(
        range(2, 42)
    )
    events = await store.events_after(record.id, 0)
    assert [e.sequence for e in events] == list(range(1, 42))
    current = await store.get(record.id)
    assert current is not None
    assert current.last_sequence == 41
