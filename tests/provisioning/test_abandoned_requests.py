"""A licence reserved for a request nobody follows up is released, not held until expiry."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from licensing_server.storage import Database, EnclaveStore, Limits
from tests.provisioning.streams import StreamWatch, delete_enclave, get_enclave, phase_name
from tests.support import Stack, start_stack


@pytest.fixture(params=["sqlite", "postgresql"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    yield from start_stack(
        request.param,
        tmp_path,
        os.environ.get("LICENSING_TEST_POSTGRES_URL"),
        LICENSING_MAX_ENCLAVES="1",
        LICENSING_ABANDONED_AFTER_SECONDS="2",
        LICENSING_REAP_INTERVAL_SECONDS="1",
    )


def _reserve_like_a_frontend_that_then_died(stack: Stack, owner_id: str) -> str:
    """What the frontend writes before it calls the backend: the ACCEPTED reservation."""

    async def reserve() -> str:
        database = Database.connect(stack.database_url)
        try:
            record, created = await EnclaveStore(database).reserve(
                owner_id=owner_id,
                request_id="never-followed-up",
                nonce=b"",
                limits=Limits(1, dt.timedelta(hours=1)),
                now=dt.datetime.now(dt.UTC),
            )
        finally:
            await database.close()
        assert created
        return record.id

    return asyncio.run(reserve())


def test_an_abandoned_reservation_fails_and_frees_the_licence(stack: Stack) -> None:
    user = stack.new_user()
    enclave_id = _reserve_like_a_frontend_that_then_died(stack, user.user_id)
    assert phase_name(get_enclave(stack, user, enclave_id).phase) == "PHASE_ACCEPTED"

    deadline = time.monotonic() + 30
    while (enclave := get_enclave(stack, user, enclave_id)).failure_reason == "":
        assert time.monotonic() < deadline, "the reservation was never released"
        time.sleep(0.5)
    assert phase_name(enclave.phase) == "PHASE_FAILED"
    assert enclave.failure_reason == "PROVISIONING_ABANDONED"

    # The only licence is free again: a new request gets its enclave.
    create = StreamWatch.create(stack, user)
    events = create.wait_done(90)
    assert phase_name(events[-1].phase) == "PHASE_ATTESTED"
    delete_enclave(stack, user, events[-1].enclave_id)
    delete_enclave(stack, user, enclave_id)
