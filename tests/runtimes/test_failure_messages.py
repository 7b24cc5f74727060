"""Start failures tell a stable reason and a fixed message; the details stay in the log.

What a runtime reports is shown to users (event messages, ``failure_reason``), so
no exception text may cross: each message names a correlation id, and the log
record with that id holds the detail.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from licensing_server.runtimes import (
    ForkServer,
    LocalHandle,
    LocalProcessRuntime,
    LocalWorkload,
    RuntimeFailure,
    WorkloadSpec,
)
from tests.workload.test_workload import Backend, enclave_args

_ID = r"\(correlation id ([0-9a-f]{16})\)"


def _correlation_id(failure: RuntimeFailure, fixed: str) -> str:
    """The message is ``fixed`` and the id, nothing else; returns the id."""
    match = re.fullmatch(re.escape(fixed) + " " + _ID, failure.message)
    assert match, failure.message
    assert failure.correlation_id == match.group(1)
    return match.group(1)


def _logged(caplog: pytest.LogCaptureFixture, correlation_id: str) -> str:
    records = [r for r in caplog.records if correlation_id in r.getMessage()]
    assert records, f"no log record names {correlation_id}"
    return "\n".join(r.getMessage() + (caplog.text if r.exc_info else "") for r in records)


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Backend:
    return Backend.create(tmp_path_factory.mktemp("backend"))


async def test_a_fork_server_that_cannot_start_is_reported_without_the_os_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = ForkServer(str(tmp_path / "no-such-python"), line_limit=1 << 20)
    try:
        with pytest.raises(RuntimeFailure) as failed:
            await server.spawn(["--help"], cwd=tmp_path, env={})
    finally:
        await server.close()
    assert failed.value.reason == "ENCLAVE_START_FAILED"
    correlation_id = _correlation_id(failed.value, "cannot start the enclave fork server")
    assert "No such file" not in failed.value.message
    assert "No such file or directory" in _logged(caplog, correlation_id)


async def test_an_enclave_that_exits_at_start_is_reported_by_exit_code_with_its_stderr_logged(
    backend: Backend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = LocalProcessRuntime(
        tmp_path / "enclaves", launcher=ForkServer(sys.executable, line_limit=1 << 20)
    )
    spec = WorkloadSpec(
        enclave_id=str(uuid.uuid4()),
        owner_id=str(uuid.uuid4()),
        jwks_json="this is not a JWK Set",
        ca_pem=backend.ca_pem.decode(),
        token_issuer="issuer",
        token_audience="audience",
    )
    try:
        workload = await runtime.place(spec)
        with pytest.raises(RuntimeFailure) as failed:
            await workload.certificate_request()
    finally:
        await runtime.close()
    assert failed.value.reason == "ENCLAVE_EXITED"
    match = re.fullmatch(r"the enclave process exited with code (\d+) " + _ID, failed.value.message)
    assert match, failed.value.message
    assert match.group(1) != "0"
    # The enclave's own complaint is in our log under that id, not in the message.
    assert "jwks" in _logged(caplog, match.group(2)).lower()


async def test_a_work_dir_the_forked_enclave_cannot_enter_is_logged_with_its_traceback(
    backend: Backend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = ForkServer(sys.executable, line_limit=1 << 20)
    missing = tmp_path / "removed-work-dir"
    try:
        process = await server.spawn(
            enclave_args(backend, "enclave-cwd", str(uuid.uuid4())),
            cwd=missing,
            env={"PATH": "/usr/bin"},
        )
        workload = LocalWorkload(process, LocalHandle(process.pid, "", str(missing)), "127.0.0.1")
        with pytest.raises(RuntimeFailure) as failed:
            await workload.certificate_request()
    finally:
        await server.close()
    assert failed.value.reason == "ENCLAVE_EXITED"
    correlation_id = _correlation_id(failed.value, "the enclave process exited with code 1")
    assert str(missing) not in failed.value.message
    logged = _logged(caplog, correlation_id)
    assert "FileNotFoundError" in logged
    assert str(missing) in logged


def test_the_fork_server_refuses_with_a_reason_and_keeps_the_detail_in_its_stderr(
    tmp_path: Path,
) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stderr = (tmp_path / "stderr").open("w+b")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "licensing_enclave.forkserver",
            "--control-fd",
            str(theirs.fileno()),
        ],
        pass_fds=(theirs.fileno(),),
        stderr=stderr,
    )
    theirs.close()
    try:
        files = [(tmp_path / name).open("w") for name in ("in", "out", "err")]
        request = {"id": 7, "argv": "not a list", "cwd": "/", "env": {}}
        socket.send_fds(ours, [json.dumps(request).encode()], [f.fileno() for f in files])
        for file in files:
            file.close()
        ours.settimeout(30)
        reply = json.loads(ours.recv(65536))
    finally:
        ours.close()
        process.wait(30)
    assert set(reply) == {"id", "error", "correlation_id"}, reply
    assert reply["id"] == 7
    assert reply["error"] == "REQUEST_INVALID"
    assert re.fullmatch("[0-9a-f]{16}", reply["correlation_id"])
    stderr.seek(0)
    logged = stderr.read().decode()
    line = next(x for x in logged.splitlines() if reply["correlation_id"] in x)
    assert "argv must be a list" in line
