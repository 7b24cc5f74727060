"""What routing GetAttestation to the measuring backend costs: the pod-mate vs another pod.

Starts two pods on PostgreSQL (tests/attestation/replicas_support.py: frontend + backend +
swtpm each, one CA), makes one enclave measured by backend B, then has clients call
``GetAttestation`` (verified by the Python client against the pinned CA) through
frontend B (the pod-mate backend, over the loopback control channel) and through
frontend A (routed to B's QuoteService-only listener over mutual TLS), sequentially for
latency and with ``--concurrency`` clients for throughput. It asserts nothing.

    LICENSING_TEST_POSTGRES_URL="$(scripts/postgres.sh)" \
        .venv/bin/python bench/attestation_routing_bench.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.replicas_bench import _p, client_of, make_enclave  # noqa: E402
from licensing_client import LicensingClient  # noqa: E402
from tests.attestation.replicas_support import two_pods  # noqa: E402
from tests.support import PASSWORD, Stack  # noqa: E402


async def _sequential(frontend: Stack, owner: str, enclave_id: str, calls: int) -> list[float]:
    async with client_of(frontend) as client:
        await client.log_in(owner, PASSWORD)
        await client.attest(enclave_id)  # warm the channels
        latencies = []
        for _ in range(calls):
            began = time.perf_counter()
            await client.attest(enclave_id)
            latencies.append(time.perf_counter() - began)
        return latencies


async def _concurrent(
    frontend: Stack, owner: str, enclave_id: str, concurrency: int, seconds: float
) -> int:
    clients = [client_of(frontend) for _ in range(concurrency)]
    try:
        for client in clients:
            await client.log_in(owner, PASSWORD)
        done = 0
        deadline = time.perf_counter() + seconds

        async def one(client: LicensingClient) -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await client.attest(enclave_id)
                done += 1

        await asyncio.gather(*(one(c) for c in clients))
        return done
    finally:
        for client in clients:
            client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        two_pods(
            Path(tmp),
            os.environ.get("LICENSING_TEST_POSTGRES_URL"),
            LICENSING_BCRYPT_COST="4",
            LICENSING_RATE_LIMIT_PERCENT="100000",
        ) as (a, b),
    ):
        owner, enclave_id = asyncio.run(make_enclave(b))
        print(f"one enclave measured by backend B; {len(os.sched_getaffinity(0))} cores")
        print(f"{'through':<34} {'p50':>8} {'p99':>8} {'verified/s':>11}")
        for label, frontend in (
            ("frontend B (pod-mate backend)", b),
            ("frontend A (routed to B)", a),
        ):
            latencies = asyncio.run(_sequential(frontend, owner, enclave_id, args.calls))
            done = asyncio.run(
                _concurrent(frontend, owner, enclave_id, args.concurrency, args.seconds)
            )
            print(
                f"{label:<34} {_p(latencies, 0.5):>6.1f}ms {_p(latencies, 0.99):>6.1f}ms "
                f"{done / args.seconds:>11.1f}"
            )


if __name__ == "__main__":
    main()
