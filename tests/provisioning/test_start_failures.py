"""Enclaves that cannot start: the failure is reported, the licence freed, nothing left behind."""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.provisioning.streams import (
    ACCEPTED,
    FAILED,
    SCHEDULED,
    Event,
    StreamWatch,
    assert_attested,
    assert_contiguous,
    assert_no_enclave_processes,
    delete_enclave,
    get_enclave,
    work_dirs,
)
from tests.support import LoggedIn, Stack, error_info, free_port, start_stack

stack_of = contextlib.contextmanager(start_stack)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextlib.contextmanager
def _stack(database: str, tmp: Path, **env: str) -> Iterator[Stack]:
    with stack_of(database, tmp, os.environ.get("LICENSING_TEST_POSTGRES_URL"), **env) as stack:
        yield stack


@dataclass
class Failure:
    events: list[Event]
    code: grpc.StatusCode
    reason: str
    metadata: dict[str, str]
    details: str

    @property
    def last(self) -> Event:
        return self.events[-1]


def _create_failing(stack: Stack, user: LoggedIn) -> Failure:
    """One CreateEnclave that must end in FAILED (and the RPC in UNAVAILABLE/ENCLAVE_FAILED)."""
    create = StreamWatch.create(stack, user)
    events = create.wait_done(60)
    assert create.error is not None, f"the create did not fail: {events}"
    info = error_info(create.error)
    assert info is not None, create.error
    assert events, create.error
    assert_contiguous(events)
    assert events[0].phase == ACCEPTED
    assert events[-1].phase == FAILED, events
    failure = Failure(
        events,
        create.error.code(),
        str(info.reason),
        dict(info.metadata),
        str(create.error.details()),
    )
    assert failure.code == grpc.StatusCode.UNAVAILABLE, failure
    assert failure.reason == "ENCLAVE_FAILED", failure
    assert failure.metadata["enclave_id"] == failure.last.enclave_id
    assert failure.metadata["failure_reason"] == failure.last.failure_reason
    enclave = get_enclave(stack, user, failure.last.enclave_id)
    assert enclave.phase == FAILED
    assert enclave.failure_reason == failure.last.failure_reason
    return failure


def _nothing_left(stack: Stack, failures: list[Failure]) -> None:
    ids = [f.last.enclave_id for f in failures]
    assert_no_enclave_processes(stack, ids, timeout=10)
    assert work_dirs(stack) == set()


def test_enclave_program_missing(database: str, tmp_path: Path) -> None:
    with _stack(
        database,
        tmp_path,
        LICENSING_ENCLAVE_COMMAND="/nonexistent/enclave",
        LICENSING_MAX_ENCLAVES="1",
    ) as stack:
        user = stack.new_user()
        # With a limit of one, the second create is only possible if the first failure
        # gave its licence back: it fails on its own, not with RESOURCE_EXHAUSTED.
        failures = [_create_failing(stack, user) for _ in range(2)]
        for failure in failures:
            assert [e.phase for e in failure.events] == [ACCEPTED, FAILED]
            assert failure.last.failure_reason == "ENCLAVE_START_FAILED"
            assert "cannot start the enclave program" in failure.last.message
            assert "cannot start the enclave program" in failure.details
            # A fixed text and a correlation id: the OS error is only in the server's log.
            match = re.fullmatch(
                r"cannot start the enclave program \(correlation id ([0-9a-f]{16})\)",
                failure.last.message,
            )
            assert match, failure.last.message
            assert stack.log_path is not None
            logged = [
                line for line in stack.log_path.read_text().splitlines() if match.group(1) in line
            ]
            assert logged, match.group(1)
            assert "No such file or directory" in logged[0], logged
        assert failures[0].last.enclave_id != failures[1].last.enclave_id
        _nothing_left(stack, failures)


def test_enclave_exits_at_once(database: str, tmp_path: Path) -> None:
    with _stack(
        database, tmp_path, LICENSING_ENCLAVE_COMMAND="/bin/false", LICENSING_MAX_ENCLAVES="1"
    ) as stack:
        user = stack.new_user()
        failures = [_create_failing(stack, user) for _ in range(2)]
        for failure in failures:
            assert [e.phase for e in failure.events] == [ACCEPTED, SCHEDULED, FAILED]
            assert failure.last.failure_reason == "ENCLAVE_EXITED"
            assert "exited with code 1" in failure.last.message
        _nothing_left(stack, failures)


def test_enclave_port_in_use(database: str, tmp_path: Path) -> None:
    port = free_port()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", port))
    squatter.listen()
    try:
        with _stack(
            database, tmp_path, LICENSING_ENCLAVE_PORTS=f"{port}-{port}", LICENSING_MAX_ENCLAVES="1"
        ) as stack:
            user = stack.new_user()
            # Another process listens on the range's only port: no enclave is started
            # just to find that out.
            failures = [_create_failing(stack, user) for _ in range(2)]
            for failure in failures:
                assert [e.phase for e in failure.events] == [ACCEPTED, FAILED]
                assert failure.last.failure_reason == "ENCLAVE_PORTS_EXHAUSTED"
                assert f"every enclave port ({port}-{port}) is in use" in failure.details
            _nothing_left(stack, failures)

            # Once the port is free again, the same range serves an enclave.
            squatter.close()
            create = StreamWatch.create(stack, user)
            events = create.wait_done(60)
            assert create.error is None, (events, create.error)
            assert_attested(stack, events, create.nonce)
            assert events[-1].endpoint == f"127.0.0.1:{port}"
            delete_enclave(stack, user, events[-1].enclave_id)
            assert_no_enclave_processes(stack, [events[-1].enclave_id], timeout=15)
            assert work_dirs(stack) == set()
    finally:
        squatter.close()
