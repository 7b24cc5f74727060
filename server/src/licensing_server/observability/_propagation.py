"""The frontend's calls to the backend carry the correlation id of the call they serve."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from licensing_common.logs import current_correlation_id
from licensing_server.observability._rpc import CORRELATION_HEADERS

__all__ = ["correlation_propagators"]


def _with_correlation_id(details: Any) -> Any:
    correlation_id = current_correlation_id()
    if not correlation_id:
        return details
    metadata = grpc.aio.Metadata(
        *(details.metadata or ()), (CORRELATION_HEADERS[0], correlation_id)
    )
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(_with_correlation_id(client_call_details), request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(_with_correlation_id(client_call_details), request)


def correlation_propagators() -> list[Any]:
    """Client interceptors that add ``x-correlation-id`` to unary and server-streaming calls."""
    return [_UnaryUnary(), _UnaryStream()]
