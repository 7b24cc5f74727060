"""Fault soak: a mixed load for a few minutes while processes die and the database goes away.

It starts its own stack (swtpm + backend + frontend under the supervisor) on a private
PostgreSQL server (``tests.postgres_server``; the shared one is never touched), drives it
with one thread per user (create to ATTESTED and verify, attest and verify, watch, list,
delete), and every ``--fault-every`` seconds injects one fault chosen at random (seeded):

- ``backend`` / ``frontend`` / ``swtpm``: ``kill -9`` of that process (the supervisor
  restarts it);
- ``enclave``: ``kill -9`` of one enclave process;
- ``postgres``: PostgreSQL stopped with ``-m immediate`` (a crash), started again 3-12 s
  later.

After each fault it waits for the stack to answer again, pauses the load, waits for every
enclave to reach a final phase, and checks the invariants:

1. every acknowledged user can still log in;
2. every acknowledged enclave is still there (ATTESTED or FAILED), or gone if its delete
   was acknowledged; no enclave is left in a provisioning phase;
3. held licences (rows not FAILED) equal live enclaves: one enclave process and one work
   directory per held row, and nothing else (no orphan process, directory or port);
4. every ATTESTED enclave gives a fresh attestation that verifies;
5. no call was answered INTERNAL.

It prints a line per round and a summary, and exits 1 if an invariant was broken::

    .venv/bin/python bench/fault_soak.py                      # 3 minutes, seed 1
    .venv/bin/python bench/fault_soak.py --minutes 10 --seed 7 --users 6
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # no INFO lines for every GOAWAY

import grpc
import sqlalchemy as sa
from licensing.v1 import attestation_pb2, attestation_pb2_grpc, enclave_pb2

from licensing_client.attestation import AttestationError, verify_attestation

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.postgres_server import PostgresServer  # noqa: E402
from tests.provisioning.streams import (  # noqa: E402
    ATTESTED,
    StreamWatch,
    delete_enclave,
    enclave_stub,
    kill9,
    port_answers,
    wait_restarted,
)
from tests.support import LoggedIn, Stack, pid_of, start_stack  # noqa: E402

FAULTS = ("backend", "frontend", "swtpm", "enclave", "postgres")
FINAL = ("ATTESTED", "FAILED")
MAX_ENCLAVES = 3
RPC_TIMEOUT = 20.0
CREATE_TIMEOUT = 90.0
#: Bounds on recovery: how long the stack may take to answer again and to settle.
RECOVER_SECONDS = 90.0
SETTLE_SECONDS = 120.0


@dataclass
class Ledger:
    """What the server acknowledged, and what went wrong."""

    users: dict[str, LoggedIn] = field(default_factory=dict)
    created: dict[str, str] = field(default_factory=dict)  # enclave id -> username
    deleted: set[str] = field(default_factory=set)
    #: Deletes whose answer was lost (the frontend died, say): either outcome is fine.
    maybe_deleted: set[str] = field(default_factory=set)
    ops: collections.Counter[str] = field(default_factory=collections.Counter)
    violations: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def violation(self, text: str) -> None:
        with self.lock:
            self.violations.append(text)
        print(f"  VIOLATION: {text}", flush=True)


class Load:
    """One thread per user; ``pause`` waits until none is in the middle of a call."""

    def __init__(self, stack: Stack, ledger: Ledger, rng: random.Random):
        self.stack = stack
        self.ledger = ledger
        self._seeds = [rng.random() for _ in ledger.users]
        self._running = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._busy = 0
        self._threads = [
            threading.Thread(target=self._work, args=(name, seed), daemon=True, name=name)
            for name, seed in zip(ledger.users, self._seeds, strict=True)
        ]

    def start(self) -> None:
        self._running.set()
        for thread in self._threads:
            thread.start()

    def pause(self) -> None:
        self._running.clear()
        with self._idle:
            self._idle.wait_for(lambda: self._busy == 0, CREATE_TIMEOUT + 30)

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()
        for thread in self._threads:
            thread.join(CREATE_TIMEOUT + 30)

    def _work(self, username: str, seed: float) -> None:
        rng = random.Random(seed)
        while not self._stop.is_set():
            self._running.wait()
            if self._stop.is_set():
                return
            with self._idle:
                if not self._running.is_set():
                    continue
                self._busy += 1
            try:
                action = rng.choices(
                    ("create", "attest", "delete", "watch", "list"), (4, 3, 2, 1, 1)
                )[0]
                self._act(action, username, rng)
            except grpc.RpcError as exc:
                self._refused(action, exc)
            except Exception as exc:  # a broken harness must not stop the soak silently
                self.ledger.violation(f"{username} {action}: unexpected {exc!r}")
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()
            time.sleep(rng.uniform(0.05, 0.3))

    def _refused(self, action: str, exc: grpc.RpcError) -> None:
        code = exc.code()
        self.ledger.ops[f"{action} {code.name}"] += 1
        if code == grpc.StatusCode.INTERNAL:
            self.ledger.violation(f"{action} answered INTERNAL: {exc.details()}")

    def _mine(self, username: str) -> list[str]:
        with self.ledger.lock:
            return [
                i
                for i, owner in self.ledger.created.items()
                if owner == username
                and i not in self.ledger.deleted
                and i not in self.ledger.maybe_deleted
            ]

    def _act(self, action: str, username: str, rng: random.Random) -> None:
        user = self.ledger.users[username]
        mine = self._mine(username)
        if action == "create":
            self._create(username, user)
        elif action == "attest" and mine:
            enclave_id = rng.choice(mine)
            enclave = enclave_stub(self.stack, user).GetEnclave(
                enclave_pb2.GetEnclaveRequest(enclave_id=enclave_id),
                metadata=user.bearer,
                timeout=RPC_TIMEOUT,
            )
            if enclave.enclave.phase == ATTESTED:
                problem = attest_and_verify(self.stack, user, enclave.enclave)
                if problem:
                    self.ledger.violation(f"attest {enclave_id}: {problem}")
                self.ledger.ops["attest ok"] += 1
        elif action == "delete" and mine:
            enclave_id = rng.choice(mine)
            with self.ledger.lock:
                self.ledger.maybe_deleted.add(enclave_id)
            delete_enclave(self.stack, user, enclave_id)
            with self.ledger.lock:
                self.ledger.maybe_deleted.discard(enclave_id)
                self.ledger.deleted.add(enclave_id)
            self.ledger.ops["delete ok"] += 1
        elif action == "watch" and mine:
            watch = StreamWatch.watch(self.stack, user, rng.choice(mine))
            events = watch.wait_done(CREATE_TIMEOUT)
            sequences = [e.sequence for e in events]
            if sequences != list(range(1, len(events) + 1)):
                self.ledger.violation(f"watch saw sequences {sequences}")
            if watch.error is not None:
                raise watch.error
            self.ledger.ops["watch ok"] += 1
        elif action == "list":
            enclave_stub(self.stack, user).ListEnclaves(
                enclave_pb2.ListEnclavesRequest(page_size=100),
                metadata=user.bearer,
                timeout=RPC_TIMEOUT,
            )
            self.ledger.ops["list ok"] += 1

    def _create(self, username: str, user: LoggedIn) -> None:
        create = StreamWatch.create(self.stack, user, f"soak-{uuid.uuid4().hex[:12]}")
        try:
            events = create.wait_done(CREATE_TIMEOUT)
        except AssertionError:
            create.cancel()
            events = create.events
        if events:
            with self.ledger.lock:
                self.ledger.created[events[0].enclave_id] = username
        if events and events[-1].phase == ATTESTED:
            attested = events[-1]
            assert attested.attestation is not None
            try:
                verify_attestation(
                    attested.attestation,
                    nonce=create.nonce,
                    expected_certificate_pem=attested.certificate_pem,
                    trusted_ca_pem=[self.stack.ca_pem.decode()],
                )
            except AttestationError as exc:
                self.ledger.violation(f"create {attested.enclave_id}: {exc.check}: {exc}")
            self.ledger.ops["create attested"] += 1
        elif create.error is not None:
            self._refused("create", create.error)
        elif events:
            last = enclave_pb2.Phase.Name(events[-1].phase)  # type: ignore[arg-type]
            self.ledger.ops[f"create {last}"] += 1


def attest_and_verify(stack: Stack, user: LoggedIn, enclave: enclave_pb2.Enclave) -> str | None:
    """A fresh attestation of ``enclave`` checked against its certificate; the problem, if any."""
    nonce = os.urandom(32)
    reply = attestation_pb2_grpc.AttestationServiceStub(stack.user_channel(user)).GetAttestation(
        attestation_pb2.GetAttestationRequest(enclave_id=enclave.id, nonce=nonce),
        metadata=user.bearer,
        timeout=RPC_TIMEOUT,
    )
    try:
        verify_attestation(
            reply.attestation,
            nonce=nonce,
            expected_certificate_pem=enclave.certificate_pem,
            trusted_ca_pem=[stack.ca_pem.decode()],
        )
    except AttestationError as exc:
        return f"{exc.check}: {exc}"
    return None


def attest_recovering(stack: Stack, user: LoggedIn, enclave: enclave_pb2.Enclave) -> str | None:
    """``attest_and_verify``, waiting out UNAVAILABLE while the TPM comes back (bounded)."""
    deadline = time.monotonic() + RECOVER_SECONDS
    while True:
        try:
            return attest_and_verify(stack, user, enclave)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


# Faults ----------------------------------------------------------------------------------


def enclave_pids(stack: Stack) -> dict[int, str]:
    """pid -> enclave id of every live enclave process of this stack (by its work directory)."""
    root = str(stack.data_dir / "backend" / "enclaves") + "/"
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if root in text:
            found[int(entry.name)] = text.split(root, 1)[1].split("/", 1)[0].split(" ", 1)[0]
    return found


def inject(fault: str, stack: Stack, postgres: PostgresServer, rng: random.Random) -> str:
    if fault in ("backend", "frontend"):
        old = pid_of(stack, fault)
        kill9(old)
        wait_restarted(stack, fault, old, RECOVER_SECONDS)
        return f"killed {fault} {old}"
    if fault == "swtpm":
        old = pid_of(stack, "swtpm")
        kill9(old)
        return f"killed swtpm {old}"
    if fault == "enclave":
        pids = enclave_pids(stack)
        if not pids:
            return "no enclave to kill"
        pid = rng.choice(sorted(pids))
        kill9(pid)
        return f"killed enclave {pids[pid][:8]} (pid {pid})"
    outage = rng.uniform(3, 12)
    postgres.stop("immediate")
    time.sleep(outage)
    postgres.start()
    return f"postgres down {outage:.1f}s"


def pick_fault(faults: list[str], kills: dict[str, list[float]], rng: random.Random) -> str:
    """A fault at random, within the supervisor's restart budget (5 a minute per process).

    Beyond it the supervisor gives up on purpose, which is not what this soak tests.
    """
    now = time.monotonic()
    allowed = [
        f for f in faults if f in ("enclave", "postgres") or sum(now - t < 65 for t in kills[f]) < 4
    ]
    return rng.choice(allowed or ["enclave"])


# Invariants ------------------------------------------------------------------------------


def _rows(stack: Stack) -> list[sa.Row[tuple[str, str, str, str]]]:
    engine = sa.create_engine(stack.database_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return list(
                conn.execute(sa.text("SELECT id, owner_id, phase, endpoint FROM enclaves")).all()
            )
    finally:
        engine.dispose()


def _held_and_live(stack: Stack) -> tuple[set[str], set[str], set[str]] | None:
    """(held rows, enclaves with a process, work directories), or None while any row is
    still in a provisioning phase."""
    rows = _rows(stack)
    if not all(row.phase in FINAL for row in rows):
        return None
    root = stack.data_dir / "backend" / "enclaves"
    dirs = {p.name for p in root.iterdir()} if root.exists() else set()
    held = {row.id for row in rows if row.phase != "FAILED"}
    return held, set(enclave_pids(stack).values()), dirs


def wait_settled(stack: Stack) -> float:
    """Seconds until every enclave is final and held licences match live enclaves.

    -1 if that did not happen within ``SETTLE_SECONDS``; ``check`` then says what is off.
    """
    start = time.monotonic()
    while time.monotonic() - start < SETTLE_SECONDS:
        with contextlib.suppress(sa.exc.OperationalError):
            state = _held_and_live(stack)
            if state is not None and state[0] == state[1] == state[2]:
                return time.monotonic() - start
        time.sleep(0.25)
    return -1.0


def log_in_again(stack: Stack, name: str) -> LoggedIn:
    """Log in, waiting out UNAVAILABLE while the stack recovers (bounded)."""
    deadline = time.monotonic() + RECOVER_SECONDS
    while True:
        try:
            return stack.log_in(name)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def wait_answering(stack: Stack) -> float:
    start = time.monotonic()
    ports = (stack.backend_port, stack.enroll_port, stack.api_port)
    while time.monotonic() - start < RECOVER_SECONDS:
        if all(port_answers(p) for p in ports):
            return time.monotonic() - start
        time.sleep(0.2)
    return -1.0


def check(stack: Stack, ledger: Ledger) -> dict[str, int]:
    """Every invariant of the module docstring; returns a few counts for the report."""
    for name in list(ledger.users):
        try:
            ledger.users[name] = log_in_again(stack, name)
        except grpc.RpcError as exc:
            ledger.violation(f"acknowledged user {name} cannot log in: {exc.code()}")
    rows = {row.id: row for row in _rows(stack)}
    for enclave_id, owner in ledger.created.items():
        row = rows.get(enclave_id)
        if enclave_id in ledger.deleted:
            if row is not None:
                ledger.violation(f"deleted enclave {enclave_id} still has a row ({row.phase})")
        elif enclave_id not in ledger.maybe_deleted and row is None:
            ledger.violation(f"acknowledged enclave {enclave_id} of {owner} vanished")
    stuck = [f"{i} {r.phase}" for i, r in rows.items() if r.phase not in FINAL]
    if stuck:
        ledger.violation(f"enclaves not settled: {stuck}")
    held = {i for i, r in rows.items() if r.phase != "FAILED"}
    processes = enclave_pids(stack)
    live = collections.Counter(processes.values())
    orphans = sorted(set(live) - held)
    if orphans:
        ledger.violation(f"orphan enclave processes: {orphans}")
    missing = sorted(held - set(live))
    if missing:
        ledger.violation(f"held licences without a live enclave: {missing}")
    doubled = sorted(i for i, n in live.items() if n > 1)
    if doubled:
        ledger.violation(f"enclaves with more than one process: {doubled}")
    root = stack.data_dir / "backend" / "enclaves"
    dirs = {p.name for p in root.iterdir()} if root.exists() else set()
    if dirs != held:
        ledger.violation(
            f"work directories {sorted(dirs - held)} orphaned, {sorted(held - dirs)} missing"
        )
    for enclave_id in held:
        port = int(rows[enclave_id].endpoint.rpartition(":")[2] or 0)
        if not port or not port_answers(port):
            ledger.violation(f"held enclave {enclave_id} does not answer on its port {port}")
    names = {login.user_id: name for name, login in ledger.users.items()}
    for enclave_id in held:
        user = ledger.users[names[rows[enclave_id].owner_id]]
        enclave = enclave_stub(stack, user).GetEnclave(
            enclave_pb2.GetEnclaveRequest(enclave_id=enclave_id),
            metadata=user.bearer,
            timeout=RPC_TIMEOUT,
        )
        try:
            problem = attest_recovering(stack, user, enclave.enclave)
        except grpc.RpcError as exc:
            problem = f"GetAttestation answered {exc.code()} {exc.details()}"
        if problem:
            ledger.violation(f"ATTESTED enclave {enclave_id} does not verify: {problem}")
    return {"rows": len(rows), "held": len(held), "failed": len(rows) - len(held)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--fault-every", type=float, default=15.0, help="seconds of load")
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated kinds")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()
    faults = [f for f in args.faults.split(",") if f]
    if unknown := set(faults) - set(FAULTS):
        parser.error(f"unknown faults {sorted(unknown)}; valid: {', '.join(FAULTS)}")
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="fault-soak-"))
    postgres = PostgresServer.create()
    postgres.start()
    ledger = Ledger()
    deadline = time.monotonic() + args.minutes * 60
    faults_done: collections.Counter[str] = collections.Counter()
    kills: dict[str, list[float]] = collections.defaultdict(list)
    print(
        f"fault soak: {args.minutes:g} min, seed {args.seed}, {args.users} users, "
        f"a fault every {args.fault_every:g} s from {faults}; data in {tmp}",
        flush=True,
    )
    try:
        for stack in start_stack(
            "postgresql",
            tmp,
            postgres.admin_url,
            LICENSING_MAX_ENCLAVES=str(MAX_ENCLAVES),
            LICENSING_RECONCILE_INTERVAL_SECONDS="2",
            LICENSING_ABANDONED_AFTER_SECONDS="10",
        ):
            for _ in range(args.users):
                name = stack.sign_up()
                ledger.users[name] = stack.log_in(name)
            load = Load(stack, ledger, rng)
            load.start()
            round_no = 0
            while time.monotonic() < deadline:
                round_no += 1
                time.sleep(args.fault_every)
                fault = pick_fault(faults, kills, rng)
                kills[fault].append(time.monotonic())
                what = inject(fault, stack, postgres, rng)
                faults_done[fault] += 1
                answering = wait_answering(stack)
                load.pause()
                settled = wait_settled(stack)
                counts = check(stack, ledger)
                print(
                    f"round {round_no}: {what}; answering after {answering:.1f}s, settled after "
                    f"{settled:.1f}s; {counts['held']} held, {counts['failed']} failed, "
                    f"{len(ledger.violations)} violations so far",
                    flush=True,
                )
                if stack.proc is None or stack.proc.poll() is not None:
                    ledger.violation("the supervisor exited")
                    break
                # Each helper call opened a channel (a connection); close them while the
                # load is paused, or they would pile up to the frontend's connection cap.
                for channel in stack._channels:
                    channel.close()
                stack._channels.clear()
                load.resume()
            load.stop()
    finally:
        postgres.destroy()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print("faults:", dict(faults_done))
    print("operations:", dict(sorted(ledger.ops.items())))
    print(
        f"acknowledged: {len(ledger.users)} users, {len(ledger.created)} enclaves, "
        f"{len(ledger.deleted)} deletes"
    )
    verdict = "PASS" if not ledger.violations else f"FAIL ({len(ledger.violations)} violations)"
    print(f"SUMMARY fault soak {verdict}")
    return 0 if not ledger.violations else 1


if __name__ == "__main__":
    raise SystemExit(main())
