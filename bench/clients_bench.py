"""Python, Go and TypeScript clients against one stack in the same run.

Per language, client side: the time from the CreateEnclave call to the first progress
event, create-to-verified p50/p95 (the ATTESTED event's attestation verified by that
language's own verifier), and attestation verifications per second per core of each
verifier on the shared vectors (clients/testdata/attestation-vectors.json). One stack
(``tests.support.start_stack``: swtpm + backend + frontend, SQLite in a temp directory)
serves all three, one language after the other, so the figures compare. It prints figures
and asserts nothing. Run from the repository root:

    .venv/bin/python bench/clients_bench.py [--creates 20] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import go_client_bench, typescript_client_bench  # noqa: E402
from bench.login_bench import percentile  # noqa: E402
from bench.verifier_bench import verify_rate  # noqa: E402
from licensing_client import Created, LicensingClient, Progress  # noqa: E402
from tests.support import PASSWORD, Stack, start_stack  # noqa: E402

#: Enclaves per user before a new one signs up (the default licence allows a few at once).
PER_USER = 3


async def python_creates(stack: Stack, creates: int) -> tuple[list[float], list[float]]:
    """Milliseconds to the first progress event and to the verified attestation, per create."""
    first_ms: list[float] = []
    verified_ms: list[float] = []
    for batch in range(0, creates, PER_USER):
        async with LicensingClient.connect(
            stack.enroll_addr, stack.api_addr, ca_pem=stack.ca_pem
        ) as client:
            username = f"bench-py-{secrets.token_hex(4)}"
            await client.sign_up(username, PASSWORD)
            await client.log_in(username, PASSWORD)
            for _ in range(min(PER_USER, creates - batch)):
                started = time.perf_counter()
                first: float | None = None
                enclave_id = ""
                async for event in client.create_enclave():
                    if first is None and isinstance(event, Progress):
                        first = time.perf_counter()
                    if isinstance(event, Created):
                        verified_ms.append((time.perf_counter() - started) * 1000)
                        enclave_id = event.enclave.id
                if first is not None:
                    first_ms.append((first - started) * 1000)
                await client.delete_enclave(enclave_id)
    return first_ms, verified_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--creates", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0, help="of verifying, per language")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clients-bench-") as tmp:
        go_binary = go_client_bench.build(Path(tmp))
        typescript_client_bench.build()
        print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f}")
        stacks = start_stack("sqlite", Path(tmp) / "stack", None)
        stack = next(stacks)
        try:
            first, verified = asyncio.run(python_creates(stack, args.creates))
            rate = verify_rate(args.seconds)
            print(f"Python client, {len(verified)} creates one after another")
            for label, figures in (("first progress event", first), ("verified", verified)):
                print(
                    f"  create_enclave to {label}: p50 {percentile(figures, 50):.1f} ms,"
                    f" p95 {percentile(figures, 95):.1f} ms"
                )
            print(f"  verify_attestation on the shared vectors: {rate:.0f}/s per core")
            print("Go client")
            go_client_bench.run(go_binary, stack, args.creates, args.seconds)
            typescript_client_bench.report(
                typescript_client_bench.run(stack, args.creates, args.seconds)
            )
        finally:
            for _ in stacks:  # start_stack's clean-up
                pass
        print(f"load average (1 min) at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
