"""The one table from domain errors to gRPC status codes with ``google.rpc.ErrorInfo``."""

from __future__ import annotations

import logging
import uuid
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from licensing_common.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from licensing_common.logs import current_correlation_id

_log = logging.getLogger(__name__)

#: ``ErrorInfo.domain`` of every error this server reports.
ERROR_DOMAIN = "licensing"
#: The trailing metadata key that names the call's correlation id (see ``logs``).
CORRELATION_ID_HEADER = "x-correlation-id"

STATUS_CODES: dict[type[DomainError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
}


def code_of(error: DomainError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.INTERNAL


def to_status(error: DomainError) -> grpc.Status:
    code = code_of(error)
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    details = [detail]
    retry_after_ms = error.metadata.get("retry_after_ms", "")
    if retry_after_ms.isdigit():
        # The standard detail too, for clients and proxies that back off by it.
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(int(retry_after_ms))
        details.append(any_pb2.Any())
        details[-1].Pack(retry)
    status = status_pb2.Status(code=code.value[0], message=error.message, details=details)
    result: grpc.Status = rpc_status.to_status(status)
    return result


def internal_status(correlation_id: str) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(
        reason="INTERNAL", domain=ERROR_DOMAIN, metadata={"correlation_id": correlation_id}
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"internal error (correlation id {correlation_id})",
        details=[detail],
    )
    result: grpc.Status = rpc_status.to_status(status)
    return result


async def abort(
    context: grpc.aio.ServicerContext[Any, Any], exc: BaseException, method: str
) -> NoReturn:
    """End the call with the mapped status; unexpected errors are logged, never sent."""
    if isinstance(exc, DomainError):
        status = to_status(exc)
    else:
        # The call's own id when it has one, so the client's and our log lines meet.
        correlation_id = current_correlation_id() or uuid.uuid4().hex[:16]
        _log.error(
            "unexpected error in %s (correlation id %s)", method, correlation_id, exc_info=exc
        )
        status = internal_status(correlation_id)
    trailing = tuple(status.trailing_metadata)
    if call_id := current_correlation_id():  # abort replaces what the call had set
        trailing = (*trailing, (CORRELATION_ID_HEADER, call_id))
    await context.abort(status.code, status.details, trailing)
    raise AssertionError("unreachable")  # context.abort always raises
