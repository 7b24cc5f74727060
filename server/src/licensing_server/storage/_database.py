"""Engine creation and migrations, for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from licensing_common.errors import Unavailable
from licensing_server.observability import DatabaseMetrics

_log = logging.getLogger(__name__)
_MIGRATIONS = Path(__file__).with_name("migrations")


class DatabaseUnavailable(Unavailable):
    """The database cannot be reached (down, restarting, connection lost); it may come back."""


def sync_url(url: str) -> str:
    """Alembic runs synchronously: the same database through the sync driver."""
    return url.replace("sqlite+aiosqlite://", "sqlite://", 1)


def run_migrations(url: str) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")


#: How long a SQLite writer waits for another process's transaction (the frontend's, the
#: backend's) before it fails as "locked"; writers of one process queue in ``Database``.
SQLITE_BUSY_TIMEOUT_MS = 5000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_MS)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Database:
    """The async engine and a session scope that turns driver failures into ``Unavailable``."""

    def __init__(self, engine: AsyncEngine, metrics: DatabaseMetrics | None = None):
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._metrics = metrics or DatabaseMetrics()
        # SQLite takes one writer at a time and a transaction holds its lock across the
        # event loop's turns: on a busy loop, writers waiting in SQLite's busy handler
        # outlast its timeout and fail as "locked". Queued here instead, a transaction
        # waits for its turn as long as its caller lets it; only another process (the
        # frontend beside the backend) still meets the busy timeout.
        self._one_at_a_time: asyncio.Lock | None = (
            asyncio.Lock() if engine.dialect.name == "sqlite" else None
        )

    @classmethod
    def connect(cls, url: str, metrics: DatabaseMetrics | None = None) -> Database:
        if url.startswith("sqlite"):
            engine = create_async_engine(url)
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            engine = create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)
        return cls(engine, metrics)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A transaction that may write: committed when the block ends, rolled back on error."""
        async with self._one_at_a_time or contextlib.nullcontext(), self._transaction() as session:
            yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A transaction that only reads: SQLite's WAL lets it run beside a writer."""
        async with self._transaction() as session:
            yield session

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncSession]:
        try:
            async with self._sessions.begin() as session:
                yield session
        except (OperationalError, DBAPIError) as exc:
            if getattr(exc, "connection_invalidated", False) or isinstance(exc, OperationalError):
                _log.warning("database unavailable: %s", type(exc.orig).__name__)
                self._metrics.errors.inc()
                raise DatabaseUnavailable(
                    "DATABASE_UNAVAILABLE", "the database is unavailable"
                ) from exc
            raise

    async def close(self) -> None:
        await self.engine.dispose()
