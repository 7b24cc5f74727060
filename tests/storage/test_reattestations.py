"""Re-attestation rounds on a real database: an enclave's history stays bounded by age."""

from __future__ import annotations

import datetime as dt

from licensing_server.storage import Database, EnclaveStore, Limits, Phase
from licensing_server.storage._reattestations import (
    KEPT_PER_ENCLAVE,
    ReattestationResult,
    ReattestationStore,
)
from tests.storage.conftest import NOW, new_user

PROVISIONING = [Phase.SCHEDULED, Phase.RUNNING, Phase.CERTIFICATE_ISSUED, Phase.READY]


async def test_only_the_newest_rounds_are_kept_and_the_provisioning_history_stays(
    database: Database,
) -> None:
    enclaves, rounds = EnclaveStore(database), ReattestationStore(database)
    user = await new_user(database)
    record, _ = await enclaves.reserve(
        owner_id=user.id,
        request_id="kept",
        nonce=b"",
        limits=Limits(5, dt.timedelta(hours=1)),
        now=NOW,
    )
    for phase in [*PROVISIONING, Phase.ATTESTING, Phase.ATTESTED]:
        await enclaves.advance(record.id, phase, phase.value, NOW)
    provisioned = await enclaves.events_after(record.id, 0)

    total = KEPT_PER_ENCLAVE + 10
    for number in range(1, total + 1):
        written = await rounds.record(
            [ReattestationResult(record.id, number, f"round {number}".encode(), "ok")], NOW
        )
        assert len(written) == 1

    events = await enclaves.events_after(record.id, 0)
    assert events[: len(provisioned)] == provisioned  # the creator's history is untouched
    kept = events[len(provisioned) :]
    assert len(kept) == KEPT_PER_ENCLAVE  # not one per round the enclave ever had
    assert kept[-1].sequence == len(provisioned) + total
    for event in kept:
        found = await rounds.get(record.id, event.sequence)
        assert found is not None  # every kept round still has its evidence
    assert await rounds.get(record.id, len(provisioned) + 1) is None
