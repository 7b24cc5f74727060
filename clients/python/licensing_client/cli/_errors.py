"""Failures as sentences: what was being done, why it failed, and the server's reason.

Every error the CLI reports goes through ``CliError``; ``explain`` turns transport
and gRPC failures into one at the edge of each command step, so ``main`` never
shows a traceback.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from google.rpc import error_details_pb2  # registers ErrorInfo for grpclib's details codec
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

#: Exit codes: the operation failed (the server said no, or could not be reached).
EXIT_FAILED = 1
#: Exit codes: the command line itself is wrong.
EXIT_USAGE = 2

#: A dropped connection; OSError covers refused, reset and unreachable.
_TRANSIENT = (StreamTerminatedError, asyncio.IncompleteReadError, OSError)

_STATUS_TEXT = {
    Status.UNAVAILABLE: "the service is unavailable",
    Status.DEADLINE_EXCEEDED: "the server did not answer in time",
    Status.UNIMPLEMENTED: "the server does not implement this yet",
    Status.INTERNAL: "the server had an internal error",
    Status.UNAUTHENTICATED: "the server did not accept the credentials",
    Status.PERMISSION_DENIED: "this is not allowed",
    Status.NOT_FOUND: "not found",
}


class CliError(Exception):
    """A failure to report as ``error: <sentence>`` with an exit code."""

    def __init__(self, sentence: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(sentence)
        self.sentence = sentence
        self.exit_code = exit_code


class SessionEnded(CliError):
    """The server ended the session (logout, expiry, revocation): only a new login helps."""


class UsageError(CliError):
    """The command line is wrong (exit 2)."""

    def __init__(self, sentence: str) -> None:
        super().__init__(sentence, EXIT_USAGE)


def error_info(error: GRPCError) -> Any | None:
    """The ``google.rpc.ErrorInfo`` in the status details, if the server sent one."""
    details: Any = error.details
    for detail in details or ():
        if isinstance(detail, error_details_pb2.ErrorInfo):
            return detail
    return None


def reason_of(error: GRPCError) -> str | None:
    info = error_info(error)
    return str(info.reason) if info is not None and info.reason else None


def describe_status(error: GRPCError) -> str:
    """``message (CODE, REASON)``.

    e.g. ``username or password is incorrect (UNAUTHENTICATED, INVALID_CREDENTIALS)``
    """
    message = (error.message or "").strip() or _STATUS_TEXT.get(error.status, "the call failed")
    labels = [error.status.name]
    reason = reason_of(error)
    if reason and reason != error.status.name:
        labels.append(reason)
    return f"{message} ({', '.join(labels)})"


def is_transient(error: BaseException) -> bool:
    """Worth reconnecting for: the server is unreachable or the connection dropped."""
    if isinstance(error, GRPCError):
        return error.status is Status.UNAVAILABLE
    if isinstance(error, ssl.SSLError):
        return False  # a handshake that fails once fails again
    return isinstance(error, _TRANSIENT)


def describe_transport(error: BaseException, peer: str, trust: str) -> str:
    """A sentence for a failure below gRPC: connect, TLS, a dropped connection."""
    if isinstance(error, ssl.SSLCertVerificationError):
        why = error.verify_message or str(error.reason or error)
        return f"the TLS certificate of {peer} was not accepted ({why}); {trust}"
    if isinstance(error, ssl.SSLError):
        return f"the TLS handshake with {peer} failed ({error.reason or error})"
    if isinstance(error, ConnectionRefusedError):
        return f"cannot reach {peer}: connection refused"
    if isinstance(error, TimeoutError):
        return f"{peer} did not answer in time"
    if isinstance(error, (StreamTerminatedError, ProtocolError, asyncio.IncompleteReadError)):
        return f"the connection to {peer} was lost ({error or type(error).__name__})"
    if isinstance(error, OSError):
        return f"cannot reach {peer}: {error.strerror or error}"
    return f"talking to {peer} failed: {error}"


@contextmanager
def explain(action: str, *, peer: str, trust: str = "") -> Iterator[None]:
    """Turn failures of ``action`` (e.g. ``login``) into ``CliError("login failed: ...")``."""
    try:
        yield
    except CliError:
        raise
    except GRPCError as exc:
        raise CliError(f"{action} failed: {describe_status(exc)}") from exc
    except (OSError, StreamTerminatedError, ProtocolError, asyncio.IncompleteReadError) as exc:
        raise CliError(f"{action} failed: {describe_transport(exc, peer, trust)}") from exc
