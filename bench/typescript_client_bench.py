"""The TypeScript client's figures: time to the first progress event, create-to-verified
p50/p95, and verifications per second per core on the shared attestation vectors.

Starts its own stack (``tests.support.start_stack``: swtpm + backend + frontend, SQLite in a
temp directory), builds the client (scripts/tools/node-client.sh), runs
clients/typescript/bench/bench.ts (compiled to dist/bench/bench.js) against it and prints
the figures; it asserts nothing. For comparison it times the Python verifier on the same
vectors in this process. Run from the repository root:

    .venv/bin/python bench/typescript_client_bench.py [--creates 20] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.verifier_bench import verify_rate  # noqa: E402
from tests.support import PASSWORD, Stack, start_stack  # noqa: E402

CLIENT = REPO / "clients" / "typescript"
VECTORS = REPO / "clients" / "testdata" / "attestation-vectors.json"


def build() -> None:
    subprocess.run([str(REPO / "scripts" / "tools" / "node-client.sh")], check=True)


def run(stack: Stack, creates: int, seconds: float) -> dict[str, Any]:
    """clients/typescript/bench/bench.ts against ``stack``: its figures."""
    result = subprocess.run(
        [
            "node",
            "dist/bench/bench.js",
            f"--creates={creates}",
            f"--seconds={seconds}",
            f"--vectors={VECTORS if VECTORS.exists() else ''}",
        ],
        cwd=CLIENT,
        env={
            **os.environ,
            "LICENSING_ENROLL_ADDR": stack.enroll_addr,
            "LICENSING_API_ADDR": stack.api_addr,
            "LICENSING_CA_FILE": str(stack.ca_path),
            "LICENSING_PASSWORD": PASSWORD,
        },
        capture_output=True,
        text=True,
        check=True,
    )
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def report(figures: dict[str, Any]) -> None:
    first, verified = figures["first_event_ms"], figures["create_to_verified_ms"]
    verification = figures["verification"]
    print(f"TypeScript client ({figures['node']}), {figures['creates']} creates one after another")
    for label, figure in (("first progress event", first), ("verified attestation", verified)):
        print(f"  createEnclave to {label}: p50 {figure['p50']:.1f} ms, p95 {figure['p95']:.1f} ms")
    print(
        f"  verifyAttestation on {verification['source']}: "
        f"{verification['per_cpu_second']:.0f}/s per core "
        f"({verification['per_wall_second']:.0f}/s wall, {verification['count']} verifications)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--creates", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()

    build()
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="ts-bench-") as tmp:
        stacks = start_stack("sqlite", Path(tmp), None)
        stack = next(stacks)
        try:
            figures = run(stack, args.creates, args.seconds)
        finally:
            for _ in stacks:  # start_stack's clean-up
                pass
    report(figures)
    if VECTORS.exists():
        python = verify_rate(args.seconds)
        print(f"  Python verify_attestation on the same vectors: {python:.0f}/s per core")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
