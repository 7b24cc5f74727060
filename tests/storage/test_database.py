"""``Database.run``: one transaction as one synchronous function, on both databases."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from licensing_server.storage import Database, UserStore
from licensing_server.storage._models import User
from tests.storage.conftest import NOW
from tests.support import migrated_database


class _Refused(Exception):
    pass


async def test_what_a_transaction_wrote_is_there_once_it_returns(database: Database) -> None:
    name = f"user{uuid.uuid4().hex[:12]}"
    user_id = str(uuid.uuid4())

    def sign_up(connection: sa.Connection) -> str:
        connection.execute(
            sa.insert(User).values(id=user_id, username=name, password_hash="h", created_at=NOW)
        )
        return user_id

    assert await database.run(sign_up) == user_id
    found = await UserStore(database).find_user_by_name(name)
    assert found is not None
    assert (found.id, found.created_at) == (user_id, NOW)


async def test_a_transaction_that_raises_leaves_nothing_behind(database: Database) -> None:
    name = f"user{uuid.uuid4().hex[:12]}"

    def half_done(connection: sa.Connection) -> None:
        connection.execute(
            sa.insert(User).values(
                id=str(uuid.uuid4()), username=name, password_hash="h", created_at=NOW
            )
        )
        raise _Refused

    with pytest.raises(_Refused):
        await database.run(half_done)
    assert await UserStore(database).find_user_by_name(name) is None
    # The connection went back clean: the next transaction works.
    assert await database.run(lambda c: c.execute(sa.select(sa.literal(1))).scalar_one()) == 1


async def test_a_unique_violation_reaches_the_caller_as_it_is(database: Database) -> None:
    taken = await UserStore(database).create_user(f"user{uuid.uuid4().hex[:12]}", "h", NOW)

    def again(connection: sa.Connection) -> None:
        connection.execute(
            sa.insert(User).values(
                id=str(uuid.uuid4()), username=taken.username, password_hash="h", created_at=NOW
            )
        )

    with pytest.raises(sa.exc.IntegrityError):
        await database.run(again)


@pytest.fixture
async def sqlite_database(tmp_path: Path) -> AsyncIterator[Database]:
    """SQLite alone: PostgreSQL runs ``Database.run`` on the event loop, no thread."""
    with migrated_database("sqlite", tmp_path) as url:
        database = Database.connect(url)
        try:
            yield database
        finally:
            await database.close()


async def test_a_cancelled_writer_keeps_the_writer_turn_until_its_thread_is_done(
    sqlite_database: Database,
) -> None:
    """SQLite: the caller went away, but its transaction still runs in the worker thread;
    the next writer waits for it instead of meeting it in SQLite's busy handler."""
    database = sqlite_database
    release = threading.Event()
    first, second = f"user{uuid.uuid4().hex[:12]}", f"user{uuid.uuid4().hex[:12]}"

    def slow_sign_up(connection: sa.Connection) -> None:
        assert release.wait(10)
        connection.execute(
            sa.insert(User).values(
                id=str(uuid.uuid4()), username=first, password_hash="h", created_at=NOW
            )
        )

    writing = asyncio.create_task(database.run(slow_sign_up))
    await asyncio.sleep(0.1)  # the thread is inside the transaction
    writing.cancel()
    next_writer = asyncio.create_task(UserStore(database).create_user(second, "h", NOW))
    await asyncio.sleep(0.3)
    assert not writing.done()
    assert not next_writer.done()
    release.set()
    await next_writer
    with pytest.raises(asyncio.CancelledError):
        await writing
    # The cancelled caller's transaction still ended as its work did: committed.
    users = UserStore(database)
    assert await users.find_user_by_name(first) is not None
    assert await users.find_user_by_name(second) is not None
