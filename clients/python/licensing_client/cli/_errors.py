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

from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from licensing_client._client import is_transient
from licensing_client._errors import (
    TRANSPORT_ERRORS,
    AttestationFailedError,
    EnclaveFailedError,
    EnclaveNotReady,
    LicensingError,
    NotLoggedInError,
    RefreshFailedError,
    SessionEndedError,
    SignatureInvalidError,
    error_info,
    reason_of,
)

#: Exit codes: the operation failed (the server said no, or could not be reached).
EXIT_FAILED = 1
#: Exit codes: the command line itself is wrong.
EXIT_USAGE = 2

__all__ = ["error_info", "is_transient", "reason_of"]

#: The client's own verdicts: each command words them itself, ``explain`` lets them pass.
_DOMAIN_ERRORS = (
    AttestationFailedError,
    EnclaveFailedError,
    EnclaveNotReady,
    SignatureInvalidError,
)
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


def _sentence(
    action: str, error: BaseException, *, peer: str, trust: str
) -> tuple[str, BaseException]:
    """``(sentence, cause)`` for a failure of ``action``; a ``LicensingError`` is worded
    by what it wraps, which becomes the cause (so callers can still test its status)."""
    if isinstance(error, LicensingError) and isinstance(
        error.__cause__, (GRPCError, *TRANSPORT_ERRORS)
    ):
        error = error.__cause__
    if isinstance(error, GRPCError):
        return f"{action} failed: {describe_status(error)}", error
    if isinstance(error, LicensingError):
        return f"{action} failed: {error.message}", error
    return f"{action} failed: {describe_transport(error, peer, trust)}", error


@contextmanager
def explain(action: str, *, peer: str, trust: str = "") -> Iterator[None]:
    """Turn failures of ``action`` (e.g. ``login``) into ``CliError("login failed: ...")``.

    A refresh that failed on the way is worded as such, an ended session as
    ``SessionEnded``; the client's verdicts on enclaves pass unchanged.
    """
    try:
        yield
    except (CliError, *_DOMAIN_ERRORS):
        raise
    except SessionEndedError as exc:
        cause = exc.__cause__
        if isinstance(cause, GRPCError):
            raise SessionEnded(
                f"the session has ended: {describe_status(cause)}; "
                "run `licensing login USERNAME` again"
            ) from cause
        raise SessionEnded(f"{exc.message}; run `licensing login USERNAME` again") from exc
    except NotLoggedInError as exc:
        raise CliError(f"{exc.message}; run `licensing login USERNAME`") from exc
    except RefreshFailedError as exc:
        server = f"the licensing server at {exc.address}"
        sentence, cause = _sentence("refreshing the session", exc, peer=server, trust=trust)
        raise CliError(sentence) from cause
    except (GRPCError, LicensingError, *TRANSPORT_ERRORS) as exc:
        sentence, cause = _sentence(action, exc, peer=peer, trust=trust)
        raise CliError(sentence) from cause
