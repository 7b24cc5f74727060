"""Wrapping a served method's behaviour, whatever its kind: what server interceptors share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

__all__ = ["Behavior", "WrappedHandlers", "wrap_handler"]

#: A method's behaviour: ``(request or request iterator, context)`` to a response
#: (awaitable) or responses (async iterator).
Behavior = Callable[[Any, Any], Any]


def wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any],
    *,
    unary: Callable[[Any], Behavior],
    streaming: Callable[[Any], Behavior],
    single_request_parser: Callable[
        [Callable[[bytes], Any] | None], Callable[[bytes], Any] | None
    ] = lambda parse: parse,
) -> grpc.RpcMethodHandler[Any, Any]:
    """The same method with its behaviour passed through ``unary`` (one response) or
    ``streaming`` (a response stream), and the request parser of a method that takes one
    request through ``single_request_parser``; serialisation otherwise unchanged."""
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            unary(handler.unary_unary),
            request_deserializer=single_request_parser(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            streaming(handler.unary_stream),
            request_deserializer=single_request_parser(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            unary(handler.stream_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.stream_stream_rpc_method_handler(
        streaming(handler.stream_stream),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class WrappedHandlers:
    """An interceptor's wrapped handler per method, made once instead of on every call.

    grpc looks up the same handler object for a method each time; the wrapped one is
    reused only while that object is the one we wrapped, so a handler registered anew
    is wrapped anew. Wrapping holds no per-call state.
    """

    def __init__(self) -> None:
        self._items: dict[
            str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]
        ] = {}

    def get(
        self,
        method: str,
        handler: grpc.RpcMethodHandler[Any, Any],
        wrap: Callable[[], grpc.RpcMethodHandler[Any, Any]],
    ) -> grpc.RpcMethodHandler[Any, Any]:
        found = self._items.get(method)
        if found is not None and found[0] is handler:
            return found[1]
        wrapped = wrap()
        self._items[method] = (handler, wrapped)
        return wrapped
