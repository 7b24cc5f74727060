"""An attested enclave whose process dies while the backend runs is settled at once.

Nothing else would notice: its row would stay ATTESTED and hold a licence, and its
certificate would stay in the measured set, until the enclave expired.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from licensing.v1 import enclave_pb2

from tests.provisioning.streams import (
    FAILED,
    StreamWatch,
    assert_attested,
    assert_no_enclave_processes,
    delete_enclave,
    enclave_processes,
    get_enclave,
    kill9,
    wait_until,
    work_dirs,
)
from tests.support import Stack, start_stack

#: The periodic reconciler runs every second here; settling must follow within this bound.
SETTLE_SECONDS = 30.0


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp(f"lost-{request.param}")
    yield from start_stack(
        request.param,
        tmp,
        os.environ.get("LICENSING_TEST_POSTGRES_URL"),
        LICENSING_MAX_ENCLAVES="1",
        LICENSING_RECONCILE_INTERVAL_SECONDS="1",
    )


def test_a_killed_enclave_fails_and_frees_its_licence(stack: Stack) -> None:
    user = stack.new_user()
    create = StreamWatch.create(stack, user)
    events = create.wait_done(90)
    assert create.error is None, create.error
    attested = assert_attested(stack, events, create.nonce)
    enclave_id = attested.enclave_id
    watcher = StreamWatch.watch(stack, user, enclave_id, after=attested.sequence)

    (process,) = [
        p for p in enclave_processes(stack, [enclave_id]) if enclave_id in " ".join(p.argv)
    ]
    kill9(process.pid)

    seen: list[enclave_pb2.Enclave] = []

    def failed() -> enclave_pb2.Enclave | None:
        seen[:] = [get_enclave(stack, user, enclave_id)]
        return seen[0] if seen[0].phase == FAILED else None

    enclave = wait_until(
        "the lost enclave to fail", failed, SETTLE_SECONDS, step=0.25, describe=lambda: seen
    )
    assert enclave.failure_reason == "WORKLOAD_LOST"
    # The watcher following it is told, and its stream ends at the failure.
    assert [(e.phase, e.failure_reason) for e in watcher.wait_done(15)] == [
        (FAILED, "WORKLOAD_LOST")
    ]
    assert watcher.error is None, watcher.error
    assert enclave_id not in work_dirs(stack)
    assert_no_enclave_processes(stack, [enclave_id], timeout=15)

    # The licence (one here) is free again: a new enclave comes up and attests.
    again = StreamWatch.create(stack, user)
    again_events = again.wait_done(90)
    assert again.error is None, again.error
    assert_attested(stack, again_events, again.nonce)
    for done in (enclave_id, again_events[-1].enclave_id):
        delete_enclave(stack, user, done)
