"""The fork server starts real enclave processes that look and end like exec'd ones."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from licensing_server.runtimes import ForkServer
from tests.workload.test_workload import Backend, enclave_args


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def _parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Backend:
    return Backend.create(tmp_path_factory.mktemp("backend"))


async def test_a_forked_enclave_sends_its_csr_is_named_in_ps_and_exits_when_stdin_closes(
    backend: Backend, tmp_path: Path
) -> None:
    server = ForkServer(sys.executable, line_limit=1 << 20)
    try:
        process = await server.spawn(
            enclave_args(backend, "enclave-fork-1", str(uuid.uuid4())),
            cwd=tmp_path,
            env={"PATH": "/usr/bin"},
        )
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert json.loads(line)["type"] == "csr"

        # ps shows the enclave, not the fork server, and it is not our child.
        cmdline = _cmdline(process.pid)
        assert b"--enclave-id enclave-fork-1" in cmdline
        assert _parent_of(process.pid) != os.getpid()
        assert process.returncode is None

        # Its stdin is ours alone: closing it ends the enclave, and the exit is reported.
        process.stdin.close()
        assert await asyncio.wait_for(process.wait(), 30) == 1  # no certificate came
        stderr = await process.stderr.read()
        assert b"stdin closed before the certificate arrived" in stderr
    finally:
        await server.close()


async def test_a_killed_fork_server_is_started_again_on_the_next_spawn(
    backend: Backend, tmp_path: Path
) -> None:
    server = ForkServer(sys.executable, line_limit=1 << 20)
    try:
        first = await server.spawn(
            enclave_args(backend, "enclave-fork-2", str(uuid.uuid4())), cwd=tmp_path, env={}
        )
        assert json.loads(await asyncio.wait_for(first.stdout.readline(), 30))["type"] == "csr"
        forkserver_pid = _parent_of(first.pid)
        os.kill(forkserver_pid, signal.SIGKILL)

        # The enclave it started lives on (its stdin is still open) and its end is still seen.
        await asyncio.sleep(0.5)
        assert first.returncode is None
        first.stdin.close()
        assert await asyncio.wait_for(first.wait(), 30) == -1  # reaped by someone else: unknown

        second = await server.spawn(
            enclave_args(backend, "enclave-fork-3", str(uuid.uuid4())), cwd=tmp_path, env={}
        )
        assert json.loads(await asyncio.wait_for(second.stdout.readline(), 30))["type"] == "csr"
        assert _parent_of(second.pid) != forkserver_pid
        second.stdin.close()
        await asyncio.wait_for(second.wait(), 30)
    finally:
        await server.close()


async def test_enclaves_forked_from_one_server_make_different_keys(
    backend: Backend, tmp_path: Path
) -> None:
    """The fork server's random state is shared at fork; each child must reseed."""
    server = ForkServer(sys.executable, line_limit=1 << 20)
    try:
        keys = []
        for n in range(3):
            process = await server.spawn(
                enclave_args(backend, f"enclave-keys-{n}", str(uuid.uuid4())), cwd=tmp_path, env={}
            )
            csr_pem = json.loads(await asyncio.wait_for(process.stdout.readline(), 30))["csr_pem"]
            csr = x509.load_pem_x509_csr(csr_pem.encode())
            keys.append(
                csr.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
            )
            process.stdin.close()
            await asyncio.wait_for(process.wait(), 30)
        assert len(set(keys)) == 3
    finally:
        await server.close()


def test_the_fork_server_exits_when_the_backend_end_closes() -> None:
    """As when the backend is killed: nothing closes the fork server but its socket's EOF."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "licensing_enclave.forkserver",
            "--control-fd",
            str(theirs.fileno()),
        ],
        pass_fds=(theirs.fileno(),),
        stdin=subprocess.DEVNULL,
    )
    theirs.close()
    try:
        time.sleep(1)
        assert server.poll() is None  # serving while the backend's end is open
        ours.close()
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
