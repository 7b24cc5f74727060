"""Enclave provisioning: create-to-READY / create-to-ATTESTED latency, throughput, memory.

Starts its own licensing server (supervisor: swtpm + backend + frontend, SQLite in a
temp directory, ``LICENSING_MAX_ENCLAVES`` raised so that one user may hold every
enclave of the run) and prints figures; it asserts nothing. Run from the repository root:

    .venv/bin/python bench/enclave_bench.py [--quick] [--sequential N] [--concurrency C]

Phases, in this order:

0. warm-up: one create to ATTESTED and its delete, not counted (the first quote
   starts the PCR 23 measurement log epoch).
1. single: ``--sequential`` times, CreateEnclave to PHASE_ATTESTED, then DeleteEnclave
   -> create-to-READY and create-to-ATTESTED p50/p95 (from sending the request to
   receiving the event), when each phase arrived, delete latency.
2. concurrent: ``--concurrency`` CreateEnclave calls started at once -> the same
   latencies, enclaves/s (to the last READY, to the last ATTESTED) and the Merkle batch
   sizes their quotes shared.
3. memory: with the ``--concurrency`` enclaves of phase 2 held, the summed RSS, PSS and
   USS of their processes (found through /proc/*/cmdline naming this stack's
   ``backend/enclaves`` directory) -> MiB per enclave and enclaves per GiB, and the
   backend's RSS growth against just before phase 2.

Everything is deleted at the end. The client is one grpc.aio event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from licensing.v1 import enclave_pb2, enclave_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.login_bench import CORES, _print_log_tail, _proc_cpu_seconds, percentile  # noqa: E402
from tests.enclaves.helpers import PROVISIONING_PHASES  # noqa: E402
from tests.support import LoggedIn, Stack, pid_of, start_stack  # noqa: E402

CREATE_TIMEOUT = 120.0  # a Python enclave on a loaded two-core machine, twenty at once
CALL_TIMEOUT = 60.0
SETTLE_SECONDS = 2.0  # after the last ATTESTED, before memory is read
MIB = 1024 * 1024

Phase = enclave_pb2.Phase


def load_average() -> float:
    return os.getloadavg()[0]


# One create ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Created:
    """One CreateEnclave call: when each phase arrived, in seconds since it was sent."""

    sent: float
    arrivals: dict[int, float] = field(default_factory=dict)
    enclave_id: str = ""
    batch_size: int = 0  # leaf_count of the ATTESTED quote's Merkle proof (1: quoted alone)
    error: str = ""

    @property
    def ready(self) -> float | None:
        return self.arrivals.get(enclave_pb2.PHASE_READY)

    @property
    def attested(self) -> float | None:
        return self.arrivals.get(enclave_pb2.PHASE_ATTESTED)


async def create_enclave(stub: Any, user: LoggedIn) -> Created:
    request = enclave_pb2.CreateEnclaveRequest(
        request_id=f"bench-{uuid.uuid4().hex}", nonce=os.urandom(32)
    )
    created = Created(sent=time.perf_counter())
    try:
        call = stub.CreateEnclave(request, metadata=user.bearer, timeout=CREATE_TIMEOUT)
        async for event in call:
            created.arrivals[event.phase] = time.perf_counter() - created.sent
            created.enclave_id = created.enclave_id or event.enclave_id
            if event.phase == enclave_pb2.PHASE_ATTESTED:
                created.batch_size = max(1, event.attestation.merkle_proof.leaf_count)
            elif event.phase == enclave_pb2.PHASE_FAILED:
                created.error = f"FAILED {event.enclave.failure_reason or event.message}"
    except grpc.aio.AioRpcError as exc:
        created.error = created.error or exc.code().name
    if not created.error and created.attested is None:
        created.error = "no ATTESTED event"
    return created


async def delete_enclave(stub: Any, user: LoggedIn, enclave_id: str) -> float:
    """Seconds DeleteEnclave took."""
    began = time.perf_counter()
    await stub.DeleteEnclave(
        enclave_pb2.DeleteEnclaveRequest(enclave_id=enclave_id),
        metadata=user.bearer,
        timeout=CALL_TIMEOUT,
    )
    return time.perf_counter() - began


async def list_enclave_ids(stub: Any, user: LoggedIn) -> list[str]:
    ids: list[str] = []
    token = ""
    while True:
        page = await stub.ListEnclaves(
            enclave_pb2.ListEnclavesRequest(page_size=100, page_token=token),
            metadata=user.bearer,
            timeout=CALL_TIMEOUT,
        )
        ids += [e.id for e in page.enclaves]
        token = page.next_page_token
        if not token:
            return ids


# Memory (from /proc) -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Memory:
    """Bytes; ``pss`` and ``uss`` are None without /proc/<pid>/smaps_rollup."""

    rss: int
    pss: int | None
    uss: int | None


def process_memory(pid: int) -> Memory:
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return Memory(rss, None, None)
    kib: dict[str, int] = {}
    for line in rollup[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            kib[parts[0].rstrip(":")] = int(parts[1])
    uss = kib.get("Private_Clean", 0) + kib.get("Private_Dirty", 0)
    return Memory(rss, kib.get("Pss", 0) * 1024, uss * 1024)


def enclave_pids(stack: Stack) -> list[int]:
    """Processes whose command line names this stack's enclave directory (ours excluded)."""
    needle = str(stack.data_dir / "backend" / "enclaves").encode()
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


@dataclass(frozen=True, slots=True)
class EnclaveMemory:
    processes: int
    each: list[Memory]
    backend_before: int
    backend_after: int

    def total(self, kind: str) -> int | None:
        values = [getattr(m, kind) for m in self.each]
        if not values or any(v is None for v in values):
            return None
        return int(sum(values))


def measure_enclave_memory(stack: Stack, backend_before: int) -> EnclaveMemory:
    each: list[Memory] = []
    for pid in enclave_pids(stack):
        with contextlib.suppress(OSError):  # exited between the listing and the read
            each.append(process_memory(pid))
    backend_after = process_memory(pid_of(stack, "backend")).rss
    return EnclaveMemory(len(each), each, backend_before, backend_after)


# The run -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Measured:
    warmup: Created
    single: list[Created] = field(default_factory=list)
    single_deletes: list[float] = field(default_factory=list)
    concurrent: list[Created] = field(default_factory=list)
    concurrent_started: float = 0.0
    memory: EnclaveMemory | None = None
    cleanup_deleted: int = 0
    cleanup_seconds: float = 0.0
    cleanup_errors: Counter[str] = field(default_factory=Counter)
    leftover_processes: int = -1
    leftover_rows: int = -1
    # CPU seconds of the backend and the frontend over each phase (enclaves' own excluded)
    single_cpu: dict[str, float] = field(default_factory=dict)
    concurrent_cpu: dict[str, float] = field(default_factory=dict)


#: The server's own processes whose CPU a phase is charged (the enclaves are processes of
#: their own; swtpm's share is the TPM's, measured by ``attestation_bench.py``).
SERVER_PROCESSES = ("backend", "frontend")


def server_cpu(stack: Stack) -> dict[str, float]:
    return {name: _proc_cpu_seconds(pid_of(stack, name)) for name in SERVER_PROCESSES}


def _spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in before}


async def run(stack: Stack, user: LoggedIn, args: argparse.Namespace) -> Measured:
    channel = grpc.aio.secure_channel(
        stack.api_addr,
        grpc.ssl_channel_credentials(
            root_certificates=stack.ca_pem,
            private_key=user.key_pem,
            certificate_chain=user.cert_pem,
        ),
    )
    stub = enclave_pb2_grpc.EnclaveServiceStub(channel)
    try:
        print("  warm-up: one create + delete ...", flush=True)
        measured = Measured(warmup=await create_enclave(stub, user))
        if measured.warmup.enclave_id:
            await delete_enclave(stub, user, measured.warmup.enclave_id)

        try:
            print(f"  single: {args.sequential} x (create, delete) ...", flush=True)
            cpu_before = server_cpu(stack)
            for _ in range(args.sequential):
                created = await create_enclave(stub, user)
                measured.single.append(created)
                if created.enclave_id:
                    measured.single_deletes.append(
                        await delete_enclave(stub, user, created.enclave_id)
                    )
            measured.single_cpu = _spent(cpu_before, server_cpu(stack))

            backend_before = process_memory(pid_of(stack, "backend")).rss
            print(f"  concurrent: {args.concurrency} creates at once ...", flush=True)
            measured.concurrent_started = time.perf_counter()
            cpu_before = server_cpu(stack)
            measured.concurrent = list(
                await asyncio.gather(*(create_enclave(stub, user) for _ in range(args.concurrency)))
            )
            measured.concurrent_cpu = _spent(cpu_before, server_cpu(stack))
            print(
                f"  memory: {args.concurrency} enclaves held, after {SETTLE_SECONDS:g} s ...",
                flush=True,
            )
            await asyncio.sleep(SETTLE_SECONDS)
            measured.memory = measure_enclave_memory(stack, backend_before)
        finally:
            # Delete everything this user has, whatever happened above.
            ids = await list_enclave_ids(stub, user)
            began = time.perf_counter()
            outcomes = await asyncio.gather(
                *(delete_enclave(stub, user, i) for i in ids), return_exceptions=True
            )
            measured.cleanup_seconds = time.perf_counter() - began
            for outcome in outcomes:
                if isinstance(outcome, grpc.aio.AioRpcError):
                    measured.cleanup_errors[outcome.code().name] += 1
                elif isinstance(outcome, BaseException):
                    measured.cleanup_errors[type(outcome).__name__] += 1
            measured.cleanup_deleted = len(ids) - sum(measured.cleanup_errors.values())
        for _ in range(75):  # the processes exit after DeleteEnclave answers: up to 15 s
            if not enclave_pids(stack):
                break
            await asyncio.sleep(0.2)
        measured.leftover_processes = len(enclave_pids(stack))
        measured.leftover_rows = len(await list_enclave_ids(stub, user))
        return measured
    finally:
        await channel.close(None)


# Report --------------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value * 1e3:9.0f} ms"


def _latency_line(name: str, values: Sequence[float], errors: int) -> str:
    return (
        f"    {name:<30}{_ms(percentile(values, 50))} {_ms(percentile(values, 95))} "
        f"{_ms(max(values, default=float('nan')))} {len(values):5d} {errors:7d}"
    )


def _present(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / MIB:.1f} MiB"


def _per(total: int | None, count: int) -> int | None:
    return None if total is None or count == 0 else total // count


def _per_gib(total: int | None, count: int) -> str:
    if total is None or count == 0 or total <= 0:
        return "n/a"
    return f"{1024 / (total / count / MIB):.1f}"


def report(args: argparse.Namespace, measured: Measured, load_start: float) -> dict[str, str]:
    """Print the figures; returns the headline ones for the SUMMARY line."""
    summary: dict[str, str] = {}
    print()
    print(
        f"Enclave benchmark: SQLite, {CORES} cores, one user with LICENSING_MAX_ENCLAVES="
        f"{args.max_enclaves}; {args.sequential} single creates, {args.concurrency} concurrent"
    )
    warm = measured.warmup
    print(
        f"  warm-up create: READY {_fmt_s(warm.ready)}, ATTESTED {_fmt_s(warm.attested)}"
        f"{' error ' + warm.error if warm.error else ''} (not counted)"
    )
    print()
    print(
        "  latency from sending CreateEnclave to the event        p50          p95"
        "          max     n  errors"
    )
    for label, runs in (("single", measured.single), ("concurrent", measured.concurrent)):
        errors = sum(1 for c in runs if c.error)
        ready = _present([c.ready for c in runs])
        attested = _present([c.attested for c in runs])
        print(_latency_line(f"{label}: READY", ready, errors))
        print(_latency_line(f"{label}: ATTESTED", attested, errors))
        summary[label] = (
            f"READY p50/p95 {percentile(ready, 50) * 1e3:.0f}/{percentile(ready, 95) * 1e3:.0f} "
            f"ms, ATTESTED p50/p95 {percentile(attested, 50) * 1e3:.0f}/"
            f"{percentile(attested, 95) * 1e3:.0f} ms"
        )
        failures = Counter(c.error for c in runs if c.error)
        if failures:
            print(f"      {label} errors: {dict(failures)}")

    arrivals = "  ".join(
        f"{Phase.Name(p).removeprefix('PHASE_')} "
        f"{percentile(_present([c.arrivals.get(p) for c in measured.single]), 50) * 1e3:.0f}"
        for p in PROVISIONING_PHASES
    )
    print(f"  single, p50 arrival of each phase (ms): {arrivals}")
    deletes = measured.single_deletes
    print(
        f"  single, DeleteEnclave p50/p95 {percentile(deletes, 50) * 1e3:.0f}/"
        f"{percentile(deletes, 95) * 1e3:.0f} ms (n {len(deletes)})"
    )

    runs = measured.concurrent
    ok = [c for c in runs if not c.error]
    last_ready = max(_present([c.ready for c in ok]), default=float("nan"))
    last_attested = max(_present([c.attested for c in ok]), default=float("nan"))
    print(
        f"  concurrent throughput: {len(ok)} of {len(runs)} READY within {last_ready:.2f} s "
        f"= {len(ok) / last_ready:.2f} enclaves/s; ATTESTED within {last_attested:.2f} s "
        f"= {len(ok) / last_attested:.2f} enclaves/s"
    )
    summary["throughput"] = f"{len(ok) / last_attested:.2f} attested enclaves/s"
    for label, cpu, count in (
        ("single (create + delete)", measured.single_cpu, len(measured.single)),
        ("concurrent (create)", measured.concurrent_cpu, len(runs)),
    ):
        if cpu and count:
            each = "  ".join(f"{name} {seconds / count * 1e3:.1f}" for name, seconds in cpu.items())
            print(f"  {label}, server CPU per enclave (ms): {each}")
    batches = Counter(c.batch_size for c in ok)
    quotes = sum(n / size for size, n in batches.items())
    print(
        f"  concurrent, Merkle batch size of the ATTESTED quotes (size: enclaves): "
        f"{dict(sorted(batches.items()))} -> {quotes:.0f} quotes for {len(ok)} enclaves"
    )

    memory = measured.memory
    print()
    if memory is None:
        print("  memory: not measured")
    else:
        held = memory.processes
        print(
            f"  memory with {len(ok)} enclaves held ({held} enclave processes found under "
            f"backend/enclaves):"
        )
        rss, pss, uss = memory.total("rss"), memory.total("pss"), memory.total("uss")
        rss_each = sorted(m.rss for m in memory.each)
        if held:
            print(
                f"    summed  RSS {_mib(rss)}, PSS {_mib(pss)}, USS {_mib(uss)}  "
                f"(RSS per process {rss_each[0] / MIB:.1f} .. {rss_each[-1] / MIB:.1f} MiB)"
            )
            print(
                f"    per enclave  RSS {_mib(_per(rss, held))}, PSS {_mib(_per(pss, held))}, "
                f"USS {_mib(_per(uss, held))}"
            )
        growth = memory.backend_after - memory.backend_before
        print(
            f"    backend RSS {memory.backend_before / MIB:.1f} MiB before the concurrent phase, "
            f"{memory.backend_after / MIB:.1f} MiB with them held: {growth / MIB:+.1f} MiB "
            f"({growth / max(1, held) / 1024:+.0f} KiB per enclave)"
        )
        all_in = None if pss is None else pss + max(0, growth)
        print(
            f"    enclaves per GiB: by RSS {_per_gib(rss, held)}, by PSS {_per_gib(pss, held)}, "
            f"by USS {_per_gib(uss, held)}, by PSS + backend growth {_per_gib(all_in, held)}"
        )
        summary["memory"] = (
            f"{(pss if pss is not None else rss or 0) / max(1, held) / MIB:.1f} MiB "
            f"{'PSS' if pss is not None else 'RSS'} per enclave = "
            f"{_per_gib(pss if pss is not None else rss, held)} enclaves/GiB "
            f"(RSS {_per_gib(rss, held)}/GiB)"
        )
    print()
    print(
        f"  cleanup: {measured.cleanup_deleted} deleted in {measured.cleanup_seconds:.2f} s "
        f"(errors: {dict(measured.cleanup_errors) or 'none'}); enclave processes left: "
        f"{measured.leftover_processes}; enclaves listed: {measured.leftover_rows}"
    )
    print(f"  load average (1 min): {load_start:.2f} at start, {load_average():.2f} at end")
    return summary


def _fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.0f} ms"


# Main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Enclave create latency (to READY, to ATTESTED), throughput and memory."
    )
    parser.add_argument(
        "--quick", action="store_true", help="a short run: 3 single creates, 5 concurrent"
    )
    parser.add_argument(
        "--sequential", type=int, default=None, help="single creates, one at a time (20)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="creates started at once, then held for the memory figures (20)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp directory (server log) afterwards"
    )
    parser.add_argument(
        "--launchers",
        default="fork-server,exec",
        help="LICENSING_ENCLAVE_LAUNCHER values to run, one stack each; the last is the"
        " baseline of the comparison (fork-server,exec)",
    )
    args = parser.parse_args(argv)
    args.launchers = [name.strip() for name in args.launchers.split(",") if name.strip()]
    if not set(args.launchers) <= {"fork-server", "exec"} or not args.launchers:
        parser.error("--launchers takes fork-server and/or exec")
    if args.sequential is None:
        args.sequential = 3 if args.quick else 20
    if args.concurrency is None:
        args.concurrency = 5 if args.quick else 20
    if args.sequential < 1 or args.concurrency < 1:
        parser.error("--sequential and --concurrency must be positive")
    args.max_enclaves = max(50, args.concurrency)
    return args


def _headline(measured: Measured) -> dict[str, float | None]:
    """The figures the launcher comparison puts side by side."""
    single = _present([c.ready for c in measured.single])
    burst = _present([c.ready for c in measured.concurrent])
    pss = measured.memory.total("pss") if measured.memory else None
    count = measured.memory.processes if measured.memory else 0
    return {
        "single READY p50 ms": percentile(single, 50) * 1000 if single else None,
        "concurrent READY p50 ms": percentile(burst, 50) * 1000 if burst else None,
        "concurrent READY/s": len(burst) / max(burst) if burst else None,
        "enclaves/GiB (PSS)": (1024 * MIB * count / pss) if pss and count else None,
    }


def _bench_one(args: argparse.Namespace, launcher: str, load_start: float) -> Measured:
    tmp_dir = Path(tempfile.mkdtemp(prefix="enclave-bench-"))
    try:
        print(f"starting the server ({launcher}) in {tmp_dir} ...", flush=True)
        with contextlib.contextmanager(start_stack)(
            "sqlite",
            tmp_dir,
            None,
            LICENSING_MAX_ENCLAVES=str(args.max_enclaves),
            LICENSING_ENCLAVE_LAUNCHER=launcher,
        ) as stack:
            try:
                user = stack.new_user()
                measured = asyncio.run(run(stack, user, args))
            except BaseException:
                _print_log_tail(stack)
                raise
        print(f"\n=== launcher: {launcher} ===")
        summary = report(args, measured, load_start)
        print()
        print(
            f"SUMMARY ({launcher}) single: {summary['single']}; {args.concurrency} concurrent: "
            f"{summary['concurrent']}, {summary['throughput']}; "
            f"memory: {summary.get('memory', 'n/a')}"
        )
        return measured
    finally:
        if args.keep:
            print(f"kept {tmp_dir} (server log: {tmp_dir / 'server-sqlite.log'})")
        else:
            shutil.rmtree(tmp_dir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    load_start = load_average()
    print(f"load average (1 min) at start: {load_start:.2f} on {CORES} cores", flush=True)
    started = time.perf_counter()
    results = {launcher: _bench_one(args, launcher, load_start) for launcher in args.launchers}
    if len(results) > 1:
        base_name = args.launchers[-1]
        print(f"\nLaunchers compared in this run (ratio = other / {base_name}):")
        heads = {name: _headline(m) for name, m in results.items()}
        names = list(heads)
        print(f"  {'':<26}" + "".join(f"{n:>14}" for n in names) + f"{'ratio':>10}")
        for key in heads[base_name]:
            values = [heads[n][key] for n in names]
            cells = "".join(f"{v:>14.1f}" if v is not None else f"{'n/a':>14}" for v in values)
            first, base = values[0], heads[base_name][key]
            ratio = f"{first / base:>9.2f}x" if first is not None and base else f"{'n/a':>10}"
            print(f"  {key:<26}{cells}{ratio}")
    print(f"(total runtime {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
