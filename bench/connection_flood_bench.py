"""Connection floods against the public frontend: what they cost in memory, and for how long.

Starts its own licensing server (supervisor: backend + frontend, SQLite in a temp
directory) and prints the frontend's RSS; it asserts nothing. From the repository root:

    .venv/bin/python bench/connection_flood_bench.py [--idle-seconds N] [--unbounded]

Phases, each against the enrollment listener:

1. baseline: the server after a few calls of every kind the flood makes, settled;
2. ``--tcp`` (1,000) TCP connections that never start TLS;
3. ``--tls`` (200) TLS handshakes completed, then left idle (no HTTP/2 preface);
4. ``--clients`` (300) full grpc clients, each on its own connection, each making
   ``--calls`` (20) GetTrustBundle and Health calls, then left connected and idle;
5. after the handshake timeout and the idle timeout have passed, with every
   client socket still open on the client's side: how many the server closed;
6. 5 s after the bench closed everything itself, and again one heap-trim interval
   (``LICENSING_MALLOC_TRIM_SECONDS``, 30 s) later.

The peak is the highest RSS sampled (every 100 ms) during phases 2-4. With
``--unbounded`` the frontend runs with limits so high they never act, which is how
it ran before the limits existed (grpc's own defaults: a 120 s handshake timeout, no
idle timeout, no connection cap), and without the periodic heap trim.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from licensing.v1 import trust_pb2, trust_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support import Stack, pid_of, start_stack  # noqa: E402

MIB = 1024 * 1024
#: One LICENSING_MALLOC_TRIM_SECONDS (the default, 30 s) and a little more.
TRIM_SECONDS = 32


def rss(pid: int) -> int:
    """Resident set size in bytes, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class Sampler:
    """The highest RSS seen, sampled on a thread while the flood runs."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, rss(self.pid))
            self._stop.wait(0.1)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def closed_by_server(socks: Sequence[socket.socket]) -> int:
    """How many of ``socks`` the server closed (readable with EOF, or reset)."""
    closed = 0
    for sock in socks:
        try:
            sock.setblocking(False)
            while True:
                data = sock.recv(65536)
                if not data:
                    closed += 1
                    break
        except (BlockingIOError, ssl.SSLWantReadError):
            continue
        except (OSError, ssl.SSLError):
            closed += 1
    return closed


def tcp_flood(stack: Stack, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        try:
            socks.append(socket.create_connection(("127.0.0.1", stack.enroll_port), timeout=10))
        except OSError:
            break
    return socks


def tls_flood(stack: Stack, count: int) -> tuple[list[ssl.SSLSocket], int]:
    context = ssl.create_default_context(cadata=stack.ca_pem.decode())
    context.check_hostname = False
    context.set_alpn_protocols(["h2"])
    socks: list[ssl.SSLSocket] = []
    refused = 0
    for _ in range(count):
        try:
            raw = socket.create_connection(("127.0.0.1", stack.enroll_port), timeout=10)
            socks.append(context.wrap_socket(raw))
        except (OSError, ssl.SSLError):
            refused += 1
    return socks, refused


async def grpc_clients(stack: Stack, count: int, calls: int) -> tuple[list[grpc.aio.Channel], int]:
    """``count`` clients, each with its own connection, each making ``calls`` calls."""
    creds = grpc.ssl_channel_credentials(root_certificates=stack.ca_pem)
    channels = [
        grpc.aio.secure_channel(
            stack.enroll_addr, creds, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(count)
    ]
    failures = 0

    async def client(channel: grpc.aio.Channel) -> None:
        nonlocal failures
        trust = trust_pb2_grpc.TrustServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        for i in range(calls):
            try:
                if i % 2:
                    await health.Check(health_pb2.HealthCheckRequest(), timeout=30)
                else:
                    await trust.GetTrustBundle(trust_pb2.GetTrustBundleRequest(), timeout=30)
            except grpc.aio.AioRpcError:
                failures += 1

    for start in range(0, count, 50):  # 50 at a time: the machine has two cores
        await asyncio.gather(*(client(c) for c in channels[start : start + 50]))
    return channels, failures


def figure(label: str, pid: int, baseline: int, extra: str = "") -> None:
    value = rss(pid)
    print(
        f"{label:<34} RSS {value / MIB:7.1f} MiB  ({(value - baseline) / MIB:+7.1f})"
        f"  fds {open_fds(pid):5d}  {extra}",
        flush=True,
    )


def settle(seconds: float) -> None:
    time.sleep(seconds)


def limits_env(args: argparse.Namespace) -> dict[str, str]:
    if args.unbounded:
        return {
            "LICENSING_HANDSHAKE_TIMEOUT_SECONDS": "300",
            "LICENSING_CONNECTION_IDLE_SECONDS": "86400",
            "LICENSING_MAX_CONNECTIONS": "1000000",
            "LICENSING_MAX_STREAMS_PER_CONNECTION": "10000",
            "LICENSING_MALLOC_TRIM_SECONDS": "0",
        }
    env = {"LICENSING_CONNECTION_IDLE_SECONDS": str(args.idle_seconds)}
    if args.max_connections:
        env["LICENSING_MAX_CONNECTIONS"] = str(args.max_connections)
    return env


@contextlib.contextmanager
def stack_for(args: argparse.Namespace) -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="flood-bench-") as tmp:
        stacks = start_stack("sqlite", Path(tmp), None, **limits_env(args))
        stack = next(stacks)
        try:
            yield stack
        finally:
            with contextlib.suppress(StopIteration):
                next(stacks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tcp", type=int, default=1000)
    parser.add_argument("--tls", type=int, default=200)
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument(
        "--idle-seconds", type=int, default=10, help="LICENSING_CONNECTION_IDLE_SECONDS"
    )
    parser.add_argument("--max-connections", type=int, default=0, help="0: the default (2000)")
    parser.add_argument("--unbounded", action="store_true", help="limits that never act")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    with stack_for(args) as stack:
        pid = pid_of(stack, "frontend")
        print(f"frontend pid {pid}; limits: {limits_env(args) or 'defaults'}", flush=True)
        warm, _ = asyncio.run(grpc_clients(stack, 5, args.calls))
        for channel in warm:
            asyncio.run(channel.close(None))
        settle(3)
        baseline = rss(pid)
        figure("baseline", pid, baseline)

        with Sampler(pid) as sampler:
            tcp = tcp_flood(stack, args.tcp)
            settle(1)
            figure(f"{len(tcp)} idle TCP connections", pid, baseline)
            tls, refused = tls_flood(stack, args.tls)
            settle(1)
            figure(f"+ {len(tls)} idle TLS connections", pid, baseline, f"refused {refused}")

            async def clients() -> tuple[list[grpc.aio.Channel], int]:
                return await grpc_clients(stack, args.clients, args.calls)

            loop = asyncio.new_event_loop()
            channels, failures = loop.run_until_complete(clients())
            figure(
                f"+ {args.clients} grpc clients, idle",
                pid,
                baseline,
                f"failed calls {failures}/{args.clients * args.calls}",
            )
        peak = sampler.peak
        print(f"{'peak':<34} RSS {peak / MIB:7.1f} MiB  ({(peak - baseline) / MIB:+7.1f})")

        # grpc checks idleness once per period: a connection goes within two periods.
        wait = 2 * (args.idle_seconds if not args.unbounded else 10) + 12
        loop.run_until_complete(asyncio.sleep(wait))  # the clients' loop sees their GOAWAYs
        shed = (
            f"server closed TCP {closed_by_server(tcp)}/{len(tcp)}, "
            f"TLS {closed_by_server(tls)}/{len(tls)}"
        )
        figure(f"after {wait} s, clients still open", pid, baseline, shed)

        for sock in [*tcp, *tls]:
            sock.close()
        for channel in channels:
            loop.run_until_complete(channel.close(None))
        loop.close()
        settle(5)
        figure("5 s after the bench closed all", pid, baseline)
        settle(TRIM_SECONDS)
        figure(f"{5 + TRIM_SECONDS} s after the bench closed all", pid, baseline)


if __name__ == "__main__":
    main()
