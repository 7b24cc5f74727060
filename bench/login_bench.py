"""Login throughput against the bare bcrypt bound, and cheap-call latency under a login storm.

Starts its own licensing server (supervisor: backend + frontend, SQLite in a temp
directory) and prints figures; it asserts nothing. Run from the repository root:

    .venv/bin/python bench/login_bench.py [--seconds N] [--cost C]

Phases, all on the same cores in the same run:

1. bcrypt bound: ``bcrypt.checkpw`` at the configured cost on one thread per core
   (``os.sched_getaffinity``), in this process, server idle -> checks/s. Measured again
   after the storm; the ratios divide by the mean of the two, and a drift between them
   (the machine's speed changing under the run) is printed and warned about.
2. GetCurrentUser baseline (mTLS + certificate-bound token), server idle, at a
   fixed open-loop rate -> p50/p99. The probe is this process's grpc.aio client (the
   default) or, with ``--probe ghz``, ghz in a process of its own (``--rps`` over one
   connection). Measured at 100/s under the storm, the two cost the shared cores about
   the same (0.43-0.44 core-s in 12 s, 2 % of two cores), charged to login throughput.
3. Login storm: ``--concurrency`` Login calls always in flight (default twice the
   bcrypt pool, below LICENSING_LOGIN_QUEUE_LIMIT). First ``--seconds`` alone ->
   logins/s and % of the bound; then ``--seconds`` more with the GetCurrentUser
   probe alongside -> p50/p99 under the storm. (The probe costs the server CPU,
   which would otherwise be charged to login throughput.)

The login load generator is one grpc.aio event loop reusing a few pre-made CSRs. The
CPU each process used in each phase is printed, including other processes on
the machine, so a noisy neighbour or the client's own share is visible.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import grpc
from licensing.v1 import auth_pb2, auth_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.cheap_calls_bench import (  # noqa: E402
    Client,
    client_files,
    find_ghz,
    ghz_codes,
    ghz_command,
    ghz_latencies,
    ghz_report,
)
from tests.support import PASSWORD, LoggedIn, Stack, make_csr, new_key, start_stack  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CORES = len(os.sched_getaffinity(0))
CSR_POOL = 4
LOGIN_WARMUP_SECONDS = 1.5
P99_TARGET_MS = 8.0  # cheap-call p99 during the storm (issue 12 item 4)
#: Logins/s over the bcrypt bound (issue 12 item 4), checked in the window without the probe
#: (how the issue's "today 90-96 %" was measured) and, stricter, in the window with it.
RATIO_TARGET = 0.95
#: ghz starts this long before the probe window and stops this long after it, so that its
#: start-up (TLS handshake, descriptor parsing) and its end fall outside the window.
GHZ_MARGIN_SECONDS = 0.5
#: How far the bound after the storm may drift from the one before before it is warned about.
DRIFT_WARNING = 0.03
NOISE_WARNING = 0.05  # share of the cores used by other processes that makes figures suspect
BCRYPT_NICE = 10  # what the server's bcrypt threads run at (auth/_passwords.py)


# CPU accounting (from /proc, so the server's processes are watched too) --------------------------


def _proc_cpu_seconds(pid: int, tid: int | None = None) -> float:
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def _runqueue_wait(pid: int, tid: int) -> tuple[float, int]:
    """Seconds a thread spent runnable but not running, and its number of timeslices."""
    _run, wait, slices = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
    return int(wait) / 1e9, int(slices)


def _system_busy_seconds() -> float:
    """CPU time every process used, summed over the cores (/proc/stat)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


@dataclass(frozen=True, slots=True)
class ServerPids:
    frontend: int
    backend: int

    @classmethod
    def of(cls, stack: Stack) -> ServerPids:
        assert stack.proc is not None
        roles: dict[str, int] = {}
        for child in _children(stack.proc.pid):
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"frontend.app" in cmdline:
                roles["frontend"] = child
            elif b"backend.app" in cmdline:
                roles["backend"] = child
        return cls(roles["frontend"], roles["backend"])


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    wall: float
    client: float
    frontend: float
    frontend_loop: float
    frontend_loop_wait: float
    frontend_loop_slices: int
    backend: float
    system: float
    #: The ghz probe's process and its CPU seconds so far (None, 0 when none runs).
    probe_pid: int | None = None
    probe: float = 0.0

    @classmethod
    def take(cls, pids: ServerPids, probe_pid: int | None = None) -> CpuSnapshot:
        wait, slices = _runqueue_wait(pids.frontend, pids.frontend)
        probe = 0.0
        if probe_pid is not None:
            with contextlib.suppress(OSError):
                probe = _proc_cpu_seconds(probe_pid)
        return cls(
            probe_pid=probe_pid,
            probe=probe,
            wall=time.perf_counter(),
            client=time.process_time(),
            frontend=_proc_cpu_seconds(pids.frontend),
            frontend_loop=_proc_cpu_seconds(pids.frontend, pids.frontend),
            frontend_loop_wait=wait,
            frontend_loop_slices=slices,
            backend=_proc_cpu_seconds(pids.backend),
            system=_system_busy_seconds(),
        )


@dataclass(frozen=True, slots=True)
class CpuUse:
    """Core-seconds used between two snapshots, by whom."""

    wall: float
    client: float
    frontend: float
    frontend_loop: float
    loop_wait_per_slice_ms: float
    backend: float
    others: float
    probe: float = 0.0

    @property
    def capacity(self) -> float:
        return self.wall * CORES

    @property
    def idle(self) -> float:
        used = self.client + self.probe + self.frontend + self.backend + self.others
        return max(0.0, self.capacity - used)

    @classmethod
    def between(cls, a: CpuSnapshot, b: CpuSnapshot) -> CpuUse:
        probe = b.probe - a.probe if a.probe_pid == b.probe_pid else 0.0
        ours = (b.client - a.client) + probe + (b.frontend - a.frontend) + (b.backend - a.backend)
        return cls(
            probe=probe,
            wall=b.wall - a.wall,
            client=b.client - a.client,
            frontend=b.frontend - a.frontend,
            frontend_loop=b.frontend_loop - a.frontend_loop,
            loop_wait_per_slice_ms=(b.frontend_loop_wait - a.frontend_loop_wait)
            / max(1, b.frontend_loop_slices - a.frontend_loop_slices)
            * 1e3,
            backend=b.backend - a.backend,
            others=max(0.0, (b.system - a.system) - ours),
        )


# Phase 1: the bare bcrypt bound ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BcryptBound:
    checks: int
    per_second: float
    mean_check_ms: float


def measure_bcrypt_bound(cost: int, threads: int, seconds: float) -> BcryptBound:
    """checkpw back to back on ``threads`` threads (at the server's nice level) for ``seconds``."""
    password = PASSWORD.encode()
    hashed = bcrypt.hashpw(password, bcrypt.gensalt(cost))
    bcrypt.checkpw(password, hashed)  # warm up
    counts = [0] * threads
    rates = [0.0] * threads
    barrier = threading.Barrier(threads + 1)

    def work(index: int) -> None:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BCRYPT_NICE)
        barrier.wait()
        start = time.perf_counter()
        deadline = start + seconds
        done = 0
        while time.perf_counter() < deadline:
            bcrypt.checkpw(password, hashed)
            done += 1
        counts[index] = done
        rates[index] = done / (time.perf_counter() - start)  # exact: ends on a completion

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    for worker in workers:
        worker.join()
    per_second = sum(rates)
    return BcryptBound(sum(counts), per_second, threads / per_second * 1e3)


@dataclass(frozen=True, slots=True)
class BoundAround:
    """The bound measured before and after the storm: what the ratios divide by."""

    before: BcryptBound
    after: BcryptBound

    @property
    def per_second(self) -> float:
        return (self.before.per_second + self.after.per_second) / 2

    @property
    def drift(self) -> float:
        return self.after.per_second / self.before.per_second - 1


# Phases 2 and 3: GetCurrentUser probe and the login storm ----------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1
    return ordered[rank]


@dataclass(slots=True)
class ProbeResult:
    latencies: list[float] = field(default_factory=list)
    start_lags: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def figures(self) -> ProbeFigures:
        lat = self.latencies
        return ProbeFigures(
            p50=percentile(lat, 50),
            p99=percentile(lat, 99),
            slowest=max(lat, default=float("nan")),
            calls=len(lat),
            errors=dict(self.errors),
            start_lags=self.start_lags,
        )


@dataclass(frozen=True, slots=True)
class ProbeFigures:
    """Seconds; ``start_lags`` only from the in-process probe (ghz keeps its own)."""

    p50: float
    p99: float
    slowest: float
    calls: int
    errors: dict[str, int]
    start_lags: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class GhzProbe:
    """ghz at a fixed rate in a process of its own (its CPU apart from the bench's)."""

    ghz: str
    address: str
    files: Client

    async def run(
        self, rate: float, start: float, end: float, started: asyncio.Future[int] | None = None
    ) -> ProbeFigures:
        """Calls from before ``start`` to after ``end`` (see GHZ_MARGIN_SECONDS)."""
        await asyncio.sleep(max(0.0, start - GHZ_MARGIN_SECONDS - time.perf_counter()))
        command = ghz_command(
            self.ghz,
            self.address,
            self.files,
            concurrency=8,
            connections=1,
            seconds=end - start + 2 * GHZ_MARGIN_SECONDS,
            rps=rate,
        )
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        if started is not None:
            started.set_result(proc.pid)
        stdout, stderr = await proc.communicate()
        report = ghz_report(stdout, stderr)
        latency = ghz_latencies(report)
        codes = ghz_codes(report)
        return ProbeFigures(
            p50=latency[50],
            p99=latency[99],
            slowest=report["slowest"] / 1e9,
            calls=codes.get("OK", 0),
            # Canceled: the calls in flight when its duration ended, not failures.
            errors={c: n for c, n in codes.items() if c not in {"OK", "Canceled"}},
        )


async def probe_current_user(
    stub: Any, bearer: Sequence[tuple[str, str]], rate: float, start: float, end: float
) -> ProbeResult:
    """Open-loop GetCurrentUser at ``rate``/s: a slow call never delays the next one."""
    result = ProbeResult()
    request = auth_pb2.GetCurrentUserRequest()
    metadata = tuple(bearer)

    async def one(scheduled: float) -> None:
        began = time.perf_counter()
        result.start_lags.append(began - scheduled)
        try:
            await stub.GetCurrentUser(request, metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError as exc:
            result.errors[exc.code().name] += 1
            return
        result.latencies.append(time.perf_counter() - began)

    tasks: list[asyncio.Task[None]] = []
    interval = 1.0 / rate
    index = 0
    while (scheduled := start + index * interval) < end:
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
        index += 1
    await asyncio.gather(*tasks)
    return result


@dataclass(slots=True)
class StormResult:
    completed: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    exhausted: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def rate(self, start: float, end: float) -> tuple[float, int]:
        """Logins/s in [start, end), anchored on completions so that the edges add no error.

        Measured from the last completion at or before ``start`` to the last one
        before ``end``, counting the completions after the first anchor.
        """
        done = sorted(self.completed)
        before = [t for t in done if t <= start]
        inside = [t for t in done if start < t < end]
        if before and inside:
            return len(inside) / (inside[-1] - before[-1]), len(inside)
        return len(inside) / (end - start), len(inside)

    def exhausted_in(self, start: float, end: float) -> int:
        return sum(1 for t in self.exhausted if start <= t < end)


async def login_worker(
    stub: Any, requests: Sequence[Any], offset: int, stop_at: float, result: StormResult
) -> None:
    index = offset
    while time.perf_counter() < stop_at:
        request = requests[index % len(requests)]
        index += 1
        began = time.perf_counter()
        try:
            await stub.Login(request, timeout=60)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                result.exhausted.append(time.perf_counter())
                await asyncio.sleep(0.05)
            else:
                result.errors[exc.code().name] += 1
            continue
        done = time.perf_counter()
        result.completed.append(done)
        result.latencies.append(done - began)


@dataclass(frozen=True, slots=True)
class Measured:
    idle_probe: ProbeFigures
    idle_cpu: CpuUse
    storm: StormResult
    storm_window: tuple[float, float]
    storm_cpu: CpuUse
    storm_probe: ProbeFigures
    probe_window: tuple[float, float]
    probe_cpu: CpuUse


async def run_load(
    stack: Stack,
    pids: ServerPids,
    probe_user: LoggedIn,
    storm_user: str,
    args: argparse.Namespace,
    ghz: GhzProbe | None,
) -> Measured:
    ca = stack.ca_pem
    enroll = grpc.aio.secure_channel(
        stack.enroll_addr, grpc.ssl_channel_credentials(root_certificates=ca)
    )
    api = grpc.aio.secure_channel(
        stack.api_addr,
        grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=probe_user.key_pem,
            certificate_chain=probe_user.cert_pem,
        ),
    )
    try:
        auth = auth_pb2_grpc.AuthServiceStub(enroll)
        user_api = auth_pb2_grpc.AuthServiceStub(api)
        # Pre-made requests: EC keygen and CSR signing would cost client CPU in the storm.
        requests = [
            auth_pb2.LoginRequest(
                username=storm_user, password=PASSWORD, csr_pem=make_csr(new_key(), storm_user)
            )
            for _ in range(CSR_POOL)
        ]
        # Warm both connections (TLS handshakes, the server's token and session caches).
        await auth.Login(requests[0], timeout=60)
        for _ in range(20):
            await user_api.GetCurrentUser(
                auth_pb2.GetCurrentUserRequest(), metadata=probe_user.bearer, timeout=10
            )

        # A full collection in this process would show up as server latency; freeze the heap.
        gc.collect()
        gc.freeze()

        async def probe(start: float, end: float) -> tuple[ProbeFigures, CpuSnapshot, CpuSnapshot]:
            """The probe over [start, end) and the CPU snapshots at both ends."""
            if ghz is None:
                await asyncio.sleep(max(0.0, start - time.perf_counter()))
                before = CpuSnapshot.take(pids)
                result = await probe_current_user(
                    user_api, probe_user.bearer, args.probe_rate, start, end
                )
                await asyncio.sleep(max(0.0, end - time.perf_counter()))
                return result.figures(), before, CpuSnapshot.take(pids)
            started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            running = asyncio.create_task(ghz.run(args.probe_rate, start, end, started))
            pid = await asyncio.wait_for(started, timeout=end - time.perf_counter() + 60)
            await asyncio.sleep(max(0.0, start - time.perf_counter()))
            before = CpuSnapshot.take(pids, pid)
            await asyncio.sleep(max(0.0, end - time.perf_counter()))
            after = CpuSnapshot.take(pids, pid)
            return await running, before, after

        print(f"  GetCurrentUser baseline, server idle, {args.idle_seconds:g} s ...", flush=True)
        start = time.perf_counter() + GHZ_MARGIN_SECONDS + 0.05
        idle, before, after = await probe(start, start + args.idle_seconds)
        idle_cpu = CpuUse.between(before, after)

        print(
            f"  login storm, {args.concurrency} in flight: {LOGIN_WARMUP_SECONDS:g} s warm-up, "
            f"{args.seconds:g} s alone, {args.seconds:g} s with the GetCurrentUser probe ...",
            flush=True,
        )
        storm = StormResult()
        storm_start = time.perf_counter() + LOGIN_WARMUP_SECONDS
        probe_start = storm_start + args.seconds + GHZ_MARGIN_SECONDS
        probe_end = probe_start + args.seconds
        workers = [
            asyncio.create_task(login_worker(auth, requests, i, probe_end, storm))
            for i in range(args.concurrency)
        ]
        # Alone until ghz may start calling (its margin before the probe window).
        alone_end = storm_start + args.seconds
        await asyncio.sleep(max(0.0, storm_start - time.perf_counter()))
        at_storm = CpuSnapshot.take(pids)
        await asyncio.sleep(max(0.0, alone_end - time.perf_counter()))
        at_alone_end = CpuSnapshot.take(pids)
        storm_probe, at_probe, at_end = await probe(probe_start, probe_end)
        await asyncio.gather(*workers)  # in-flight logins finish; none start after probe_end
        return Measured(
            idle_probe=idle,
            idle_cpu=idle_cpu,
            storm=storm,
            storm_window=(storm_start, alone_end),
            storm_cpu=CpuUse.between(at_storm, at_alone_end),
            storm_probe=storm_probe,
            probe_window=(probe_start, probe_end),
            probe_cpu=CpuUse.between(at_probe, at_end),
        )
    finally:
        await enroll.close(None)
        await api.close(None)


# Report ------------------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value * 1e3:8.2f} ms"


def _cpu_line(name: str, use: CpuUse) -> str:
    return (
        f"  {name:<26} {use.capacity:5.1f} core-s: frontend {use.frontend:5.2f} "
        f"(loop thread {use.frontend_loop:4.2f}, waited {use.loop_wait_per_slice_ms:.3f} ms/slice)"
        f", backend {use.backend:4.2f}, bench {use.client:5.2f}, ghz {use.probe:4.2f}, "
        f"others {use.others:5.2f}, idle {use.idle:5.2f}"
    )


def report(
    args: argparse.Namespace, bound: BoundAround, bound_cpu: CpuUse, measured: Measured
) -> None:
    storm = measured.storm
    login_rate, logins = storm.rate(*measured.storm_window)
    probe_login_rate, _ = storm.rate(*measured.probe_window)
    ratio = login_rate / bound.per_second
    exhausted = storm.exhausted_in(measured.storm_window[0], measured.probe_window[1])
    probe_ratio = probe_login_rate / bound.per_second
    idle50, idle99 = measured.idle_probe.p50, measured.idle_probe.p99
    busy50, busy99 = measured.storm_probe.p50, measured.storm_probe.p99
    login50, login99 = percentile(storm.latencies, 50), percentile(storm.latencies, 99)
    ratio_verdict = "met" if ratio >= RATIO_TARGET else "NOT met"
    probe_verdict = "met" if probe_ratio >= RATIO_TARGET else "NOT met"
    p99_verdict = "met" if busy99 < P99_TARGET_MS / 1e3 else "NOT met"

    print()
    print(
        f"Login benchmark: bcrypt cost {args.cost}, {CORES} cores, server bcrypt threads {CORES}, "
        f"login queue limit {args.queue_limit}, {args.concurrency} logins in flight, "
        f"GetCurrentUser probe {args.probe_rate:g}/s ({args.probe})"
    )
    print()
    print(
        f"  bcrypt bound  {bound.per_second:8.2f} checks/s   "
        f"(mean of {bound.before.per_second:.2f} before and {bound.after.per_second:.2f} "
        f"after the storm, drift {bound.drift:+.1%}; "
        f"{bound.before.checks}+{bound.after.checks} checks on {CORES} threads in "
        f"{args.seconds:g} s each, {bound.before.mean_check_ms:.0f} ms per check)"
    )
    if abs(bound.drift) > DRIFT_WARNING:
        print(
            f"  WARNING: the bound drifted {bound.drift:+.1%} across the run (over "
            f"{DRIFT_WARNING:.0%}): the machine's speed changed, so the ratios are suspect"
        )
    print(
        f"  login         {login_rate:8.2f} logins/s   = {ratio:.1%} of the bound alone "
        f"(target >= {RATIO_TARGET:.0%}: {ratio_verdict}); {logins} logins, "
        f"latency p50/p99 {login50 * 1e3:.0f}/{login99 * 1e3:.0f} ms"
    )
    print(
        f"                {probe_login_rate:8.2f} logins/s   while the GetCurrentUser probe ran "
        f"= {probe_ratio:.1%} of the bound (>= {RATIO_TARGET:.0%}: {probe_verdict})"
    )
    print(
        f"  RESOURCE_EXHAUSTED {exhausted} in the storm ({len(storm.exhausted)} in all); "
        f"other login errors: {dict(storm.errors) or 'none'}"
    )
    print()
    print(
        "  GetCurrentUser (mTLS + bound token)        p50          p99          max       n  errors"
    )
    for name, result in (
        ("idle", measured.idle_probe),
        ("under the login storm", measured.storm_probe),
    ):
        print(
            f"    {name:<36}{_ms(result.p50)} {_ms(result.p99)} "
            f"{_ms(result.slowest)} {result.calls:6d}  {result.errors or 0}"
        )
    print(
        f"    {'storm / idle':<36}{busy50 / idle50:8.2f} x  {busy99 / idle99:8.2f} x"
        f"    (p99 target < {P99_TARGET_MS:g} ms: {p99_verdict})"
    )
    if lags := measured.storm_probe.start_lags:
        print(
            f"    client-side start lag under the storm: p99 {percentile(lags, 99) * 1e3:.2f} "
            f"ms, max {max(lags) * 1e3:.2f} ms (the bench's own event loop)"
        )
    print()
    print("  CPU (core-seconds) per phase:")
    phases = (
        ("bcrypt bound", bound_cpu),
        ("GetCurrentUser idle", measured.idle_cpu),
        ("login storm", measured.storm_cpu),
        ("login storm + probe", measured.probe_cpu),
    )
    for name, use in phases:
        print(_cpu_line(name, use))
    noisy = [name for name, use in phases if use.others > NOISE_WARNING * use.capacity]
    if noisy:
        print(
            f"  WARNING: other processes used over {NOISE_WARNING:.0%} of the cores during "
            f"{', '.join(noisy)}; these figures are unreliable, rerun on a quiet machine."
        )
    print()
    print(
        f"SUMMARY bcrypt bound: {bound.per_second:.2f} checks/s (drift {bound.drift:+.1%}); "
        f"login: {login_rate:.2f}/s = {ratio:.1%} of bound alone, {probe_ratio:.1%} with the "
        f"{args.probe} probe (RESOURCE_EXHAUSTED {exhausted}); "
        f"GetCurrentUser idle p50/p99 {idle50 * 1e3:.2f}/{idle99 * 1e3:.2f} ms, "
        f"under storm p50/p99 {busy50 * 1e3:.2f}/{busy99 * 1e3:.2f} ms "
        f"(x{busy50 / idle50:.2f}/x{busy99 / idle99:.2f})"
    )


# Main --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Login throughput vs the bare bcrypt bound, GetCurrentUser latency under it."
    )
    parser.add_argument(
        "--seconds", type=float, default=12.0, help="length of each measured phase (default 12)"
    )
    parser.add_argument(
        "--cost", type=int, default=12, help="bcrypt cost (default 12, the production default)"
    )
    parser.add_argument(
        "--idle-seconds", type=float, default=None, help="idle baseline length (seconds / 2)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=2 * CORES, help=f"logins in flight ({2 * CORES})"
    )
    parser.add_argument(
        "--queue-limit", type=int, default=64, help="LICENSING_LOGIN_QUEUE_LIMIT (default 64)"
    )
    parser.add_argument(
        "--probe-rate", type=float, default=100.0, help="GetCurrentUser calls/s (default 100)"
    )
    parser.add_argument(
        "--probe",
        choices=("ghz", "python"),
        default="python",
        help="what calls GetCurrentUser: this process's grpc.aio client (the default, as in "
        "earlier figures) or ghz in a process of its own",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp directory (server log) afterwards"
    )
    args = parser.parse_args(argv)
    if args.idle_seconds is None:
        args.idle_seconds = max(3.0, args.seconds / 2)
    if not 0 < args.concurrency < args.queue_limit:
        parser.error("--concurrency must be positive and below --queue-limit (no shedding wanted)")
    return args


def _print_log_tail(stack: Stack, lines: int = 30) -> None:
    if stack.log_path and stack.log_path.exists():
        tail = stack.log_path.read_text(errors="replace").splitlines()[-lines:]
        print(f"--- last {len(tail)} lines of {stack.log_path} ---", file=sys.stderr)
        print("\n".join(tail), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.update(
        LICENSING_TEST_BCRYPT_COST=str(args.cost),  # tests.support passes it as BCRYPT_COST
        LICENSING_BCRYPT_THREADS=str(CORES),
        LICENSING_LOGIN_QUEUE_LIMIT=str(args.queue_limit),
    )
    tmp_dir = Path(tempfile.mkdtemp(prefix="login-bench-"))
    started = time.perf_counter()
    try:
        print(f"starting the server (bcrypt cost {args.cost}) in {tmp_dir} ...", flush=True)
        with contextlib.contextmanager(start_stack)("sqlite", tmp_dir, None) as stack:
            try:
                pids = ServerPids.of(stack)
                storm_user = stack.sign_up()
                probe_user = stack.new_user()

                ghz = None
                if args.probe == "ghz":
                    found = find_ghz()
                    if found is None:
                        raise SystemExit("ghz not found (scripts/setup.sh installs it)")
                    files = client_files(stack, probe_user, tmp_dir)
                    ghz = GhzProbe(found, stack.api_addr, files)
                print(f"  bcrypt bound, {CORES} threads, {args.seconds:g} s ...", flush=True)
                before = CpuSnapshot.take(pids)
                first = measure_bcrypt_bound(args.cost, CORES, args.seconds)
                bound_cpu = CpuUse.between(before, CpuSnapshot.take(pids))
                measured = asyncio.run(run_load(stack, pids, probe_user, storm_user, args, ghz))
                print(f"  bcrypt bound again, {args.seconds:g} s ...", flush=True)
                again = measure_bcrypt_bound(args.cost, CORES, args.seconds)
                bound = BoundAround(first, again)
            except BaseException:
                _print_log_tail(stack)
                raise
        report(args, bound, bound_cpu, measured)
        print(f"(total runtime {time.perf_counter() - started:.0f} s)")
    finally:
        if args.keep:
            print(f"kept {tmp_dir} (server log: {tmp_dir / 'server-sqlite.log'})")
        else:
            shutil.rmtree(tmp_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
