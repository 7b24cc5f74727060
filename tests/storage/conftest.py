"""A fresh, migrated database per test module: SQLite, then PostgreSQL."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from licensing_server.storage import Database, UserRecord, UserStore, run_migrations
from tests.support import create_postgres_database, drop_postgres_database, required_postgres

#: Stores take the time from their callers; a fixed one keeps the tests exact.
NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        path: Path = tmp_path_factory.mktemp("storage") / "licensing.db"
        url = f"sqlite+aiosqlite:///{path}"
        run_migrations(url)
        yield url
        return
    admin_url = required_postgres(os.environ.get("LICENSING_TEST_POSTGRES_URL"))
    url, name = create_postgres_database(admin_url)
    try:
        run_migrations(url)
        yield url
    finally:
        drop_postgres_database(admin_url, name)


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
