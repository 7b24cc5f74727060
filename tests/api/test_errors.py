"""Every domain error reaches the caller as one status code with an ErrorInfo reason;
anything unexpected reaches the caller as INTERNAL with a correlation id and nothing else."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from licensing_common import errors as domain
from licensing_common.logs import current_correlation_id, set_correlation_id
from licensing_common.rpc import errors
from licensing_common.rpc.errors import CORRELATION_ID_HEADER
from licensing_common.rpc.guard import AccessGuard
from licensing_server.api.policy import Access

METHOD = "/licensing.v1.AuthService/Login"
SECRET = "postgresql://licensing:hunter2@db/licensing SELECT password_hash FROM users"


def _rpc_status(trailing_metadata: Any) -> status_pb2.Status:
    """The google.rpc.Status that grpc-status puts in the trailers."""
    for key, value in trailing_metadata:
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    raise AssertionError("no grpc-status-details-bin trailer")


def _error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo:
    infos = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            infos.append(info)
    assert len(infos) == 1, status
    return infos[0]


# The table -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error_class", "code"),
    list(errors.STATUS_CODES.items()),
    ids=[cls.__name__ for cls in errors.STATUS_CODES],
)
def test_a_domain_error_becomes_its_status_code_with_an_error_info(
    error_class: type[domain.DomainError], code: grpc.StatusCode
) -> None:
    error = error_class("SOMETHING_WRONG", "what went wrong, for the caller", {"limit": "3"})

    status = errors.to_status(error)

    assert status.code == code
    assert status.details == "what went wrong, for the caller"
    rpc_status = _rpc_status(status.trailing_metadata)
    assert rpc_status.code == code.value[0]
    assert rpc_status.message == "what went wrong, for the caller"
    info = _error_info(rpc_status)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "SOMETHING_WRONG",
        errors.ERROR_DOMAIN,
        {"limit": "3"},
    )


def test_every_domain_error_class_has_its_own_status_code() -> None:
    classes = {
        obj
        for obj in vars(domain).values()
        if inspect.isclass(obj) and issubclass(obj, domain.DomainError)
    } - {domain.DomainError}

    assert set(errors.STATUS_CODES) == classes
    assert len(set(errors.STATUS_CODES.values())) == len(classes)
    assert grpc.StatusCode.INTERNAL not in errors.STATUS_CODES.values()
    assert grpc.StatusCode.UNKNOWN not in errors.STATUS_CODES.values()


def test_a_subclass_of_a_domain_error_keeps_its_parents_code() -> None:
    class LicenceExpired(domain.Unauthenticated):
        pass

    status = errors.to_status(LicenceExpired("LICENCE_EXPIRED", "the licence expired"))

    assert status.code == grpc.StatusCode.UNAUTHENTICATED
    assert _error_info(_rpc_status(status.trailing_metadata)).reason == "LICENCE_EXPIRED"


# Unexpected exceptions ---------------------------------------------------------------------


class _Aborted(Exception):
    pass


class _Context:
    """What the guard uses of ``grpc.aio.ServicerContext``; records the abort."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.trailing_metadata: Any = ()

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> None:
        self.code, self.details, self.trailing_metadata = code, details, trailing_metadata
        raise _Aborted


@dataclass(frozen=True)
class _CallDetails:
    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


async def _call_through_guard(behavior: Callable[[Any, Any], Awaitable[Any]]) -> _Context:
    """Serve one unary call of ``behavior`` behind the access guard, as the server does."""
    guard = AccessGuard({METHOD: Access.PUBLIC})

    async def continuation(_: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(behavior)

    details: Any = _CallDetails(METHOD)
    handler: Any = await guard.intercept_service(continuation, details)
    context = _Context()
    with pytest.raises(_Aborted):
        await handler.unary_unary(object(), context)
    return context


def _assert_internal_without_leaks(context: _Context) -> str:
    assert context.code == grpc.StatusCode.INTERNAL
    found = re.fullmatch(r"internal error \(correlation id ([0-9a-f]{16})\)", context.details)
    assert found, context.details
    correlation_id = found.group(1)
    info = _error_info(_rpc_status(context.trailing_metadata))
    assert (info.reason, dict(info.metadata)) == ("INTERNAL", {"correlation_id": correlation_id})
    wire = context.details.encode() + b"".join(
        v if isinstance(v, bytes) else v.encode() for _, v in context.trailing_metadata
    )
    for leak in (b"hunter2", b"SELECT", b"RuntimeError", b"Traceback"):
        assert leak not in wire
    return correlation_id


async def test_an_unexpected_exception_is_internal_with_only_a_correlation_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(request: Any, context: Any) -> Any:
        raise RuntimeError(SECRET)

    with caplog.at_level(logging.ERROR, logger="licensing_common.rpc.errors"):
        context = await _call_through_guard(broken)

    correlation_id = _assert_internal_without_leaks(context)
    # The operator can find the real cause in the log by the id the caller reports.
    logged = [r for r in caplog.records if correlation_id in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert SECRET in str(logged[0].exc_info[1])
    assert METHOD in logged[0].getMessage()


async def test_two_failures_get_different_correlation_ids() -> None:
    async def broken(request: Any, context: Any) -> Any:
        raise KeyError(SECRET)

    first = _assert_internal_without_leaks(await _call_through_guard(broken))
    second = _assert_internal_without_leaks(await _call_through_guard(broken))

    assert first != second


async def test_a_domain_error_from_a_servicer_goes_through_the_table_not_internal() -> None:
    async def refuses(request: Any, context: Any) -> Any:
        raise domain.NotFound("ENCLAVE_NOT_FOUND", "no such enclave", {"enclave_id": "e1"})

    context = await _call_through_guard(refuses)

    assert (context.code, context.details) == (grpc.StatusCode.NOT_FOUND, "no such enclave")
    info = _error_info(_rpc_status(context.trailing_metadata))
    assert (info.reason, dict(info.metadata)) == ("ENCLAVE_NOT_FOUND", {"enclave_id": "e1"})


async def test_an_internal_error_names_the_calls_own_correlation_id() -> None:
    """Behind the RPC observer the call already has an id (maybe the client's): that one."""

    async def broken(request: Any, context: Any) -> Any:
        raise KeyError(SECRET)

    async def served() -> _Context:  # a task of its own, as grpc runs each call
        set_correlation_id("ticket-1234")
        return await _call_through_guard(broken)

    context = await asyncio.create_task(served())

    assert context.details == "internal error (correlation id ticket-1234)"
    assert (CORRELATION_ID_HEADER, "ticket-1234") in context.trailing_metadata
    assert current_correlation_id() == ""  # the test's own context never had it
