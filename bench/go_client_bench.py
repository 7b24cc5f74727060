"""The Go client's figures: first progress event, create-to-verified p50/p95, verifications/s.

Starts its own licensing server (``tests.support.start_stack``: swtpm + backend + frontend,
SQLite in a temp directory, removed afterwards unless ``--keep``), builds
``clients/go/cmd/licensing-bench`` and runs it against the stack; it prints figures and
asserts nothing. Run from the repository root:

    .venv/bin/python bench/go_client_bench.py [--creates 20] [--verify-seconds 5]

The Go program creates ``--creates`` enclaves one after the other (a new user every 3,
each enclave deleted after it verified) and times, from the CreateEnclave call, the first
progress event and the end of verification (``attestation.Verify`` of the ATTESTED
event's quote). Then it verifies the good shared vectors
(``clients/testdata/attestation-vectors.json``) back to back on one goroutine for
``--verify-seconds``: verifications per second per core. For comparison, the Python
verifier (``licensing_client.attestation.verify_attestation``) runs on the same vectors
for as long, in this process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


from bench.verifier_bench import verify_rate  # noqa: E402
from tests.support import Stack, start_stack  # noqa: E402

GO_MODULE = REPO / "clients" / "go"
VECTORS = REPO / "clients" / "testdata" / "attestation-vectors.json"


def build(tmp: Path) -> Path:
    """``clients/go/cmd/licensing-bench`` built into ``tmp``."""
    go = shutil.which("go")
    if go is None:
        sys.exit("go is not on PATH (scripts/setup.sh installs it)")
    binary = tmp / "licensing-bench"
    env = dict(os.environ, GOFLAGS="-mod=readonly")
    subprocess.run(
        [go, "build", "-o", str(binary), "./cmd/licensing-bench"],
        cwd=GO_MODULE,
        env=env,
        check=True,
    )
    return binary


def run(binary: Path, stack: Stack, creates: int, verify_seconds: float) -> None:
    """The Go program against ``stack``; it prints its own figures."""
    subprocess.run(
        [
            str(binary),
            f"-enroll={stack.enroll_addr}",
            f"-api={stack.api_addr}",
            f"-ca={stack.ca_path}",
            f"-creates={creates}",
            f"-verify-seconds={verify_seconds}",
            f"-vectors={VECTORS}",
        ],
        check=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--creates", type=int, default=20)
    parser.add_argument("--verify-seconds", type=float, default=5.0)
    parser.add_argument("--keep", action="store_true", help="keep the stack's temp directory")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="go-client-bench-"))
    binary = build(tmp)
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f}")
    stacks = start_stack("sqlite", tmp, None)
    stack = next(stacks)
    try:
        run(binary, stack, args.creates, args.verify_seconds)
        rate = verify_rate(args.verify_seconds)
        print(f"python verify (same vectors, one core, for comparison): {rate:.0f} /s")
    finally:
        for _ in stacks:  # runs start_stack's clean-up
            pass
        print(f"load average (1 min) at end: {os.getloadavg()[0]:.2f}")
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
