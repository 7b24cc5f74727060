"""Token buckets in PostgreSQL, so that frontend replicas share one rate.

Each bucket is one row holding the moment it is full again (``full_at``: the
"theoretical arrival time" of GCRA, which is a token bucket written as one
timestamp). A take is one statement, an upsert that computes the refill with
the database's own ``clock_timestamp()``: replicas' clocks play no part, and
the row lock serialises takes of one key, so N replicas grant exactly the
burst and then the rate between them.

A row whose ``full_at`` has passed says no more than a missing row does; the
pruner deletes those, so the table holds only the keys still refilling (a
login name for a minute after its last failure, an address for a few seconds)
and never grows with history.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import psycopg

from licensing_common.throttle import BucketStore, Rate, TokenBuckets
from licensing_server.storage._database import Database

__all__ = ["SharedBuckets", "rate_buckets"]

_log = logging.getLogger(__name__)

# (burst - 1) * interval is how far ahead of now ``full_at`` may be for one more token.
_TAKE = """
    WITH clock AS MATERIALIZED (SELECT clock_timestamp() AS now)
    INSERT INTO rate_buckets AS b (key, full_at, last_take_granted)
    SELECT %(key)s, clock.now + make_interval(secs => %(interval)s), true FROM clock
    ON CONFLICT (key) DO UPDATE SET
        full_at = CASE
            WHEN b.full_at <= (SELECT now FROM clock) + make_interval(secs => %(allowance)s)
            THEN greatest(b.full_at, (SELECT now FROM clock)) + make_interval(secs => %(interval)s)
            ELSE b.full_at
        END,
        last_take_granted =
            b.full_at <= (SELECT now FROM clock) + make_interval(secs => %(allowance)s)
    RETURNING
        b.last_take_granted,
        extract(epoch FROM b.full_at - (SELECT now FROM clock))::float8 - %(allowance)s
"""

_WAIT = """
    SELECT extract(epoch FROM full_at - clock_timestamp())::float8 - %(allowance)s
    FROM rate_buckets WHERE key = %(key)s
"""

_PRUNE = "DELETE FROM rate_buckets WHERE full_at <= clock_timestamp()"


def _row_key(key: str) -> bytes:
    """Keys name users and addresses: the table holds a 16-byte digest instead.

    Fixed-size (a short primary key whatever the name), and no names or addresses
    in dumps, logs or ``pg_stat`` views. Not a secret: whoever reads the table can
    test a guessed name; rows last only until their bucket is full again.
    """
    return hashlib.sha256(key.encode()).digest()[:16]


class _Connections:
    """A few autocommit connections of the store's own, straight through psycopg.

    A take is on the path of every call: through SQLAlchemy's async engine (pool
    checkout, pre-ping, greenlet, reset on return) it cost the frontend about five
    times the CPU of the statement itself (bench/rate_limit_bench.py). A connection
    that failed is dropped, and the next take opens a new one.
    """

    def __init__(self, conninfo: str, size: int):
        self._conninfo = conninfo
        self._idle: list[psycopg.AsyncConnection[tuple[Any, ...]]] = []
        self._slots = asyncio.Semaphore(size)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[tuple[Any, ...]]]:
        async with self._slots:
            conn = self._idle.pop() if self._idle else None
            if conn is None or conn.broken or conn.closed:
                conn = await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
                )
            try:
                yield conn
            except BaseException:
                await conn.close()
                raise
            self._idle.append(conn)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()


#: Connections each replica's buckets may hold, and how long one may take to open.
CONNECTIONS = 4
CONNECT_TIMEOUT_SECONDS = 2
#: After the database failed a take, how long takes count in memory before trying it again.
RETRY_AFTER_SECONDS = 1.0


class SharedBuckets:
    """``BucketStore`` in the ``rate_buckets`` table (PostgreSQL only).

    Statements run in autocommit on an UNLOGGED table: one round trip per take, no
    BEGIN/COMMIT, no WAL flush.
    When the database cannot be reached, buckets fall back to this process's
    memory: the limits then hold per replica (N times looser, as before this
    store existed) rather than not at all, and health checks and the trust
    bundle, which need no database, are still served. A login needs the
    database anyway, so the fallback opens no brute-force window.
    """

    def __init__(self, database: Database, fallback: TokenBuckets | None = None):
        url = database.engine.url.set(drivername="postgresql")
        self._connections = _Connections(url.render_as_string(hide_password=False), CONNECTIONS)
        self._fallback = fallback if fallback is not None else TokenBuckets()
        self._degraded = False
        # While degraded, the database is tried again only after this (loop time): a
        # database that times out would otherwise stall every call by the timeout.
        self._retry_at = 0.0

    @staticmethod
    def _check(rate: Rate) -> float:
        if not rate.per_second > 0 or not math.isfinite(rate.per_second):
            raise ValueError(f"a shared bucket needs a finite positive rate, not {rate}")
        return 1.0 / rate.per_second

    def _skip_database(self) -> bool:
        return self._degraded and asyncio.get_running_loop().time() < self._retry_at

    def _unavailable(self, exc: Exception) -> None:
        self._retry_at = asyncio.get_running_loop().time() + RETRY_AFTER_SECONDS
        if not self._degraded:
            _log.warning(
                "rate limits counted per process: the database is unavailable (%s)",
                type(exc).__name__,
            )
        self._degraded = True

    def _available(self) -> None:
        if self._degraded:
            _log.info("rate limits shared through the database again")
        self._degraded = False
        # While degraded, the database is tried again only after this (loop time): a
        # database that times out would otherwise stall every call by the timeout.
        self._retry_at = 0.0

    async def take(self, key: str, rate: Rate) -> float:
        interval = self._check(rate)
        params = {
            "key": _row_key(key),
            "interval": interval,
            "allowance": (rate.burst - 1) * interval,
        }
        if self._skip_database():
            return await self._fallback.take(key, rate)
        try:
            async with self._connections.connection() as conn:
                row = await (await conn.execute(_TAKE, params)).fetchone()
        except psycopg.Error as exc:
            self._unavailable(exc)
            return await self._fallback.take(key, rate)
        self._available()
        assert row is not None  # an upsert with RETURNING returns its row
        granted, wait = row
        return 0.0 if granted else max(float(wait), 1e-6)

    async def wait_time(self, key: str, rate: Rate) -> float:
        interval = self._check(rate)
        params = {"key": _row_key(key), "allowance": (rate.burst - 1) * interval}
        if self._skip_database():
            return await self._fallback.wait_time(key, rate)
        try:
            async with self._connections.connection() as conn:
                row = await (await conn.execute(_WAIT, params)).fetchone()
        except psycopg.Error as exc:
            self._unavailable(exc)
            return await self._fallback.wait_time(key, rate)
        self._available()
        return max(0.0, float(row[0])) if row is not None else 0.0

    async def prune(self) -> int:
        """Delete the buckets that are full again; returns how many.

        A scan of the table, which holds only buckets still refilling; an index on
        ``full_at`` would make it cheaper but every take dearer (an update that
        changes an indexed column cannot be HOT), and takes are far more frequent.
        """
        async with self._connections.connection() as conn:
            result = await conn.execute(_PRUNE)
        return int(result.rowcount)

    async def close(self) -> None:
        await self._connections.close()

    @contextlib.asynccontextmanager
    async def pruning(self, interval_seconds: float) -> AsyncIterator[None]:
        """Prune every ``interval_seconds`` while the block runs (each replica does; it is
        idempotent, and a take racing a delete just finds the full bucket it expected)."""

        async def prune_forever() -> None:
            while True:
                await asyncio.sleep(interval_seconds)
                try:
                    pruned = await self.prune()
                except psycopg.Error as exc:
                    _log.warning("pruning rate buckets failed: %s", type(exc).__name__)
                else:
                    _log.debug("pruned %d full rate buckets", pruned)

        task = asyncio.create_task(prune_forever(), name="rate-bucket-pruner")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


#: How often each replica deletes the buckets that are full again.
PRUNE_INTERVAL_SECONDS = 60.0


@contextlib.asynccontextmanager
async def rate_buckets(database: Database) -> AsyncIterator[BucketStore]:
    """The buckets for this deployment: shared (and pruned) when the database is
    PostgreSQL, which replicas may share; in memory for SQLite (one frontend per file)."""
    if database.engine.dialect.name != "postgresql":
        yield TokenBuckets()
        return
    shared = SharedBuckets(database)
    try:
        async with shared.pruning(PRUNE_INTERVAL_SECONDS):
            yield shared
    finally:
        await shared.close()
