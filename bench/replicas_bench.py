"""One frontend against two: login throughput vs the bcrypt bound, GetCurrentUser p99,
verified attestations/s, on the same cores in the same run.

Starts its own stack on PostgreSQL (backend + frontend through the supervisor, one
database, one backend with its swtpm), measures with that frontend alone, then starts a
second frontend process beside it (same data directory, database and backend, other
ports: what a second replica of the frontend is) and measures again with the clients
spread over both. Rate limits and the failed-login throttle are shared through
PostgreSQL in both runs (raised far above the load, so every call still pays its
shared take). It asserts nothing; it prints figures and the two-to-one ratios.

    LICENSING_TEST_POSTGRES_URL="$(scripts/postgres.sh)" .venv/bin/python bench/replicas_bench.py

Two frontends on two cores cannot double anything: the point is what a second replica
costs or buys when the cores are shared (bcrypt is the frontend's bound, and both
replicas' bcrypt threads compete for the same cores).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import bcrypt

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from licensing_client import Created, LicensingClient  # noqa: E402
from tests.support import PASSWORD, Stack, second_frontend, start_stack  # noqa: E402

CORES = len(os.sched_getaffinity(0))


def bcrypt_bound(cost: int, seconds: float) -> float:
    """checkpw/s on one thread per core: no server can log in faster."""
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(cost))
    counts = [0] * CORES
    deadline = time.perf_counter() + seconds

    def work(i: int) -> None:
        while time.perf_counter() < deadline:
            bcrypt.checkpw(PASSWORD.encode(), hashed)
            counts[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(CORES)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - started)


def client_of(stack: Stack) -> LicensingClient:
    return LicensingClient.connect(stack.enroll_addr, stack.api_addr, ca_pem=stack.ca_pem)


@dataclasses.dataclass(frozen=True)
class Figures:
    frontends: int
    logins_per_s: float
    user_p50_ms: float
    user_p99_ms: float
    user_per_s: float
    attest_per_s: float
    attest_p99_ms: float


async def _loop(
    clients: Sequence[tuple[LicensingClient, str]], op: str, seconds: float, enclave_id: str = ""
) -> list[float]:
    """Each (client, its username) repeats ``op`` for ``seconds``; every call's latency."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def one(client: LicensingClient, username: str) -> None:
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            if op == "login":
                await client.log_in(username, PASSWORD)
            elif op == "user":
                await client.current_user()
            else:
                await client.attest(enclave_id)  # GetAttestation, verified by the client
            latencies.append(time.perf_counter() - began)

    await asyncio.gather(*(one(c, name) for c, name in clients))
    return latencies


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


async def measure(
    frontends: Sequence[Stack], concurrency: int, seconds: float, owner: str, enclave_id: str
) -> Figures:
    """``concurrency`` clients spread round robin over ``frontends``."""
    users: list[tuple[LicensingClient, str]] = []
    owners: list[tuple[LicensingClient, str]] = []
    for i in range(concurrency):
        frontend = frontends[i % len(frontends)]
        client, name = client_of(frontend), f"bench{uuid.uuid4().hex[:12]}"
        await client.sign_up(name, PASSWORD)
        await client.log_in(name, PASSWORD)
        users.append((client, name))
        owner_client = client_of(frontend)
        await owner_client.log_in(owner, PASSWORD)
        owners.append((owner_client, owner))
    try:
        await _loop(users, "user", 1.0)  # warm channels and caches
        logins = await _loop(users, "login", seconds)
        calls = await _loop(users, "user", seconds)
        attests = await _loop(owners, "attest", seconds, enclave_id)
    finally:
        for client, _ in users + owners:
            client.close()
    return Figures(
        frontends=len(frontends),
        logins_per_s=len(logins) / seconds,
        user_p50_ms=_p(calls, 0.50),
        user_p99_ms=_p(calls, 0.99),
        user_per_s=len(calls) / seconds,
        attest_per_s=len(attests) / seconds,
        attest_p99_ms=_p(attests, 0.99),
    )


async def make_enclave(stack: Stack) -> tuple[str, str]:
    """A user with one ATTESTED enclave, for the attestation loop: (username, enclave id)."""
    owner = f"owner{uuid.uuid4().hex[:10]}"
    async with client_of(stack) as client:
        await client.sign_up(owner, PASSWORD)
        await client.log_in(owner, PASSWORD)
        events = [e async for e in client.create_enclave()]
        created = events[-1]
        assert isinstance(created, Created), created
        return owner, created.enclave.id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--cost", type=int, default=10, help="bcrypt cost of the server")
    args = parser.parse_args()
    admin_url = os.environ.get("LICENSING_TEST_POSTGRES_URL")
    if not admin_url:
        sys.exit('set LICENSING_TEST_POSTGRES_URL ("$(scripts/postgres.sh)")')

    bound = bcrypt_bound(args.cost, 3.0)
    print(f"bcrypt bound at cost {args.cost} on {CORES} cores: {bound:.1f} checks/s")
    with tempfile.TemporaryDirectory(prefix="replicas-bench-") as tmp:
        started = contextlib.contextmanager(start_stack)(
            "postgresql", Path(tmp), admin_url, LICENSING_BCRYPT_COST=str(args.cost)
        )
        with started as first:
            owner, enclave_id = asyncio.run(make_enclave(first))
            one = asyncio.run(measure([first], args.concurrency, args.seconds, owner, enclave_id))
            with second_frontend(first) as second:
                two = asyncio.run(
                    measure([first, second], args.concurrency, args.seconds, owner, enclave_id)
                )
    print(
        f"{'frontends':>9} {'logins/s':>9} {'% bound':>8} {'user p50':>9} {'user p99':>9} "
        f"{'user/s':>8} {'attest/s':>9} {'attest p99':>11}"
    )
    for f in (one, two):
        print(
            f"{f.frontends:>9} {f.logins_per_s:>9.1f} {100 * f.logins_per_s / bound:>7.0f}% "
            f"{f.user_p50_ms:>7.1f}ms {f.user_p99_ms:>7.1f}ms {f.user_per_s:>8.0f} "
            f"{f.attest_per_s:>9.1f} {f.attest_p99_ms:>9.1f}ms"
        )
    print(
        f"two/one: logins {two.logins_per_s / one.logins_per_s:.2f}x, "
        f"GetCurrentUser/s {two.user_per_s / one.user_per_s:.2f}x, "
        f"p99 {two.user_p99_ms / one.user_p99_ms:.2f}x, "
        f"verified attestations/s {two.attest_per_s / one.attest_per_s:.2f}x"
    )
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
