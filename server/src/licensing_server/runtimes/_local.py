"""``LocalProcessRuntime``: each enclave is a child process of the backend on loopback.

The child makes its key and CSR, receives its certificate on stdin and reports
where it serves on stdout (JSON lines). It exits when its stdin closes, so a
backend killed with SIGKILL leaves no enclave behind; ``stop`` also finds
processes of an earlier backend by pid and start time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from licensing_server.pki import write_public_file
from licensing_server.runtimes._forkserver import start_time
from licensing_server.runtimes._launcher import EnclaveLauncher, EnclaveProcess, ExecLauncher
from licensing_server.runtimes._protocol import (
    RuntimeFailure,
    WorkloadNames,
    WorkloadSpec,
    enclave_server_name,
    logged_failure,
)
from licensing_server.tasks import spawn

__all__ = ["LocalHandle", "LocalProcessRuntime", "LocalWorkload"]

_log = logging.getLogger(__name__)
#: Revoked sessions remembered for enclaves that start later (their tokens are short-lived,
#: so the newest ones are what matters).
_REVOKED_KEPT = 10_000


@dataclass(frozen=True, slots=True)
class LocalHandle:
    """What a local workload's ``handle`` holds: enough to find its process after a restart."""

    pid: int
    start_time: str
    work_dir: str

    def dump(self) -> str:
        return json.dumps({"pid": self.pid, "start_time": self.start_time, "dir": self.work_dir})

    @classmethod
    def load(cls, text: str) -> LocalHandle | None:
        try:
            raw: Any = json.loads(text)
            return cls(int(raw["pid"]), str(raw["start_time"]), str(raw["dir"]))
        except (ValueError, KeyError, TypeError):
            return None

    def alive(self) -> bool:
        return start_time(self.pid) == self.start_time


class LocalWorkload:
    def __init__(
        self,
        process: EnclaveProcess,
        handle: LocalHandle,
        host: str,
        enclave_id: str = "",
        revoked_sessions: Callable[[], list[str]] | None = None,
    ):
        self._enclave_id = enclave_id
        self._revoked_sessions = revoked_sessions
        self._process = process
        self._handle = handle
        self._host = host
        self._stderr_tail: list[str] = []
        #: Past the handshake: stdin now carries control lines (session revocations).
        self.serving = False
        assert process.stderr is not None
        self._stderr_task = spawn(
            self._drain_stderr(process.stderr), name=f"enclave-stderr-{handle.pid}"
        )

    @property
    def handle(self) -> str:
        return self._handle.dump()

    @property
    def names(self) -> WorkloadNames:
        return WorkloadNames((enclave_server_name(self._enclave_id),), (self._host,))

    @property
    def process(self) -> EnclaveProcess:
        return self._process

    async def _drain_stderr(self, stream: asyncio.StreamReader) -> None:
        """Keep the enclave's log (its last lines explain a failure) without blocking it."""
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip()
            _log.debug("enclave %s: %s", self._handle.pid, text)
            self._stderr_tail = [*self._stderr_tail[-9:], text]

    async def _exited(self) -> RuntimeFailure:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._process.wait(), 2)
        with contextlib.suppress(Exception):  # TimeoutError; a failed drain was logged
            await asyncio.wait_for(asyncio.shield(self._stderr_task), 1)
        code = self._process.returncode
        tail = "\n".join(self._stderr_tail)
        # The log keeps the details; the caller gets a fixed cause and the log's id.
        message = f"the enclave process exited with code {code}"
        if "address already in use" in tail.lower() or "failed to bind" in tail.lower():
            message += ": its port is already in use"
        return logged_failure(
            _log, "ENCLAVE_EXITED", message, "enclave pid %s wrote:\n%s", self._handle.pid, tail
        )

    async def _read(self, expected: str) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = await self._process.stdout.readline()
        if not line:
            raise await self._exited()
        try:
            message: Any = json.loads(line)
        except ValueError as exc:
            raise RuntimeFailure("ENCLAVE_PROTOCOL", "the enclave wrote malformed output") from exc
        if not isinstance(message, dict) or message.get("type") != expected:
            raise RuntimeFailure("ENCLAVE_PROTOCOL", f"the enclave did not send {expected!r}")
        return message

    async def certificate_request(self) -> str:
        message = await self._read("csr")
        csr = message.get("csr_pem")
        if not isinstance(csr, str):
            raise RuntimeFailure("ENCLAVE_PROTOCOL", "the enclave sent no CSR")
        return csr

    async def install_certificate(self, certificate_pem: str, ca_pems: list[str]) -> str:
        assert self._process.stdin is not None
        line = json.dumps(
            {
                "type": "certificate",
                "certificate_pem": certificate_pem,
                "ca_certificates_pem": ca_pems,
            }
        )
        try:
            self._process.stdin.write(line.encode() + b"\n")
            await self._process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise await self._exited() from exc
        message = await self._read("serving")
        address = message.get("address")
        if not isinstance(address, str) or ":" not in address:
            raise RuntimeFailure("ENCLAVE_PROTOCOL", "the enclave sent no address")
        port = address.rpartition(":")[2]
        self.serving = True
        revoked = self._revoked_sessions() if self._revoked_sessions else []
        if revoked:  # logouts from before it started: their tokens may not have expired
            await self.send_revoked_sessions(revoked)
        return f"{self._host}:{port}"

    async def send_revoked_sessions(self, session_ids: list[str]) -> bool:
        """One control line on the enclave's stdin; False if its pipe is gone."""
        if self._process.stdin is None or self._process.returncode is not None:
            return False
        line = json.dumps({"type": "revoke_sessions", "session_ids": session_ids})
        try:
            self._process.stdin.write(line.encode() + b"\n")
            await self._process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True


class LocalProcessRuntime:
    """Enclaves as child processes on one machine (the embedded default)."""

    def __init__(
        self,
        work_root: Path,
        *,
        launcher: EnclaveLauncher | None = None,
        host: str = "127.0.0.1",
        ports: tuple[int, int] | None = None,
    ):
        """``launcher`` starts the processes (default: exec of the built-in enclave);
        the runtime starts and closes it with itself."""
        self._root = work_root.resolve()
        self._launcher: EnclaveLauncher = launcher or ExecLauncher()
        self._host = host
        self._ports = ports
        self._workloads: dict[str, LocalWorkload] = {}
        self._port_of: dict[str, int] = {}
        #: Revoked session ids, newest last, told to enclaves started later too.
        self._revoked: dict[str, None] = {}

    async def revoke_sessions(self, session_ids: Sequence[str]) -> int:
        """Push the revocations down every serving enclave's stdin (``SessionRevoker``)."""
        for session_id in session_ids:
            self._revoked[session_id] = None
        while len(self._revoked) > _REVOKED_KEPT:
            del self._revoked[next(iter(self._revoked))]
        told = 0
        for workload in list(self._workloads.values()):
            if workload.serving and await workload.send_revoked_sessions(list(session_ids)):
                told += 1
        return told

    @property
    def enrollment_desk(self) -> None:
        """Local enclaves get their certificate over their stdin."""
        return None

    def _reserve_port(self, enclave_id: str) -> int:
        """Port 0 (the enclave picks) unless operators configured a range to firewall.

        Reserved before anything awaits, so concurrent places never pick the same
        one; ``_release_port`` gives it back on every path that does not place.
        Ports some other process listens on (an enclave of an earlier backend still
        draining, say) are skipped.
        """
        if self._ports is None:
            return 0
        low, high = self._ports
        taken = set(self._port_of.values())
        for port in range(low, high + 1):
            if port not in taken and _bindable(self._host, port):
                self._port_of[enclave_id] = port
                return port
        raise RuntimeFailure(
            "ENCLAVE_PORTS_EXHAUSTED",
            f"every enclave port ({low}-{high}) is in use; delete an enclave or try again later",
        )

    def _release_port(self, enclave_id: str) -> None:
        self._port_of.pop(enclave_id, None)

    async def place(self, spec: WorkloadSpec) -> LocalWorkload:
        port = self._reserve_port(spec.enclave_id)
        try:
            return await self._place(spec, port)
        except BaseException:
            self._release_port(spec.enclave_id)
            raise

    async def _place(self, spec: WorkloadSpec, port: int) -> LocalWorkload:
        work_dir = self._root / spec.enclave_id
        shutil.rmtree(work_dir, ignore_errors=True)
        work_dir.mkdir(parents=True, mode=0o700)
        write_public_file(work_dir / "ca.pem", spec.ca_pem.encode())
        write_public_file(work_dir / "jwks.json", spec.jwks_json.encode())
        args = [
            "--enclave-id",
            spec.enclave_id,
            "--owner",
            spec.owner_id,
            "--listen",
            f"{self._host}:{port}",
            "--ca-file",
            str(work_dir / "ca.pem"),
            "--jwks-file",
            str(work_dir / "jwks.json"),
            "--issuer",
            spec.token_issuer,
            "--audience",
            spec.token_audience,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("LICENSING_")}
        process: EnclaveProcess
        try:
            process = await self._launcher.spawn(args, cwd=work_dir, env=env)
        except OSError as exc:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise logged_failure(
                _log,
                "ENCLAVE_START_FAILED",
                "cannot start the enclave program",
                "%s: %s",
                type(self._launcher).__name__,
                exc,
                exc=exc,
            ) from exc
        except RuntimeFailure:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise
        handle = LocalHandle(process.pid, start_time(process.pid) or "", str(work_dir))
        workload = LocalWorkload(
            process, handle, self._host, spec.enclave_id, lambda: list(self._revoked)
        )
        self._workloads[spec.enclave_id] = workload
        return workload

    async def stop(self, enclave_id: str, handle: str) -> None:
        workload = self._workloads.pop(enclave_id, None)
        parsed = LocalHandle.load(handle) if handle else None
        try:
            if workload is not None:
                await _terminate(workload.process.pid, workload.process)
            elif parsed is not None and parsed.alive():
                await _terminate(parsed.pid, None)
        finally:
            # Given back once the process is gone, so the next enclave can bind it.
            self._release_port(enclave_id)
        shutil.rmtree(self._root / enclave_id, ignore_errors=True)

    async def is_alive(self, enclave_id: str, handle: str) -> bool:
        """Only a workload this runtime started can be alive.

        One of an earlier backend lost its stdin with it and is on its way out, even
        if its process still runs (draining calls): counting it alive would leave its
        enclave READY with nothing serving. ``stop`` still finds it by its handle.
        """
        workload = self._workloads.get(enclave_id)
        return workload is not None and workload.process.returncode is None

    async def sweep(self, keep: set[str]) -> list[str]:
        removed = []
        if self._root.exists():
            for entry in self._root.iterdir():
                if entry.name not in keep:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry.name)
        return removed

    async def start(self) -> None:
        await self._launcher.start()

    async def close(self) -> None:
        try:
            for enclave_id, workload in list(self._workloads.items()):
                await self.stop(enclave_id, workload.handle)
        finally:
            await self._launcher.close()


def _bindable(host: str, port: int) -> bool:
    """Whether nothing listens on ``host:port`` (bound as the enclave's gRPC server binds)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


async def _terminate(pid: int, process: EnclaveProcess | None) -> None:
    """SIGTERM the enclave's process group, then SIGKILL if it lingers."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        if process is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), grace)
                return
        else:
            for _ in range(int(grace * 10)):
                if start_time(pid) is None:
                    return
                await asyncio.sleep(0.1)
