"""GetCurrentUser through the whole guard against a bare grpc.aio echo server, same TLS.

Prints figures and asserts nothing (issue 12 item 2). From the repository root:

    PATH=$PWD/.tools/bin:$PATH .venv/bin/python bench/cheap_calls_bench.py
    .venv/bin/python bench/cheap_calls_bench.py --seconds 5 --rounds 1     # shorter
    LICENSING_TEST_POSTGRES_URL="$(scripts/postgres.sh)" \\
        .venv/bin/python bench/cheap_calls_bench.py --database postgresql  # shared buckets

It starts a stack (``tests.support.start_stack``: backend + frontend under the
supervisor, SQLite by default) and logs a user in. Beside it, in a process of its own,
an **echo server**: grpc.aio with the frontend's mTLS server credentials (its own
certificate, key and CA, client certificates required), the frontend's server options
(``ConnectionLimits``) and reflection, serving ``licensing.v1.AuthService/GetCurrentUser``
with a fixed answer and no interceptor: what a call costs before the guard, the
observer and the servicer. Both get the same load, alternating target by target in
``--rounds`` rounds (a shared machine's load moves; medians are printed):

1. **ghz** (``.tools/bin/ghz``, scripts/setup.sh) closed loop: ``--concurrency`` in
   flight over ``--connections`` connections for ``--seconds``, with the user's
   certificate and the bearer metadata → calls/s, p50, p99, and the frontend's CPU per
   call (its /proc utime + stime over the calls).
2. ghz open loop at ``--rps`` = 50 % of the frontend's measured peak, on both → p50/p99.
3. The **Python client** (grpc.aio, one event loop in this process, same concurrency over
   as many channels as connections) closed loop → calls/s, p50, p99.

The ratios are frontend / echo. ghz and the Python client share the cores with the
servers: on two cores the load generator's CPU is part of every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from licensing.v1 import auth_pb2, auth_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support import LoggedIn, Stack, free_port, pid_of, start_stack  # noqa: E402

METHOD = "licensing.v1.AuthService.GetCurrentUser"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# The echo server (run as ``cheap_calls_bench.py --serve-echo PORT DATA_DIR``) ----------------


def _echo_handler(context_calls: bool = False) -> grpc.GenericRpcHandler[Any, Any]:
    """GetCurrentUser with a fixed answer: no guard, no observer, no database.

    With ``context_calls``, it also makes the grpc calls the guard and the observer make
    on every call (metadata, auth context, peer, a trailer, the code) and nothing else:
    what grpc's per-call API costs apart from our code (``--breakdown``).
    """
    reply = auth_pb2.GetCurrentUserResponse(
        user=auth_pb2.User(id="00000000-0000-0000-0000-000000000000", username="echo")
    )
    ids = random.Random()

    async def get_current_user(request: Any, context: Any) -> Any:
        if context_calls:
            context.invocation_metadata()
            context.auth_context()
            context.peer()
            context.set_trailing_metadata((("x-correlation-id", f"{ids.getrandbits(64):016x}"),))
            context.code()
        return reply

    return grpc.method_handlers_generic_handler(
        "licensing.v1.AuthService",
        {
            "GetCurrentUser": grpc.unary_unary_rpc_method_handler(
                get_current_user,
                request_deserializer=auth_pb2.GetCurrentUserRequest.FromString,
                response_serializer=auth_pb2.GetCurrentUserResponse.SerializeToString,
            )
        },
    )


class _PassThrough(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """An interceptor that does nothing: what grpc's interceptor pipeline alone costs."""

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        return await continuation(details)


async def _serve_echo(port: int, data_dir: Path, interceptors: int, context_calls: bool) -> None:
    from licensing_common.rpc.reflection import enable_reflection
    from licensing_common.rpc.server import (
        ConnectionLimits,
        ServerIdentity,
        add_listener,
        mtls_credentials,
    )
    from licensing_server.layout import DataLayout

    layout = DataLayout(data_dir)
    identity = ServerIdentity(
        layout.frontend_server_key.read_bytes(),
        layout.frontend_server_cert.read_bytes(),
        layout.ca_certificate.read_bytes(),
    )
    server = grpc.aio.server(
        interceptors=[_PassThrough() for _ in range(interceptors)],
        options=ConnectionLimits().options(),  # the frontend's defaults
    )
    server.add_generic_rpc_handlers((_echo_handler(context_calls),))
    enable_reflection(server, ["licensing.v1.AuthService"])
    add_listener(server, f"127.0.0.1:{port}", mtls_credentials(identity))
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


# Measuring -----------------------------------------------------------------------------------


@dataclass
class Figures:
    calls_per_second: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_call: float = float("nan")
    errors: int = 0
    #: ghz: each status other than OK, by name (Canceled: the calls in flight at the end).
    codes: str = ""


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class Target:
    name: str
    address: str
    pid: int


@dataclass
class Client:
    ca: Path
    cert: Path
    key: Path
    user: LoggedIn
    protoset: Path


def find_ghz() -> str | None:
    """ghz from ``.tools/bin`` (scripts/setup.sh installs it there) or the PATH."""
    return shutil.which("ghz", path=f"{REPO / '.tools' / 'bin'}:{os.environ.get('PATH', '')}")


def ghz_command(
    ghz: str,
    address: str,
    client: Client,
    *,
    concurrency: int,
    connections: int,
    seconds: float,
    rps: float = 0,
) -> list[str]:
    """ghz calling GetCurrentUser with the user's certificate and bearer, reporting JSON."""
    command = [
        ghz,
        "--cacert",
        str(client.ca),
        "--cert",
        str(client.cert),
        "--key",
        str(client.key),
        "--protoset",
        str(client.protoset),
        "--call",
        METHOD,
        "--metadata",
        json.dumps({"authorization": f"Bearer {client.user.access_token}"}),
        "--data",
        "{}",
        "--concurrency",
        str(concurrency),
        "--connections",
        str(connections),
        "--duration",
        f"{seconds}s",
        "--format",
        "json",
    ]
    if rps:
        command += ["--rps", str(int(rps))]
    return [*command, address]


def ghz_report(stdout: bytes, stderr: bytes) -> dict[str, Any]:
    """ghz's JSON report (it prints none when it could not run at all)."""
    if not stdout:
        raise SystemExit(f"ghz failed: {stderr.decode()[-2000:]}")
    report: dict[str, Any] = json.loads(stdout)
    return report


def ghz_latencies(report: dict[str, Any]) -> dict[int, float]:
    """Seconds at each percentile ghz reports (10, 25, 50, 75, 90, 95, 99)."""
    return {int(p["percentage"]): p["latency"] / 1e9 for p in report["latencyDistribution"]}


def ghz_codes(report: dict[str, Any]) -> dict[str, int]:
    """Calls per status name; Canceled are the calls in flight when the duration ended."""
    return {code: int(n) for code, n in (report.get("statusCodeDistribution") or {}).items()}


def _ghz(
    ghz: str, target: Target, client: Client, args: argparse.Namespace, rps: float = 0
) -> Figures:
    command = ghz_command(
        ghz,
        target.address,
        client,
        concurrency=args.concurrency,
        connections=args.connections,
        seconds=args.seconds,
        rps=rps,
    )
    cpu = _cpu_seconds(target.pid)
    done = subprocess.run(command, capture_output=True, check=False, timeout=args.seconds + 60)
    cpu = _cpu_seconds(target.pid) - cpu
    report = ghz_report(done.stdout, done.stderr)
    latency = ghz_latencies(report)
    codes = ghz_codes(report)
    ok = codes.get("OK", 0)
    return Figures(
        calls_per_second=ok / (report["total"] / 1e9),
        p50_ms=latency[50] * 1e3,
        p99_ms=latency[99] * 1e3,
        cpu_us_per_call=cpu / max(ok, 1) * 1e6,
        errors=sum(n for code, n in codes.items() if code != "OK"),
        codes=" ".join(f"{code} {n}" for code, n in sorted(codes.items()) if code != "OK"),
    )


async def _python_client(target: Target, client: Client, args: argparse.Namespace) -> Figures:
    creds = grpc.ssl_channel_credentials(
        root_certificates=client.ca.read_bytes(),
        private_key=client.key.read_bytes(),
        certificate_chain=client.cert.read_bytes(),
    )
    channels = [
        grpc.aio.secure_channel(
            target.address, creds, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(args.connections)
    ]
    stubs = [auth_pb2_grpc.AuthServiceStub(c) for c in channels]
    request = auth_pb2.GetCurrentUserRequest()
    samples: list[float] = []
    errors = 0
    measuring = False

    async def worker(i: int, deadline: float) -> None:
        nonlocal errors
        stub = stubs[i % len(stubs)]
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                await stub.GetCurrentUser(request, metadata=client.user.bearer, timeout=10)
            except grpc.RpcError:
                errors += 1
                continue
            if measuring:
                samples.append(time.perf_counter() - start)

    try:
        warm = time.perf_counter() + 1.0
        await asyncio.gather(*(worker(i, warm) for i in range(args.concurrency)))
        measuring = True
        cpu = _cpu_seconds(target.pid)
        start = time.perf_counter()
        deadline = start + args.seconds
        await asyncio.gather(*(worker(i, deadline) for i in range(args.concurrency)))
        elapsed = time.perf_counter() - start
        cpu = _cpu_seconds(target.pid) - cpu
    finally:
        for channel in channels:
            await channel.close(None)
    samples.sort()
    return Figures(
        calls_per_second=len(samples) / elapsed,
        p50_ms=samples[len(samples) // 2] * 1e3,
        p99_ms=samples[int(len(samples) * 0.99)] * 1e3,
        cpu_us_per_call=cpu / max(len(samples), 1) * 1e6,
        errors=errors,
    )


def _median(figures: list[Figures]) -> Figures:
    return Figures(
        calls_per_second=statistics.median(f.calls_per_second for f in figures),
        p50_ms=statistics.median(f.p50_ms for f in figures),
        p99_ms=statistics.median(f.p99_ms for f in figures),
        cpu_us_per_call=statistics.median(f.cpu_us_per_call for f in figures),
        errors=sum(f.errors for f in figures),
        codes="; ".join(f.codes for f in figures if f.codes),
    )


def _row(label: str, figures: Figures) -> str:
    return (
        f"   {label:30} {figures.calls_per_second:8.0f} calls/s  p50 {figures.p50_ms:6.2f} ms"
        f"  p99 {figures.p99_ms:6.2f} ms  server CPU {figures.cpu_us_per_call:5.0f} us/call"
        + (f"  (not OK: {figures.codes or figures.errors})" if figures.errors else "")
    )


def _start_echo(
    data_dir: Path, interceptors: int = 0, context_calls: bool = False
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [sys.executable, __file__, "--serve-echo", str(port), str(data_dir)]
    command += [str(interceptors), "calls" if context_calls else "bare"]
    proc = subprocess.Popen(command, cwd=REPO)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with __import__("socket").create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None:
                raise SystemExit("the echo server did not start") from None
            time.sleep(0.1)
    raise SystemExit("the echo server did not start in 30 s")


def _py_spy(pid: int, output: Path, seconds: float) -> subprocess.Popen[bytes]:
    py_spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if py_spy is None:
        raise SystemExit("--profile needs py-spy (.venv/bin/pip install py-spy)")
    command = [py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds))]
    command += ["--rate", "250", "--format", "raw", "--output", str(output), "--nonblocking"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _top_functions(collapsed: Path, count: int = 12) -> str:
    """Self time by function from py-spy's collapsed stacks: where the frontend's time goes."""
    own: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        leaf = stack.rsplit(";", 1)[-1]
        own[leaf] = own.get(leaf, 0) + int(samples)
        total += int(samples)
    top = sorted(own.items(), key=lambda item: -item[1])[:count]
    return f"{total} samples; self time:\n" + "\n".join(
        f"      {n / total:6.1%}  {name}" for name, n in top
    )


def client_files(stack: Stack, user: LoggedIn, directory: Path) -> Client:
    ca = directory / "ca.pem"
    cert = directory / "user.pem"
    key = directory / "user.key"
    ca.write_bytes(stack.ca_pem)
    cert.write_bytes(user.cert_pem)
    key.write_bytes(user.key_pem)
    protoset = directory / "auth.protoset"
    protoset.write_bytes(file_descriptor_set(auth_pb2.DESCRIPTOR).SerializeToString())
    return Client(ca, cert, key, user, protoset)


def file_descriptor_set(file: Any) -> descriptor_pb2.FileDescriptorSet:
    """The file and its imports, dependencies first: ghz reads the method from it."""
    out = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(f: Any) -> None:
        if f.name in seen:
            return
        seen.add(f.name)
        for dependency in f.dependencies:
            add(dependency)
        f.CopyToProto(out.file.add())

    add(file)
    return out


def _run(stack: Stack, args: argparse.Namespace, directory: Path) -> None:
    ghz = find_ghz()
    user = stack.new_user()
    client = client_files(stack, user, directory)
    echo_proc, echo_addr = _start_echo(stack.data_dir)
    helpers = [echo_proc]
    try:
        targets = [
            Target("echo (bare grpc.aio)", echo_addr, echo_proc.pid),
            Target("frontend (whole guard)", stack.api_addr, pid_of(stack, "frontend")),
        ]
        echo, front = targets
        if args.pass_through:
            proc, address = _start_echo(stack.data_dir, interceptors=2)
            helpers.append(proc)
            targets.append(Target("echo + 2 pass-through interceptors", address, proc.pid))
        if args.breakdown:
            proc, address = _start_echo(stack.data_dir, interceptors=1, context_calls=True)
            helpers.append(proc)
            targets.append(Target("echo + 1 interceptor + grpc calls", address, proc.pid))
        results: dict[str, dict[str, list[Figures]]] = {"ghz": {}, "ghz-half": {}, "python": {}}
        ratios: dict[str, float] = {}
        if ghz is None:
            print("   ghz not found (scripts/setup.sh installs it into .tools/bin): ghz skipped")
        for round_ in range(args.rounds):
            print(f"   round {round_ + 1}/{args.rounds} ...", flush=True)
            if ghz is not None:
                for target in targets:
                    _ghz(ghz, target, client, argparse.Namespace(**{**vars(args), "seconds": 1}))
                    profiler, output = None, None
                    if args.profile and round_ == 0:
                        # The frontend's at PATH, the others' beside it (echo: PATH.echo).
                        output = (
                            args.profile
                            if target is front
                            else args.profile.with_name(
                                f"{args.profile.name}.{target.name.split()[0]}{len(target.name)}"
                            )
                        )
                        profiler = _py_spy(target.pid, output, args.seconds)
                    results["ghz"].setdefault(target.name, []).append(
                        _ghz(ghz, target, client, args)
                    )
                    if profiler is not None and output is not None:
                        profiler.wait(30)
                        print(f"   py-spy {target.name}: {_top_functions(output)}", flush=True)
                half = results["ghz"][front.name][-1].calls_per_second / 2
                for target in targets:
                    results["ghz-half"].setdefault(target.name, []).append(
                        _ghz(ghz, target, client, args, rps=half)
                    )
            for target in targets:
                results["python"].setdefault(target.name, []).append(
                    asyncio.run(_python_client(target, client, args))
                )
        for kind, title in (
            (
                "ghz",
                f"ghz closed loop, {args.concurrency} in flight on {args.connections} connections",
            ),
            ("ghz-half", "ghz open loop at 50 % of the frontend's peak (--rps)"),
            (
                "python",
                f"Python grpc.aio client, {args.concurrency} in flight"
                f" on {args.connections} channels",
            ),
        ):
            if not results[kind]:
                continue
            print(f"\n{title}, {args.seconds:.0f} s, median of {args.rounds}:")
            medians = {name: _median(f) for name, f in results[kind].items()}
            for name, figures in medians.items():
                print(_row(name, figures))
            ratio = medians[front.name].calls_per_second / medians[echo.name].calls_per_second
            if kind == "ghz-half":
                rps = statistics.median(f.calls_per_second / 2 for f in results["ghz"][front.name])
                print(f"   at {rps:.0f} calls/s: frontend p99 {medians[front.name].p99_ms:.2f} ms")
            else:
                print(f"   ratio frontend / echo: {ratio:.2f}x")
                ratios[kind] = ratio
        summary = " ".join(f"{kind}={ratio:.2f}x" for kind, ratio in ratios.items())
        if results["ghz-half"]:
            summary += f" half-peak-p99={_median(results['ghz-half'][front.name]).p99_ms:.2f}ms"
        print(f"\nSUMMARY {summary}")
    finally:
        for proc in helpers:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--serve-echo":
        port, data_dir, interceptors, calls = sys.argv[2:]
        asyncio.run(_serve_echo(int(port), Path(data_dir), int(interceptors), calls == "calls"))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0, help="per figure")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (medians)")
    parser.add_argument("--keep", action="store_true", help="keep the stack's temp directory")
    parser.add_argument(
        "--pass-through",
        action="store_true",
        help="a third target: the echo server behind two interceptors that do nothing",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="another target: the echo server behind one interceptor making the grpc calls"
        " the guard and the observer make (metadata, auth context, peer, trailer, code)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy record the frontend during its first ghz closed loop (collapsed stacks)",
    )
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    admin_url = os.environ.get("LICENSING_TEST_POSTGRES_URL")
    tmp = Path(tempfile.mkdtemp(prefix="cheap-calls-bench-"))
    try:
        for stack in start_stack(args.database, tmp, admin_url):
            _run(stack, args, tmp)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
