"""The per-call lookups read an index, never a whole table: what keeps their cost flat.

bench/growth_bench.py shows Login, RefreshToken, ListEnclaves and following an enclave
costing the same at 100x the users and enclaves; a dropped index or a query that no
longer matches one would make each call scan every row, and these tests say so
without timing anything. Each captures the statements a store call really runs and
asks the database for their plans: PostgreSQL with sequential scans priced out (so a
scan appears only when no index can serve), SQLite's ``EXPLAIN QUERY PLAN``.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa

from licensing_server.storage import (
    Database,
    EnclaveStore,
    Limits,
    UserStore,
)
from tests.storage.conftest import NOW, new_user

_LIMITS = Limits(max_enclaves=5, enclave_ttl=dt.timedelta(days=1))
#: "Seq Scan on users" (PostgreSQL), "SCAN users" (SQLite): every row read.
_FULL_SCAN = re.compile(r"Seq Scan on (\w+)|^SCAN (\w+)")
#: A sort step (PostgreSQL's "Sort", SQLite's "USE TEMP B-TREE FOR ORDER BY").
_SORT = re.compile(r"\bSort\b|TEMP B-TREE")


async def _statements(database: Database, call: Callable[[], Awaitable[object]]) -> list[Any]:
    """The SELECTs ``call`` runs, with their parameters, as the driver received them."""
    seen: list[tuple[str, Any]] = []

    def record(_conn: object, _cursor: object, statement: str, parameters: Any, *_: object) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    engines = database.sync_engines
    for engine in engines:
        sa.event.listen(engine, "before_cursor_execute", record)
    try:
        await call()
    finally:
        for engine in engines:
            sa.event.remove(engine, "before_cursor_execute", record)
    assert seen, "the call ran no SELECT"
    return seen


def _plans(database_url: str, statements: list[Any]) -> dict[str, list[str]]:
    """Each statement's plan, one line a step."""
    postgresql = database_url.startswith("postgresql")
    url = database_url if postgresql else database_url.replace("sqlite+aiosqlite", "sqlite")
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    plans: dict[str, list[str]] = {}
    try:
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            if postgresql:
                cursor.execute("SET enable_seqscan = off")
            for statement, parameters in statements:
                explain = "EXPLAIN " if postgresql else "EXPLAIN QUERY PLAN "
                cursor.execute(explain + statement, parameters)
                rows = cursor.fetchall()
                plans[statement] = [str(r[0] if postgresql else r[-1]).strip() for r in rows]
        finally:
            raw.close()
    finally:
        engine.dispose()
    return plans


def _full_scans(database_url: str, statements: list[Any]) -> dict[str, list[str]]:
    """Each statement that reads a whole table, with the tables it scans."""
    scans: dict[str, list[str]] = {}
    for statement, lines in _plans(database_url, statements).items():
        tables = [next(t for t in m.groups() if t) for ln in lines if (m := _FULL_SCAN.search(ln))]
        if tables:
            scans[statement] = tables
    return scans


async def test_login_finds_the_user_by_the_username_index(
    database: Database, database_url: str
) -> None:
    user = await new_user(database)
    store = UserStore(database)
    statements = await _statements(database, lambda: store.find_user_by_name(user.username))
    assert _full_scans(database_url, statements) == {}


async def test_a_refresh_finds_its_token_session_and_user_by_key(
    database: Database, database_url: str
) -> None:
    store = UserStore(database)
    user = await new_user(database)
    token_hash = uuid.uuid4().bytes * 2
    await store.create_session(user, b"c" * 32, token_hash, NOW, NOW.replace(year=NOW.year + 1))
    statements = await _statements(database, lambda: store.peek_refresh_token(token_hash, NOW))
    assert _full_scans(database_url, statements) == {}


async def test_a_page_of_enclaves_first_or_after_a_token_reads_the_owners_index(
    database: Database, database_url: str
) -> None:
    store = EnclaveStore(database)
    owner = await new_user(database)
    for n in range(3):
        await store.reserve(
            owner_id=owner.id, request_id=f"r{n}", nonce=b"", limits=_LIMITS, now=NOW
        )
    [first, *_] = await store.list_owned(owner.id, 1, None)

    async def both_pages() -> None:
        await store.list_owned(owner.id, 2, None)
        await store.list_owned(owner.id, 2, (first.created_at, first.id))

    statements = await _statements(database, both_pages)
    assert _full_scans(database_url, statements) == {}
    # Read in index order: no page sorts all of the owner's enclaves to find its rows.
    sorts = {s: ln for s, ln in _plans(database_url, statements).items() if _SORT.search(str(ln))}
    assert sorts == {}


async def test_reserving_counts_only_the_owners_enclaves(
    database: Database, database_url: str
) -> None:
    store = EnclaveStore(database)
    owner = await new_user(database)

    async def reserve() -> None:
        await store.reserve(owner_id=owner.id, request_id="r1", nonce=b"", limits=_LIMITS, now=NOW)

    assert _full_scans(database_url, await _statements(database, reserve)) == {}


async def test_following_an_enclave_reads_its_events_by_key(
    database: Database, database_url: str
) -> None:
    store = EnclaveStore(database)
    owner = await new_user(database)
    record, _ = await store.reserve(
        owner_id=owner.id, request_id="r1", nonce=b"", limits=_LIMITS, now=NOW
    )

    async def follow() -> None:
        await store.events_after(record.id, 0)
        await store.newest_sequences([record.id])
        await store.get(record.id)

    assert _full_scans(database_url, await _statements(database, follow)) == {}
