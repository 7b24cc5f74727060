"""A fresh, migrated database per test module: SQLite, then PostgreSQL."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from licensing_server.storage import Database, UserRecord, UserStore
from tests.support import migrated_database

#: Stores take the time from their callers; a fixed one keeps the tests exact.
NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with migrated_database(request.param, tmp_path_factory.mktemp("storage")) as url:
        yield url


@pytest.fixture(scope="module")
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database.connect(database_url)
    try:
        yield db
    finally:
        await db.close()


async def new_user(database: Database) -> UserRecord:
    """A user of its own, so tests sharing a module's database do not see each other."""
    return await UserStore(database).create_user(
        f"user{uuid.uuid4().hex[:12]}", "not-a-real-hash", NOW
    )
