"""``python -m licensing_enclave.forkserver --control-fd N``: start enclaves by fork, not exec.

Most of an enclave's start is Python importing grpc, cryptography and the rest
(about 250 ms of CPU). This process imports them once, then forks one child per
request, so that an enclave reaches its CSR in milliseconds.

The backend holds the other end of a ``SOCK_SEQPACKET`` socket pair (fd N). Each
request is one JSON message ``{"id", "argv", "cwd", "env"}`` carrying the child's
stdin, stdout and stderr as ``SCM_RIGHTS`` descriptors; the answer is
``{"id", "pid"}`` (or ``{"id", "error", "correlation_id"}``: a stable reason,
``REQUEST_INVALID`` or ``FORK_FAILED``, whose details this process writes to its
stderr under that id), and when a child ends, ``{"pid", "exit"}``. The server
exits when the backend's end closes; its children do not depend on it (each
exits when its stdin closes, as an exec'd enclave does).

Nothing secret exists here before a fork: keys are made in the child, after it.
The server runs a single thread (checked at start), so forking is safe.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import socket
import sys
import threading
import traceback
import uuid
from typing import Any

import setproctitle

import licensing_enclave.__main__ as enclave_main

_MAX_MESSAGE = 1024 * 1024


def _send(control: socket.socket, message: dict[str, Any]) -> None:
    # If the backend is gone, the loop ends at its next read.
    with contextlib.suppress(OSError):
        control.send(json.dumps(message).encode())


def _refuse(control: socket.socket, request_id: Any, reason: str, exc: BaseException) -> None:
    """Answer a stable reason and a correlation id; the exception stays in our stderr.

    The backend logs the reason under the same id and tells its user a fixed text.
    """
    correlation_id = uuid.uuid4().hex[:16]
    print(
        f"licensing-enclave forkserver: request refused ({reason},"
        f" correlation id {correlation_id}): {type(exc).__name__}: {exc}",
        file=sys.stderr,
        flush=True,
    )
    if not isinstance(request_id, int | str):
        request_id = None
    _send(control, {"id": request_id, "error": reason, "correlation_id": correlation_id})


def _run_child(request: dict[str, Any], fds: list[int], control: socket.socket) -> int:
    """In the forked child: become the enclave process and run it."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    control.close()
    os.setsid()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    os.closerange(3, 1 << 16)
    try:
        sys.argv = ["licensing-enclave", *request["argv"]]
        # What ps and /proc/<pid>/cmdline show: this enclave, not the fork server.
        setproctitle.setproctitle(" ".join(sys.argv))
        # A work directory it cannot enter ends the child like any failed start: the
        # traceback goes to its stderr (the backend's log), its exit code to the backend.
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        return enclave_main.main(request["argv"])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        return 1


def _spawn(control: socket.socket, message: bytes, fds: list[int]) -> None:
    request_id: Any = None
    try:
        request: Any = json.loads(message)
        request_id = request["id"]
        if len(fds) != 3:
            raise ValueError(f"expected 3 descriptors, got {len(fds)}")
        if not isinstance(request["argv"], list) or not isinstance(request["env"], dict):
            raise ValueError("argv must be a list and env an object")
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _run_child(request, fds, control)
            finally:
                for stream in (sys.stdout, sys.stderr):
                    with contextlib.suppress(Exception):  # exiting anyway
                        stream.flush()
                os._exit(code)
        _send(control, {"id": request_id, "pid": pid})
    except (ValueError, KeyError, TypeError) as exc:
        _refuse(control, request_id, "REQUEST_INVALID", exc)
    except OSError as exc:
        _refuse(control, request_id, "FORK_FAILED", exc)
    finally:
        for fd in fds:
            os.close(fd)


def _reap(control: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(control, {"pid": pid, "exit": os.waitstatus_to_exitcode(status)})


def serve(control: socket.socket) -> None:
    if threading.active_count() != 1:
        raise SystemExit("licensing-enclave forkserver: a thread is running; forking is unsafe")
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        ready, _, _ = select.select([control.fileno(), wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
            _reap(control)
        if control.fileno() in ready:
            message, fds, _, _ = socket.recv_fds(control, _MAX_MESSAGE, 3)
            if not message:
                return  # the backend closed its end
            _spawn(control, message, list(fds))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m licensing_enclave.forkserver")
    parser.add_argument("--control-fd", type=int, required=True)
    args = parser.parse_args()
    control = socket.socket(fileno=args.control_fd)
    # Claims the argv and environ area while both are whole: children retitle within it.
    setproctitle.setproctitle("licensing-enclave-forkserver")
    serve(control)


if __name__ == "__main__":
    main()
