"""Watching enclaves: what idle watchers cost the frontend, and how fast a phase reaches them.

The frontend's watchers follow events that another process (the backend) writes, so
they learn of them from the database. This compares, in the same run on the same
database, the two ways the frontend can do that:

- ``per-watcher poll`` (the baseline, what the frontend did before ``EventTail``):
  every watcher reads its enclave's events every 100 ms;
- ``shared tail`` (what it does on SQLite): one ``EventTail`` query per 100 ms tick for
  every watched enclave, and only the watchers of an enclave that moved read it;
- ``notified tail`` (what it does on PostgreSQL): the same tail, rung by LISTEN/NOTIFY the
  moment the backend commits, and polling once a second only as a net.

For each watcher count it reports, while nothing happens (``--idle-seconds``): SQL
statements per second and the process's CPU (core-ms per second) spent by watching;
then, for ``--advances`` phase changes (at most four per enclave) written through a
second engine (as the backend would): the delay from the commit to the last of that
enclave's watchers receiving the event (p50/p99). Watchers are spread over enclaves,
``--per-enclave`` each. Figures are printed, nothing is asserted. Run from the repository root:

    .venv/bin/python bench/watch_bench.py [--watchers 10,100,1000] [--postgres ADMIN_URL]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.login_bench import percentile  # noqa: E402
from licensing_server.events import EventTail, follow_events  # noqa: E402
from licensing_server.provisioning import terminal_phases  # noqa: E402
from licensing_server.storage import (  # noqa: E402
    EventRecord,
    Phase,
    notifications,
    run_migrations,
)
from tests.support import (  # noqa: E402
    TwoProcessDatabase,
    create_postgres_database,
    drop_postgres_database,
)

_NOW = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
_IS_TERMINAL = terminal_phases().__contains__
Follow = Callable[[str], AsyncIterator[EventRecord]]


class _Run(TwoProcessDatabase):
    async def enclaves(self, count: int) -> list[str]:
        return [await self.new_enclave(f"r{n}") for n in range(count)]


async def _measure(
    run: _Run, follow: Follow, watchers: int, per_enclave: int, args: argparse.Namespace
) -> dict[str, float]:
    enclave_ids = await run.enclaves(max(1, watchers // per_enclave))
    received: dict[tuple[str, int], list[float]] = {}

    async def watch(enclave_id: str) -> None:
        async for e in follow(enclave_id):
            received.setdefault((e.enclave_id, e.sequence), []).append(time.perf_counter())

    tasks = [asyncio.create_task(watch(enclave_ids[n % len(enclave_ids)])) for n in range(watchers)]
    deadline = time.perf_counter() + 120
    while sum(len(received.get((e, 1), ())) for e in enclave_ids) < watchers:
        if time.perf_counter() > deadline:
            raise SystemExit("the watchers did not start within 120 s")
        await asyncio.sleep(0.05)
    await asyncio.sleep(args.settle_seconds)  # every watcher has read ACCEPTED: let it settle

    statements, cpu, wall = run.frontend_statements, time.process_time(), time.perf_counter()
    await asyncio.sleep(args.idle_seconds)
    wall = time.perf_counter() - wall
    idle_statements = (run.frontend_statements - statements) / wall
    idle_cpu_ms = (time.process_time() - cpu) * 1000 / wall

    delays, from_call = [], []
    phases = [Phase.SCHEDULED, Phase.RUNNING, Phase.CERTIFICATE_ISSUED, Phase.READY]
    advances = min(args.advances, len(phases) * len(enclave_ids))
    for n in range(advances):
        enclave_id = enclave_ids[n % len(enclave_ids)]
        sequence = 2 + n // len(enclave_ids)
        called = time.perf_counter()
        await run.backend.advance(enclave_id, phases[sequence - 2], "bench", _NOW)
        committed = time.perf_counter()
        expected = watchers // len(enclave_ids) + (
            1 if n % len(enclave_ids) < watchers % len(enclave_ids) else 0
        )
        deadline = committed + 10
        while len(received.get((enclave_id, sequence), ())) < expected:
            if time.perf_counter() > deadline:
                break
            await asyncio.sleep(0.001)
        arrivals = received.get((enclave_id, sequence), [])
        if len(arrivals) == expected:
            delays.append((max(arrivals) - committed) * 1000)
            from_call.append((max(arrivals) - called) * 1000)
        await asyncio.sleep(0.05)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "statements/s": idle_statements,
        "cpu ms/s": idle_cpu_ms,
        "p50": percentile(delays, 50) if delays else float("nan"),
        "p99": percentile(delays, 99) if delays else float("nan"),
        # From the start of the writing call: a notification can arrive before the
        # commit's reply does, which makes the figure above zero or below.
        "call p50": percentile(from_call, 50) if from_call else float("nan"),
        "n": len(delays),
        "lost": advances - len(delays),
    }


async def _bench(url: str, args: argparse.Namespace) -> None:
    run = _Run(url)
    try:
        print(
            f"\nWatch benchmark ({url.split(':', 1)[0]}): {args.per_enclave} watchers per"
            f" enclave, {args.idle_seconds:g} s idle, {args.advances} phase changes\n"
        )
        header = f"  {'watchers':>8}  {'mode':<17} {'SQL/s idle':>11} {'CPU ms/s idle':>14}"
        print(header + f" {'delivery p50':>13} {'p99':>9}  {'delivered':>9}")
        modes = ["per-watcher poll", "shared tail"]
        if run.frontend_db.engine.dialect.name == "postgresql":
            modes.append("notified tail")
        for watchers in args.watchers:
            results = {}
            for mode in modes:
                tail = EventTail(run.frontend, poll_seconds=0.1)

                def follow(enclave_id: str, mode: str = mode, tail: EventTail = tail) -> Any:
                    if mode != "per-watcher poll":
                        return tail.follow(enclave_id, 0, _IS_TERMINAL)
                    return follow_events(run.frontend, enclave_id, 0, _IS_TERMINAL)

                async with contextlib.AsyncExitStack() as stack:
                    if mode == "notified tail":
                        await stack.enter_async_context(notifications(run.frontend_db, tail.listen))
                    r = await _measure(run, follow, watchers, args.per_enclave, args)
                await tail.close()
                results[mode] = r
                print(
                    f"  {watchers:>8}  {mode:<17} {r['statements/s']:>11.1f}"
                    f" {r['cpu ms/s']:>14.1f} {r['p50']:>10.1f} ms {r['p99']:>6.1f} ms"
                    f"  {int(r['n']):>4}/{int(r['n'] + r['lost'])}"
                )
            base = results["per-watcher poll"]
            for mode in modes[1:]:
                r = results[mode]
                print(
                    f"  {'':>8}  {mode.split()[0] + ' / poll':<17}"
                    f" {r['statements/s'] / max(base['statements/s'], 1e-9):>10.3f}x"
                    f" {r['cpu ms/s'] / max(base['cpu ms/s'], 1e-9):>13.3f}x"
                    f" {r['p50'] / max(base['p50'], 1e-9):>12.2f}x"
                )
    finally:
        await run.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--watchers", default="10,100,1000")
    parser.add_argument("--per-enclave", type=int, default=10)
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    parser.add_argument("--settle-seconds", type=float, default=1.0)
    parser.add_argument("--advances", type=int, default=20)
    parser.add_argument("--postgres", metavar="ADMIN_URL", help="also run on PostgreSQL")
    args = parser.parse_args()
    args.watchers = [int(w) for w in args.watchers.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="watch-bench-"))
    try:
        url = f"sqlite+aiosqlite:///{tmp / 'licensing.db'}"
        run_migrations(url)
        asyncio.run(_bench(url, args))
        if args.postgres:
            url, name = create_postgres_database(args.postgres)
            try:
                run_migrations(url)
                asyncio.run(_bench(url, args))
            finally:
                drop_postgres_database(args.postgres, name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
