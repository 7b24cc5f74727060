"""One exception hierarchy for the high-level client, and the pacing of rate-limited calls.

Everything ``LicensingClient`` and ``EnclaveSession`` raise is a ``LicensingError``:
a refused call carries its gRPC ``code`` and the ``reason`` and ``metadata`` of the
``google.rpc.ErrorInfo`` the server attached (and the ``RetryInfo`` delay, if any);
a lost connection has no code. The original grpclib or OS error is ``__cause__``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from google.rpc import error_details_pb2  # registers ErrorInfo for grpclib's details codec
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from licensing_client.attestation import AttestationError
from licensing_client.gen.licensing import v1

T = TypeVar("T")

#: Failures below gRPC: refused, reset, unreachable (OSError), a dropped stream.
TRANSPORT_ERRORS = (OSError, StreamTerminatedError, ProtocolError, asyncio.IncompleteReadError)

#: A rate-limited call is retried when the server asks for at most this wait, this often.
MAX_RETRY_WAIT_SECONDS = 5.0
RATE_LIMIT_RETRIES = 3


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


def _retry_info_delay(error: GRPCError) -> float | None:
    for detail in error.details or ():
        if isinstance(detail, error_details_pb2.RetryInfo):
            return float(detail.retry_delay.ToMilliseconds()) / 1000
    return None


def retry_delay(error: GRPCError) -> float | None:
    """How long the server asks us to wait before calling again, if it refused by rate limit.

    A rate-limited call was refused before anything ran, so calling again is safe.
    """
    if error.status is not Status.RESOURCE_EXHAUSTED or reason_of(error) != "RATE_LIMITED":
        return None
    return _retry_info_delay(error)


async def paced(call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, waited out and repeated while a rate limit refuses it briefly."""
    for _ in range(RATE_LIMIT_RETRIES):
        try:
            return await call()
        except GRPCError as exc:
            delay = retry_delay(exc)
            if delay is None or delay > MAX_RETRY_WAIT_SECONDS:
                raise
        await asyncio.sleep(delay)
    return await call()


def token_expired(error: BaseException) -> bool:
    return (
        isinstance(error, GRPCError)
        and error.status is Status.UNAUTHENTICATED
        and reason_of(error) == "TOKEN_EXPIRED"
    )


class LicensingError(Exception):
    """A call failed: the server refused it (``code`` set) or could not be reached (``None``)."""

    def __init__(
        self,
        message: str,
        *,
        code: Status | None = None,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
        retry_delay: float | None = None,
        address: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.metadata = dict(metadata or {})
        #: The wait the server asked for (``google.rpc.RetryInfo``), in seconds.
        self.retry_delay = retry_delay
        #: The address talked to, when known.
        self.address = address

    @classmethod
    def from_grpc(cls, error: GRPCError, *, address: str = "") -> LicensingError:
        """Keeps the status, the ErrorInfo reason and metadata, and the RetryInfo delay."""
        info = error_info(error)
        reason = str(info.reason) if info is not None and info.reason else None
        metadata = {str(k): str(v) for k, v in info.metadata.items()} if info is not None else {}
        wrapped = cls(
            (error.message or "").strip() or error.status.name,
            code=error.status,
            reason=reason,
            metadata=metadata,
            retry_delay=_retry_info_delay(error),
            address=address,
        )
        wrapped.__cause__ = error
        return wrapped

    @classmethod
    def from_transport(cls, error: BaseException, *, address: str = "") -> LicensingError:
        wrapped = cls(f"talking to {address or 'the server'} failed: {error}", address=address)
        wrapped.__cause__ = error
        return wrapped


class NotLoggedInError(LicensingError):
    """No session (never logged in, or the store no longer holds one): call ``log_in``."""


class SessionEndedError(LicensingError):
    """The server ended the session (logout, expiry, revocation): only a new ``log_in`` helps."""


class RefreshFailedError(LicensingError):
    """Refreshing the session failed for a reason that may pass (the session still stands)."""


class EnclaveNotReady(LicensingError):
    """The enclave is not running with a certificate (not yet, or no more): nothing to attest."""

    def __init__(self, enclave: v1.Enclave) -> None:
        try:
            phase = v1.Phase(enclave.phase).name or str(int(enclave.phase))
        except ValueError:
            phase = f"PHASE_{int(enclave.phase)}"
        super().__init__(
            f"enclave {enclave.id} is not running with a certificate to attest (it is {phase})"
        )
        self.enclave = enclave
        self.phase = phase


class EnclaveFailedError(LicensingError):
    """Provisioning ended FAILED (``reason`` is the server's failure reason) or DELETED."""

    def __init__(self, message: str, *, enclave_id: str, phase: v1.Phase) -> None:
        super().__init__(message)
        self.enclave_id = enclave_id
        self.phase = phase


class AttestationFailedError(LicensingError):
    """An attestation did not verify: do not trust the enclave. ``error`` names the check."""

    def __init__(
        self, error: AttestationError, *, enclave_id: str, nonce: bytes | None, source: str
    ) -> None:
        super().__init__(
            f"enclave {enclave_id} failed attestation check '{error.check.value}': {error.detail}"
        )
        self.error = error
        self.enclave_id = enclave_id
        self.nonce = nonce
        #: ``ATTESTED event`` or ``GetAttestation``: where the attestation came from.
        self.source = source
        self.__cause__ = error


class SignatureInvalidError(LicensingError):
    """An enclave's signature does not verify against its attested, pinned certificate."""


@contextmanager
def translated(address: str = "") -> Iterator[None]:
    """grpclib and transport failures inside become ``LicensingError`` (cause kept)."""
    try:
        yield
    except LicensingError:
        raise
    except GRPCError as exc:
        raise LicensingError.from_grpc(exc, address=address) from exc
    except TRANSPORT_ERRORS as exc:
        raise LicensingError.from_transport(exc, address=address) from exc
