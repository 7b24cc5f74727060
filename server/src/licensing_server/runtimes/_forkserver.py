"""Starting enclave processes through ``licensing_enclave.forkserver`` instead of exec.

The fork server has the enclave's modules imported already, so a child reaches
its CSR in milliseconds rather than the ~250 ms of a fresh interpreter. The
child's stdin, stdout and stderr are pipes to this process, exactly as with exec,
so ``LocalWorkload`` drives both the same way (``EnclaveProcess``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from licensing_server.runtimes._launcher import LINE_LIMIT
from licensing_server.runtimes._protocol import RuntimeFailure, logged_failure
from licensing_server.tasks import TaskSet, spawn

_log = logging.getLogger(__name__)
_SPAWN_TIMEOUT = 10.0

# What users are told (reason ENCLAVE_START_FAILED); the details are in the log.
FORK_SERVER_NOT_STARTED = "cannot start the enclave fork server"
FORK_SERVER_REFUSED = "the enclave fork server could not start the enclave"
FORK_SERVER_NO_ANSWER = "the enclave fork server did not answer"
FORK_SERVER_STOPPED = "the enclave fork server stopped"


__all__ = ["ForkServer", "ForkedProcess", "start_time"]


class ForkedProcess:
    """A child of the fork server: its pipes are ours, its exit is reported to us."""

    def __init__(
        self,
        pid: int,
        stdin: asyncio.StreamWriter,
        stdout: asyncio.StreamReader,
        stderr: asyncio.StreamReader,
        exited: asyncio.Future[int],
    ):
        self.pid = pid
        self._stdin = stdin
        self._stdout = stdout
        self._stderr = stderr
        self._exited = exited

    @property
    def returncode(self) -> int | None:
        return self._exited.result() if self._exited.done() else None

    @property
    def stdin(self) -> asyncio.StreamWriter:
        return self._stdin

    @property
    def stdout(self) -> asyncio.StreamReader:
        return self._stdout

    @property
    def stderr(self) -> asyncio.StreamReader:
        return self._stderr

    async def wait(self) -> int:
        code = await asyncio.shield(self._exited)
        self._stdin.close()
        return code


async def _reader(fd: int, limit: int) -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader, loop=loop), os.fdopen(fd, "rb", 0)
    )
    return reader


async def _writer(fd: int) -> asyncio.StreamWriter:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(fd, "wb", 0)
    )
    return asyncio.StreamWriter(transport, protocol, None, loop)


class ForkServer:
    """The backend's side of ``licensing_enclave.forkserver`` (the ``fork-server`` launcher).

    ``start`` starts it at once; otherwise the first ``spawn`` does, and a spawn after
    it died starts a new one.
    """

    def __init__(self, python: str, *, line_limit: int):
        self._python = python
        self._line_limit = line_limit
        self._process: asyncio.subprocess.Process | None = None
        self._control: socket.socket | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._lock = asyncio.Lock()
        self._orphan_watches = TaskSet()

    @classmethod
    def for_this_interpreter(cls) -> ForkServer:
        return cls(sys.executable, line_limit=LINE_LIMIT)

    async def start(self) -> None:
        """Start the fork server now (at backend start) rather than on the first spawn."""
        async with self._lock:
            await self._ensure_started()

    async def _ensure_started(self) -> socket.socket:
        if self._control is not None and self._process and self._process.returncode is None:
            return self._control
        await self.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LICENSING_")}
        try:
            self._process = await asyncio.create_subprocess_exec(
                self._python,
                "-m",
                "licensing_enclave.forkserver",
                "--control-fd",
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.PIPE,  # it never reads it; it dies with us
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            raise logged_failure(
                _log,
                "ENCLAVE_START_FAILED",
                FORK_SERVER_NOT_STARTED,
                "%s -m licensing_enclave.forkserver: %s",
                self._python,
                exc,
                exc=exc,
            ) from exc
        finally:
            theirs.close()
        ours.setblocking(False)
        self._control = ours
        self._reader_task = spawn(self._read_replies(ours), name="fork-server-replies")
        _log.info("enclave fork server started (pid %s)", self._process.pid)
        return ours

    async def _read_replies(self, control: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await loop.sock_recv(control, 65536):
                message: Any = json.loads(data)
                if "exit" in message:
                    exited = self._exits.setdefault(int(message["pid"]), loop.create_future())
                    if not exited.done():
                        exited.set_result(int(message["exit"]))
                else:
                    reply = self._replies.pop(int(message["id"]), None)
                    if reply is not None and not reply.done():
                        reply.set_result(message)
        except (OSError, ValueError) as exc:
            _log.warning("enclave fork server connection failed: %s", exc)
        finally:
            self._lost()

    def _lost(self) -> None:
        """The fork server is gone: pending starts fail; running children are watched by pid."""
        for reply in self._replies.values():
            if not reply.done():
                reply.set_exception(RuntimeFailure("ENCLAVE_START_FAILED", FORK_SERVER_STOPPED))
        self._replies.clear()
        for pid, exited in list(self._exits.items()):
            if not exited.done():
                self._orphan_watches.spawn(_watch_exit(pid, exited), name=f"watch-exit-{pid}")
        self._control = None

    async def spawn(
        self, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str]
    ) -> ForkedProcess:
        loop = asyncio.get_running_loop()
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        theirs: tuple[int, ...] = (stdin_r, stdout_w, stderr_w)
        ours: list[int] = [stdin_w, stdout_r, stderr_r]
        try:
            async with self._lock:
                control = await self._ensure_started()
                request_id = next(self._ids)
                reply = loop.create_future()
                self._replies[request_id] = reply
                message = {"id": request_id, "argv": list(argv), "cwd": str(cwd), "env": dict(env)}
                await _send_fds(control, json.dumps(message).encode(), list(theirs))
            for fd in theirs:
                os.close(fd)
            theirs = ()
            answer = await asyncio.wait_for(reply, _SPAWN_TIMEOUT)
            if "error" in answer:
                # Its reason is logged, not passed on: the fork server is the less trusted
                # side, and its own log (stderr) has the details under the same id.
                raise logged_failure(
                    _log,
                    "ENCLAVE_START_FAILED",
                    FORK_SERVER_REFUSED,
                    "the fork server answered %.64r",
                    answer.get("error"),
                    correlation_id=answer.get("correlation_id", ""),
                )
            pid = int(answer["pid"])
            exited = self._exits.setdefault(pid, loop.create_future())
            exited.add_done_callback(lambda _: self._exits.pop(pid, None))
            process = ForkedProcess(
                pid,
                await _writer(stdin_w),
                await _reader(stdout_r, self._line_limit),
                await _reader(stderr_r, self._line_limit),
                exited,
            )
            ours = []
            return process
        except (OSError, TimeoutError) as exc:
            raise logged_failure(
                _log,
                "ENCLAVE_START_FAILED",
                FORK_SERVER_NO_ANSWER,
                "%r",
                exc,
                exc=exc,
            ) from exc
        finally:
            for fd in (*theirs, *ours):
                with contextlib.suppress(OSError):
                    os.close(fd)

    async def close(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task  # a failure was logged when it happened
            self._reader_task = None
        if self._process is not None and self._process.returncode is None:
            if self._process.stdin is not None:
                self._process.stdin.close()
            try:
                await asyncio.wait_for(self._process.wait(), 5)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        self._process = None


async def _send_fds(control: socket.socket, data: bytes, fds: list[int]) -> None:
    """``socket.send_fds`` on our non-blocking socket, waiting while its buffer is full
    (a burst of concurrent starts fills it: EAGAIN is not a failure)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            socket.send_fds(control, [data], fds)
            return
        except BlockingIOError:
            writable: asyncio.Future[None] = loop.create_future()
            loop.add_writer(control, _resolve, writable)
            try:
                await writable
            finally:
                loop.remove_writer(control)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _watch_exit(pid: int, exited: asyncio.Future[int]) -> None:
    """A child whose fork server died: nobody reports its exit, so watch /proc for it."""
    while start_time(pid) is not None:  # noqa: ASYNC110 - /proc cannot be awaited
        await asyncio.sleep(0.2)
    if not exited.done():
        exited.set_result(-1)


def start_time(pid: int) -> str | None:
    """The process start time (clock ticks since boot): tells a pid from its reuse.

    ``None`` once the process has exited, including as a zombie nobody reaps yet (an
    orphaned enclave waits for init, which in a container may never reap it).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X", "x"):
        return None
    return fields[19]
