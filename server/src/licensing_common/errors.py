"""Domain errors: what went wrong, in terms a caller can act on.

Services raise these; ``licensing_common.rpc.errors`` maps each class to one gRPC
status code and a ``google.rpc.ErrorInfo`` reason. Adapters translate library
exceptions into them with ``raise ... from exc`` so no driver text reaches the wire.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "AlreadyExists",
    "DomainError",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
]


class DomainError(Exception):
    """An expected failure with a stable machine-readable ``reason``.

    ``message`` is shown to the caller, so it must never contain secrets,
    SQL or a stack trace; ``metadata`` goes into ``ErrorInfo.metadata``.
    """

    def __init__(self, reason: str, message: str, metadata: Mapping[str, str] | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(DomainError):
    """The request is malformed; retrying it unchanged cannot succeed."""


class Unauthenticated(DomainError):
    """The caller's credentials are missing, invalid or expired."""


class PermissionDenied(DomainError):
    """The caller is known but may not do this."""


class NotFound(DomainError):
    """The thing does not exist, or the caller may not know it exists."""


class AlreadyExists(DomainError):
    """Creating would duplicate something that exists."""


class ResourceExhausted(DomainError):
    """A quota or a queue is full."""


class FailedPrecondition(DomainError):
    """The system is not in a state where this can be done."""


class Unavailable(DomainError):
    """A dependency is down; retrying later may succeed."""


class Unimplemented(DomainError):
    """The RPC is part of the contract but not served yet."""
