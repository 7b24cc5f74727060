"""Attestation evidence size and GetAttestation latency after 1 and after 10,000 enclaves.

Issue 8, defect 2: the event log returned with every quote used to hold every certificate
measured since the TPM's last reset, so an attestation grew ~105 bytes per enclave ever
created. PCR 23 now holds the root of a Merkle tree over the live certificates; this
prints the evidence and its cost against how many enclaves were created (and deleted).
It asserts nothing. From the repository root:

    .venv/bin/python bench/evidence_bench.py [--creates 10000] [--api-creates 200]
                                             [--live 1,100,1000,10000] [--samples 200]

Two parts:

1. **Through the API** (a stack from ``tests.support.start_stack``: swtpm + backend +
   frontend, SQLite): one probe enclave, then ``--api-creates`` enclaves created and
   deleted through ``CreateEnclave``/``DeleteEnclave``. GetAttestation for the probe
   (mTLS, fresh 32-byte nonce, sequential) is measured before and after: serialized size,
   PCR 23 events, proof siblings, p50 latency, and the client's verify p50.
2. **The measurement path directly, in this process**: each real create starts an
   enclave process (~0.3 s here), so 10,000 of them through the API would take about an
   hour. This part runs the backend's own ``Attestor`` on a real swtpm and a real SQLite
   database (``tests/attestation/harness.py``): ``measure`` (reset PCR 23, extend the new
   root, start a log epoch) and ``forget`` for ``--creates`` create/delete cycles, with
   one probe enclave live, measuring ``Attestor.attest`` for the probe at 1 and at
   ``--creates``; then the live set itself grows to each ``--live`` level, to show the
   logarithmic part.
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
from dataclasses import dataclass
from pathlib import Path

from licensing.v1 import attestation_pb2, attestation_pb2_grpc, enclave_pb2, enclave_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.login_bench import percentile  # noqa: E402
from licensing_client.attestation import verify_attestation  # noqa: E402
from licensing_server.attestation import attestation_message  # noqa: E402
from tests.attestation.harness import Harness, attestor_on_swtpm  # noqa: E402
from tests.support import LoggedIn, Stack, start_stack  # noqa: E402


@dataclass(frozen=True, slots=True)
class Evidence:
    created: int
    live: int
    size: int
    events: int
    siblings: int
    p50_ms: float
    verify_p50_ms: float

    def row(self) -> str:
        return (
            f"{self.created:>8} {self.live:>6} {self.size:>7} {self.events:>6}"
            f" {self.siblings:>8} {self.p50_ms:>9.2f} {self.verify_p50_ms:>10.2f}"
        )


HEADER = " created   live   bytes events siblings  p50 (ms) verify(ms)"


async def sample(
    created: int,
    live: int,
    get: Callable[[bytes], Awaitable[attestation_pb2.Attestation]],
    verify: Callable[[attestation_pb2.Attestation, bytes], object],
    samples: int,
) -> Evidence:
    latencies, verifies = [], []
    last = None
    for _ in range(samples):
        nonce = os.urandom(32)
        start = time.perf_counter()
        last = await get(nonce)
        latencies.append(time.perf_counter() - start)
        start = time.perf_counter()
        verify(last, nonce)
        verifies.append(time.perf_counter() - start)
    assert last is not None
    return Evidence(
        created,
        live,
        len(last.SerializeToString()),
        len(last.event_log),
        len(last.measurement_proof.siblings),
        percentile(latencies, 50) * 1000,
        percentile(verifies, 50) * 1000,
    )


def ratios(first: Evidence, last: Evidence) -> str:
    return (
        f"size {last.size / first.size:.3f}x, GetAttestation p50 {last.p50_ms / first.p50_ms:.2f}x,"
        f" verify p50 {last.verify_p50_ms / first.verify_p50_ms:.2f}x"
    )


# 1. Through the API -----------------------------------------------------------------------
def create(stack: Stack, user: LoggedIn) -> enclave_pb2.Enclave:
    stub = enclave_pb2_grpc.EnclaveServiceStub(stack.user_channel(user))
    events = list(
        stub.CreateEnclave(
            enclave_pb2.CreateEnclaveRequest(request_id=uuid.uuid4().hex, nonce=os.urandom(32)),
            metadata=user.bearer,
            timeout=120,
        )
    )
    assert events[-1].phase == enclave_pb2.PHASE_ATTESTED, events[-1]
    return events[-1].enclave


def delete(stack: Stack, user: LoggedIn, enclave_id: str) -> None:
    enclave_pb2_grpc.EnclaveServiceStub(stack.user_channel(user)).DeleteEnclave(
        enclave_pb2.DeleteEnclaveRequest(enclave_id=enclave_id), metadata=user.bearer
    )


Get = Callable[[bytes], Awaitable[attestation_pb2.Attestation]]
Verify = Callable[[attestation_pb2.Attestation, bytes], object]


def attestation_calls(
    stack: Stack, user: LoggedIn, probe: enclave_pb2.Enclave
) -> tuple[Get, Verify]:
    """GetAttestation of ``probe`` over mTLS (fresh nonce each), and the client's check of it."""
    stub = attestation_pb2_grpc.AttestationServiceStub(stack.user_channel(user))
    ca = [stack.ca_pem.decode()]

    async def get(nonce: bytes) -> attestation_pb2.Attestation:
        request = attestation_pb2.GetAttestationRequest(enclave_id=probe.id, nonce=nonce)
        reply = await asyncio.to_thread(
            stub.GetAttestation, request, metadata=user.bearer, timeout=30
        )
        return reply.attestation

    def verify(attestation: attestation_pb2.Attestation, nonce: bytes) -> object:
        return verify_attestation(
            attestation,
            nonce=nonce,
            expected_certificate_pem=probe.certificate_pem,
            trusted_ca_pem=ca,
        )

    return get, verify


async def through_api(creates: int, samples: int) -> None:
    print(f"\n1. Through the API: GetAttestation over mTLS, {creates} creates+deletes", flush=True)
    with tempfile.TemporaryDirectory(prefix="evidence-bench-") as tmp:
        for stack in start_stack("sqlite", Path(tmp), None, LICENSING_MAX_ENCLAVES="10"):
            await api_phase(stack, creates, samples)


async def api_phase(stack: Stack, creates: int, samples: int) -> None:
    user = stack.new_user()
    probe = create(stack, user)
    get, verify = attestation_calls(stack, user, probe)
    print(HEADER)
    first = await sample(1, 1, get, verify, samples)
    print(first.row(), flush=True)
    started = time.monotonic()
    for _ in range(creates):
        delete(stack, user, create(stack, user).id)
    took = time.monotonic() - started
    last = await sample(1 + creates, 1, get, verify, samples)
    print(last.row())
    print(f"   {creates} creates+deletes took {took:.0f} s ({took / creates:.2f} s each)")
    print(f"   ratio {1 + creates} vs 1 created: {ratios(first, last)}")


# 2. The measurement path in this process ------------------------------------------------
async def in_process(creates: int, live_levels: list[int], samples: int) -> None:
    print(
        f"\n2. The backend's Attestor in this process on swtpm + SQLite"
        f" (not through the API: see the docstring), {creates} creates+deletes",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="evidence-bench-") as tmp:
        async with attestor_on_swtpm(Path(tmp)) as h:
            probe = h.certificate("probe")
            await h.create("probe", probe.sha256)

            async def get(nonce: bytes) -> attestation_pb2.Attestation:
                return attestation_message(await h.attestor.attest(probe.pem, probe.sha256, nonce))

            def verify(attestation: attestation_pb2.Attestation, nonce: bytes) -> object:
                return h.verify(attestation, nonce, probe.pem)

            print(HEADER)
            first = await sample(1, 1, get, verify, samples)
            print(first.row(), flush=True)
            started = time.monotonic()
            changes: list[float] = []
            for i in range(creates):
                t0 = time.perf_counter()
                await h.create(f"churn-{i}")
                h.delete(f"churn-{i}")
                changes.append(time.perf_counter() - t0)
                if (i + 1) % 2000 == 0:
                    print(f"   ... {i + 1} creates+deletes", flush=True)
            took = time.monotonic() - started
            last = await sample(1 + creates, 1, get, verify, samples)
            print(last.row())
            print(
                f"   {creates} creates+deletes took {took:.0f} s; one measure (reset + extend +"
                f" epoch row) p50 {percentile(changes, 50) * 1000:.2f} ms"
            )
            print(f"   ratio {1 + creates} vs 1 created: {ratios(first, last)}", flush=True)
            await grow_live(h, live_levels, get, verify, samples, first, creates)


async def grow_live(
    h: Harness,
    levels: list[int],
    get: Callable[[bytes], Awaitable[attestation_pb2.Attestation]],
    verify: Callable[[attestation_pb2.Attestation, bytes], object],
    samples: int,
    first: Evidence,
    created: int,
) -> None:
    print("\n   The live set growing (each create rewrites PCR 23 over all live certificates):")
    print(HEADER)
    rows = []
    for level in sorted(levels):
        measure: list[float] = []
        while len(h.live) < level:
            created += 1
            t0 = time.perf_counter()
            await h.create(f"live-{len(h.live)}")
            measure.append(time.perf_counter() - t0)
        row = await sample(created + 1, len(h.live), get, verify, max(20, samples // 4))
        rows.append(row)
        cost = f"; measure p50 {statistics.median(measure) * 1000:.2f} ms" if measure else ""
        print(row.row() + cost, flush=True)
    if rows:
        print(f"   ratio live {rows[-1].live} vs 1: {ratios(first, rows[-1])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--creates", type=int, default=10_000)
    parser.add_argument("--api-creates", type=int, default=200)
    parser.add_argument("--live", default="1,100,1000,10000")
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    if args.api_creates:
        asyncio.run(through_api(args.api_creates, args.samples))
    live = [int(v) for v in args.live.split(",") if v]
    asyncio.run(in_process(args.creates, live, args.samples))
    print(f"\nload average (1 min) at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
