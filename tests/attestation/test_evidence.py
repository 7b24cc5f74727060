"""The evidence with each quote is bounded by the live enclaves, not by every one ever created.

The attestor runs in this process on a real swtpm and SQLite (``harness.py``), so a test
can make dozens of set changes, race them with quotes, and break PCR 23 behind its back.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from licensing.v1 import attestation_pb2

from licensing_client.attestation import MEASURED_SET_KIND, MEASUREMENT_PCR
from licensing_common.errors import FailedPrecondition
from licensing_server.attestation import attestation_message
from licensing_server.pki import IssuedCertificate
from tests.attestation.harness import Harness, attestor_on_swtpm

CYCLES = 30


@pytest.fixture(scope="module")
async def harness(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Harness]:
    async with attestor_on_swtpm(tmp_path_factory.mktemp("evidence")) as h:
        yield h


@pytest.fixture(scope="module")
async def probe(harness: Harness) -> IssuedCertificate:
    """One enclave that stays live through the module."""
    issued = harness.certificate("probe")
    await harness.create("probe", issued.sha256)
    return issued


async def attest(h: Harness, issued: IssuedCertificate) -> attestation_pb2.Attestation:
    nonce = os.urandom(32)
    attestation = attestation_message(await h.attestor.attest(issued.pem, issued.sha256, nonce))
    h.verify(attestation, nonce, issued.pem)
    return attestation


async def test_evidence_is_bounded_by_the_live_set_not_by_enclaves_ever_created(
    harness: Harness, probe: IssuedCertificate
) -> None:
    before = await attest(harness, probe)
    live = len(harness.live)
    for i in range(CYCLES):
        await harness.create(f"cycle-{i}")
        harness.delete(f"cycle-{i}")
    after = await attest(harness, probe)
    assert len(after.event_log) == len(before.event_log) == 1
    assert after.event_log[0].kind == MEASURED_SET_KIND
    assert after.measurement_proof.leaf_count == live
    assert len(after.SerializeToString()) <= len(before.SerializeToString()) + 8
    # With more live enclaves the proof grows by log2 of them, and nothing else does.
    for i in range(CYCLES):
        await harness.create(f"live-{i}")
    try:
        crowded = await attest(harness, probe)
        assert len(crowded.event_log) == 1
        assert crowded.measurement_proof.leaf_count == live + CYCLES
        assert len(crowded.measurement_proof.siblings) <= math.ceil(math.log2(live + CYCLES))
    finally:
        for i in range(CYCLES):
            harness.delete(f"live-{i}")


async def test_a_deleted_enclave_is_no_longer_attested(harness: Harness) -> None:
    gone = harness.certificate("gone")
    await harness.create("gone", gone.sha256)
    await attest(harness, gone)
    harness.delete("gone")
    with pytest.raises(FailedPrecondition) as refused:
        await harness.attestor.attest(gone.pem, gone.sha256, os.urandom(32))
    assert refused.value.reason == "ENCLAVE_NOT_MEASURED"


async def test_quotes_racing_creates_and_deletes_all_verify(
    harness: Harness, probe: IssuedCertificate
) -> None:
    async def churn() -> None:
        for i in range(CYCLES):
            await harness.create(f"race-{i}")
            if i % 3:
                harness.delete(f"race-{i}")
            await asyncio.sleep(0)

    async def quotes() -> list[attestation_pb2.Attestation]:
        answers: list[attestation_pb2.Attestation] = []
        for _ in range(10):
            answers += await asyncio.gather(*(attest(harness, probe) for _ in range(5)))
        return answers

    try:
        _, answers = await asyncio.gather(churn(), quotes())
    finally:
        for i in range(CYCLES):
            harness.delete(f"race-{i}")
    assert len(answers) == 50  # each verified against the PCR 23 quoted with it
    assert len({a.log_epoch for a in answers}) > 1, "the set should change between quotes"


async def test_pcr_23_left_mid_rewrite_or_changed_behind_our_back_is_rewritten(
    harness: Harness, probe: IssuedCertificate
) -> None:
    before = await attest(harness, probe)
    # What a crash between the reset and the extend leaves: PCR 23 at zero.
    await harness.tpm.reset_pcr(MEASUREMENT_PCR)
    repaired = await attest(harness, probe)
    assert repaired.log_epoch > before.log_epoch
    # Someone else extending PCR 23: the next quote notices and writes it again.
    await harness.tpm.extend_pcr(MEASUREMENT_PCR, os.urandom(32))
    assert (await attest(harness, probe)).log_epoch > repaired.log_epoch


async def test_a_restarted_attestor_writes_pcr_23_from_the_live_set(
    harness: Harness, probe: IssuedCertificate, tmp_path: Path
) -> None:
    before = await attest(harness, probe)
    await harness.create("left-behind")
    harness.live.pop("left-behind")  # deleted while no attestor was running
    restarted = harness.restarted(tmp_path)
    await restarted.prove_attestation_key()
    try:
        nonce = os.urandom(32)
        after = attestation_message(await restarted.attest(probe.pem, probe.sha256, nonce))
        harness.verify(after, nonce, probe.pem)
        assert after.log_epoch > before.log_epoch
        assert after.measurement_proof.leaf_count == len(harness.live)
    finally:
        await restarted.close()
        harness.attestor.forget("left-behind")
