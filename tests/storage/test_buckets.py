"""Shared rate buckets: exact under concurrency across replicas, refilled by the database clock."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from licensing_common.throttle import Rate, TokenBuckets
from licensing_server.storage import Database, SharedBuckets, rate_buckets
from tests.support import free_port, migrated_database

#: Refills so slowly that no token comes back during a test.
SLOW = Rate(per_second=0.001, burst=10)


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with migrated_database("postgresql", tmp_path_factory.mktemp("buckets")) as url:
        yield url


@pytest.fixture
async def replicas(postgres_url: str) -> AsyncIterator[tuple[Database, Database]]:
    """Two engines on one database, as two frontend replicas hold them."""
    first, second = Database.connect(postgres_url), Database.connect(postgres_url)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


@pytest.fixture
async def stores(replicas: tuple[Database, Database]) -> AsyncIterator[list[SharedBuckets]]:
    """Each replica's shared buckets."""
    made = [SharedBuckets(replicas[0]), SharedBuckets(replicas[1])]
    try:
        yield made
    finally:
        for store in made:
            await store.close()


async def _full_rows(database: Database) -> int:
    async with database.read() as session:
        counted = await session.execute(
            sa.text("SELECT count(*) FROM rate_buckets WHERE full_at <= clock_timestamp()")
        )
        return int(counted.scalar_one())


def _key() -> str:
    return f"test {uuid.uuid4().hex}"


async def _rows(database: Database) -> int:
    async with database.read() as session:
        counted = await session.execute(sa.text("SELECT count(*) FROM rate_buckets"))
        return int(counted.scalar_one())


async def test_fifty_concurrent_takes_across_two_replicas_grant_exactly_the_burst(
    stores: list[SharedBuckets],
) -> None:
    key = _key()

    waits = await asyncio.gather(*(stores[i % 2].take(key, SLOW) for i in range(50)))

    assert sum(wait == 0.0 for wait in waits) == SLOW.burst
    # Everyone refused is told to wait about one token's refill (1000 s at this rate).
    assert all(900 < wait <= 1000 for wait in waits if wait > 0)
    assert await stores[0].wait_time(key, SLOW) > 900


async def test_takes_of_many_keys_at_once_share_statements_and_each_key_gets_its_burst(
    stores: list[SharedBuckets],
) -> None:
    store = stores[0]
    # Two slow rates (a statement per take) and a fast one (reserves: several tokens a
    # statement), mixed in the same statements.
    rates = [Rate(per_second=0.001, burst=2), Rate(per_second=0.001, burst=5)]
    rates.append(Rate(per_second=1000, burst=1000))
    keys = [(_key(), rates[i % 3]) for i in range(200)]
    before, keys_before = store.statements, store.keys_granted

    # Six takes of each of 200 keys, all at once: 1,200 asks of the database.
    waits = await asyncio.gather(*(store.take(k, rate) for k, rate in keys for _ in range(6)))

    for index, (_, rate) in enumerate(keys):
        granted = sum(wait == 0.0 for wait in waits[6 * index : 6 * index + 6])
        assert granted == min(rate.burst, 6)
    statements = store.statements - before
    assert statements <= 1200 // 10  # many keys per statement, not one take each
    assert store.keys_granted - keys_before >= 10 * statements


async def test_two_replicas_batching_the_same_keys_in_any_order_grant_each_burst_once(
    stores: list[SharedBuckets],
) -> None:
    rate = Rate(per_second=0.001, burst=3)
    keys = [_key() for _ in range(100)]

    # Each replica asks for every key twice, in opposite orders: rows locked by one
    # statement are wanted by the other's (sorted, so no deadlock).
    waits = await asyncio.gather(
        *(stores[0].take(key, rate) for key in keys + keys),
        *(stores[1].take(key, rate) for key in reversed(keys + keys)),
    )

    granted = sum(wait == 0.0 for wait in waits)
    assert granted == rate.burst * len(keys)
    assert not stores[0]._degraded  # no statement failed
    assert not stores[1]._degraded


async def test_closing_the_store_answers_the_takes_still_queued(
    replicas: tuple[Database, Database],
) -> None:
    store = SharedBuckets(replicas[0])
    takes = [asyncio.ensure_future(store.take(_key(), SLOW)) for _ in range(50)]
    await asyncio.sleep(0)

    await store.close()

    waits = await asyncio.wait_for(asyncio.gather(*takes), timeout=10)
    assert len(waits) == 50  # answered (from the statement or the fallback), none hangs


async def test_a_bucket_refills_at_the_rate_and_wait_time_takes_nothing(
    stores: list[SharedBuckets],
) -> None:
    store, other = stores
    rate = Rate(per_second=10, burst=2)
    key = _key()

    assert await store.wait_time(key, rate) == 0.0  # an unknown key is a full bucket
    assert await store.take(key, rate) == 0.0
    assert await other.wait_time(key, rate) == 0.0  # one left; asking took nothing
    assert await other.take(key, rate) == 0.0
    wait = await store.take(key, rate)
    assert 0 < wait <= 0.1
    assert 0 < await other.wait_time(key, rate) <= 0.1

    await asyncio.sleep(wait + 0.02)
    assert await other.take(key, rate) == 0.0  # one token back...
    assert await store.take(key, rate) > 0  # ...only one


async def test_keys_are_independent_and_stored_as_digests(
    replicas: tuple[Database, Database], stores: list[SharedBuckets]
) -> None:
    store = stores[0]
    rate = Rate(per_second=0.001, burst=1)
    name = f"login-failures someone-{uuid.uuid4().hex[:8]}"

    assert await store.take(name, rate) == 0.0
    assert await store.take(name, rate) > 0
    assert await store.take(name + "x", rate) == 0.0

    async with replicas[0].read() as session:
        keys = (await session.execute(sa.text("SELECT key FROM rate_buckets"))).scalars().all()
    assert all(len(key) == 16 for key in keys)
    assert not any(name.encode() in bytes(key) for key in keys)


async def test_pruning_deletes_only_buckets_that_are_full_again(
    replicas: tuple[Database, Database], stores: list[SharedBuckets]
) -> None:
    store = stores[0]
    fast, slow = Rate(per_second=50, burst=2), Rate(per_second=0.001, burst=2)
    refilling = _key()
    await store.take(refilling, slow)
    await store.take(refilling, slow)
    for _ in range(20):
        await store.take(_key(), fast)
    before = await _rows(replicas[0])

    await asyncio.sleep(2 / fast.per_second + 0.05)  # the fast buckets are full again
    pruned = await store.prune()
    assert pruned >= 20  # (and whatever earlier tests left that is full by now)
    assert await _rows(replicas[0]) == before - pruned
    assert await _full_rows(replicas[0]) == 0
    # The refilling bucket kept its state: still empty.
    assert await store.take(refilling, slow) > 0


async def test_pruning_runs_in_the_background_while_enabled(
    replicas: tuple[Database, Database], stores: list[SharedBuckets]
) -> None:
    store = stores[0]
    await store.take(_key(), Rate(per_second=100, burst=1))
    async with store.pruning(0.05):
        await asyncio.sleep(0.3)
    assert await _full_rows(replicas[0]) == 0


async def test_with_the_database_down_limits_fall_back_to_this_process() -> None:
    down = Database.connect(f"postgresql+psycopg://nobody:nothing@127.0.0.1:{free_port()}/none")
    try:
        store = SharedBuckets(down)
        rate = Rate(per_second=0.001, burst=2)
        key = _key()
        # Still limited, as a single process would limit: not open, not closed.
        assert await store.take(key, rate) == 0.0
        assert await store.take(key, rate) == 0.0
        assert await store.take(key, rate) > 0
        assert await store.wait_time(key, rate) > 0
        # It is not asked again at once: calls do not each wait for a dead database.
        assert store._skip_database()
        await store.close()
    finally:
        await down.close()


async def test_the_table_is_unlogged_on_postgresql(replicas: tuple[Database, Database]) -> None:
    """A crash empties it (every bucket full, as a restarted in-memory limiter), and in
    exchange a take commits without a WAL flush."""
    async with replicas[0].read() as session:
        persistence = await session.execute(
            sa.text("SELECT relpersistence FROM pg_class WHERE relname = 'rate_buckets'")
        )
    assert persistence.scalar_one() == "u"


async def test_postgresql_shares_buckets_and_sqlite_keeps_them_in_memory(
    replicas: tuple[Database, Database], tmp_path: Path
) -> None:
    async with rate_buckets(replicas[0]) as buckets:
        assert isinstance(buckets, SharedBuckets)
    with migrated_database("sqlite", tmp_path) as url:
        sqlite = Database.connect(url)
        try:
            async with rate_buckets(sqlite) as buckets:
                assert isinstance(buckets, TokenBuckets)
        finally:
            await sqlite.close()
