"""The server interceptor: enforce the access policy, then map whatever is raised.

Servicers stay thin: they read the caller from ``current_caller()`` and raise
domain errors; this is the only place that turns errors into statuses.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hmac
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from licensing_common.errors import (
    DomainError,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from licensing_common.identity import PeerIdentity, peer_identity
from licensing_common.rpc import errors
from licensing_common.rpc.handlers import WrappedHandlers, wrap_handler
from licensing_common.rpc.limits import CountedBy, RateLimit
from licensing_common.rpc.policy import Access
from licensing_common.throttle import BucketStore, Rate, TokenBuckets
from licensing_common.tokens import AccessClaims

_log = logging.getLogger(__name__)

#: The claims of a bearer token over a certificate's SHA-256: at once when nothing has to
#: be awaited (the common case), else an awaitable of them.
Authenticate = Callable[[str, bytes], AccessClaims | Awaitable[AccessClaims]]


@dataclass(frozen=True, slots=True)
class Caller:
    peer: PeerIdentity | None
    claims: AccessClaims | None


_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("caller")


def current_caller() -> Caller:
    return _caller.get()


def current_claims() -> AccessClaims:
    claims = _caller.get().claims
    if claims is None:  # the policy table guarantees this for USER methods
        raise Unauthenticated("TOKEN_REQUIRED", "an access token is required")
    return claims


class _PeerCache:
    """Parsing the peer certificate on every call is measurable; it is the same per connection."""

    def __init__(self, size: int = 4096):
        self._size = size
        self._items: dict[bytes, PeerIdentity] = {}

    def get(self, pem: bytes) -> PeerIdentity:
        found = self._items.get(pem)
        if found is None:
            found = peer_identity(pem)
            if len(self._items) >= self._size:
                self._items.clear()
            self._items[pem] = found
        return found


def bearer_token(metadata: Any) -> str | None:
    """The token of an ``authorization: Bearer`` header (None if absent); refuses other forms."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            if hmac.compare_digest(scheme.lower().encode(), b"bearer") and token.strip():
                return token.strip()
            raise Unauthenticated(
                "TOKEN_MALFORMED", "the authorization header must be 'Bearer <token>'"
            )
    return None


class _Malformed:
    """Stands in for a request whose bytes do not parse (see ``_lenient``)."""

    __slots__ = ()


_MALFORMED = _Malformed()


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """Parse failures become ``_MALFORMED`` instead of escaping into grpc.

    grpc answers an exception from the deserializer with UNKNOWN and the exception
    text; this way the guard answers INVALID_ARGUMENT, after the access check.
    """
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # any parse failure means a malformed request
            return _MALFORMED

    return parse


def client_address(peer: str) -> str:
    """The address part of grpc's ``ipv4:1.2.3.4:5678`` / ``ipv6:[::1]:5678`` peer string."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rpartition(":")[0].strip("[]") or rest
    return peer


class _CallsPerAddress:
    """Calls in flight per client address: one peer cannot hold the whole server.

    grpc cannot cap connections per address, but every connection that costs more
    than its handshake carries calls; watch streams hold theirs for as long as
    they watch. The event loop is single-threaded, so a plain dict is enough.
    """

    def __init__(self, limit: int):
        self._limit = limit
        self._active: dict[str, int] = {}
        #: ``client_address`` of each peer string (one per connection), worked out once.
        self._addresses: dict[str, str] = {}

    def enter(self, peer: str) -> str:
        address = self._addresses.get(peer)
        if address is None:
            if len(self._addresses) >= 4096:
                self._addresses.clear()
            address = self._addresses[peer] = client_address(peer)
        held = self._active.get(address, 0)
        if held >= self._limit:
            raise ResourceExhausted(
                "TOO_MANY_CALLS",
                f"at most {self._limit} calls at once from one address; finish some first",
                {"limit": str(self._limit)},
            )
        self._active[address] = held + 1
        return address

    def leave(self, address: str) -> None:
        held = self._active.pop(address) - 1
        if held:
            self._active[address] = held


def _rate_limited(method: str, wait: float) -> ResourceExhausted:
    retry_ms = math.ceil(wait * 1000)
    return ResourceExhausted(
        "RATE_LIMITED",
        f"too many calls of {method.rsplit('/', 1)[-1]}; retry in {retry_ms} ms",
        {"method": method, "retry_after_ms": str(retry_ms)},
    )


def _user_caller(peer: PeerIdentity, claims: AccessClaims) -> Caller:
    if claims.user_id != peer.user_id:
        raise Unauthenticated(
            "TOKEN_CERTIFICATE_MISMATCH",
            "the access token is bound to a different client certificate",
        )
    return Caller(peer, claims)


async def _user_later(peer: PeerIdentity, claims: Awaitable[AccessClaims]) -> Caller:
    return _user_caller(peer, await claims)


def _check_parsed(request: Any) -> None:
    if request is _MALFORMED:
        raise InvalidArgument("REQUEST_MALFORMED", "the request is not a valid protobuf message")


class AccessGuard(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(
        self,
        policy: Mapping[str, Access],
        authenticate: Authenticate | None = None,
        *,
        rate_limits: Mapping[str, RateLimit] | None = None,
        rate_limit_percent: int = 100,
        max_calls_per_address: int = 0,
        buckets: BucketStore | None = None,
    ):
        self._policy = dict(policy)
        # 0: calls per address are not counted (backend, enclaves).
        self._calls = _CallsPerAddress(max_calls_per_address) if max_calls_per_address else None
        self._authenticate = authenticate
        self._peers = _PeerCache()
        self._wrapped = WrappedHandlers()
        # 0 percent turns the limits off.
        self._limits = (
            {
                method: RateLimit(limit.rate.scaled(rate_limit_percent), limit.counted_by)
                for method, limit in (rate_limits or {}).items()
            }
            if rate_limit_percent > 0
            else {}
        )
        # Shared through the database when replicas share one (storage.rate_buckets).
        self._buckets: BucketStore = buckets if buckets is not None else TokenBuckets()

    def for_method(self, method: str) -> MethodGuard:
        """What this guard does to every call of ``method``, for an interceptor that runs
        the guard inside its own per-call coroutine (``observability.RpcObserver``)."""
        return MethodGuard(self, method)

    def _admit(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any], metadata: Any
    ) -> Caller | Awaitable[Caller]:
        """The caller, at once when all it takes is in memory (nearly every call), else an
        awaitable of it: a session due for its check, or a rate limit that asks the
        database. Refusals raise either way; no coroutine on the common path."""
        caller = self._authorize(method, context, metadata)
        if not isinstance(caller, Caller):
            return self._limited_later(method, context, caller)
        return self._limited(method, context, caller)

    async def _limited_later(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any], pending: Awaitable[Caller]
    ) -> Caller:
        caller = self._limited(method, context, await pending)
        return caller if isinstance(caller, Caller) else await caller

    def _limited(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any], caller: Caller
    ) -> Caller | Awaitable[Caller]:
        limit = self._limits.get(method)
        if limit is None:
            return caller
        if limit.counted_by is CountedBy.USER and caller.claims is not None:
            key = caller.claims.user_id
        else:
            key = client_address(context.peer())
        bucket = f"rpc {method} {key}"
        wait = self._buckets.take_now(bucket, limit.rate)
        if wait is None:
            return self._taken_later(method, bucket, limit.rate, caller)
        if wait > 0:
            raise _rate_limited(method, wait)
        return caller

    async def _taken_later(self, method: str, bucket: str, rate: Rate, caller: Caller) -> Caller:
        wait = await self._buckets.take(bucket, rate)
        if wait > 0:
            raise _rate_limited(method, wait)
        return caller

    def _authorize(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any], metadata: Any
    ) -> Caller | Awaitable[Caller]:
        access = self._policy.get(method)
        if access is None:
            raise PermissionDenied("METHOD_NOT_ALLOWED", "this method is not served here")
        pems: Any = context.auth_context().get("x509_pem_cert")  # grpc gives a list
        peer = self._peers.get(pems[0]) if pems else None
        if access is Access.PUBLIC:
            return Caller(peer, None)
        if peer is None:
            raise Unauthenticated(
                "CLIENT_CERTIFICATE_REQUIRED",
                "this method needs the client certificate from Login, on the mTLS API listener",
            )
        if access is Access.PEER:
            return Caller(peer, None)
        if access is Access.FRONTEND:
            if not peer.is_frontend:
                raise PermissionDenied(
                    "INTERNAL_API_ONLY", "only the licensing frontend may call the internal API"
                )
            return Caller(peer, None)
        # Access.USER
        if peer.user_id is None:
            raise PermissionDenied("USER_CERTIFICATE_REQUIRED", "a user certificate is required")
        token = bearer_token(metadata)
        if token is None:
            raise Unauthenticated("TOKEN_REQUIRED", "an access token is required")
        if self._authenticate is None:
            raise PermissionDenied("METHOD_NOT_ALLOWED", "this method is not served here")
        claims = self._authenticate(token, peer.sha256)
        if not isinstance(claims, AccessClaims):
            return _user_later(peer, claims)
        return _user_caller(peer, claims)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return self._wrapped.get(method, handler, lambda: self._wrap(method, handler))

    def _wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        guarded = self.for_method(method)
        return wrap_handler(
            handler,
            unary=guarded.unary,
            streaming=guarded.streaming,
            single_request_parser=_lenient,
        )


class MethodGuard:
    """The guard's work on each call of one method: its address counted, the caller
    admitted, the request checked, and any failure answered as a status.

    ``call`` takes the call's metadata from the caller, so an interceptor that has
    already read it (the observer, for the correlation id) does not read it again.
    """

    __slots__ = ("_admit", "_calls", "_guard", "method")

    #: Request parser for methods that take one request: see ``_lenient``.
    parse_leniently = staticmethod(_lenient)

    def __init__(self, guard: AccessGuard, method: str):
        self.method = method
        self._guard = guard
        self._admit = functools.partial(guard._admit, method)
        self._calls = guard._calls

    async def call(
        self,
        behavior: Callable[[Any, Any], Awaitable[Any]],
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        metadata: Any,
    ) -> Any:
        """One call of a method with a single response, guarded."""
        calls = self._calls
        address = None
        try:
            address = calls.enter(context.peer()) if calls else None
            caller = self._guard._admit(self.method, context, metadata)
            _caller.set(caller if isinstance(caller, Caller) else await caller)
            if request is _MALFORMED:
                _check_parsed(request)  # raises INVALID_ARGUMENT
            return await behavior(request, context)
        except Exception as exc:
            if _is_abort(exc):
                raise
            await errors.abort(context, exc, self.method)
        finally:
            if calls and address is not None:
                calls.leave(address)

    def unary(self, behavior: Any) -> Any:
        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await self.call(behavior, request, context, context.invocation_metadata())

        return guarded

    def streaming(self, behavior: Any) -> Any:
        async def guarded(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            async with _guarded(request, context, self._admit, self.method, self._calls):
                result = behavior(request, context)
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                else:
                    await result

        return guarded


Admit = Callable[[grpc.aio.ServicerContext[Any, Any], Any], Caller | Awaitable[Caller]]


def _is_abort(exc: BaseException) -> bool:
    # context.abort() raises this; the status is already set.
    return type(exc).__name__ == "AbortError"


@contextlib.asynccontextmanager
async def _guarded(
    request: Any,
    context: grpc.aio.ServicerContext[Any, Any],
    admit: Admit,
    method: str,
    calls: _CallsPerAddress | None,
) -> AsyncIterator[None]:
    """What every call goes through: its address counted, the caller admitted, the
    request checked, and any failure answered as a status, for unary and streaming alike."""
    address = None
    try:
        address = calls.enter(context.peer()) if calls else None
        caller = admit(context, context.invocation_metadata())
        _caller.set(caller if isinstance(caller, Caller) else await caller)
        _check_parsed(request)
        yield
    except Exception as exc:
        if _is_abort(exc):
            raise
        await errors.abort(context, exc, method)
    finally:
        if calls and address is not None:
            calls.leave(address)


__all__ = [
    "AccessGuard",
    "Caller",
    "DomainError",
    "MethodGuard",
    "bearer_token",
    "current_caller",
    "current_claims",
]
