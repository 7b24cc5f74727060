"""Backends against one PostgreSQL database: the holder of the advisory lock leads.

Real PostgreSQL throughout; losing the lock is what happens in production: the
server ends the leader's connection (``pg_terminate_backend``, as when a backend's
process dies or its network fails), or the leader stops and closes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from licensing_server.leadership._advisory_lock import AdvisoryLockElection
from licensing_server.observability import LeaderMetrics
from tests.leadership.conftest import Terms, campaigning, other, until, wait_for_leader
from tests.support import migrated_database


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    with migrated_database("postgresql", tmp_path) as url:
        yield url


def _candidate(
    url: str, name: str, registry: CollectorRegistry | None = None
) -> AdvisoryLockElection:
    return AdvisoryLockElection(
        url,
        retry_seconds=0.2,
        check_seconds=0.5,
        metrics=LeaderMetrics(registry),
        identity=name,
    )


async def _kill_connection(url: str, pid: int | None) -> None:
    assert pid is not None
    admin = url.replace("postgresql+psycopg://", "postgresql://", 1)
    async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
        await conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


async def test_of_two_backends_one_leads_and_its_gauge_says_so(database_url: str) -> None:
    registries = {name: CollectorRegistry() for name in ("a", "b")}
    a, b = (_candidate(database_url, n, registries[n]) for n in ("a", "b"))
    async with campaigning([a, b]):
        leader = await wait_for_leader([a, b], within=5)
        follower = other([a, b], leader)
        await asyncio.sleep(1)  # five retries of the follower: still one leader
        assert leader.is_leader
        assert not follower.is_leader
        gauge = {n: r.get_sample_value("licensing_backend_leader") for n, r in registries.items()}
        assert gauge == {leader.identity: 1.0, follower.identity: 0.0}


async def test_killing_the_leaders_connection_hands_over_within_seconds(
    database_url: str,
) -> None:
    a, b = _candidate(database_url, "a"), _candidate(database_url, "b")
    async with campaigning([a, b]):
        first = await wait_for_leader([a, b], within=5)
        second = other([a, b], first)
        await _kill_connection(database_url, first.connection_pid)
        stepped_down = await until(lambda: not first.is_leader, within=1)
        handed_over = await until(lambda: second.is_leader, within=5)
        assert stepped_down < 0.5  # the server's goodbye is read at once
        assert handed_over < 2
        await asyncio.sleep(1)  # the old leader reconnects and asks again: refused
        assert second.is_leader
        assert not first.is_leader


async def test_a_leader_that_stops_releases_the_lock(database_url: str) -> None:
    a, b = _candidate(database_url, "a"), _candidate(database_url, "b")
    async with campaigning([a, b]) as tasks:
        first = await wait_for_leader([a, b], within=5)
        second = other([a, b], first)
        tasks[first.identity].cancel()
        await asyncio.gather(tasks[first.identity], return_exceptions=True)
        assert not first.is_leader
        assert await until(lambda: second.is_leader, within=2) < 1


async def test_leader_only_work_never_runs_on_two_backends_at_once(database_url: str) -> None:
    terms = Terms()
    candidates = [_candidate(database_url, n) for n in ("a", "b", "c")]
    async with campaigning(candidates, terms):
        for _ in range(4):
            leader = await wait_for_leader(candidates, within=5)
            await until(lambda: leader.identity in terms.running, within=1)  # noqa: B023
            await asyncio.sleep(0.3)
            await _kill_connection(database_url, leader.connection_pid)
            await until(lambda: leader.identity not in terms.running, within=1)  # noqa: B023
            terms.assert_never_overlapping()
        # The fifth term counts once its work has begun: leading comes a moment before.
        last = await wait_for_leader(candidates, within=5)
        await until(lambda: last.identity in terms.running, within=1)
    terms.assert_never_overlapping()
    assert len(terms.intervals) >= 5
    assert len({identity for identity, _, _ in terms.intervals}) >= 2
