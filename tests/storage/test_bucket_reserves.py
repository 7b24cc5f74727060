"""Shared buckets' local reserves: fewer statements for a busy key, never a looser limit."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import sqlalchemy as sa

from licensing_common.throttle import Rate
from licensing_server.storage import Database, SharedBuckets
from licensing_server.storage._buckets import _row_key, reserve_bound
from tests.support import free_port, migrated_database

#: A tenth of the burst is 100 tokens and a tenth of a second of the rate is 100: a reserve
#: of up to 100 tokens, held at most 0.1 s.
WIDE = Rate(per_second=1000, burst=1000)


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with migrated_database("postgresql", tmp_path_factory.mktemp("reserves")) as url:
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


def _key() -> str:
    return f"test {uuid.uuid4().hex}"


async def _row(database: Database, key: str) -> tuple[int, float]:
    """The bucket's last grant and how far its ``full_at`` is ahead of now (seconds)."""
    async with database.read() as session:
        row = await session.execute(
            sa.text(
                "SELECT last_grant, extract(epoch FROM full_at - clock_timestamp())::float8"
                " FROM rate_buckets WHERE key = :key"
            ),
            {"key": _row_key(key)},
        )
        grant, ahead = row.one()
    return int(grant), float(ahead)


async def _empty_in_the_database(database: Database, key: str) -> None:
    """Another replica (as far as this one can tell) has taken every token for an hour."""
    async with database.session() as session:
        await session.execute(
            sa.text(
                "UPDATE rate_buckets SET full_at = clock_timestamp() + interval '1 hour'"
                " WHERE key = :key"
            ),
            {"key": _row_key(key)},
        )


def _held(store: SharedBuckets, key: str) -> int:
    """Tokens ``store`` holds for ``key`` that it may still use."""
    reserve = store._reserves.get(_row_key(key))
    if reserve is None or asyncio.get_running_loop().time() >= reserve.expires:
        return 0
    return reserve.tokens


def test_the_reserve_is_a_tenth_of_the_burst_or_of_a_second_and_none_for_slow_limits() -> None:
    assert reserve_bound(WIDE) == 100
    assert reserve_bound(Rate(per_second=50_000, burst=200_000)) == 5000  # GetCurrentUser x1000
    assert reserve_bound(Rate(per_second=50, burst=200)) == 5  # GetCurrentUser
    assert reserve_bound(Rate(per_second=1000, burst=30)) == 3
    assert reserve_bound(Rate(per_second=5 / 60, burst=5)) == 1  # failed logins: no reserve


async def test_a_hot_keys_reserve_grows_and_a_cold_key_takes_one_token_at_a_time(
    replicas: tuple[Database, Database], stores: list[SharedBuckets]
) -> None:
    store = stores[0]
    hot, cold = _key(), _key()

    assert all([await store.take(hot, WIDE) == 0.0 for _ in range(300)])
    grant, _ = await _row(replicas[0], hot)
    assert 32 <= grant <= reserve_bound(WIDE)  # doubled from 1, never past the bound
    assert store.reserved_takes >= 250  # most takes sent no statement

    reserved = store.reserved_takes
    for _ in range(3):
        assert await store.take(cold, WIDE) == 0.0
        assert (await _row(replicas[0], cold))[0] == 1
        await asyncio.sleep(0.15)  # longer than a reserve is held: the key is cold
    assert store.reserved_takes == reserved


async def test_a_reserve_is_used_while_valid_and_an_expired_one_is_not(
    replicas: tuple[Database, Database], stores: list[SharedBuckets]
) -> None:
    store = stores[0]
    key = _key()
    while _held(store, key) < 10:
        assert await store.take(key, WIDE) == 0.0
    await _empty_in_the_database(replicas[0], key)
    # Granted before the bucket was emptied: still this replica's to use...
    assert await store.take(key, WIDE) == 0.0
    assert await store.wait_time(key, WIDE) == 0.0

    await asyncio.sleep(0.12)  # ...but not past its expiry (at most 0.1 s here)
    assert _held(store, key) == 0
    wait = await store.take(key, WIDE)
    assert 3000 < wait <= 3600  # the database answered, as the other replica left it
    assert await store.wait_time(key, WIDE) > 3000


async def test_take_now_answers_from_the_reserve_only_and_leaves_the_rest_to_take(
    replicas: tuple[Database, Database], stores: list[SharedBuckets]
) -> None:
    store = stores[0]
    key = _key()
    assert store.take_now(key, WIDE) is None  # nothing reserved yet: only take can answer
    while _held(store, key) < 10:
        assert await store.take(key, WIDE) == 0.0
    held = _held(store, key)
    assert [store.take_now(key, WIDE) for _ in range(held)] == [0.0] * held
    assert store.take_now(key, WIDE) is None  # spent: the next token needs a statement

    while _held(store, key) < 1:
        assert await store.take(key, WIDE) == 0.0
    await asyncio.sleep(0.12)  # past the reserve's expiry: never used late
    assert store.take_now(key, WIDE) is None
    await _empty_in_the_database(replicas[0], key)
    assert await store.take(key, WIDE) > 3000  # and take asks the database


async def test_while_replicas_hold_reserves_the_bucket_stays_that_far_ahead_of_now(
    replicas: tuple[Database, Database], stores: list[SharedBuckets]
) -> None:
    """What makes reserves never looser: a bucket that could refill while tokens are held
    outside it would grant them twice. So ``full_at`` stays the held tokens ahead of now
    (the deposit buys that when the bucket is nearly full), however long they are held."""
    key = _key()
    interval = 1 / WIDE.per_second
    for store in stores:
        while _held(store, key) < 20:
            assert await store.take(key, WIDE) == 0.0
    checked = 0
    for pause in (0.0, 0.02, 0.04, 0.06, 0.08, 0.1):
        await asyncio.sleep(pause)
        held = sum(_held(store, key) for store in stores)
        _, ahead = await _row(replicas[0], key)
        if held:
            checked += 1
            assert ahead >= held * interval
    assert checked >= 3


async def test_two_replicas_grant_the_burst_once_then_the_rate_with_reserves_in_play(
    stores: list[SharedBuckets],
) -> None:
    rate = Rate(per_second=100, burst=100)  # reserves of up to 10, held 0.1 s
    bound = reserve_bound(rate)
    key = _key()

    start = time.monotonic()
    waits = await asyncio.gather(*(stores[i % 2].take(key, rate) for i in range(300)))
    elapsed = time.monotonic() - start
    granted = sum(wait == 0.0 for wait in waits)
    # Never more than one bucket grants; less by at most a deposit per replica.
    assert rate.burst - 2 * bound <= granted <= rate.burst + rate.per_second * elapsed + 1
    assert all(0 < wait <= 1 / rate.per_second + 0.01 for wait in waits if wait > 0)
    assert sum(store.reserved_takes for store in stores) > 0  # reserves in play

    times = await _hammer(stores, key, rate, seconds=1.0)
    total = time.monotonic() - start
    # Then the rate: never more than one bucket over the whole run, and not much less (the
    # refill missed between a refusal and the next try).
    assert granted + len(times) <= rate.burst + rate.per_second * total + 1
    assert len(times) >= rate.per_second * 1.0 * 0.7


async def test_the_limit_is_never_exceeded_under_concurrent_takes_from_both_replicas(
    stores: list[SharedBuckets],
) -> None:
    rate = Rate(per_second=2000, burst=200)  # reserves of up to 20; several refill per trip
    seconds = 1.0
    start = asyncio.get_running_loop().time()
    times = await _hammer(stores, _key(), rate, seconds)
    elapsed = asyncio.get_running_loop().time() - start

    assert sum(store.reserved_takes for store in stores) > 50
    assert len(times) <= rate.burst + rate.per_second * elapsed + 1
    assert len(times) >= (rate.burst + rate.per_second * seconds) * 0.6
    # Every stretch of time saw at most the burst plus the rate over it, give or take what
    # refills in 10 ms (a grant is seen here a round trip after the database made it):
    # with i - rate * t_i as f(i), f(last) - f(first) + 1 <= burst + slack for all pairs.
    slack = 1 + rate.per_second * 0.01
    times.sort()
    lowest = float("inf")
    for index, at in enumerate(times):
        level = index - rate.per_second * at
        lowest = min(lowest, level)
        assert level - lowest + 1 <= rate.burst + slack, index


async def _hammer(stores: list[SharedBuckets], key: str, rate: Rate, seconds: float) -> list[float]:
    """Eight takers on each replica for ``seconds``, each trying again when told to wait
    (at most every 2 ms); the loop times of the grants."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    times: list[float] = []

    async def taker(store: SharedBuckets) -> None:
        while loop.time() < deadline:
            wait = await store.take(key, rate)
            if wait == 0.0:
                times.append(loop.time())
            else:
                await asyncio.sleep(min(wait, 0.002))

    await asyncio.gather(*(taker(store) for store in stores for _ in range(8)))
    return times


async def test_with_the_database_down_reserving_limits_fall_back_to_this_process() -> None:
    down = Database.connect(f"postgresql+psycopg://nobody:nothing@127.0.0.1:{free_port()}/none")
    store = SharedBuckets(down)
    try:
        rate = Rate(per_second=20, burst=200)  # would reserve up to 2
        key = _key()
        waits = await asyncio.gather(*(store.take(key, rate) for _ in range(210)))
        # As a single process limits: the burst (and what refills meanwhile), then waits.
        assert 200 <= sum(wait == 0.0 for wait in waits) <= 202
        assert store.reserved_takes == 0
        assert store._skip_database()
    finally:
        await store.close()
        await down.close()
