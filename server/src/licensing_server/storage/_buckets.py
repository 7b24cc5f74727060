"""Token buckets in PostgreSQL, so that frontend replicas share one rate.

Each bucket is one row holding the moment it is full again (``full_at``: the
"theoretical arrival time" of GCRA, which is a token bucket written as one
timestamp). A take is one statement, an upsert that computes the refill with
the database's own ``clock_timestamp()``: replicas' clocks play no part, and
the row lock serialises takes of one key, so N replicas grant exactly the
burst and then the rate between them. A busy key takes several tokens in one
statement and keeps the rest in this replica's memory for its next takes (a
reserve: see ``SharedBuckets``), so it does not pay a round trip per take; and
the takes of different keys that find every connection busy go together in one
statement when one is free.

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
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import psycopg

from licensing_common.throttle import BucketStore, Rate, TokenBuckets
from licensing_server.storage._database import Database

__all__ = ["SharedBuckets", "rate_buckets", "reserve_bound"]

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

# How many tokens a take grants, from the bucket's ``full_at`` before it ({old}): the
# tokens available now (``full_at`` may be up to (burst - 1) * interval ahead of now for
# one more), at most %(want)s; when it grants two or more, a deposit (see SharedBuckets)
# of up to %(hold)s seconds' worth of tokens, from those left. Yields the new full_at,
# whether the take was granted, and the count granted.
_GRANT = """
    SELECT
        CASE WHEN g.n > 0
            THEN s.base + make_interval(secs => (g.n + d.n) * %(interval)s)
            ELSE {old}
        END,
        g.n > 0,
        g.n
    FROM
        (SELECT greatest({old}, (SELECT now FROM clock)) AS base) s,
        LATERAL (SELECT extract(epoch FROM s.base - (SELECT now FROM clock))::float8 AS debt) t,
        -- + 1e-9: a float's rounding must not refuse a token the timestamps grant.
        LATERAL (SELECT floor((%(allowance)s - t.debt) / %(interval)s + 1e-9)::int8 + 1 AS n) a,
        LATERAL (SELECT greatest(0, least(%(want)s::int8, a.n)) AS n) g,
        LATERAL (SELECT CASE WHEN g.n >= 2
            THEN greatest(0, least(a.n - g.n,
                floor(greatest(0, %(hold)s - t.debt) / %(interval)s)::int8))
            ELSE 0
        END AS n) d
"""

# One statement per reservation: the row lock of the upsert serialises the takes of one
# key across replicas. (Built from constants only: no input in the text.)
_RESERVE = f"""
    WITH clock AS MATERIALIZED (SELECT clock_timestamp() AS now)
    INSERT INTO rate_buckets AS b (key, full_at, last_take_granted, last_grant)
    SELECT %(key)s, grant_.* FROM ({_GRANT.format(old="(SELECT now FROM clock)")}) grant_
    ON CONFLICT (key) DO UPDATE SET
        (full_at, last_take_granted, last_grant) = ({_GRANT.format(old="b.full_at")})
    RETURNING
        b.last_grant,
        extract(epoch FROM b.full_at - (SELECT now FROM clock))::float8
"""  # noqa: S608

# The same grant for many keys at once, each with its own rate: ``r`` holds one row per
# key (each key at most once: an upsert may not touch a row twice), its rows are
# inserted in key order so that two batches lock shared rows in the same order, and the
# update reads its key's row of ``r`` back. (Built from constants only: no input.)
_GRANT_EACH = (
    _GRANT.replace("%(interval)s", "r.interval")
    .replace("%(allowance)s", "r.allowance")
    .replace("%(want)s", "r.want")
    .replace("%(hold)s", "r.hold")
)
_RESERVE_EACH = f"""
    WITH clock AS MATERIALIZED (SELECT clock_timestamp() AS now),
    r AS MATERIALIZED (
        SELECT * FROM unnest(
            %(keys)s::bytea[], %(intervals)s::float8[], %(allowances)s::float8[],
            %(wants)s::int8[], %(holds)s::float8[]
        ) AS r (key, interval, allowance, want, hold)
    )
    INSERT INTO rate_buckets AS b (key, full_at, last_take_granted, last_grant)
    SELECT r.key, grant_.*
    FROM r, LATERAL ({_GRANT_EACH.format(old="(SELECT now FROM clock)")}) grant_
    ORDER BY r.key
    ON CONFLICT (key) DO UPDATE SET
        (full_at, last_take_granted, last_grant) = (
            SELECT grant_.*
            FROM r, LATERAL ({_GRANT_EACH.format(old="b.full_at")}) grant_
            WHERE r.key = b.key
        )
    RETURNING
        b.key,
        b.last_grant,
        extract(epoch FROM b.full_at - (SELECT now FROM clock))::float8
"""  # noqa: S608

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


#: At most this many keys go in one statement (the rest wait for the next).
MAX_KEYS_PER_STATEMENT = 256


#: At most this many reserves are remembered per replica (least recently used forgotten
#: first; a forgotten reserve is dropped, which is only ever stricter).
MAX_RESERVES = 10_000


def reserve_bound(rate: Rate) -> int:
    """The most tokens one statement may grant a replica for ``rate``: a tenth of the burst
    and a tenth of a second of the rate, so a replica never sits on much of either."""
    return max(1, min(rate.burst // 10, int(rate.per_second * 0.1)))


class _Reserve:
    """One key's tokens granted to this replica and not yet used."""

    __slots__ = ("expires", "pending", "quick_until", "tokens", "want")

    def __init__(self) -> None:
        self.tokens = 0
        self.expires = 0.0  # loop time: unused tokens are dropped from then on
        self.quick_until = 0.0  # a reserve spent before this ran out quickly
        self.want = 1  # what the next statement asks for
        self.pending: asyncio.Future[float | None] | None = None


@dataclass(slots=True)
class _Ask:
    """One key's grant waiting for a statement: (granted, seconds full_at is ahead of
    now), or None when the database failed."""

    row_key: bytes
    interval: float
    allowance: float
    want: int
    hold: float
    answer: asyncio.Future[tuple[int, float] | None]


class SharedBuckets:
    """``BucketStore`` in the ``rate_buckets`` table (PostgreSQL only).

    Statements run in autocommit on an UNLOGGED table: one round trip, no BEGIN/COMMIT,
    no WAL flush. A busy key does not pay one per take: when its reserve here is empty,
    one statement takes up to ``want`` tokens (``want`` doubles while reserves run out
    within ``hold``, halves when they do not, 1 to ``reserve_bound(rate)``), one for the
    take and the rest kept in memory for the next takes of the key. Concurrent takes of
    a key wait for the one statement in flight rather than each sending their own, and
    the takes of *different* keys that find all ``CONNECTIONS`` busy wait together for
    the next one free, which grants them all in one statement (at most
    ``MAX_KEYS_PER_STATEMENT``): a burst of new keys costs a few round trips, not one each.

    Never looser than one bucket: the database counts reserved tokens as taken when it
    grants them, and a token used later than granted would let the bucket refill behind
    it past its burst; so a reserve may only be used while the bucket's ``full_at``
    stays at least the reserve ahead of now. The statement answers until when that
    holds (the bucket's debt before the grant); when that is under ``hold`` (the bucket
    is nearly full) it also takes a deposit of tokens worth the difference, never
    used, which buys the reserve that long. Stricter by at most the deposit, at most
    ``reserve_bound(rate)`` tokens per replica and key, and only while the bucket is
    nearly full; a bucket being emptied has debt enough and pays none.

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
        self._reserves: OrderedDict[bytes, _Reserve] = OrderedDict()
        self._degraded = False
        # While degraded, the database is tried again only after this (loop time): a
        # database that times out would otherwise stall every call by the timeout.
        self._retry_at = 0.0
        #: Takes answered from a reserve, without a statement (for benchmarks and tests).
        self.reserved_takes = 0
        #: Statements sent to grant tokens, and how many keys they asked for in all.
        self.statements = 0
        self.keys_granted = 0
        # Grants waiting for a statement, the tasks sending them, and how many statements
        # are out (sent by a sender or by a take itself): at most one per connection.
        self._asks: deque[_Ask] = deque()
        self._senders: set[asyncio.Task[None]] = set()
        self._busy = 0
        self._closing = False

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
        self._retry_at = 0.0

    def _reserve(self, row_key: bytes) -> _Reserve:
        reserve = self._reserves.get(row_key)
        if reserve is None:
            reserve = self._reserves[row_key] = _Reserve()
            if len(self._reserves) > MAX_RESERVES:
                self._reserves.popitem(last=False)
        else:
            self._reserves.move_to_end(row_key)
        return reserve

    async def _grant(
        self, row_key: bytes, rate: Rate, want: int, hold: float
    ) -> tuple[int, float] | None:
        """Up to ``want`` tokens from the database: (granted, seconds full_at is ahead of
        now), or None when the database failed (then the fallback answers).

        With a connection free and nothing queued, the statement goes at once from this
        coroutine. Otherwise the ask waits in the queue, and the next connection free
        takes it with the other keys waiting (a sender task): it is answered even if
        this coroutine is cancelled meanwhile (tokens granted then go unused: stricter).
        """
        interval = 1.0 / rate.per_second
        loop = asyncio.get_running_loop()
        ask = _Ask(row_key, interval, (rate.burst - 1) * interval, want, hold, loop.create_future())
        if not self._asks and self._busy < CONNECTIONS:
            self._busy += 1
            try:
                answers = await self._execute([ask])
            finally:
                self._busy -= 1
                self._start_sender()
            return answers.get(row_key) if answers else None
        self._asks.append(ask)
        self._start_sender()
        return await ask.answer

    def _start_sender(self) -> None:
        """A sender for the queued asks, if any wait and a connection is free."""
        if not self._asks or self._busy >= CONNECTIONS or self._closing:
            return
        self._busy += 1
        sender = asyncio.get_running_loop().create_task(self._send(), name="rate-bucket-grants")
        self._senders.add(sender)
        sender.add_done_callback(self._senders.discard)

    async def _send(self) -> None:
        """Statements for the queued asks until none is left."""
        batch: list[_Ask] = []
        try:
            while self._asks:
                batch = self._next_batch()
                answers = await self._execute(batch)
                for ask in batch:
                    if not ask.answer.done():
                        ask.answer.set_result(answers.get(ask.row_key) if answers else None)
                batch = []
        finally:
            self._busy -= 1
            # Cancelled (the store closing): nobody waits for an answer that never comes.
            _answer_none(batch)

    def _next_batch(self) -> list[_Ask]:
        """The queued asks for one statement, each key once (a key asked twice waits)."""
        batch: list[_Ask] = []
        later: list[_Ask] = []
        keys: set[bytes] = set()
        while self._asks and len(batch) < MAX_KEYS_PER_STATEMENT:
            ask = self._asks.popleft()
            if ask.row_key in keys:
                later.append(ask)
            else:
                keys.add(ask.row_key)
                batch.append(ask)
        self._asks.extendleft(reversed(later))
        return batch

    async def _execute(self, batch: list[_Ask]) -> dict[bytes, tuple[int, float]] | None:
        """One statement for ``batch``: each key's (granted, seconds full_at is ahead)."""
        try:
            async with self._connections.connection() as conn:
                self.statements += 1
                self.keys_granted += len(batch)
                if len(batch) > 1:
                    rows = await (await conn.execute(_RESERVE_EACH, _arrays(batch))).fetchall()
                    answers = {bytes(k): (int(n), float(ahead)) for k, n, ahead in rows}
                else:
                    (ask,) = batch
                    answers = {ask.row_key: await self._one(conn, ask)}
        except psycopg.Error as exc:
            self._unavailable(exc)
            return None
        except Exception as exc:  # a sender must not die with asks queued behind it
            _log.exception("granting rate-limit tokens failed")
            self._unavailable(exc)
            return None
        self._available()
        return answers

    @staticmethod
    async def _one(conn: psycopg.AsyncConnection[tuple[Any, ...]], ask: _Ask) -> tuple[int, float]:
        params: dict[str, object] = {
            "key": ask.row_key,
            "interval": ask.interval,
            "allowance": ask.allowance,
        }
        if ask.want > 1:
            params |= {"want": ask.want, "hold": ask.hold}
        # One token: the lighter statement (about 50 us less of the database's time).
        statement = _RESERVE if ask.want > 1 else _TAKE
        row = await (await conn.execute(statement, params)).fetchone()
        assert row is not None  # an upsert with RETURNING returns its row
        if ask.want > 1:
            return int(row[0]), float(row[1])
        return int(row[0]), float(row[1]) + ask.allowance

    def take_now(self, key: str, rate: Rate) -> float | None:
        """A token from this replica's reserve of ``key`` while it lasts, else None
        (``take`` asks the database): a busy key's takes without a coroutine each."""
        row_key = _row_key(key)
        reserve = self._reserves.get(row_key)
        if reserve is None or not self._spend(reserve, asyncio.get_running_loop().time()):
            return None
        self._reserves.move_to_end(row_key)
        return 0.0

    def _spend(self, reserve: _Reserve, now: float) -> bool:
        """One token from ``reserve`` if it holds one still valid at ``now``; an expired
        one is dropped (it asked for more than it used: the next statement asks for less)."""
        if not reserve.tokens:
            return False
        if now < reserve.expires:
            reserve.tokens -= 1
            self.reserved_takes += 1
            return True
        reserve.tokens = 0
        reserve.want = max(1, reserve.want // 2)
        reserve.quick_until = 0.0
        return False

    async def take(self, key: str, rate: Rate) -> float:
        interval = self._check(rate)
        allowance = (rate.burst - 1) * interval
        bound = reserve_bound(rate)
        row_key = _row_key(key)
        loop = asyncio.get_running_loop()
        if bound == 1:  # a reserve of one is no reserve: one statement per take
            if self._skip_database():
                return await self._fallback.take(key, rate)
            answer = await self._grant(row_key, rate, 1, 0.0)
            if answer is None:
                return await self._fallback.take(key, rate)
            granted, ahead = answer
            return 0.0 if granted else max(ahead - allowance, 1e-6)
        hold = bound * interval
        reserve = self._reserve(row_key)
        while True:
            now = loop.time()
            if self._spend(reserve, now):
                return 0.0
            if reserve.pending is not None:
                wait = await asyncio.shield(reserve.pending)
                if wait:
                    return wait  # refused while this take waited: the bucket is empty
                continue
            if self._skip_database():
                return await self._fallback.take(key, rate)
            if reserve.quick_until:
                if now < reserve.quick_until:
                    reserve.want = min(2 * reserve.want, bound)
                else:
                    reserve.want = max(1, reserve.want // 2)
            pending = reserve.pending = loop.create_future()
            outcome: float | None = None
            try:
                answer = await self._grant(row_key, rate, reserve.want, hold)
                if answer is None:
                    return await self._fallback.take(key, rate)
                granted, ahead = answer
                if not granted:
                    outcome = max(ahead - allowance, 1e-6)
                    return outcome
                # The database's now came after ``now``: the reserve expires here no later.
                reserve.tokens = granted - 1
                reserve.expires = now + min(hold, ahead - granted * interval)
                reserve.quick_until = now + hold
                outcome = 0.0
                return 0.0
            finally:
                reserve.pending = None
                pending.set_result(outcome)

    async def wait_time(self, key: str, rate: Rate) -> float:
        interval = self._check(rate)
        row_key = _row_key(key)
        reserve = self._reserves.get(row_key)
        now = asyncio.get_running_loop().time()
        if reserve is not None and reserve.tokens and now < reserve.expires:
            return 0.0  # the next take is answered from the reserve
        params = {"key": row_key, "allowance": (rate.burst - 1) * interval}
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
        self._closing = True
        for sender in list(self._senders):
            sender.cancel()
        for sender in list(self._senders):
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        _answer_none(self._asks)
        self._asks.clear()
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


def _arrays(batch: list[_Ask]) -> dict[str, object]:
    """``_RESERVE_EACH``'s parameters: one array per column of ``r``."""
    return {
        "keys": [ask.row_key for ask in batch],
        "intervals": [ask.interval for ask in batch],
        "allowances": [ask.allowance for ask in batch],
        "wants": [ask.want for ask in batch],
        "holds": [ask.hold for ask in batch],
    }


def _answer_none(asks: Iterable[_Ask]) -> None:
    """Answer asks no statement will grant: their takes fall back to memory."""
    for ask in asks:
        if not ask.answer.done():
            ask.answer.set_result(None)
