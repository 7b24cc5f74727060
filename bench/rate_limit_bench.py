"""What sharing the rate limits through PostgreSQL costs: a take, and GetCurrentUser behind it.

Prints figures and asserts nothing. Needs PostgreSQL (LICENSING_TEST_POSTGRES_URL, or
``scripts/postgres.sh``). Run from the repository root:

    LICENSING_TEST_POSTGRES_URL="$(scripts/postgres.sh)" .venv/bin/python bench/rate_limit_bench.py

1. Store: ``take`` back to back from one coroutine (latency) and with ``--concurrency``
   in flight (takes/s), for the in-memory ``TokenBuckets`` (the baseline), for
   ``SharedBuckets`` (its own psycopg connections) at a rate too narrow for a reserve
   (a statement per take) and at one that allows a reserve (a hot key takes many
   tokens per statement), and for the same statement through the frontend's
   SQLAlchemy engine (why the store does not use it). The CPU this
   process spent per take is printed too: on the frontend that is what a take costs
   every other call. Keys: one hot key (an update each time) and a new key each take
   (an insert).
2. Through the API: GetCurrentUser (mTLS + token; no database: the profile and session
   answers are cached) closed loop with ``--concurrency`` in flight for ``--seconds``,
   against a stack on SQLite (in-memory buckets) and one on PostgreSQL (shared
   buckets), both with the tests' thousandfold limits, so nothing is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from licensing.v1 import auth_pb2, auth_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from licensing_common.throttle import BucketStore, Rate, TokenBuckets  # noqa: E402
from licensing_server.storage import Database, SharedBuckets  # noqa: E402
from licensing_server.storage._buckets import _TAKE, _row_key  # noqa: E402
from tests.support import migrated_database, start_stack  # noqa: E402

#: Never refuses in a benchmark's time: every take is a grant (the common case). A hot key
#: at this rate keeps a reserve (up to 100,000 tokens, a tenth of the burst).
WIDE = Rate(per_second=1e6, burst=1_000_000)
#: As wide for a benchmark, but a burst under 20 allows no reserve: a statement per take,
#: as every shared take cost before reserves.
NO_RESERVE = Rate(per_second=1e6, burst=19)


async def _latency_us(take: Callable[[], Awaitable[float]], calls: int) -> tuple[float, float]:
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        await take()
        samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99)]


async def _throughput(
    take: Callable[[], Awaitable[float]], concurrency: int, seconds: float
) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await take()
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - start)


class _ThroughSqlAlchemy:
    """The shared take's statement through the frontend's engine (autocommit)."""

    def __init__(self, database: Database):
        self._engine = database.engine.execution_options(isolation_level="AUTOCOMMIT")

    def take_now(self, key: str, rate: Rate) -> float | None:
        return None  # every take is a statement

    async def take(self, key: str, rate: Rate) -> float:
        interval = 1 / rate.per_second
        params = {
            "key": _row_key(key),
            "interval": interval,
            "allowance": (rate.burst - 1) * interval,
        }
        async with self._engine.connect() as conn:
            row: Any = (await conn.exec_driver_sql(_TAKE, params)).one()
        return 0.0 if row[0] else float(row[1])

    async def wait_time(self, key: str, rate: Rate) -> float:
        raise NotImplementedError


async def _store_phase(url: str, calls: int, concurrency: int, seconds: float) -> None:
    print(
        f"\n1. Store take: {calls} back to back (p50/p99 us, CPU us), then {concurrency} in flight"
    )
    frontend_db = Database.connect(url)
    shared = SharedBuckets(frontend_db)
    stores: list[tuple[str, BucketStore, Rate]] = [
        ("in memory (baseline)", TokenBuckets(), WIDE),
        ("shared, no reserve", shared, NO_RESERVE),
        ("shared with reserve", shared, WIDE),
        ("same SQL via SQLAlchemy", _ThroughSqlAlchemy(frontend_db), NO_RESERVE),
    ]
    baseline: dict[str, float] = {}
    print(
        f"   {'store':24} {'keys':5} {'p50 us':>8} {'p99 us':>8} {'CPU us':>8} "
        f"{'takes/s':>9} {'x p50':>7} {'x CPU':>7}"
    )
    try:
        for name, store, rate in stores:
            await store.take("warm-up", rate)
            for keys in ("hot", "new"):
                hot = f"bench {uuid.uuid4().hex}"

                def take(
                    store: BucketStore = store, keys: str = keys, hot: str = hot, rate: Rate = rate
                ) -> Any:
                    key = hot if keys == "hot" else f"bench {uuid.uuid4().hex}"
                    return store.take(key, rate)

                cpu_start = time.process_time()
                p50, p99 = await _latency_us(take, calls)
                cpu = (time.process_time() - cpu_start) / calls * 1e6
                per_second = await _throughput(take, concurrency, seconds)
                base_p50 = baseline.setdefault(f"{keys} p50", p50)
                base_cpu = baseline.setdefault(f"{keys} cpu", cpu)
                print(
                    f"   {name:24} {keys:5} {p50:8.1f} {p99:8.1f} {cpu:8.1f} {per_second:9.0f} "
                    f"{p50 / base_p50:7.0f} {cpu / base_cpu:7.0f}",
                    flush=True,
                )
    finally:
        await shared.close()
        await frontend_db.close()


def _current_user_rate(database: str, admin_url: str, concurrency: int, seconds: float) -> float:
    with tempfile.TemporaryDirectory(prefix="rate-bench-") as tmp:
        for stack in start_stack(database, Path(tmp), admin_url):
            user = stack.new_user()
            return asyncio.run(_drive_current_user(stack, user, concurrency, seconds))
    raise RuntimeError("the stack did not start")


async def _drive_current_user(stack: Any, user: Any, concurrency: int, seconds: float) -> float:
    creds = grpc.ssl_channel_credentials(
        root_certificates=stack.ca_pem, private_key=user.key_pem, certificate_chain=user.cert_pem
    )
    async with grpc.aio.secure_channel(stack.api_addr, creds) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)

        async def call() -> float:
            await stub.GetCurrentUser(
                auth_pb2.GetCurrentUserRequest(), metadata=user.bearer, timeout=10
            )
            return 0.0

        await _throughput(call, concurrency, 1.0)  # warm-up
        return await _throughput(call, concurrency, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="back-to-back takes per row")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput figure")
    parser.add_argument("--skip-api", action="store_true", help="the store figures only")
    args = parser.parse_args()
    admin_url = os.environ.get("LICENSING_TEST_POSTGRES_URL")
    if not admin_url:
        raise SystemExit("set LICENSING_TEST_POSTGRES_URL (scripts/postgres.sh prints one)")
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp, migrated_database("postgresql", Path(tmp)) as url:
        asyncio.run(_store_phase(url, args.calls, args.concurrency, args.seconds))
    if not args.skip_api:
        print(f"\n2. GetCurrentUser, {args.concurrency} in flight for {args.seconds:.0f} s")
        memory = _current_user_rate("sqlite", admin_url, args.concurrency, args.seconds)
        print(f"   in-memory buckets (SQLite stack):   {memory:8.0f} calls/s", flush=True)
        shared = _current_user_rate("postgresql", admin_url, args.concurrency, args.seconds)
        print(f"   shared buckets (PostgreSQL stack):  {shared:8.0f} calls/s", flush=True)
        print(f"   ratio shared / in memory: {shared / memory:.2f}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
