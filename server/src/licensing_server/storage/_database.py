"""Engine creation and migrations, for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

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


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Database:
    """The async engine and a session scope that turns driver failures into ``Unavailable``."""

    def __init__(self, engine: AsyncEngine, metrics: DatabaseMetrics | None = None):
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._metrics = metrics or DatabaseMetrics()

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
        """A transaction: committed when the block ends, rolled back on any error."""
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
