"""Re-attestation rounds in this process, on a real swtpm and a real SQLite database.

Fifty enclave rows stand in for fifty live enclaves (their workloads are a set of ids
the stand-in runtime says are running), so the test measures what a round costs the
TPM, not what fifty Python processes cost two shared cores; the whole stack with real
enclave processes is tests/enclaves/test_continuous_attestation.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from licensing.v1 import attestation_pb2

from licensing_common.phases import TERMINAL
from licensing_server.events import follow_events
from licensing_server.provisioning import EnclaveProvisioner, ProvisioningSettings
from licensing_server.provisioning._reattestation import ReattestationRounds
from licensing_server.runtimes import WorkloadSpec
from licensing_server.storage import (
    EnclaveStore,
    EventRecord,
    Limits,
    Phase,
    ReattestationStore,
    UserStore,
)
from licensing_server.tpm import QuoteResult
from tests.attestation.harness import Harness, attestor_on_swtpm


@dataclass
class RunningSet:
    """The runtime's view: which enclaves' workloads run (a kill removes one)."""

    running: set[str] = field(default_factory=set)
    stopped: list[str] = field(default_factory=list)

    async def place(self, spec: WorkloadSpec) -> object:
        raise AssertionError("rounds never place workloads")

    async def stop(self, enclave_id: str, handle: str) -> None:
        self.running.discard(enclave_id)
        self.stopped.append(enclave_id)

    async def is_alive(self, enclave_id: str, handle: str) -> bool:
        return enclave_id in self.running

    async def sweep(self, keep: set[str]) -> list[str]:
        return []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @property
    def enrollment_desk(self) -> None:
        return None


class CountingQuotes:
    """Counts the TPM quotes the attestor makes (every other call goes straight through)."""

    def __init__(self, harness: Harness):
        self.count = 0
        real = harness.tpm.quote

        async def quote(qualifying_data: bytes, pcrs: list[int]) -> QuoteResult:
            self.count += 1
            return await real(qualifying_data, pcrs)

        harness.tpm.quote = quote  # type: ignore[method-assign,assignment]


@dataclass
class World:
    harness: Harness
    store: EnclaveStore
    runtime: RunningSet
    rounds: ReattestationRounds
    quotes: CountingQuotes
    certificates: dict[str, str]
    owner: str

    async def new_enclave(self) -> str:
        """An ATTESTED enclave with a CA-issued certificate, measured into PCR 23."""
        now = dt.datetime.now(dt.UTC)
        record, _ = await self.store.reserve(
            owner_id=self.owner,
            request_id=os.urandom(8).hex(),
            nonce=b"",
            limits=Limits(10_000, dt.timedelta(hours=1)),
            now=now,
        )
        issued = self.harness.certificate(record.id)
        await self.harness.create(record.id, issued.sha256)
        await self.store.advance(
            record.id,
            Phase.ATTESTED,
            "attested",
            now,
            certificate_pem=issued.pem,
            certificate_sha256=issued.sha256,
        )
        self.certificates[record.id] = issued.pem
        self.runtime.running.add(record.id)
        return record.id


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with attestor_on_swtpm(tmp_path) as harness:
        store = EnclaveStore(harness.database)
        runtime = RunningSet()
        provisioner = EnclaveProvisioner(
            store=store,
            runtime=runtime,  # type: ignore[arg-type]
            issuer=None,  # type: ignore[arg-type]
            probe=None,  # type: ignore[arg-type]
            attestor=harness.attestor,
            settings=ProvisioningSettings(token_issuer="t", token_audience="t"),
        )
        rounds = ReattestationRounds(
            store=store,
            results=ReattestationStore(harness.database),
            runtime=runtime,  # type: ignore[arg-type]
            provisioner=provisioner,
            attestor=harness.attestor,
            interval_seconds=2.0,
            grace_seconds=3.0,
        )
        user = await UserStore(harness.database).create_user(
            "owner", "not-a-real-hash", dt.datetime.now(dt.UTC)
        )
        yield World(harness, store, runtime, rounds, CountingQuotes(harness), {}, user.id)


def _verify(world: World, enclave_id: str, raw: bytes) -> attestation_pb2.Attestation:
    attestation = attestation_pb2.Attestation.FromString(raw)
    world.harness.verify(attestation, attestation.nonce, world.certificates[enclave_id])
    return attestation


async def _collect(
    store: EnclaveStore, enclave_id: str, after: int, count: int
) -> list[EventRecord]:
    """What a watcher following attestations sees: ``count`` events after ``after``."""
    events: list[EventRecord] = []
    final = lambda phase: phase in TERMINAL and phase is not Phase.ATTESTED  # noqa: E731
    async for event in follow_events(store, enclave_id, after, final, poll_seconds=0.05):
        events.append(event)
        if len(events) == count or event.phase is Phase.FAILED:
            break
    return events


async def test_fifty_enclaves_every_two_seconds_cost_one_quote_a_round(world: World) -> None:
    ids = [await world.new_enclave() for _ in range(50)]
    heads = {i: (await world.store.get(i)).last_sequence for i in ids}  # type: ignore[union-attr]
    watchers = [asyncio.ensure_future(_collect(world.store, i, heads[i], 3)) for i in ids]
    mine, also = os.urandom(32), os.urandom(32)  # two clients of enclave 7 ask
    assert world.rounds.request(ids[7], mine)
    assert world.rounds.request(ids[7], also)

    world.quotes.count = 0
    running = asyncio.ensure_future(world.rounds.run())
    try:
        seen = await asyncio.wait_for(asyncio.gather(*watchers), 30)
    finally:
        running.cancel()
    rounds_run = world.rounds._round
    # Three rounds each verified all fifty with one quote (a fourth may have begun).
    assert 3 <= rounds_run <= 4
    assert world.quotes.count <= rounds_run
    results = ReattestationStore(world.harness.database)
    for enclave_id, events in zip(ids, seen, strict=True):
        # Every event verifies (enclave 7's first round has one per client nonce).
        assert [e.phase for e in events] == [Phase.ATTESTED] * 3, events
        for event in events:
            found = await results.get(enclave_id, event.sequence)
            assert found is not None
            attestation = _verify(world, enclave_id, found[1])
            if enclave_id == ids[7] and attestation.nonce == mine:
                assert "your nonce" in event.message
    own = [
        await results.get(ids[7], e.sequence)
        for e in await world.store.events_after(ids[7], heads[ids[7]])
    ]
    nonces = [attestation_pb2.Attestation.FromString(f[1]).nonce for f in own if f]
    # Both clients' nonces were quoted in the first round, each its own event.
    assert set(nonces[:2]) == {mine, also}


async def test_a_lost_workload_and_a_replaced_certificate_are_revoked_in_one_round(
    world: World,
) -> None:
    kept, killed, replaced = [await world.new_enclave() for _ in range(3)]
    world.runtime.running.discard(killed)  # its process died
    # Behind the backend's back: the row now names another certificate than the measured one.
    other = world.harness.certificate(replaced)
    now = dt.datetime.now(dt.UTC)
    async with world.harness.database.session() as session:
        from sqlalchemy import update

        from licensing_server.storage._models import Enclave

        await session.execute(
            update(Enclave)
            .where(Enclave.id == replaced)
            .values(certificate_pem=other.pem, certificate_sha256=other.sha256, updated_at=now)
        )

    world.quotes.count = 0
    report = await world.rounds.run_round()
    assert world.quotes.count == 1
    assert report.revoked == {killed: "WORKLOAD_LOST", replaced: "ATTESTATION_NOT_MEASURED"}
    assert report.attested == 1
    for enclave_id, reason in report.revoked.items():
        record = await world.store.get(enclave_id)
        assert record is not None
        assert record.phase is Phase.FAILED
        assert record.failure_reason == reason
    assert replaced in world.runtime.stopped  # its workload was stopped
    kept_record = await world.store.get(kept)
    assert kept_record is not None
    assert kept_record.phase is Phase.ATTESTED


async def test_a_tpm_down_for_less_than_the_grace_revokes_nothing_and_longer_revokes(
    world: World,
) -> None:
    enclave_id = await world.new_enclave()
    assert (await world.rounds.run_round()).attested == 1
    epoch_before = await _last_epoch(world, enclave_id)
    swtpm = world.harness.swtpm
    port = swtpm.port

    swtpm.stop()
    down = await world.rounds.run_round()
    assert down.tpm_unreachable
    assert not down.revoked
    swtpm.start(port)  # back within the 3 s grace: a TPM reset, PCR 23 is written again
    back = await world.rounds.run_round()
    assert not back.tpm_unreachable
    assert back.attested == 1
    assert world.rounds.unreachable_since is None
    # The TPM reset shows in the next round's evidence: a new log epoch, still verified.
    assert await _last_epoch(world, enclave_id) > epoch_before

    swtpm.stop()
    first = await world.rounds.run_round()
    assert first.tpm_unreachable
    assert not first.revoked
    await asyncio.sleep(world.rounds.grace.total_seconds() + 0.5)
    late = await world.rounds.run_round()
    assert late.revoked == {enclave_id: "ATTESTATION_TPM_UNREACHABLE"}
    record = await world.store.get(enclave_id)
    assert record is not None
    assert record.phase is Phase.FAILED
    assert "grace" in (await world.store.events_after(enclave_id, 0))[-1].message
    swtpm.start(port)


async def _last_epoch(world: World, enclave_id: str) -> int:
    record = await world.store.get(enclave_id)
    assert record is not None
    found = await ReattestationStore(world.harness.database).get(enclave_id, record.last_sequence)
    assert found is not None
    return _verify(world, enclave_id, found[1]).log_epoch


async def test_a_pcr_23_someone_else_keeps_extending_revokes_the_round_s_enclaves(
    world: World,
) -> None:
    """Another program on the host extends PCR 23 before every quote (a real extend on the
    real swtpm): even after the attestor writes PCR 23 again, the quote does not show the
    measured set, which is evidence against every enclave of the round, not an outage."""
    ids = [await world.new_enclave() for _ in range(3)]
    counted = world.harness.tpm.quote

    async def tampered(qualifying_data: bytes, pcrs: list[int]) -> QuoteResult:
        await world.harness.tpm.extend_pcr(23, os.urandom(32))
        return await counted(qualifying_data, pcrs)

    world.harness.tpm.quote = tampered  # type: ignore[method-assign,assignment]
    report = await world.rounds.run_round()
    assert report.revoked == dict.fromkeys(ids, "ATTESTATION_LOG_MISMATCH")
    assert not report.tpm_unreachable
    for enclave_id in ids:
        record = await world.store.get(enclave_id)
        assert record is not None
        assert record.phase is Phase.FAILED
        assert record.failure_reason == "ATTESTATION_LOG_MISMATCH"
    assert set(ids) <= set(world.runtime.stopped)


async def test_a_backend_restarted_between_rounds_re_attests_on_from_the_same_data(
    world: World, tmp_path: Path
) -> None:
    """The same TPM and database after a restart (a new attestor and rounds, as a new
    backend process makes): the enclaves stay ATTESTED, the new evidence verifies, and
    round numbers go on from the last one rather than starting again at 1."""
    ids = [await world.new_enclave() for _ in range(3)]
    for _ in range(2):
        first = await world.rounds.run_round()
        assert first.attested == 3
    restarted = world.harness.restarted(tmp_path / "after-restart")
    (tmp_path / "after-restart").mkdir()
    await restarted.prove_attestation_key()
    try:
        rounds = ReattestationRounds(
            store=world.store,
            results=ReattestationStore(world.harness.database),
            runtime=world.runtime,  # type: ignore[arg-type]
            provisioner=world.rounds._provisioner,
            attestor=restarted,
            interval_seconds=2.0,
            grace_seconds=3.0,
        )
        heads = {i: (await world.store.get(i)).last_sequence for i in ids}  # type: ignore[union-attr]
        report = await rounds.run_round()
        assert report.revoked == {}
        assert report.attested == 3
        assert report.round == first.round + 1
        for enclave_id in ids:
            record = await world.store.get(enclave_id)
            assert record is not None
            assert record.phase is Phase.ATTESTED
            assert record.last_sequence == heads[enclave_id] + 1
            found = await ReattestationStore(world.harness.database).get(
                enclave_id, record.last_sequence
            )
            assert found is not None
            assert found[0] == report.round
            _verify(world, enclave_id, found[1])
    finally:
        await restarted.close()
