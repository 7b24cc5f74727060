"""Continuous attestation: what a round costs at 10, 100 and 1,000 live enclaves, how fast
a kill is revoked, and how fast a logout reaches the enclave (issue 13).

Prints figures; asserts nothing. Run from the repository root:

    .venv/bin/python bench/reattest_bench.py [--quick] [--sizes 10,100,1000] [--rounds 5]

Part 1, rounds (in this process): a real swtpm, a real SQLite database, the backend's
``Attestor`` with 100 ms injected before every quote (``simulated_tpm_latency``, as
``LICENSING_TPM_SIMULATED_LATENCY_MS`` does), and ``ReattestationRounds`` over N
ATTESTED enclave rows with CA-issued certificates measured into PCR 23. The workloads
are a **stand-in**: an in-memory set of running ids, not enclave processes (1,000
Python enclaves do not fit two shared cores), so the figures are the round's own cost:
the database read, one quote, the Merkle tree, the evidence and the one write
transaction. Per size: TPM quotes per round, this process's CPU seconds per round
(server-side work: the round runs in it), swtpm's CPU per round, and wall time.

Part 2, the whole stack (``tests.support.start_stack``, SQLite, real enclave processes,
``LICENSING_REATTEST_INTERVAL_SECONDS=2``, 100 ms TPM latency):
  a. kill -9 an attested enclave's process; time until its watcher (WatchEnclave with
     ``follow_attestations``) sees FAILED;
  b. Logout of a session whose token the enclave accepted; time until the enclave
     refuses that token (``SESSION_REVOKED``), polled every 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from licensing_common.phases import Phase  # noqa: E402
from licensing_server.attestation import Attestor  # noqa: E402
from licensing_server.pki import CertificateAuthority  # noqa: E402
from licensing_server.provisioning import (  # noqa: E402
    EnclaveProvisioner,
    ProvisioningSettings,
    ReattestationRounds,
    measured_certificates,
)
from licensing_server.storage import (  # noqa: E402
    Database,
    EnclaveStore,
    MeasurementStore,
    ReattestationStore,
    UserStore,
    run_migrations,
)
from licensing_server.storage._models import Enclave, EnclaveEvent  # noqa: E402
from licensing_server.tpm import SwtpmSimulator, TpmDevice  # noqa: E402
from tests.support import free_port_pair  # noqa: E402

LATENCY = 0.1


class StandInRuntime:
    """Workloads as a set of running ids (the part 1 stand-in; named so in the output)."""

    def __init__(self) -> None:
        self.running: set[str] = set()

    async def is_alive(self, enclave_id: str, handle: str) -> bool:
        return enclave_id in self.running

    async def stop(self, enclave_id: str, handle: str) -> None:
        self.running.discard(enclave_id)


def _cpu_of(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _rows(database: Database, ca: CertificateAuthority, count: int) -> list[str]:
    now = dt.datetime.now(dt.UTC)
    user = await UserStore(database).create_user(f"bench{uuid.uuid4().hex[:8]}", "x", now)
    ids = []
    async with database.session() as session:
        for _ in range(count):
            enclave_id = str(uuid.uuid4())
            key = ec.generate_private_key(ec.SECP256R1())
            issued = ca.issue(
                key.public_key(), common_name=enclave_id, lifetime=dt.timedelta(hours=1)
            )
            session.add(
                Enclave(
                    id=enclave_id, owner_id=user.id, request_id=enclave_id[:32],
                    phase=Phase.ATTESTED.value, last_sequence=1, created_at=now, updated_at=now,
                    expires_at=now + dt.timedelta(hours=1), nonce=b"", endpoint="",
                    tls_server_name="", certificate_pem=issued.pem,
                    certificate_sha256=issued.sha256, failure_reason="", runtime_handle="",
                )
            )  # fmt: skip
            session.add(
                EnclaveEvent(
                    enclave_id=enclave_id, sequence=1, phase=Phase.ATTESTED.value,
                    message="bench", created_at=now,
                )
            )  # fmt: skip
            ids.append(enclave_id)
    return ids


async def rounds_at(size: int, rounds: int, directory: Path) -> dict[str, float]:
    swtpm = SwtpmSimulator.prepare(directory / "swtpm")
    swtpm.start(free_port_pair())
    url = f"sqlite+aiosqlite:///{directory / 'licensing.db'}"
    run_migrations(url)
    database = Database.connect(url)
    try:
        async with TpmDevice(swtpm.tcti, command_timeout=30.0) as tpm:
            quotes = 0
            real = tpm.quote

            async def counted(qualifying_data: bytes, pcrs: list[int]) -> object:
                nonlocal quotes
                quotes += 1
                return await real(qualifying_data, pcrs)

            tpm.quote = counted  # type: ignore[method-assign,assignment]
            ca = CertificateAuthority.load_or_create(directory / "ca.key", directory / "ca.pem")
            store = EnclaveStore(database)
            attestor = Attestor(
                tpm=tpm,
                ca=ca,
                measurements=MeasurementStore(database),
                manufacturer_ca_pem=swtpm.manufacturer_ca_pem().encode(),
                ak_certificate_path=directory / "ak.pem",
                live_certificates=lambda: measured_certificates(store),
                simulated_tpm_latency=LATENCY,
            )
            await attestor.prove_attestation_key()
            ids = await _rows(database, ca, size)
            runtime = StandInRuntime()
            runtime.running.update(ids)
            provisioner = EnclaveProvisioner(
                store=store,
                runtime=runtime,  # type: ignore[arg-type]
                issuer=None,  # type: ignore[arg-type]
                probe=None,  # type: ignore[arg-type]
                attestor=attestor,
                settings=ProvisioningSettings(token_issuer="b", token_audience="b"),
            )
            reattest = ReattestationRounds(
                store=store,
                results=ReattestationStore(database),
                runtime=runtime,  # type: ignore[arg-type]
                provisioner=provisioner,
                attestor=attestor,
            )
            await reattest.run_round()  # warm-up: PCR 23 written over the N certificates
            cpu, swtpm_cpu, wall, per_round_quotes, attested = [], [], [], [], []
            for _ in range(rounds):
                quotes, before = 0, _cpu_of(swtpm.pid)
                report = await reattest.run_round()
                cpu.append(report.cpu_seconds)
                wall.append(report.wall_seconds)
                swtpm_cpu.append(_cpu_of(swtpm.pid) - before)
                per_round_quotes.append(quotes)
                attested.append(report.attested)
            await attestor.close()
            return {
                "quotes": statistics.mean(per_round_quotes),
                "attested": statistics.mean(attested),
                "cpu": statistics.median(cpu),
                "swtpm_cpu": statistics.median(swtpm_cpu),
                "wall": statistics.median(wall),
            }
    finally:
        await database.close()
        swtpm.stop()


def part_one(sizes: list[int], rounds: int) -> None:
    print(f"Part 1: one round at N live enclaves ({LATENCY * 1000:.0f} ms injected TPM latency;")
    print("        workloads: in-memory stand-in, no enclave processes)")
    print(f"{'N':>6} {'quotes/round':>13} {'attested':>9} {'CPU s/round':>12} "
          f"{'swtpm CPU s':>12} {'wall s/round':>13}")  # fmt: skip
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="reattest-bench-") as tmp:
            figures = asyncio.run(rounds_at(size, rounds, Path(tmp)))
        cost = f"{figures['cpu']:>12.3f} {figures['swtpm_cpu']:>12.3f} {figures['wall']:>13.3f}"
        print(f"{size:>6} {figures['quotes']:>13.1f} {figures['attested']:>9.0f} {cost}")


def part_two(trials: int) -> None:
    import grpc
    from enclave.v1 import workload_pb2
    from licensing.v1 import auth_pb2, auth_pb2_grpc, enclave_pb2

    from tests.enclaves.helpers import Owner, new_nonce
    from tests.provisioning.streams import enclave_processes
    from tests.support import error_reason, start_stack

    print("\nPart 2: whole stack, real enclave processes, 2 s rounds, 100 ms TPM latency")
    with tempfile.TemporaryDirectory(prefix="reattest-stack-") as tmp:
        stacks = start_stack(
            "sqlite", Path(tmp), None,
            LICENSING_REATTEST_INTERVAL_SECONDS="2",
            LICENSING_TPM_SIMULATED_LATENCY_MS="100",
            LICENSING_MAX_ENCLAVES="50",
        )  # fmt: skip
        stack = next(stacks)
        try:
            owner = Owner.of(stack)
            kills, logouts = [], []
            for _ in range(trials):
                events = owner.create(nonce=new_nonce())
                enclave, sequence = events[-1].enclave, events[-1].sequence
                failed = threading.Event()
                call = owner.stub.WatchEnclave(
                    enclave_pb2.WatchEnclaveRequest(
                        enclave_id=enclave.id, from_sequence=sequence, follow_attestations=True
                    ),
                    metadata=owner.bearer,
                    timeout=60,
                )

                def read(call: object = call, failed: threading.Event = failed) -> None:
                    for event in call:  # type: ignore[attr-defined]
                        if event.phase == enclave_pb2.PHASE_FAILED:
                            failed.set()
                            return

                threading.Thread(target=read, daemon=True).start()
                (process,) = [
                    p for p in enclave_processes(stack, [enclave.id])
                    if enclave.id in " ".join(p.argv)
                ]  # fmt: skip
                killed = time.monotonic()
                os.kill(process.pid, 9)
                failed.wait(30)
                kills.append(time.monotonic() - killed)
                call.cancel()  # type: ignore[no-untyped-call]

                events = owner.create(nonce=new_nonce())
                enclave = events[-1].enclave
                second = stack.log_in(owner.user.username)
                workload = owner.workload(enclave, as_user=second)
                workload.GetIdentity(workload_pb2.GetIdentityRequest(), metadata=second.bearer)
                auth = auth_pb2_grpc.AuthServiceStub(stack.user_channel(second))
                auth.Logout(auth_pb2.LogoutRequest(), metadata=second.bearer, timeout=10)
                out = time.monotonic()
                while time.monotonic() - out < 10:
                    try:
                        workload.GetIdentity(
                            workload_pb2.GetIdentityRequest(), metadata=second.bearer, timeout=5
                        )
                    except grpc.RpcError as exc:
                        if error_reason(exc) == "SESSION_REVOKED":
                            break
                    time.sleep(0.01)
                logouts.append(time.monotonic() - out)
                owner.delete(enclave.id)
            owner.delete_all()
            owner.close()
        finally:
            stacks.close()  # type: ignore[attr-defined]

    def line(name: str, values: list[float]) -> None:
        print(f"  {name:<34} median {statistics.median(values):.3f} s, "
              f"max {max(values):.3f} s over {len(values)}")  # fmt: skip

    line("kill -9 -> watcher sees FAILED", kills)
    line("Logout returns -> enclave refuses", logouts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rounds, trials = args.rounds, args.trials
    if args.quick:
        sizes, rounds, trials = [10, 100], 2, 1
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    part_one(sizes, rounds)
    part_two(trials)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
