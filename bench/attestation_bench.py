"""Verified attestations per second against the TPM's own quote rate, and what batching buys.

Starts its own licensing servers (supervisor: swtpm + backend + frontend, SQLite in a
temp directory), one after the other, and prints figures; it asserts nothing. Run from
the repository root:

    .venv/bin/python bench/attestation_bench.py [--quick] [--seconds N] [--clients 1,10,100]

One request = GetAttestation(enclave_id, a fresh 32-byte nonce) over mutual TLS, then
``licensing_client.attestation.verify_attestation`` on the answer in the client (our
nonce, the enclave's certificate, the stack's CA). Phases:

1. stack 1 (swtpm as it is): one user, one enclave (ATTESTED, verified), then
   a. raw quote rate: ``licensing_server.tpm.TpmDevice`` on the stack's own swtpm,
      ``quote(qualifying_data, [0..7, 23])`` back to back for ``--quote-seconds``
      while the server idles (a second TPM user would compete with the backend);
   b. for each ``--clients`` level: that many closed-loop clients, ``--warmup``
      seconds, then ``--seconds`` measured -> verified attestations/s, p50/p99 latency
      (send to verified), the Merkle batch sizes the answers carry
      (``merkle_proof.leaf_count``) and the distinct quotes they came from;
   c. the raw quote rate again.
2. stack 2, started with ``LICENSING_TPM_SIMULATED_LATENCY_MS`` (100): the backend
   sleeps that long before every TPM quote, like a hardware TPM. The same load phases;
   attestations/s / (1000 / latency) > 1 is what Merkle batching buys.

The load generator is one grpc.aio event loop over one channel per stack, with the
nonces made before each phase. Core-seconds per phase are printed (frontend, backend,
swtpm, this process, other processes on the machine), as is the 1-minute load average
at the start and the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from licensing.v1 import attestation_pb2, attestation_pb2_grpc, enclave_pb2, enclave_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.login_bench import (  # noqa: E402
    CORES,
    NOISE_WARNING,
    CpuSnapshot,
    CpuUse,
    ServerPids,
    StormResult,
    _children,
    _print_log_tail,
    _proc_cpu_seconds,
    percentile,
)
from licensing_client.attestation import AttestationError, verify_attestation  # noqa: E402
from licensing_server.tpm import TpmDevice  # noqa: E402
from tests.support import LoggedIn, Stack, start_stack  # noqa: E402

QUOTED_PCRS = [0, 1, 2, 3, 4, 5, 6, 7, 23]  # what the backend quotes (attestation/_attestor.py)
NONCES_PER_PHASE = 60_000  # more than any phase can use; a shortfall is made on the fly
CALL_TIMEOUT = 30.0
CREATE_TIMEOUT = 120.0
BATCH_BUCKETS = ((1, 1), (2, 3), (4, 7), (8, 15), (16, 31), (32, 63), (64, sys.maxsize))


def load_average() -> float:
    return os.getloadavg()[0]


# CPU: the login bench's accounting, plus the stack's swtpm ---------------------------------------


def swtpm_pid(stack: Stack) -> int:
    if stack.proc is None:
        raise RuntimeError("the stack is not running")
    for child in _children(stack.proc.pid):
        argv0 = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0", 1)[0]
        if Path(argv0.decode()).name == "swtpm":
            return child
    raise RuntimeError("the stack's swtpm process was not found")


@dataclass(frozen=True, slots=True)
class PhaseCpu:
    use: CpuUse
    swtpm: float  # core-seconds; login_bench's CpuUse counts it among "others"

    @property
    def others(self) -> float:
        return max(0.0, self.use.others - self.swtpm)


@dataclass(frozen=True, slots=True)
class Meter:
    pids: ServerPids
    swtpm: int

    @classmethod
    def of(cls, stack: Stack) -> Meter:
        return cls(ServerPids.of(stack), swtpm_pid(stack))

    def take(self) -> tuple[CpuSnapshot, float]:
        return CpuSnapshot.take(self.pids), _proc_cpu_seconds(self.swtpm)

    @staticmethod
    def between(a: tuple[CpuSnapshot, float], b: tuple[CpuSnapshot, float]) -> PhaseCpu:
        return PhaseCpu(CpuUse.between(a[0], b[0]), b[1] - a[1])


def pin_tasks(pid: int, cores: set[int]) -> None:
    """Every thread of ``pid`` onto ``cores`` (``taskset -a -p``)."""
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task.name), cores)


def pin_tree(root: int, cores: set[int]) -> None:
    """``root`` and its descendants, every thread, onto ``cores``."""
    pin_tasks(root, cores)
    for child in _children(root):
        pin_tree(child, cores)


def arrangement(pin: bool) -> tuple[set[int], set[int]] | None:
    """(server cores, load core) when pinned: the load gets the last core to itself."""
    cores = sorted(os.sched_getaffinity(0))
    if not pin:
        return None
    if len(cores) < 2:
        raise SystemExit("--pin needs at least two cores")
    return set(cores[:-1]), {cores[-1]}


# The raw quote rate --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuoteRate:
    quotes: int
    seconds: float
    cpu: PhaseCpu

    @property
    def per_second(self) -> float:
        return self.quotes / self.seconds

    @property
    def mean_ms(self) -> float:
        return self.seconds / self.quotes * 1e3


async def measure_quote_rate(stack: Stack, meter: Meter, seconds: float) -> QuoteRate:
    """TpmDevice.quote back to back on the stack's swtpm (a second connection to it)."""
    data = [os.urandom(32) for _ in range(50_000)]
    tcti = f"swtpm:host=127.0.0.1,port={stack.swtpm_port}"
    async with TpmDevice(tcti, command_timeout=10.0) as tpm:
        await tpm.quote(data[-1], QUOTED_PCRS)  # connect and look up the AK: not counted
        before = meter.take()
        start = time.perf_counter()
        deadline = start + seconds
        done = 0
        while time.perf_counter() < deadline:
            await tpm.quote(data[done % len(data)], QUOTED_PCRS)
            done += 1
        elapsed = time.perf_counter() - start  # ends on a completion
        cpu = Meter.between(before, meter.take())
    return QuoteRate(done, elapsed, cpu)


# The load ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """What every request asks about and checks against."""

    user: LoggedIn
    enclave_id: str
    certificate_pem: str
    ca_pem: str


@dataclass(slots=True)
class Done:
    at: float
    latency: float
    verify: float
    leaf_count: int
    quote: bytes


@dataclass(slots=True)
class LoadResult:
    clients: int
    window: tuple[float, float] = (0.0, 0.0)
    done: list[Done] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    nonces_short: int = 0
    cpu: PhaseCpu | None = None
    #: Open loop only: requests sent per second, and the requests out at each send.
    offered: float = 0.0
    in_flight: list[int] = field(default_factory=list)

    @property
    def in_window(self) -> list[Done]:
        start, end = self.window
        return [d for d in self.done if start <= d.at < end]

    @property
    def rate(self) -> float:
        """Verified attestations/s, anchored on completions (login_bench's StormResult.rate)."""
        return StormResult(completed=[d.at for d in self.done]).rate(*self.window)[0]

    def latency(self, q: float) -> float:
        return percentile([d.latency for d in self.in_window], q)

    @property
    def verify_ms(self) -> float:
        window = self.in_window
        return sum(d.verify for d in window) / max(1, len(window)) * 1e3

    @property
    def server_cpu_ms(self) -> float:
        """Frontend + backend + swtpm core-milliseconds per verified attestation."""
        if self.cpu is None:
            return float("nan")
        use = self.cpu.use
        return (use.frontend + use.backend + self.cpu.swtpm) / max(1, len(self.in_window)) * 1e3

    @property
    def quote_batches(self) -> dict[bytes, int]:
        """Each distinct quote answered in the window and its batch size (leaf_count)."""
        return {d.quote: d.leaf_count for d in self.in_window}


async def attest_once(stub: Any, target: Target, nonce: bytes, result: LoadResult) -> None:
    """One GetAttestation and its verification; a verified answer is recorded as ``Done``."""
    request = attestation_pb2.GetAttestationRequest(enclave_id=target.enclave_id, nonce=nonce)
    began = time.perf_counter()
    try:
        reply = await stub.GetAttestation(
            request, metadata=target.user.bearer, timeout=CALL_TIMEOUT
        )
    except grpc.aio.AioRpcError as exc:
        result.errors[f"{exc.code().name}: {(exc.details() or '')[:70]}"] += 1
        await asyncio.sleep(0.05)
        return
    answered = time.perf_counter()
    attestation = reply.attestation
    try:
        verify_attestation(
            attestation,
            nonce=nonce,
            expected_certificate_pem=target.certificate_pem,
            trusted_ca_pem=[target.ca_pem],
        )
    except AttestationError as exc:
        result.errors[f"verify:{exc.check}"] += 1
        return
    verified = time.perf_counter()
    result.done.append(
        Done(
            at=verified,
            latency=verified - began,
            verify=verified - answered,
            leaf_count=max(1, attestation.merkle_proof.leaf_count),
            quote=attestation.quote,
        )
    )


def _next_nonce(nonces: Iterator[bytes], result: LoadResult) -> bytes:
    nonce = next(nonces, None)
    if nonce is None:
        result.nonces_short += 1
        nonce = os.urandom(32)
    return nonce


async def client(
    stub: Any, target: Target, nonces: Iterator[bytes], stop: asyncio.Event, result: LoadResult
) -> None:
    while not stop.is_set():
        await attest_once(stub, target, _next_nonce(nonces, result), result)


async def load_phase(
    stub: Any, target: Target, meter: Meter, clients: int, warmup: float, seconds: float
) -> LoadResult:
    blob = os.urandom(32 * NONCES_PER_PHASE)
    nonces = iter([blob[i : i + 32] for i in range(0, len(blob), 32)])
    result = LoadResult(clients)
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(client(stub, target, nonces, stop, result)) for _ in range(clients)
    ]
    await asyncio.sleep(warmup)
    before = meter.take()
    await asyncio.sleep(seconds)
    after = meter.take()
    stop.set()
    # The window is exactly the span of the CPU snapshots, even if the loop woke up late.
    result.window = (before[0].wall, after[0].wall)
    result.cpu = Meter.between(before, after)
    await asyncio.gather(*tasks)  # in-flight requests finish; none start after the window
    return result


async def open_loop_phase(
    stub: Any, target: Target, meter: Meter, rate: float, warmup: float, seconds: float
) -> LoadResult:
    """Requests sent at ``rate``/s whatever the answers (arrivals of many independent
    clients), each verified as it comes back: what the server sustains when its clients
    are not the limit, as closed-loop clients waiting on a serial TPM are."""
    blob = os.urandom(32 * NONCES_PER_PHASE)
    nonces = iter([blob[i : i + 32] for i in range(0, len(blob), 32)])
    result = LoadResult(0, offered=rate)
    tasks: set[asyncio.Task[None]] = set()
    stop = asyncio.Event()

    def finished(task: asyncio.Task[None]) -> None:
        tasks.discard(task)

    async def send() -> None:
        start = time.perf_counter()
        index = 0
        while not stop.is_set():
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(
                attest_once(stub, target, _next_nonce(nonces, result), result)
            )
            tasks.add(task)
            task.add_done_callback(finished)
            result.in_flight.append(len(tasks))
            index += 1

    sender = asyncio.create_task(send())
    await asyncio.sleep(warmup)
    before = meter.take()
    await asyncio.sleep(seconds)
    after = meter.take()
    stop.set()
    result.window = (before[0].wall, after[0].wall)
    result.cpu = Meter.between(before, after)
    await sender
    await asyncio.gather(*tasks)
    return result


@dataclass(frozen=True, slots=True)
class Floor:
    """The same clients on ``Health/Check``: one frontend call, no token, no backend."""

    calls: int
    seconds: float
    cpu: PhaseCpu

    @property
    def server_cpu_ms(self) -> float:
        use = self.cpu.use
        return (use.frontend + use.backend + self.cpu.swtpm) / max(1, self.calls) * 1e3


async def floor_phase(
    channel: grpc.aio.Channel, meter: Meter, clients: int, warmup: float, seconds: float
) -> Floor:
    """The cheapest unary call's server CPU: the baseline an attestation is compared with."""
    health = health_pb2_grpc.HealthStub(channel)
    stop = asyncio.Event()
    done: list[float] = []

    async def one() -> None:
        while not stop.is_set():
            await health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
            done.append(time.perf_counter())

    tasks = [asyncio.create_task(one()) for _ in range(clients)]
    await asyncio.sleep(warmup)
    before = meter.take()
    await asyncio.sleep(seconds)
    after = meter.take()
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    start, end = before[0].wall, after[0].wall
    calls = sum(1 for t in done if start <= t < end)
    return Floor(calls, end - start, Meter.between(before, after))


async def create_target(stub: Any, user: LoggedIn, ca_pem: str) -> Target:
    """One enclave to ATTESTED, its attestation verified (also proves the AK is ready)."""
    nonce = os.urandom(32)
    request = enclave_pb2.CreateEnclaveRequest(request_id=uuid.uuid4().hex, nonce=nonce)
    events = [
        e async for e in stub.CreateEnclave(request, metadata=user.bearer, timeout=CREATE_TIMEOUT)
    ]
    last = events[-1]
    if last.phase != enclave_pb2.PHASE_ATTESTED:
        raise RuntimeError(f"enclave ended {enclave_pb2.Phase.Name(last.phase)}: {last.message}")
    verify_attestation(
        last.attestation,
        nonce=nonce,
        expected_certificate_pem=last.enclave.certificate_pem,
        trusted_ca_pem=[ca_pem],
    )
    return Target(user, last.enclave.id, last.enclave.certificate_pem, ca_pem)


@dataclass(slots=True)
class StackRun:
    latency_ms: int
    quotes_before: QuoteRate | None = None
    quotes_after: QuoteRate | None = None
    loads: list[LoadResult] = field(default_factory=list)
    floor: Floor | None = None
    open_loads: list[LoadResult] = field(default_factory=list)


async def run_stack(
    stack: Stack, user: LoggedIn, args: argparse.Namespace, latency_ms: int
) -> StackRun:
    meter = Meter.of(stack)
    ca_pem = stack.ca_pem.decode()
    channel = grpc.aio.secure_channel(
        stack.api_addr,
        grpc.ssl_channel_credentials(
            root_certificates=stack.ca_pem,
            private_key=user.key_pem,
            certificate_chain=user.cert_pem,
        ),
    )
    try:
        enclaves = enclave_pb2_grpc.EnclaveServiceStub(channel)
        stub = attestation_pb2_grpc.AttestationServiceStub(channel)
        target = await create_target(enclaves, user, ca_pem)
        for _ in range(5):  # warm the path (channel, token and session caches)
            await stub.GetAttestation(
                attestation_pb2.GetAttestationRequest(
                    enclave_id=target.enclave_id, nonce=os.urandom(32)
                ),
                metadata=user.bearer,
                timeout=CALL_TIMEOUT,
            )
        gc.collect()
        gc.freeze()  # a full collection here would show up as server latency

        measured = StackRun(latency_ms)
        if latency_ms == 0:
            print(f"  raw TPM quotes, {args.quote_seconds:g} s ...", flush=True)
            measured.quotes_before = await measure_quote_rate(stack, meter, args.quote_seconds)
        for clients in args.clients:
            print(
                f"  {clients} clients: {args.warmup:g} s warm-up, {args.seconds:g} s measured ...",
                flush=True,
            )
            measured.loads.append(
                await load_phase(stub, target, meter, clients, args.warmup, args.seconds)
            )
        if latency_ms:
            for rate in args.open_rates:
                print(
                    f"  open loop at {rate:g}/s: {args.warmup:g} s warm-up, {args.seconds:g} s "
                    "measured ...",
                    flush=True,
                )
                measured.open_loads.append(
                    await open_loop_phase(stub, target, meter, rate, args.warmup, args.seconds)
                )
        if latency_ms == 0:
            clients = max(args.clients)
            print(f"  floor: {clients} clients on Health/Check, {args.seconds:g} s ...", flush=True)
            measured.floor = await floor_phase(channel, meter, clients, args.warmup, args.seconds)
            print(f"  raw TPM quotes again, {args.quote_seconds:g} s ...", flush=True)
            measured.quotes_after = await measure_quote_rate(stack, meter, args.quote_seconds)
        await enclaves.DeleteEnclave(
            enclave_pb2.DeleteEnclaveRequest(enclave_id=target.enclave_id),
            metadata=user.bearer,
            timeout=CALL_TIMEOUT,
        )
        return measured
    finally:
        await channel.close(None)


# Report ------------------------------------------------------------------------------------------


def _bucket(low: int, high: int) -> str:
    if low == high:
        return str(low)
    return f"{low}+" if high == sys.maxsize else f"{low}-{high}"


def _batch_histogram(sizes: Sequence[int]) -> str:
    """Quotes per batch-size bucket, e.g. ``1: 10, 8-15: 9``."""
    counts = Counter(
        _bucket(lo, hi) for size in sizes for lo, hi in BATCH_BUCKETS if lo <= size <= hi
    )
    return ", ".join(f"{k}: {counts[k]}" for k in (_bucket(*b) for b in BATCH_BUCKETS) if counts[k])


def _load_table(run: StackRun, reference: float, reference_name: str, floor: Floor | None) -> None:
    print(
        f"    clients  verified/s  / {reference_name:<12}   p50 ms   p99 ms  verify ms  "
        "req/quote  quotes/s  server cpu ms/req  / floor  errors"
    )
    for load in run.loads:
        window = load.in_window
        quotes = load.quote_batches
        seconds = load.window[1] - load.window[0]
        errors = dict(load.errors) or 0
        if load.nonces_short:
            errors = {**(load.errors), "nonces made late": load.nonces_short}
        print(
            f"    {load.clients:7d}  {load.rate:10.1f}  {load.rate / reference:13.2f}  "
            f"{load.latency(50) * 1e3:7.1f}  {load.latency(99) * 1e3:7.1f}  "
            f"{load.verify_ms:9.2f}  {len(window) / max(1, len(quotes)):9.2f}  "
            f"{len(quotes) / seconds:8.1f}  {load.server_cpu_ms:17.2f}  "
            f"{load.server_cpu_ms / floor.server_cpu_ms if floor else float('nan'):7.1f}  "
            f"{errors}"
        )
    print("    batch sizes seen (merkle_proof.leaf_count; 1 = quoted alone):")
    for load in run.loads:
        sizes = sorted(load.quote_batches.values())
        leaf_counts = [d.leaf_count for d in load.in_window]
        print(
            f"    {load.clients:7d}  per quote p50 {percentile(sizes, 50):.0f}, "
            f"mean {sum(sizes) / max(1, len(sizes)):.1f}, max {max(sizes, default=0)}; "
            f"per request mean {sum(leaf_counts) / max(1, len(leaf_counts)):.1f}; "
            f"quotes by size {{{_batch_histogram(sizes)}}}"
        )


def _open_table(run: StackRun, reference: float, reference_name: str) -> None:
    print(
        f"    offered/s  verified/s  / {reference_name:<12}   p50 ms   p99 ms  in flight mean/max  "
        "req/quote  server cpu ms/req  errors"
    )
    for load in run.open_loads:
        window = load.in_window
        quotes = load.quote_batches
        flight = load.in_flight or [0]
        errors = dict(load.errors) or 0
        print(
            f"    {load.offered:9g}  {load.rate:10.1f}  {load.rate / reference:13.2f}  "
            f"{load.latency(50) * 1e3:7.1f}  {load.latency(99) * 1e3:7.1f}  "
            f"{sum(flight) / len(flight):9.0f} / {max(flight):<6d}  "
            f"{len(window) / max(1, len(quotes)):9.2f}  {load.server_cpu_ms:17.2f}  {errors}"
        )


def _cpu_row(name: str, cpu: PhaseCpu) -> str:
    use = cpu.use
    return (
        f"    {name:<30} {use.capacity:5.1f} core-s: frontend {use.frontend:5.2f}, "
        f"backend {use.backend:5.2f}, swtpm {cpu.swtpm:5.2f}, bench {use.client:5.2f}, "
        f"others {cpu.others:5.2f}, idle {use.idle:5.2f}"
    )


def report(args: argparse.Namespace, runs: list[StackRun], load_start: float) -> dict[str, str]:
    summary: dict[str, str] = {}
    plain, slow = runs
    before, after = plain.quotes_before, plain.quotes_after
    if before is None or after is None:
        raise RuntimeError("stack 1 measured no raw quote rate")
    raw = (before.quotes + after.quotes) / (before.seconds + after.seconds)
    print()
    print(
        f"Attestation benchmark: SQLite, {CORES} cores, clients {args.clients}, "
        f"{args.seconds:g} s per phase after {args.warmup:g} s warm-up; one grpc.aio client "
        f"process, one channel, GetAttestation + verify_attestation per request; "
        + ("load pinned to its own core" if args.pin else "load sharing the server's cores")
    )
    print()
    print(
        f"  raw TPM quote rate (TpmDevice.quote, PCRs 0-7 + 23, on the stack's swtpm, server "
        f"idle): before {before.per_second:.1f}/s ({before.mean_ms:.2f} ms each), after "
        f"{after.per_second:.1f}/s ({after.mean_ms:.2f} ms each) -> {raw:.1f}/s"
    )
    print()
    print("  stack 1: swtpm as it is (no added latency)")
    floor = plain.floor
    if floor is not None:
        print(
            f"  floor: Health/Check from the same clients, {floor.calls / floor.seconds:.0f} "
            f"calls/s, server cpu {floor.server_cpu_ms:.3f} ms/call (the `/ floor` column: "
            "server cpu per verified attestation / this)"
        )
    _load_table(plain, raw, "raw quote/s", floor)
    print()
    bound = 1000 / slow.latency_ms
    print(
        f"  stack 2: LICENSING_TPM_SIMULATED_LATENCY_MS={slow.latency_ms} "
        f"(one quote at a time -> at most 1000/{slow.latency_ms} = {bound:g} quotes/s)"
    )
    _load_table(slow, bound, f"(1000/{slow.latency_ms})", floor)
    if slow.open_loads:
        print()
        print(
            "  stack 2, open loop (requests sent at a fixed rate whatever the answers, "
            "as from many independent clients):"
        )
        _open_table(slow, bound, f"(1000/{slow.latency_ms})")
    print()
    print("  CPU (core-seconds) per phase:")
    phases: list[tuple[str, PhaseCpu]] = [("stack 1 raw quotes before", before.cpu)]
    phases += [(f"stack 1, {r.clients} clients", r.cpu) for r in plain.loads if r.cpu]
    if floor is not None:
        phases.append(("stack 1 floor (Health/Check)", floor.cpu))
    phases.append(("stack 1 raw quotes after", after.cpu))
    phases += [(f"stack 2, {r.clients} clients", r.cpu) for r in slow.loads if r.cpu]
    phases += [(f"stack 2, open {r.offered:g}/s", r.cpu) for r in slow.open_loads if r.cpu]
    for name, cpu in phases:
        print(_cpu_row(name, cpu))
    noisy = [name for name, cpu in phases if cpu.others > NOISE_WARNING * cpu.use.capacity]
    if noisy:
        print(
            f"  WARNING: other processes used over {NOISE_WARNING:.0%} of the cores during "
            f"{', '.join(noisy)}; those figures are unreliable, rerun on a quiet machine."
        )
    print(f"  load average (1 min): {load_start:.2f} at start, {load_average():.2f} at end")

    summary["raw"] = f"raw TPM quotes {raw:.1f}/s"
    summary["plain"] = ", ".join(
        f"{r.clients}: {r.rate:.1f}/s (x{r.rate / raw:.2f} raw, p50/p99 "
        f"{r.latency(50) * 1e3:.1f}/{r.latency(99) * 1e3:.1f} ms, server cpu "
        f"{r.server_cpu_ms:.2f} ms/req)"
        for r in plain.loads
    )
    summary["slow"] = ", ".join(
        f"{r.clients}: {r.rate:.1f}/s (x{r.rate / bound:.2f} of 1/latency, p50/p99 "
        f"{r.latency(50) * 1e3:.0f}/{r.latency(99) * 1e3:.0f} ms, server cpu "
        f"{r.server_cpu_ms:.2f} ms/req)"
        for r in slow.loads
    )
    summary["open"] = ", ".join(
        f"{r.offered:g}/s offered: {r.rate:.1f}/s verified (x{r.rate / bound:.2f} of 1/latency, "
        f"p50/p99 {r.latency(50) * 1e3:.0f}/{r.latency(99) * 1e3:.0f} ms, "
        f"server cpu {r.server_cpu_ms:.2f} ms/req)"
        for r in slow.open_loads
    )
    return summary


# Main --------------------------------------------------------------------------------------------


def _levels(text: str) -> list[int]:
    levels = [int(part) for part in text.split(",") if part.strip()]
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return levels


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Verified attestations/s vs the raw TPM quote rate, with and without "
        "a hardware-like quote latency."
    )
    parser.add_argument(
        "--quick", action="store_true", help="a short run (2 s phases, 1 s quote phases)"
    )
    parser.add_argument("--seconds", type=float, default=None, help="measured per level (5)")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up per level (1)")
    parser.add_argument(
        "--quote-seconds", type=float, default=None, help="each raw quote phase (3)"
    )
    parser.add_argument(
        "--clients", type=_levels, default=[1, 10, 100], help="concurrency levels (1,10,100)"
    )
    parser.add_argument(
        "--latency-ms",
        type=int,
        default=100,
        help="LICENSING_TPM_SIMULATED_LATENCY_MS of the second stack (100)",
    )
    parser.add_argument(
        "--open-rates",
        type=_levels,
        default=[1000, 1500],
        help="open-loop request rates on the second stack, per second (1000,1500)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="run the load (this process) on the last core and the stack on the others, "
        "like `taskset`, so the client's verification does not share the server's cores",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp directory (server logs) afterwards"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    if args.seconds is None:
        args.seconds = 2.0 if quick else 5.0
    if args.warmup is None:
        args.warmup = 0.5 if quick else 1.0
    if args.quote_seconds is None:
        args.quote_seconds = 1.0 if quick else 3.0
    if args.latency_ms < 1:
        parser.error("--latency-ms must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    pinned = arrangement(args.pin)
    load_start = load_average()
    print(f"load average (1 min) at start: {load_start:.2f} on {CORES} cores", flush=True)
    print(
        "arrangement: "
        + (
            f"pinned (stack on cores {sorted(pinned[0])}, load on core {sorted(pinned[1])})"
            if pinned
            else "shared (stack and load on every core)"
        ),
        flush=True,
    )
    tmp_dir = Path(tempfile.mkdtemp(prefix="attestation-bench-"))
    started = time.perf_counter()
    runs: list[StackRun] = []
    try:
        for index, latency_ms in enumerate((0, args.latency_ms), start=1):
            # 100 closed-loop clients on one channel open a stream as the last one closes:
            # the default 100-stream limit would refuse some (RST_STREAM REFUSED_STREAM).
            # Open loop: about rate x (latency + a quote) requests out at once.
            streams = max(max(args.clients) * 2, max(args.open_rates, default=0)) + 10
            extra = {"LICENSING_MAX_STREAMS_PER_CONNECTION": str(streams)}
            if latency_ms:
                extra["LICENSING_TPM_SIMULATED_LATENCY_MS"] = str(latency_ms)
            stack_dir = tmp_dir / f"stack-{index}"
            stack_dir.mkdir()
            print(
                f"starting stack {index} (simulated TPM latency {latency_ms} ms) in {stack_dir} "
                "...",
                flush=True,
            )
            with contextlib.contextmanager(start_stack)(
                "sqlite", stack_dir, None, **extra
            ) as stack:
                try:
                    if pinned is not None and stack.proc is not None:
                        # Once the stack runs (it starts on every core): its processes
                        # and threads onto the server cores, this one's onto the load's.
                        # Threads made later (grpc's, enclaves) inherit their maker's.
                        pin_tree(stack.proc.pid, pinned[0])
                        pin_tasks(os.getpid(), pinned[1])
                    user = stack.new_user()
                    runs.append(asyncio.run(run_stack(stack, user, args, latency_ms)))
                except BaseException:
                    _print_log_tail(stack)
                    raise
        summary = report(args, runs, load_start)
        print()
        print(
            f"SUMMARY {summary['raw']}; verified attestations/s by clients, swtpm: "
            f"{summary['plain']}; with {args.latency_ms} ms quote latency: {summary['slow']}; "
            f"open loop: {summary['open']}"
        )
        print(f"(total runtime {time.perf_counter() - started:.0f} s)")
    finally:
        if args.keep:
            print(f"kept {tmp_dir} (server logs: {tmp_dir}/stack-*/server-sqlite.log)")
        else:
            shutil.rmtree(tmp_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
