"""Helpers for provisioning tests: streams consumed in threads, processes, restarts, bounded waits.

Every wait here has a deadline and every RPC a timeout, so a broken server fails a test
instead of hanging it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, TypeVar

import grpc
from licensing.v1 import attestation_pb2, enclave_pb2, enclave_pb2_grpc

from licensing_client.attestation import verify_attestation
from tests.support import LoggedIn, Stack, error_reason, pid_of

Phase = enclave_pb2.Phase
ACCEPTED, SCHEDULED, RUNNING = Phase.PHASE_ACCEPTED, Phase.PHASE_SCHEDULED, Phase.PHASE_RUNNING
CERTIFICATE_ISSUED, READY = Phase.PHASE_CERTIFICATE_ISSUED, Phase.PHASE_READY
ATTESTING, ATTESTED = Phase.PHASE_ATTESTING, Phase.PHASE_ATTESTED
FAILED = Phase.PHASE_FAILED
#: Every phase of a successful provisioning, in order.
PROVISIONED = [ACCEPTED, SCHEDULED, RUNNING, CERTIFICATE_ISSUED, READY, ATTESTING, ATTESTED]

#: The longest any single stream may stay open in these tests.
STREAM_TIMEOUT = 120.0
RPC_TIMEOUT = 15.0

_T = TypeVar("_T")


def phase_name(phase: int) -> str:
    return Phase.Name(phase)  # type: ignore[arg-type]


def wait_until(
    what: str,
    probe: Callable[[], _T | None],
    timeout: float,
    step: float = 0.1,
    describe: Callable[[], object] | None = None,
) -> _T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            state = describe() if describe is not None else last
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} ({state!r})")
        time.sleep(step)


@dataclass(frozen=True, slots=True)
class Event:
    """One CreateEnclave/WatchEnclave response, reduced to what the tests compare."""

    enclave_id: str
    sequence: int
    phase: int
    message: str
    failure_reason: str
    endpoint: str
    #: The enclave's certificate (READY and final events).
    certificate_pem: str
    #: On the ATTESTED event only.
    attestation: attestation_pb2.Attestation | None

    @classmethod
    def of(
        cls, reply: enclave_pb2.CreateEnclaveResponse | enclave_pb2.WatchEnclaveResponse
    ) -> Event:
        return cls(
            reply.enclave_id,
            reply.sequence,
            reply.phase,
            reply.message,
            reply.enclave.failure_reason,
            reply.enclave.endpoint,
            reply.enclave.certificate_pem,
            reply.attestation if reply.HasField("attestation") else None,
        )

    def __repr__(self) -> str:
        extra = f" {self.failure_reason}" if self.failure_reason else ""
        return f"<{self.sequence} {phase_name(self.phase)}{extra}: {self.message}>"


if TYPE_CHECKING:  # grpc.CallIterator exists in the type stubs only
    _Replies: TypeAlias = (
        grpc.CallIterator[enclave_pb2.CreateEnclaveResponse]
        | grpc.CallIterator[enclave_pb2.WatchEnclaveResponse]
    )


def enclave_stub(stack: Stack, user: LoggedIn) -> enclave_pb2_grpc.EnclaveServiceStub:
    return enclave_pb2_grpc.EnclaveServiceStub(stack.user_channel(user))


@dataclass
class StreamWatch:
    """A server stream read to its end in a background thread."""

    name: str
    #: The nonce a CreateEnclave sent (empty for a watch).
    nonce: bytes = b""
    events: list[Event] = field(default_factory=list)
    error: grpc.RpcError | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _done: bool = False
    _call: _Replies | None = None

    @classmethod
    def create(cls, stack: Stack, user: LoggedIn, request_id: str | None = None) -> StreamWatch:
        stub = enclave_stub(stack, user)
        request = enclave_pb2.CreateEnclaveRequest(
            request_id=request_id or f"req-{uuid.uuid4().hex[:12]}", nonce=os.urandom(32)
        )
        call = stub.CreateEnclave(request, metadata=user.bearer, timeout=STREAM_TIMEOUT)
        return cls(f"create {request.request_id}", request.nonce)._start(call)

    @classmethod
    def watch(cls, stack: Stack, user: LoggedIn, enclave_id: str, after: int = 0) -> StreamWatch:
        stub = enclave_stub(stack, user)
        request = enclave_pb2.WatchEnclaveRequest(enclave_id=enclave_id, from_sequence=after)
        call = stub.WatchEnclave(request, metadata=user.bearer, timeout=STREAM_TIMEOUT)
        return cls(f"watch {enclave_id} after {after}")._start(call)

    def _start(self, call: _Replies) -> StreamWatch:
        self._call = call
        threading.Thread(target=self._run, args=(call,), name=self.name, daemon=True).start()
        return self

    def _run(self, call: _Replies) -> None:
        try:
            for reply in call:
                with self._cond:
                    self.events.append(Event.of(reply))
                    self._cond.notify_all()
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float) -> None:
        with self._cond:
            if not self._cond.wait_for(ready, timeout):
                raise AssertionError(
                    f"{self.name}: timed out after {timeout:g}s waiting for {what}; "
                    f"saw {self.events}, error {self._describe_error()}"
                )

    def wait_for_phase(self, phase: int, timeout: float) -> Event:
        """Wait for an event of ``phase`` (failing early if the stream ends without it)."""

        def seen() -> bool:
            return self._done or any(e.phase == phase for e in self.events)

        self._wait(phase_name(phase), seen, timeout)
        for event in self.events:
            if event.phase == phase:
                return event
        raise AssertionError(
            f"{self.name}: ended without {phase_name(phase)}: {self.events}, "
            f"error {self._describe_error()}"
        )

    def wait_done(self, timeout: float) -> list[Event]:
        self._wait("the end of the stream", lambda: self._done, timeout)
        return list(self.events)

    @property
    def done(self) -> bool:
        return self._done

    @property
    def enclave_id(self) -> str:
        assert self.events, f"{self.name}: no event yet"
        return self.events[0].enclave_id

    @property
    def last(self) -> Event:
        assert self.events, f"{self.name}: no event"
        return self.events[-1]

    def cancel(self) -> None:
        if self._call is not None and not self._done:
            self._call.cancel()  # type: ignore[no-untyped-call]

    def _describe_error(self) -> str:
        if self.error is None:
            return "none"
        return f"{self.error.code()} {error_reason(self.error)} {self.error.details()}"


def assert_contiguous(events: list[Event], first: int = 1) -> None:
    """Sequence numbers go up by one from ``first``: nothing missed, nothing twice."""
    assert [e.sequence for e in events] == list(range(first, first + len(events))), events


def assert_attested(stack: Stack, events: list[Event], nonce: bytes) -> Event:
    """``events`` are a whole provisioning that ended ATTESTED with a quote binding ``nonce``."""
    assert [e.phase for e in events] == PROVISIONED, events
    assert_contiguous(events)
    attested = events[-1]
    assert attested.attestation is not None, events
    verify_attestation(
        attested.attestation,
        nonce=nonce,
        expected_certificate_pem=attested.certificate_pem,
        trusted_ca_pem=[stack.ca_pem.decode()],
    )
    return attested


def get_enclave(stack: Stack, user: LoggedIn, enclave_id: str) -> enclave_pb2.Enclave:
    reply = enclave_stub(stack, user).GetEnclave(
        enclave_pb2.GetEnclaveRequest(enclave_id=enclave_id),
        metadata=user.bearer,
        timeout=RPC_TIMEOUT,
    )
    return reply.enclave


def delete_enclave(stack: Stack, user: LoggedIn, enclave_id: str) -> None:
    enclave_stub(stack, user).DeleteEnclave(
        enclave_pb2.DeleteEnclaveRequest(enclave_id=enclave_id),
        metadata=user.bearer,
        timeout=90,
    )


# Processes and files -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proc:
    pid: int
    argv: tuple[str, ...]


def enclave_processes(stack: Stack, enclave_ids: Iterable[str] = ()) -> list[Proc]:
    """Live processes naming one of ``enclave_ids`` or running an enclave of this stack.

    Zombies (an empty command line) do not count: they have exited, and in a container
    whose init does not reap them they stay in /proc forever.
    """
    ids = set(enclave_ids)
    data_dir = str(stack.data_dir)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        argv = tuple(part.decode(errors="replace") for part in raw.split(b"\0") if part)
        if not argv:
            continue
        text = " ".join(argv)
        mine = "licensing_enclave" in text and data_dir in text
        if mine or any(i in text for i in ids):
            found.append(Proc(int(entry.name), argv))
    return found


def assert_no_enclave_processes(stack: Stack, enclave_ids: Iterable[str], timeout: float) -> None:
    ids = list(enclave_ids)
    remaining: list[Proc] = []

    def gone() -> bool:
        remaining[:] = enclave_processes(stack, ids)
        return not remaining

    try:
        wait_until("enclave processes to exit", gone, timeout)
    except AssertionError:
        raise AssertionError(f"orphan enclave processes remain: {remaining}") from None


def work_dirs(stack: Stack) -> set[str]:
    root = stack.data_dir / "backend" / "enclaves"
    return {p.name for p in root.iterdir()} if root.exists() else set()


def kill9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def port_answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def wait_restarted(stack: Stack, process: str, old_pid: int, timeout: float = 60.0) -> int:
    """Wait for the supervisor to start ``process`` again and for its port to answer."""
    port = stack.backend_port if process == "backend" else stack.api_port

    def restarted() -> int | None:
        with contextlib.suppress(OSError, ValueError):
            pid = pid_of(stack, process)
            if pid != old_pid and port_answers(port):
                return pid
        return None

    pid = wait_until(f"the {process} to restart", restarted, timeout, step=0.2)
    if process == "frontend":
        wait_until("the enrollment port", lambda: port_answers(stack.enroll_port), timeout)
    return pid


def kill_and_wait_restart(stack: Stack, process: str, timeout: float = 60.0) -> int:
    old = pid_of(stack, process)
    kill9(old)
    return wait_restarted(stack, process, old, timeout)


# The enclave program with a hold -------------------------------------------------------


@dataclass
class HeldEnclaves:
    """An enclave program that waits while a hold file exists, then runs the real enclave.

    With the hold in place an enclave stays SCHEDULED (its process runs, it has sent no CSR),
    which gives the tests a window in the middle of provisioning. The wait is bounded
    (``max_hold`` seconds) so that nothing lingers if a test dies.

    Once the enclave has exited (its stdin closed, say) the program takes ``linger`` more
    seconds to end, as a workload draining in-flight calls does (the enclave's own grace
    is 5 s): a process that still runs is not necessarily a workload that serves.
    """

    command: Path
    hold_file: Path

    @classmethod
    def write(
        cls, directory: Path, python: str, max_hold: float = 90.0, linger: float = 4.0
    ) -> HeldEnclaves:
        hold = directory / "hold"
        command = directory / "held-enclave"
        ticks = int(max_hold * 10)
        command.write_text(
            "#!/bin/sh\n"
            "# Test enclave: wait while the hold file exists (bounded), run the enclave,\n"
            "# then take a while to exit.\n"
            "n=0\n"
            f"while [ -e '{hold}' ] && [ \"$n\" -lt {ticks} ]; do sleep 0.1; n=$((n + 1)); done\n"
            f"'{python}' -m licensing_enclave \"$@\"\n"
            "status=$?\n"
            f"sleep {linger:g}\n"
            "exit $status\n"
        )
        command.chmod(0o755)
        return cls(command, hold)

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        self.hold_file.touch()
        try:
            yield
        finally:
            self.hold_file.unlink(missing_ok=True)
