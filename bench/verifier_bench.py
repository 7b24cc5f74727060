"""The Python verifier with and without its AK chain cache, on the shared vectors.

Prints figures and asserts nothing. No stack needed. From the repository root:

    .venv/bin/python bench/verifier_bench.py             # 5 s per figure, 10 rounds
    .venv/bin/python bench/verifier_bench.py --seconds 5

Cold: the chain cache is emptied before every verification (the first verification of a
chain: the signature walk runs). Warm: the chain was verified before, so only the walk is
skipped; the quote, its signature, qualifying data, PCRs, event log, Merkle proofs and every
certificate's validity at ``now`` are checked each time. One core (this process), the good
vectors of clients/testdata/attestation-vectors.json in turn.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from licensing.v1 import attestation_pb2

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from licensing_client.attestation import _verify, verify_attestation  # noqa: E402

VECTORS = REPO / "clients" / "testdata" / "attestation-vectors.json"


def good_vectors() -> tuple[list[tuple[Any, bytes, str]], list[str], dt.datetime]:
    doc = json.loads(VECTORS.read_text())
    now = dt.datetime.fromisoformat(doc["verify_at"].replace("Z", "+00:00"))
    good = [
        (
            json_format.ParseDict(v["attestation"], attestation_pb2.Attestation()),
            base64.b64decode(v["nonce"]),
            v["expected_certificate_pem"],
        )
        for v in doc["vectors"]
        if v["expected"]["valid"]
    ]
    return good, doc["trusted_ca_pem"], now


def verify_rate(seconds: float, cold: bool = False) -> float:
    """Python verifications per second of the good shared vectors, one after another."""
    good, trusted, now = good_vectors()
    chains = getattr(_verify, "_chains", None)  # None: a verifier without the cache
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        if cold and chains is not None:
            chains.clear()
        attestation, nonce, cert = good[count % len(good)]
        verify_attestation(
            attestation, nonce=nonce, expected_certificate_pem=cert, trusted_ca_pem=trusted, now=now
        )
        count += 1
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per figure, all rounds")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    verify_rate(0.5)  # imports, first parses
    # Interleaved rounds, median of each: a shared machine's load moves within seconds.
    rounds = max(1, args.rounds)
    colds, warms = [], []
    for _ in range(rounds):
        colds.append(verify_rate(args.seconds / rounds, cold=True))
        warms.append(verify_rate(args.seconds / rounds, cold=False))
    cold, warm = statistics.median(colds), statistics.median(warms)
    print(f"  {rounds} interleaved rounds of {args.seconds / rounds:.2f} s each, medians:")
    print(
        f"  cold (chain walked each time): {cold:7.0f} verifications/s  {1000 / cold:.3f} ms each"
    )
    print(
        f"  warm (chain verified before):  {warm:7.0f} verifications/s  {1000 / warm:.3f} ms each"
    )
    print(f"  ratio warm / cold: {warm / cold:.2f}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
