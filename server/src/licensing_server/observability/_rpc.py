"""The outermost server interceptor: a correlation id and the RPC metrics for every call.

It runs before the access guard, so a call refused there is counted (with its
status code) and logged under its correlation id like any other.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from licensing_common.logs import set_correlation_id
from licensing_common.rpc.errors import CORRELATION_ID_HEADER
from licensing_common.rpc.handlers import WrappedHandlers, wrap_handler
from licensing_server.observability._families import RpcMetrics

__all__ = ["CORRELATION_HEADERS", "RpcObserver", "correlation_id_from"]

#: Request headers a client may name its correlation id in (the first is answered).
CORRELATION_HEADERS = (CORRELATION_ID_HEADER, "x-request-id")
#: What a client's id may look like; anything else gets a fresh id (never an error).
_ACCEPTED_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")

_Context = grpc.aio.ServicerContext[Any, Any]


def correlation_id_from(metadata: Any) -> str:
    """The caller's correlation id from its headers if it sent a sane one, else a new one."""
    for key, value in metadata or ():
        if key in CORRELATION_HEADERS:
            text = value if isinstance(value, str) else ""
            if _ACCEPTED_ID.fullmatch(text):
                return text
    return secrets.token_hex(8)


def _code_name(context: _Context) -> str:
    code = context.code()
    return "OK" if code is None else code.name


class _Method:
    """The metric children of one method, resolved once (``labels`` takes a lock)."""

    __slots__ = ("_codes", "_method", "_requests", "_service", "duration")

    def __init__(self, full_name: str, requests: Counter, duration: Histogram):
        service, _, method = full_name.lstrip("/").partition("/")
        self._service, self._method = service, method
        self._requests = requests
        self._codes: dict[str, Any] = {}
        self.duration = duration.labels(service, method)

    def finished(self, code: str, seconds: float) -> None:
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = self._requests.labels(self._service, self._method, code)
        child.inc()
        self.duration.observe(seconds)


class RpcObserver(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Gives each call a correlation id (the caller's ``x-correlation-id`` or
    ``x-request-id``, else a new one) for its log lines and the tasks it starts,
    answers it in the trailing metadata, and counts and times the call."""

    def __init__(self, metrics: RpcMetrics):
        self._metrics = metrics
        self._methods: dict[str, _Method] = {}
        self._wrapped = WrappedHandlers()

    def _method(self, name: str) -> _Method:
        found = self._methods.get(name)
        if found is None:
            found = self._methods[name] = _Method(
                name, self._metrics.requests, self._metrics.duration
            )
        return found

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:  # not served: grpc answers UNIMPLEMENTED, no label for it
            return None
        name = handler_call_details.method
        return self._wrapped.get(name, handler, lambda: self._wrap(name, handler))

    def _wrap(
        self, name: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = self._method(name)
        return wrap_handler(
            handler,
            unary=lambda behavior: _unary(behavior, method),
            streaming=lambda behavior: _streaming(behavior, method),
        )


def _outcome(exc: BaseException, context: _Context) -> str:
    if type(exc).__name__ == "AbortError":
        return _code_name(context)  # the status the guard (or a servicer) set
    if isinstance(exc, Exception):
        return "UNKNOWN"  # what grpc answers an exception that escapes
    return "CANCELLED"  # asyncio.CancelledError: the client went away or timed out


def _begin(context: _Context) -> None:
    """Each call runs in a task of its own: the id set here is this call's alone.

    The id goes back in the trailing metadata, which travels with the status anyway
    (``rpc.errors.abort`` keeps it on failures): initial metadata sent early costs an
    extra HTTP/2 frame per call, measured at about 13 % of GetCurrentUser's throughput.
    """
    correlation_id = correlation_id_from(context.invocation_metadata())
    set_correlation_id(correlation_id)
    context.set_trailing_metadata(((CORRELATION_ID_HEADER, correlation_id),))


def _unary(behavior: Any, method: _Method) -> Any:
    async def observed(request: Any, context: _Context) -> Any:
        started = time.perf_counter()
        code = "OK"
        try:
            _begin(context)
            response = await behavior(request, context)
            code = _code_name(context)
            return response
        except BaseException as exc:
            code = _outcome(exc, context)
            raise
        finally:
            method.finished(code, time.perf_counter() - started)

    return observed


def _streaming(behavior: Any, method: _Method) -> Any:
    async def observed(request: Any, context: _Context) -> AsyncIterator[Any]:
        started = time.perf_counter()
        code = "OK"
        try:
            _begin(context)
            result = behavior(request, context)
            if hasattr(result, "__aiter__"):
                async for item in result:
                    yield item
            else:
                await result
            code = _code_name(context)
        except BaseException as exc:
            code = _outcome(exc, context)
            raise
        finally:
            method.finished(code, time.perf_counter() - started)

    return observed
