"""Crashes in the middle of provisioning: kill -9 of the backend or the frontend.

The supervisor restarts what died; the backend's reconciler settles every enclave the
crash interrupted, and clients (CreateEnclave, WatchEnclave) see how each one ended.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from licensing.v1 import enclave_pb2

from licensing_server.runtimes import LocalHandle, LocalProcessRuntime
from tests.provisioning.streams import (
    ACCEPTED,
    ATTESTED,
    FAILED,
    SCHEDULED,
    Event,
    HeldEnclaves,
    StreamWatch,
    assert_attested,
    assert_contiguous,
    assert_no_enclave_processes,
    delete_enclave,
    enclave_processes,
    enclave_stub,
    get_enclave,
    kill9,
    kill_and_wait_restart,
    port_answers,
    wait_until,
    work_dirs,
)
from tests.support import LoggedIn, Stack, error_reason, pid_of, start_stack

MAX_ENCLAVES = 3
#: From the kill until every interrupted enclave has its final phase.
SETTLE_SECONDS = 30.0


@dataclass
class Rig:
    stack: Stack
    enclaves: HeldEnclaves


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def rig(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp(f"crash-{request.param}")
    held = HeldEnclaves.write(tmp, sys.executable)
    try:
        for stack in start_stack(
            request.param,
            tmp,
            os.environ.get("LICENSING_TEST_POSTGRES_URL"),
            LICENSING_ENCLAVE_COMMAND=str(held.command),
            LICENSING_MAX_ENCLAVES=str(MAX_ENCLAVES),
        ):
            yield Rig(stack, held)
    finally:
        held.hold_file.unlink(missing_ok=True)


def _create_attested(stack: Stack, user: LoggedIn, request_id: str | None = None) -> Event:
    create = StreamWatch.create(stack, user, request_id)
    events = create.wait_done(60)
    assert create.error is None, (events, create.error)
    return assert_attested(stack, events, create.nonce)


def test_backend_killed_mid_provisioning(rig: Rig) -> None:
    stack = rig.stack
    user = stack.new_user()
    creates: list[StreamWatch] = []
    try:
        with rig.enclaves.holding():
            creates = [StreamWatch.create(stack, user, f"crash-{i}") for i in range(MAX_ENCLAVES)]
            for create in creates:
                create.wait_for_phase(SCHEDULED, 30)
            ids = [create.enclave_id for create in creates]
            watcher = StreamWatch.watch(stack, user, ids[0])
            watcher.wait_for_phase(SCHEDULED, 15)
            running = enclave_processes(stack, ids)
            assert {i for i in ids if any(i in " ".join(p.argv) for p in running)} == set(ids)

            kill_and_wait_restart(stack, "backend")
            # Still held: the workloads cannot go away by themselves, the reconciler must
            # stop them.
            for stream in [*creates, watcher]:
                stream.wait_done(SETTLE_SECONDS)
            assert_no_enclave_processes(stack, ids, timeout=10)
    finally:
        for stream in creates:
            stream.cancel()

    for create in creates:
        events = create.events
        assert_contiguous(events)
        assert [e.phase for e in events] == [ACCEPTED, SCHEDULED, FAILED], events
        assert events[-1].failure_reason == "PROVISIONING_INTERRUPTED", events
        assert create.error is not None
        assert create.error.code() == grpc.StatusCode.UNAVAILABLE
        assert error_reason(create.error) == "ENCLAVE_FAILED"
    # The watcher saw the same history and its stream ended normally at FAILED.
    assert watcher.error is None, watcher.error
    assert watcher.events == creates[0].events

    for enclave_id in ids:
        enclave = get_enclave(stack, user, enclave_id)
        assert enclave.phase == FAILED
        assert enclave.failure_reason == "PROVISIONING_INTERRUPTED"
    assert not work_dirs(stack) & set(ids)
    assert work_dirs(stack) == set(), "only enclaves that serve keep a work directory"

    # The failed enclaves hold no licence: the user can create up to the limit again.
    attested = [_create_attested(stack, user) for _ in range(MAX_ENCLAVES)]
    try:
        with pytest.raises(grpc.RpcError) as exceeded:
            list(
                enclave_stub(stack, user).CreateEnclave(
                    enclave_pb2.CreateEnclaveRequest(request_id="one-too-many"),
                    metadata=user.bearer,
                    timeout=30,
                )
            )
        assert exceeded.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_reason(exceeded.value) == "ENCLAVE_LIMIT_REACHED"
        assert work_dirs(stack) == {e.enclave_id for e in attested}
    finally:
        for event in attested:
            delete_enclave(stack, user, event.enclave_id)
    assert_no_enclave_processes(stack, [e.enclave_id for e in attested], timeout=15)
    assert work_dirs(stack) == set()


def test_backend_killed_while_attested(rig: Rig) -> None:
    stack = rig.stack
    user = stack.new_user()
    attested = _create_attested(stack, user)
    enclave_id = attested.enclave_id
    assert attested.endpoint
    assert enclave_processes(stack, [enclave_id])
    assert enclave_id in work_dirs(stack)

    kill_and_wait_restart(stack, "backend")

    seen: list[enclave_pb2.Enclave] = []

    def failed() -> enclave_pb2.Enclave | None:
        seen[:] = [get_enclave(stack, user, enclave_id)]
        return seen[0] if seen[0].phase == FAILED else None

    # The workload's process may outlive the backend by a few seconds (see HeldEnclaves):
    # it is lost all the same, since nothing can drive it any more.
    enclave = wait_until(
        "the enclave to fail", failed, SETTLE_SECONDS, step=0.25, describe=lambda: seen
    )
    assert enclave.failure_reason == "WORKLOAD_LOST"
    # A watcher resuming after ATTESTED gets exactly the failure.
    watcher = StreamWatch.watch(stack, user, enclave_id, after=attested.sequence)
    events = watcher.wait_done(15)
    assert watcher.error is None, watcher.error
    assert [(e.sequence, e.phase, e.failure_reason) for e in events] == [
        (attested.sequence + 1, FAILED, "WORKLOAD_LOST")
    ]
    assert_no_enclave_processes(stack, [enclave_id], timeout=15)
    assert enclave_id not in work_dirs(stack)

    delete_enclave(stack, user, enclave_id)
    with pytest.raises(grpc.RpcError) as gone:
        get_enclave(stack, user, enclave_id)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


def _watch_resuming(stack: Stack, user: LoggedIn, enclave_id: str, after: int) -> list[Event]:
    """What a client does when its stream breaks: reconnect with backoff, resume after ``after``.

    Returns every event received after ``after`` until the stream ends at a final phase.
    """
    deadline = time.monotonic() + 60
    backoff = 0.1
    received: list[Event] = []
    attempts = 0
    while True:
        attempts += 1
        if port_answers(stack.api_port):
            try:
                stub = enclave_stub(stack, user)  # a fresh connection
                for reply in stub.WatchEnclave(
                    enclave_pb2.WatchEnclaveRequest(enclave_id=enclave_id, from_sequence=after),
                    metadata=user.bearer,
                    timeout=max(1.0, deadline - time.monotonic()),
                ):
                    event = Event.of(reply)
                    received.append(event)
                    after = event.sequence
                return received
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
        if time.monotonic() + backoff > deadline:
            raise AssertionError(f"could not resume watching after {attempts} attempts")
        time.sleep(backoff)
        backoff = min(backoff * 2, 2.0)


def test_watch_resumes_after_frontend_restart(rig: Rig) -> None:
    stack = rig.stack
    user = stack.new_user()
    request_id = "survives-frontend"
    with rig.enclaves.holding():
        create = StreamWatch.create(stack, user, request_id)
        try:
            create.wait_for_phase(SCHEDULED, 30)
            enclave_id = create.enclave_id
            watcher = StreamWatch.watch(stack, user, enclave_id)
            watcher.wait_for_phase(SCHEDULED, 15)
            before = list(watcher.events)

            old_frontend = pid_of(stack, "frontend")
            kill9(old_frontend)
            # Both client streams break with the frontend...
            for stream in (watcher, create):
                stream.wait_done(15)
                assert stream.error is not None, stream.events
                assert stream.error.code() == grpc.StatusCode.UNAVAILABLE
            assert watcher.events == before
        finally:
            create.cancel()
    # ...while the backend goes on provisioning (the hold is released here, so some events
    # happen while the frontend is down and some after the client is back).
    resumed = _watch_resuming(stack, user, enclave_id, before[-1].sequence)

    assert_contiguous(resumed, first=before[-1].sequence + 1)
    assert resumed[-1].phase == ATTESTED, resumed
    history = StreamWatch.watch(stack, user, enclave_id).wait_done(15)
    assert before + resumed == history
    # Its quote binds the nonce the broken CreateEnclave sent.
    assert_attested(stack, history, create.nonce)
    assert pid_of(stack, "frontend") != old_frontend
    # The broken CreateEnclave, retried with its request id, is the same enclave: it replays.
    again = StreamWatch.create(stack, user, request_id)
    assert again.wait_done(15) == history
    assert again.error is None, again.error

    delete_enclave(stack, user, enclave_id)
    assert_no_enclave_processes(stack, [enclave_id], timeout=15)
    assert enclave_id not in work_dirs(stack)


def test_an_exited_unreaped_workload_is_not_alive(tmp_path: Path) -> None:
    """An enclave orphaned by a backend crash waits in /proc as a zombie until init reaps it.

    In a container whose init never reaps (the supervisor as PID 1, say) that is forever.
    The reconciler stops each interrupted enclave by its handle before the backend serves:
    a zombie must count as gone, not wait out both signals' grace time (10 s) per enclave.
    """
    child = subprocess.Popen(["true"])  # not waited for until the end: a zombie meanwhile
    try:
        stat = wait_until(
            "the child to exit", lambda: _stat_if_zombie(child.pid), timeout=10, step=0.05
        )
        handle = LocalHandle(child.pid, stat[19], str(tmp_path / "gone")).dump()
        runtime = LocalProcessRuntime(tmp_path)
        assert not asyncio.run(runtime.is_alive("some-enclave", handle))
        started = time.monotonic()
        asyncio.run(runtime.stop("some-enclave", handle))
        assert time.monotonic() - started < 1.0
    finally:
        child.wait(10)


def _stat_if_zombie(pid: int) -> list[str] | None:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return fields if fields[0] == "Z" else None
