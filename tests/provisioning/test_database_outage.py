"""PostgreSQL goes away in the middle of provisioning and comes back 11 s later.

The backend keeps running throughout. Its provisioning task cannot write the next phase:
it stops the workload and, failing to record that too, leaves the row to the periodic
reconciler, which settles it once the database is back: FAILED /
``PROVISIONING_INTERRUPTED``, the licence free, nothing left running, and every follower
(the creator's stream and a watcher's) told. Runs its own PostgreSQL server
(``tests/postgres_server.py``): the shared one must never be stopped.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.postgres_server import PostgresServer, private_postgres
from tests.provisioning.streams import (
    CERTIFICATE_ISSUED,
    FAILED,
    READY,
    HeldEnclaves,
    StreamWatch,
    assert_attested,
    assert_contiguous,
    assert_no_enclave_processes,
    delete_enclave,
    enclave_processes,
    get_enclave,
    port_answers,
    wait_until,
    work_dirs,
)
from tests.support import LoggedIn, Stack, error_info, start_stack

#: How long the database stays down (the outage of the report).
OUTAGE_SECONDS = 11.0
#: A bound, not a measurement: from the database's return until everything is settled.
SETTLE_SECONDS = 60.0
#: Holds each quote this long, so that an enclave stays ATTESTING while the database dies.
TPM_LATENCY_MS = 5000


@dataclass
class Rig:
    stack: Stack
    postgres: PostgresServer
    #: While held, the certificate the backend sends waits outside the enclave.
    certificate_hold: HeldEnclaves


def _certificate_held_enclave(directory: Path, python: str) -> HeldEnclaves:
    """The real enclave, whose stdin (where its certificate arrives) waits while held.

    It makes its key and sends its CSR at once, so the enclave gets to
    CERTIFICATE_ISSUED with its process running, and stays there until released.
    """
    hold = directory / "certificate-hold"
    command = directory / "certificate-held-enclave"
    command.write_text(
        "#!/bin/sh\n"
        "{ n=0\n"
        f"  while [ -e '{hold}' ] && [ \"$n\" -lt 900 ]; do sleep 0.1; n=$((n + 1)); done\n"
        "  exec cat\n"
        f"}} | '{python}' -m licensing_enclave \"$@\"\n"
    )
    command.chmod(0o755)
    return HeldEnclaves(command, hold)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("outage")
    held = _certificate_held_enclave(tmp, sys.executable)
    with private_postgres() as postgres:
        for stack in start_stack(
            "postgresql",
            tmp,
            postgres.admin_url,
            LICENSING_ENCLAVE_COMMAND=str(held.command),
            LICENSING_MAX_ENCLAVES="1",
            LICENSING_RECONCILE_INTERVAL_SECONDS="1",
            LICENSING_TPM_SIMULATED_LATENCY_MS=str(TPM_LATENCY_MS),
        ):
            yield Rig(stack, postgres, held)


def _crash(postgres: PostgresServer) -> None:
    """Every server process killed at once, as in a crash."""
    postgres.stop("immediate")


def _back_after_the_outage(postgres: PostgresServer) -> None:
    if not postgres.running():
        time.sleep(OUTAGE_SECONDS)  # the outage itself; nothing is measured against it
        postgres.start()


def _assert_settled(
    stack: Stack, user: LoggedIn, enclave_id: str, create: StreamWatch, watcher: StreamWatch
) -> None:
    """Everything the outage interrupted is final, stopped and told."""
    seen: list[object] = []

    def failed() -> bool:
        try:
            enclave = get_enclave(stack, user, enclave_id)
        except grpc.RpcError as exc:
            seen[:] = [exc.code()]
            return False
        seen[:] = [enclave]
        return enclave.phase == FAILED

    wait_until(
        "the enclave to be settled", failed, SETTLE_SECONDS, step=0.25, describe=lambda: seen
    )
    enclave = get_enclave(stack, user, enclave_id)
    assert enclave.failure_reason == "PROVISIONING_INTERRUPTED", enclave

    # The creator's stream and the watcher's both outlived the outage and end at FAILED.
    for stream in (create, watcher):
        events = stream.wait_done(SETTLE_SECONDS)
        assert events[-1].phase == FAILED, (stream.name, events, stream.error)
        assert events[-1].failure_reason == "PROVISIONING_INTERRUPTED", events
        assert "database was unavailable" in events[-1].message, events
    assert_contiguous(create.events)
    assert watcher.error is None, watcher.error
    assert watcher.events == create.events
    assert create.error is not None
    info = error_info(create.error)
    assert create.error.code() == grpc.StatusCode.UNAVAILABLE, create.error
    assert info is not None
    assert info.reason == "ENCLAVE_FAILED", info
    assert info.metadata["failure_reason"] == "PROVISIONING_INTERRUPTED"

    assert_no_enclave_processes(stack, [enclave_id], timeout=15)
    assert enclave_id not in work_dirs(stack)

    # The licence (the user's only one) is free again.
    again = StreamWatch.create(stack, user)
    events = again.wait_done(90)
    assert again.error is None, (events, again.error)
    assert_attested(stack, events, again.nonce)
    delete_enclave(stack, user, events[-1].enclave_id)
    delete_enclave(stack, user, enclave_id)
    assert_no_enclave_processes(stack, [events[-1].enclave_id], timeout=15)


def test_database_lost_while_an_enclave_starts(rig: Rig) -> None:
    """The database dies after the certificate is issued, before the enclave serves."""
    stack = rig.stack
    user = stack.new_user()
    try:
        with rig.certificate_hold.holding():
            create = StreamWatch.create(stack, user)
            create.wait_for_phase(CERTIFICATE_ISSUED, 60)
            enclave_id = create.enclave_id
            watcher = StreamWatch.watch(stack, user, enclave_id)
            watcher.wait_for_phase(CERTIFICATE_ISSUED, 15)
            assert enclave_processes(stack, [enclave_id])
            _crash(rig.postgres)
        # Released with the database down: the enclave serves, and READY cannot be written.
    finally:
        _back_after_the_outage(rig.postgres)
    _assert_settled(stack, user, enclave_id, create, watcher)


def test_database_lost_while_an_enclave_is_attested(rig: Rig) -> None:
    """The database dies while the TPM quotes a READY enclave (ATTESTING)."""
    stack = rig.stack
    user = stack.new_user()
    create = StreamWatch.create(stack, user)
    ready = create.wait_for_phase(READY, 60)
    enclave_id = create.enclave_id
    port = int(ready.endpoint.rpartition(":")[2])
    watcher = StreamWatch.watch(stack, user, enclave_id)
    watcher.wait_for_phase(READY, 15)
    assert port_answers(port)
    try:
        _crash(rig.postgres)
        assert not create.done, f"attested before the database went away: {create.events}"
    finally:
        _back_after_the_outage(rig.postgres)
    _assert_settled(stack, user, enclave_id, create, watcher)
    assert not port_answers(port)
