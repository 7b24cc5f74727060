"""How cost grows: each kind of work at a small and a 100x larger size, and their ratio.

Issue 12, item 5. One run on PostgreSQL (the scale-out database), one licensing stack
(``tests.support.start_stack``: swtpm + backend + frontend); every figure is measured
at the small size, the data grown, measured again, and printed with the ratio
large/small and the load average before and after. Nothing is asserted. From the
repository root:

    .venv/bin/python bench/growth_bench.py --postgres ADMIN_URL
        [--users 1000,100000] [--enclaves 100,10000] [--live 10,1000]
        [--watchers 10,1000] [--samples 40] [--bcrypt-cost 12]

What grows, and how (where the API would be too slow, rows are written with SQL):

1. **Users held** (1,000 -> 100,000): the users are rows written straight into the
   database, all with one bcrypt hash precomputed at the server's cost, each with the
   session and refresh token one Login leaves (so the sessions tables grow too); then
   ANALYZE, as autovacuum would. Measured through the API, in turns so each sees the
   same load: SignUp, Login (of a random grown user), then RefreshToken and
   GetCurrentUser p50; ``pg_database_size``. At bcrypt cost 12 SignUp and Login are
   ~all bcrypt, which the load of a shared machine moves more than any row count:
   ``control: bcrypt check here`` is the same check in this process, taken in the same
   turns, and ``--bcrypt-cost 4`` shows the database's part of those calls.
2. **Enclaves ever created** (100 -> 10,000): one probe enclave stays live. The first
   100 are created and deleted through ``CreateEnclave``/``DeleteEnclave``; the rest are
   rows inserted and deleted with SQL matching what the API leaves behind (an ATTESTED
   enclave row with its seven events, and the two PCR 23 epochs - one measurement each -
   its create and its delete start, all deleted again, as ``EnclaveStore.remove`` and
   ``MeasurementStore.start_epoch`` do): the dead rows and the risen epoch counter are
   what stays. (The TPM side of 10,000 creates is ``bench/evidence_bench.py``'s part 2.)
   Measured: GetAttestation p50 and the attestation's size (mTLS, fresh nonce), with
   GetCurrentUser p50 right after as a control (its work does not change).
3. **Live enclaves of one user** (10 -> 1,000): 1,000 enclave processes would not fit
   here, so the rows are inserted directly (ATTESTED, with their events and a real
   certificate and attestation, as the store writes them) and only ListEnclaves is
   measured: the first page of 5 and the last page of 5, reached with a page token
   (keyset paging: neither
   should grow), and the whole listing walked in pages of 100 (that work grows 100x).
   The stack runs with ``LICENSING_RECONCILE_INTERVAL_SECONDS=3600`` so the reconciler
   does not fail those rows (they have no workload) while they are measured.
4. **Watchers** (10 -> 1,000): ``bench/watch_bench.py``'s measurement in the mode
   PostgreSQL runs (``notified tail``), on a database of its own: idle CPU (core-ms/s)
   and SQL statements per second, and the commit-to-delivery p50.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import sqlalchemy as sa
from licensing.v1 import (
    attestation_pb2,
    attestation_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    enclave_pb2,
    enclave_pb2_grpc,
)

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.evidence_bench import attestation_calls, create, delete, sample  # noqa: E402
from bench.login_bench import percentile  # noqa: E402
from bench.watch_bench import _IS_TERMINAL, _measure, _Run  # noqa: E402
from licensing_server.events import EventTail  # noqa: E402
from licensing_server.storage import notifications, run_migrations  # noqa: E402
from tests.support import (  # noqa: E402
    AFTER_ACCEPTED,
    PASSWORD,
    LoggedIn,
    Stack,
    create_postgres_database,
    drop_postgres_database,
    make_csr,
    new_key,
    start_stack,
)

TARGET = 1.5
#: Why a control figure may move: it measures the machine, not the server.
#: Turns before the counted ones (see ``interleaved``).
WARMUP = 3
CONTROL = "control: the machine's load, not the server"
PARTS = ("users", "enclaves", "live", "watchers")


@dataclass(frozen=True, slots=True)
class Figure:
    kind: str
    name: str
    small: float
    large: float
    unit: str
    #: Why the work itself grows with the size (None: it should not).
    grows: str | None = None

    @property
    def ratio(self) -> float:
        return self.large / self.small if self.small else float("nan")

    def row(self) -> str:
        if self.grows:
            verdict = self.grows if self.grows == CONTROL else f"grows: {self.grows}"
        else:
            verdict = "ok" if self.ratio < TARGET else "OVER"
        return (
            f"  {self.kind:<22} {self.name:<34} {self.small:>11.2f} {self.large:>11.2f}"
            f" {self.unit:<6} {self.ratio:>7.2f}x  {verdict}"
        )


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f}/{five:.2f}"


@contextlib.contextmanager
def section(title: str, loads: dict[str, tuple[str, str]]) -> Iterator[None]:
    before = load()
    print(f"\n{title} (load average 1/5 min before: {before})", flush=True)
    yield
    loads[title] = (before, load())
    print(f"  load average after: {loads[title][1]}", flush=True)


def p50_ms(call: Callable[[], object], samples: int) -> float:
    return interleaved({"call": call}, samples)["call"]


def interleaved(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Each call's p50 (ms), taken in turns so that every call sees the same load.

    The first ``WARMUP`` turns are not counted: the first calls after a start pay for
    connections, caches and code paths no later call does.
    """
    times: dict[str, list[float]] = {name: [] for name in calls}
    for turn in range(WARMUP + rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if turn >= WARMUP:
                times[name].append(time.perf_counter() - start)
    return {name: percentile(t, 50) * 1000 for name, t in times.items()}


def sync_engine(stack: Stack) -> sa.Engine:
    return sa.create_engine(stack.database_url, pool_size=1)


def database_mib(engine: sa.Engine) -> float:
    with engine.connect() as conn:
        size = conn.execute(sa.text("SELECT pg_database_size(current_database())")).scalar_one()
    return int(size) / 2**20


def analyze(engine: sa.Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("ANALYZE"))


# 1. Users held ----------------------------------------------------------------------------
def grow_users(engine: sa.Engine, target: int, password_hash: str) -> None:
    """Users up to ``target``, each with the session and refresh token a Login leaves."""
    with engine.begin() as conn:
        held = int(conn.execute(sa.text("SELECT count(*) FROM users")).scalar_one())
        first = int(
            conn.execute(
                sa.text("SELECT count(*) FROM users WHERE username LIKE 'grown-%'")
            ).scalar_one()
        )
        last = first + max(0, target - held)
        if last == first:
            return
        conn.execute(
            sa.text(
                "INSERT INTO users (id, username, password_hash, created_at)"
                " SELECT gen_random_uuid()::text, 'grown-' || n, :hash, now()"
                " FROM generate_series(:first, :last - 1) AS n"
            ),
            {"hash": password_hash, "first": first, "last": last},
        )
        conn.execute(
            sa.text(
                "INSERT INTO sessions (id, user_id, client_certificate_sha256, created_at,"
                " expires_at) SELECT gen_random_uuid()::text, id, sha256(id::bytea), now(),"
                " now() + interval '30 days' FROM users WHERE username LIKE 'grown-%'"
                " AND id NOT IN (SELECT user_id FROM sessions)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO refresh_tokens (id, session_id, token_hash, created_at, expires_at)"
                " SELECT gen_random_uuid()::text, id, sha256(id::bytea || 'refresh'), now(),"
                " expires_at FROM sessions WHERE id NOT IN (SELECT session_id FROM refresh_tokens)"
            )
        )
    analyze(engine)


def measure_users(stack: Stack, engine: sa.Engine, samples: int, cost: int) -> dict[str, float]:
    auth = auth_pb2_grpc.AuthServiceStub(stack.enroll_channel())
    with engine.connect() as conn:
        grown = int(
            conn.execute(
                sa.text("SELECT count(*) FROM users WHERE username LIKE 'grown-%'")
            ).scalar_one()
        )
    csrs = [make_csr(new_key()) for _ in range(4)]

    def sign_up() -> None:
        name = f"probe-{uuid.uuid4().hex[:12]}"
        auth.SignUp(auth_pb2.SignUpRequest(username=name, password=PASSWORD))

    logins: list[auth_pb2.LoginResponse] = []

    def login() -> None:
        name = f"grown-{random.randrange(grown)}"
        request = auth_pb2.LoginRequest(
            username=name, password=PASSWORD, csr_pem=random.choice(csrs)
        )
        logins.append(auth.Login(request))

    stored = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(cost))
    figures = interleaved(
        {
            "SignUp p50": sign_up,
            "Login p50 (random user)": login,
            # The same check in this process: what the machine's load does to bcrypt.
            "control: bcrypt check here p50": lambda: bcrypt.checkpw(PASSWORD.encode(), stored),
            # The database's part of those calls alone, in SQL: does it grow?
            "SQL: SignUp's INSERT p50": lambda: sql_insert_user(engine),
            "SQL: Login's SELECT by username p50": lambda: sql_find_user(engine, grown),
        },
        samples,
    )
    tokens = iter([r.refresh_token for r in logins])

    def refresh() -> None:
        auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=next(tokens)))

    user = stack.new_user()
    user_auth = auth_pb2_grpc.AuthServiceStub(stack.user_channel(user))
    figures |= interleaved(
        {
            "RefreshToken p50": refresh,
            "GetCurrentUser p50": lambda: user_auth.GetCurrentUser(
                auth_pb2.GetCurrentUserRequest(), metadata=user.bearer
            ),
        },
        len(logins) - WARMUP,
    )
    figures["database size"] = database_mib(engine)
    return figures


def sql_insert_user(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO users VALUES (:id, :name, :hash, now())"),
            {"id": str(uuid.uuid4()), "name": f"sql-{uuid.uuid4().hex[:16]}", "hash": "x" * 60},
        )


def sql_find_user(engine: sa.Engine, grown: int) -> None:
    with engine.connect() as conn:
        conn.execute(
            sa.text("SELECT * FROM users WHERE username = :name"),
            {"name": f"grown-{random.randrange(grown)}"},
        ).one()


def users_held(stack: Stack, sizes: list[int], samples: int, cost: int) -> list[Figure]:
    engine = sync_engine(stack)
    password_hash = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(cost)).decode()
    results = []
    for size in sizes:
        started = time.monotonic()
        grow_users(engine, size, password_hash)
        print(f"  grew to {size} users in {time.monotonic() - started:.1f} s", flush=True)
        results.append(measure_users(stack, engine, samples, cost))
        print("   " + ", ".join(f"{k} {v:.2f}" for k, v in results[-1].items()), flush=True)
    engine.dispose()
    kind = f"users {sizes[0]}->{sizes[-1]}"
    return [
        Figure(
            kind,
            name,
            results[0][name],
            results[-1][name],
            "MiB" if name == "database size" else "ms",
            {"database size": "the rows held are the size"}.get(
                name, CONTROL if "control" in name else None
            ),
        )
        for name in results[0]
    ]


def current_user_p50(stack: Stack, user: LoggedIn, samples: int) -> float:
    """A cheap call whose work does not change as enclaves come and go: the load's mark."""
    stub = auth_pb2_grpc.AuthServiceStub(stack.user_channel(user))
    request = auth_pb2.GetCurrentUserRequest()
    return p50_ms(lambda: stub.GetCurrentUser(request, metadata=user.bearer), samples)


# 2. Enclaves ever created -----------------------------------------------------------------
def churn_rows(engine: sa.Engine, owner_id: str, count: int, certificate_pem: str) -> None:
    """What ``count`` enclaves created and deleted through the API leave in the database."""
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        for start in range(0, count, 1000):
            batch = [str(uuid.uuid4()) for _ in range(min(1000, count - start))]
            insert_enclaves(conn, owner_id, batch, now, certificate_pem, b"\0" * 3000)
            conn.execute(
                sa.text("DELETE FROM enclave_events WHERE enclave_id = ANY(:ids)"), {"ids": batch}
            )
            conn.execute(sa.text("DELETE FROM enclaves WHERE id = ANY(:ids)"), {"ids": batch})
            # Each create and each delete rewrites PCR 23: a new epoch with one event,
            # older epochs dropped. These rows are dropped again, the backend's own stays.
            epochs = conn.execute(
                sa.text(
                    "INSERT INTO measurement_epochs (reset_count, started_at)"
                    " SELECT 0, now() FROM generate_series(1, :n) RETURNING id"
                ),
                {"n": 2 * len(batch)},
            ).scalars()
            ids = list(epochs)
            conn.execute(
                sa.text(
                    "INSERT INTO measurements (epoch_id, sequence, pcr, digest, kind,"
                    " enclave_id, created_at) SELECT e, 1, 23, sha256(e::text::bytea),"
                    " 'measured_set', '', now() FROM unnest(CAST(:ids AS integer[])) AS e"
                ),
                {"ids": ids},
            )
            conn.execute(
                sa.text("DELETE FROM measurements WHERE epoch_id = ANY(:ids)"), {"ids": ids}
            )
            conn.execute(
                sa.text("DELETE FROM measurement_epochs WHERE id = ANY(:ids)"), {"ids": ids}
            )
    analyze(engine)


def insert_enclaves(
    conn: sa.Connection,
    owner_id: str,
    ids: list[str],
    now: dt.datetime,
    certificate_pem: str,
    attestation: bytes,
) -> None:
    """ATTESTED enclave rows with their seven events, as ``EnclaveStore`` writes them."""
    digest = hashlib.sha256(certificate_pem.encode()).digest()
    conn.execute(
        sa.text(
            "INSERT INTO enclaves (id, owner_id, request_id, phase, last_sequence, created_at,"
            " updated_at, expires_at, nonce, endpoint, tls_server_name, certificate_pem,"
            " certificate_sha256, failure_reason, runtime_handle, attestation)"
            " VALUES (:id, :owner, :request, 'ATTESTED', 7, :created, :now, :expires, :nonce,"
            " '127.0.0.1:1', 'enclave.local', :pem, :digest, '', '{}', :attestation)"
        ),
        [
            {
                "id": enclave_id,
                "owner": owner_id,
                "request": uuid.uuid4().hex,
                "created": now + dt.timedelta(microseconds=n),
                "now": now,
                "expires": now + dt.timedelta(days=1),
                "nonce": os.urandom(32),
                "pem": certificate_pem,
                "digest": digest,
                "attestation": attestation,
            }
            for n, enclave_id in enumerate(ids)
        ],
    )
    phases = ["ACCEPTED", *(p.value for p in AFTER_ACCEPTED)]
    conn.execute(
        sa.text(
            "INSERT INTO enclave_events (enclave_id, sequence, phase, message, created_at)"
            " VALUES (:id, :seq, :phase, :message, :now)"
        ),
        [
            {"id": e, "seq": s, "phase": p, "message": f"{p.lower()} (bench row)", "now": now}
            for e in ids
            for s, p in enumerate(phases, start=1)
        ],
    )


async def enclaves_created(stack: Stack, sizes: list[int], samples: int) -> list[Figure]:
    engine = sync_engine(stack)
    user = stack.new_user()
    probe = create(stack, user)
    get, verify = attestation_calls(stack, user, probe)

    created, api_seconds = 1, 0.0
    started = time.monotonic()
    while created < sizes[0]:
        delete(stack, user, create(stack, user).id)
        created += 1
    api_seconds = time.monotonic() - started
    print(
        f"  {created - 1} creates+deletes through the API: {api_seconds:.0f} s"
        f" ({api_seconds / max(1, created - 1):.2f} s each)",
        flush=True,
    )
    for _ in range(WARMUP):
        await get(os.urandom(32))
    first = await sample(created, 1, get, verify, samples)
    control_first = current_user_p50(stack, user, samples)
    print(f"   created {created}: {first.size} bytes, p50 {first.p50_ms:.2f} ms", flush=True)
    owner = stack.new_user()  # the SQL rows' owner: the probe's user keeps one enclave
    started = time.monotonic()
    churn_rows(engine, owner.user_id, sizes[-1] - created, probe.certificate_pem)
    print(
        f"  {sizes[-1] - created} more as rows inserted and deleted with SQL:"
        f" {time.monotonic() - started:.0f} s",
        flush=True,
    )
    # One real create and delete after the rows: PCR 23 rewritten past the risen epochs.
    delete(stack, user, create(stack, user).id)
    last = await sample(sizes[-1], 1, get, verify, samples)
    control_last = current_user_p50(stack, user, samples)
    print(f"   created {sizes[-1]}: {last.size} bytes, p50 {last.p50_ms:.2f} ms", flush=True)
    engine.dispose()
    kind = f"enclaves ever {sizes[0]}->{sizes[-1]}"
    return [
        Figure(kind, "attestation size", first.size, last.size, "bytes"),
        Figure(kind, "GetAttestation p50", first.p50_ms, last.p50_ms, "ms"),
        Figure(kind, "verify_attestation p50", first.verify_p50_ms, last.verify_p50_ms, "ms"),
        Figure(kind, "control: GetCurrentUser p50", control_first, control_last, "ms", CONTROL),
    ]


# 3. Live enclaves of one user -------------------------------------------------------------
def measure_list(stack: Stack, user: LoggedIn, samples: int) -> dict[str, float]:
    stub = enclave_pb2_grpc.EnclaveServiceStub(stack.user_channel(user))

    def page(size: int, token: str = "") -> enclave_pb2.ListEnclavesResponse:
        request = enclave_pb2.ListEnclavesRequest(page_size=size, page_token=token)
        return stub.ListEnclaves(request, metadata=user.bearer)

    tokens = [""]
    while True:  # the token of every page of 5, to find the last one's
        reply = page(5, tokens[-1])
        if not reply.next_page_token:
            break
        tokens.append(reply.next_page_token)
    last_token = tokens[-1]

    def walk() -> None:
        token = ""
        while True:
            token = page(100, token).next_page_token
            if not token:
                return

    pages = interleaved(
        {
            "first page of 5 p50": lambda: page(5),
            "last page of 5 p50 (page token)": lambda: page(5, last_token),
        },
        samples * 5,
    )
    return pages | {"whole list, pages of 100 p50": p50_ms(walk, samples)}


def live_enclaves(stack: Stack, sizes: list[int], samples: int) -> list[Figure]:
    engine = sync_engine(stack)
    user = stack.new_user()
    # One real enclave: its certificate and attestation go into every row written.
    probe = create(stack, user)
    attestation = (
        attestation_pb2_grpc.AttestationServiceStub(stack.user_channel(user))
        .GetAttestation(
            attestation_pb2.GetAttestationRequest(enclave_id=probe.id, nonce=os.urandom(32)),
            metadata=user.bearer,
        )
        .attestation.SerializeToString()
    )
    held = 1
    results = []
    for size in sizes:
        with engine.begin() as conn:
            ids = [str(uuid.uuid4()) for _ in range(size - held)]
            insert_enclaves(
                conn,
                user.user_id,
                ids,
                dt.datetime.now(dt.UTC),
                probe.certificate_pem,
                attestation,
            )
        held = size
        analyze(engine)
        results.append(measure_list(stack, user, samples))
        print(
            f"   {size} live: " + ", ".join(f"{k} {v:.2f} ms" for k, v in results[-1].items()),
            flush=True,
        )
    engine.dispose()
    kind = f"live per user {sizes[0]}->{sizes[-1]}"
    grows = f"it returns every enclave: {sizes[-1] // sizes[0]}x the rows"
    return [
        Figure(
            kind,
            name,
            results[0][name],
            results[-1][name],
            "ms",
            grows if "whole" in name else None,
        )
        for name in results[0]
    ]


# 4. Watchers ------------------------------------------------------------------------------
async def watchers(admin_url: str, sizes: list[int], args: argparse.Namespace) -> list[Figure]:
    url, name = create_postgres_database(admin_url)
    run_migrations(url)
    run = _Run(url)
    results = []
    try:
        for count in sizes:
            rounds = []
            for _ in range(args.watch_rounds):
                tail = EventTail(run.frontend, poll_seconds=0.1)

                def follow(enclave_id: str, tail: EventTail = tail) -> object:
                    return tail.follow(enclave_id, 0, _IS_TERMINAL)

                async with notifications(run.frontend_db, tail.listen):
                    rounds.append(await _measure(run, follow, count, 10, args))  # type: ignore[arg-type]
                await tail.close()
            # Ten watchers follow one enclave, which has only four phases to move through:
            # the median of several rounds, not four changes, makes the small figure.
            r = {key: statistics.median(x[key] for x in rounds) for key in rounds[0]}
            r["n"], r["lost"] = (sum(x[key] for x in rounds) for key in ("n", "lost"))
            results.append(r)
            print(
                f"   {count} watchers ({args.watch_rounds} rounds, medians): idle"
                f" {r['cpu ms/s']:.2f} CPU ms/s, {r['statements/s']:.2f} SQL/s; delivery p50"
                f" {r['p50']:.2f} ms after the commit, {r['call p50']:.2f} ms from the write"
                f" call ({int(r['n'])}/{int(r['n'] + r['lost'])} delivered)",
                flush=True,
            )
    finally:
        await run.close()
        drop_postgres_database(admin_url, name)
    kind = f"watchers {sizes[0]}->{sizes[-1]}"
    a, b = results[0], results[-1]
    return [
        Figure(kind, "idle CPU", a["cpu ms/s"], b["cpu ms/s"], "ms/s"),
        Figure(kind, "idle SQL statements", a["statements/s"], b["statements/s"], "/s"),
        Figure(kind, "delivery p50 (from the write call)", a["call p50"], b["call p50"], "ms"),
    ]


# ------------------------------------------------------------------------------------------
def sizes_of(text: str) -> list[int]:
    return sorted(int(v) for v in text.split(","))


async def run_stack(args: argparse.Namespace, loads: dict[str, tuple[str, str]]) -> list[Figure]:
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="growth-bench-") as tmp:
        for stack in start_stack(
            "postgresql",
            Path(tmp),
            args.postgres,
            LICENSING_BCRYPT_COST=str(args.bcrypt_cost),
            LICENSING_MAX_ENCLAVES="10",
            LICENSING_RECONCILE_INTERVAL_SECONDS="3600",
        ):
            if "users" in args.only:
                with section(f"1. Users held {args.users}", loads):
                    figures += users_held(stack, args.users, args.samples, args.bcrypt_cost)
            if "enclaves" in args.only:
                with section(f"2. Enclaves ever created {args.enclaves}", loads):
                    figures += await enclaves_created(stack, args.enclaves, args.samples)
            if "live" in args.only:
                with section(f"3. Live enclaves of one user {args.live}", loads):
                    figures += live_enclaves(stack, args.live, args.samples)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--postgres", metavar="ADMIN_URL", default=os.environ.get("LICENSING_TEST_POSTGRES_URL")
    )
    parser.add_argument("--users", type=sizes_of, default=[1_000, 100_000])
    parser.add_argument("--enclaves", type=sizes_of, default=[100, 10_000])
    parser.add_argument("--live", type=sizes_of, default=[10, 1_000])
    parser.add_argument("--watchers", type=sizes_of, default=[10, 1_000])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--bcrypt-cost", type=int, default=12)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--watch-rounds", type=int, default=5)
    parser.add_argument("--settle-seconds", type=float, default=1.0)
    parser.add_argument("--advances", type=int, default=20)
    parser.add_argument(
        "--only", type=lambda v: set(v.split(",")), default={*PARTS}, help=",".join(PARTS)
    )
    args = parser.parse_args()
    if not args.postgres:
        raise SystemExit("give --postgres ADMIN_URL (or set LICENSING_TEST_POSTGRES_URL)")
    print(
        f"Growth benchmark on PostgreSQL, bcrypt cost {args.bcrypt_cost},"
        f" {args.samples} samples; {os.cpu_count()} cores",
        flush=True,
    )
    loads: dict[str, tuple[str, str]] = {}
    figures = asyncio.run(run_stack(args, loads))
    if "watchers" in args.only:
        with section(f"4. Watchers {args.watchers}", loads):
            figures += asyncio.run(watchers(args.postgres, args.watchers, args))
    print(f"\nRatios (large / small; target < {TARGET} unless the work itself grows):")
    print(f"  {'kind':<22} {'figure':<34} {'small':>11} {'large':>11} {'unit':<6} {'ratio':>8}")
    for figure in figures:
        print(figure.row())
    print("\nLoad average (1/5 min) before -> after each part:")
    for title, (before, after) in loads.items():
        print(f"  {title}: {before} -> {after}")


if __name__ == "__main__":
    main()
