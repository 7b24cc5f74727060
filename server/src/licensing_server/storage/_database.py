"""Engine creation and migrations, for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event
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
_T = TypeVar("_T")
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


#: Threads that run SQLite transactions of ``Database.run`` (each holds one connection).
SQLITE_THREADS = 4


class Database:
    """The engines, and transactions that turn driver failures into ``Unavailable``.

    The stores run every transaction through ``run``. ``session`` and ``read`` (async ORM
    sessions) are left for tests and tools that seed or inspect rows.
    """

    def __init__(self, engine: AsyncEngine, metrics: DatabaseMetrics | None = None):
        self.engine = engine
        # SQLite through aiosqlite pays a thread hop per driver call (cursor, execute,
        # fetch, close, commit, reset: six for one SELECT, ~1 ms of CPU), so ``run`` does
        # a whole transaction in one hop on a synchronous engine over the same file.
        self._sqlite: Engine | None = None
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None
        if engine.dialect.name == "sqlite":
            self._sqlite = create_engine(
                sync_url(engine.url.render_as_string(hide_password=False)),
                connect_args={"check_same_thread": False},  # one thread at a time, pooled
                pool_size=SQLITE_THREADS,
            )
            event.listen(self._sqlite, "connect", _sqlite_pragmas)
            self._threads = concurrent.futures.ThreadPoolExecutor(
                SQLITE_THREADS, thread_name_prefix="sqlite"
            )
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

    @property
    def sync_engines(self) -> list[Engine]:
        """Every engine this database's statements pass through, for event listeners."""
        engines = [self.engine.sync_engine]
        return [*engines, self._sqlite] if self._sqlite is not None else engines

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

    async def run(self, work: Callable[[Connection], _T], *, writes: bool = True) -> _T:
        """``work`` as one transaction on a synchronous connection: committed if it
        returns, rolled back if it raises.

        For the hot paths (logins, refreshes, session checks, the event tail): on SQLite
        the whole of it is one hop to a worker thread instead of one per driver call; on
        PostgreSQL it runs through the async driver (``run_sync``). ``work`` must only
        touch the database. On SQLite a cancelled caller cannot stop the thread: its
        transaction ends by itself, and a writer keeps the process's writer turn until
        it has, so the next writer never meets it in SQLite's busy handler.
        """
        if self._sqlite is None:
            async with self._transaction_errors(), self.engine.begin() as connection:
                return await connection.run_sync(work)
        loop = asyncio.get_running_loop()
        async with self._transaction_errors():
            if not writes:
                return await loop.run_in_executor(self._threads, self._in_thread, work)
            assert self._one_at_a_time is not None  # SQLite's
            async with self._one_at_a_time:
                done = loop.run_in_executor(self._threads, self._in_thread, work)
                try:
                    return await asyncio.shield(done)
                except asyncio.CancelledError:
                    await asyncio.wait([done])  # the turn is held until the thread is out
                    raise

    def _in_thread(self, work: Callable[[Connection], _T]) -> _T:
        assert self._sqlite is not None
        with self._sqlite.begin() as connection:
            return work(connection)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncSession]:
        async with self._transaction_errors(), self._sessions.begin() as session:
            yield session

    @asynccontextmanager
    async def _transaction_errors(self) -> AsyncIterator[None]:
        try:
            yield
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
        if self._threads is not None:
            await asyncio.to_thread(self._threads.shutdown)
        if self._sqlite is not None:
            self._sqlite.dispose()
