"""The frontend's view of the backend: an mTLS channel with the internal client certificate."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any

import grpc
from grpc_status import rpc_status
from licensing.control.v1 import control_pb2, control_pb2_grpc
from licensing.v1 import enclave_pb2

from licensing_common.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from licensing_server.auth import SignedUserCertificate
from licensing_server.storage import EnclaveRecord, EventRecord, Phase

_log = logging.getLogger(__name__)

_CALL_TIMEOUT = 10.0


def _error_info(error: grpc.aio.AioRpcError) -> tuple[str, dict[str, str]]:
    """The backend's ErrorInfo reason and metadata (``BACKEND_ERROR`` if it sent none)."""
    from google.rpc import error_details_pb2

    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason), dict(info.metadata)
    return "BACKEND_ERROR", {}


def _reason(error: grpc.aio.AioRpcError) -> str:
    return _error_info(error)[0]


def _translate(error: grpc.aio.AioRpcError) -> DomainError:
    """Pass the backend's verdict on the caller's input through; anything else is ours."""
    reason, metadata = _error_info(error)
    return _verdict(error.code(), reason, error.details() or "", metadata)


_PASSED: dict[grpc.StatusCode, type[DomainError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
}
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _verdict(
    code: grpc.StatusCode, reason: str, message: str, metadata: dict[str, str]
) -> DomainError:
    """The domain error for a backend status (a unary call's, or one ``QuoteBatch`` result's)."""
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and reason != "BACKEND_ERROR":
        # The backend's own queue for the caller's request is full (re-attestation
        # nonces); grpc's own RESOURCE_EXHAUSTED (no ErrorInfo) is not the caller's.
        return ResourceExhausted(reason, message or "try again later", metadata)
    if code == grpc.StatusCode.UNAVAILABLE and reason != "BACKEND_ERROR":
        # The backend is up but a dependency of it (the TPM) is not: say which, and
        # pass its figures on (a TPM in lockout says when it recovers).
        return Unavailable(reason, message or "unavailable", metadata)
    kind = _PASSED.get(code)
    if kind is not None:
        return kind(reason, message or "rejected by the backend", metadata)
    return Unavailable("BACKEND_UNAVAILABLE", "the licensing backend is unavailable")


def _no_batches(error: grpc.aio.AioRpcError) -> bool:
    """An older backend: grpc has no such method, or its guard does not serve it."""
    if error.code() == grpc.StatusCode.UNIMPLEMENTED:
        return True
    return error.code() == grpc.StatusCode.PERMISSION_DENIED and (
        _reason(error) == "METHOD_NOT_ALLOWED"
    )


class BackendCertificateSigner:
    """``UserCertificateSigner`` over the internal ``CertificateService``."""

    def __init__(self, channel: grpc.aio.Channel):
        self._stub = control_pb2_grpc.CertificateServiceStub(channel)
        self._ak_chain: list[str] = []

    @staticmethod
    def channel(
        address: str,
        *,
        ca_pem: bytes,
        key_pem: bytes,
        cert_pem: bytes,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        options: Sequence[tuple[str, Any]] = (),
    ) -> grpc.aio.Channel:
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
        )
        return grpc.aio.secure_channel(
            address, creds, options=options or None, interceptors=interceptors or None
        )

    async def sign_user_certificate(
        self, *, user_id: str, username: str, csr_pem: str, lifetime: dt.timedelta
    ) -> SignedUserCertificate:
        try:
            reply = await self._stub.SignUserCertificate(
                control_pb2.SignUserCertificateRequest(
                    user_id=user_id,
                    username=username,
                    csr_pem=csr_pem,
                    lifetime_seconds=int(lifetime.total_seconds()),
                ),
                timeout=_CALL_TIMEOUT,
            )
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from exc
        return SignedUserCertificate(
            pem=reply.certificate_pem,
            sha256=bytes(reply.certificate_sha256),
            expires_at=reply.expire_time.ToDatetime(dt.UTC),
            ca_certificates_pem=list(reply.ca_certificates_pem),
        )

    async def ak_certificate_chain(self) -> list[str]:
        """The AK chain once the backend has certified its AK (cached from then on)."""
        if not self._ak_chain:
            try:
                reply = await self._stub.GetCaCertificates(
                    control_pb2.GetCaCertificatesRequest(), timeout=_CALL_TIMEOUT
                )
            except grpc.aio.AioRpcError:
                return []
            self._ak_chain = list(reply.ak_certificate_chain_pem)
        return list(self._ak_chain)


class BackendProvisioningClient:
    """``ProvisioningBackend`` over the internal ``ProvisioningService``."""

    def __init__(self, channel: grpc.aio.Channel):
        self._stub = control_pb2_grpc.ProvisioningServiceStub(channel)

    async def provision(self, record: EnclaveRecord, jwks_json: str) -> AsyncIterator[EventRecord]:
        # The backend reads the nonce and expiry from the row the frontend reserved.
        request = control_pb2.ProvisionRequest(
            enclave_id=record.id, owner=record.owner_id, jwks_json=jwks_json
        )
        try:
            async for reply in self._stub.Provision(request):
                yield EventRecord(
                    enclave_id=reply.enclave_id,
                    sequence=reply.sequence,
                    phase=Phase(enclave_pb2.Phase.Name(reply.phase).removeprefix("PHASE_")),
                    message=reply.message,
                    time=reply.time.ToDatetime(dt.UTC),
                )
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from exc

    async def deprovision(self, enclave_id: str) -> None:
        try:
            await self._stub.Deprovision(
                control_pb2.DeprovisionRequest(enclave_id=enclave_id), timeout=60
            )
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from exc

    async def revoke_sessions(self, session_ids: list[str]) -> None:
        try:
            await self._stub.RevokeSessions(
                control_pb2.RevokeSessionsRequest(session_ids=session_ids), timeout=_CALL_TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from exc


#: Batch calls one client keeps out at once; past it, requests wait for one to return.
QUOTE_CALLS_IN_FLIGHT = 64
#: Requests per batch call, at most (the backend's MAX_QUOTE_BATCH).
QUOTE_BATCH_LIMIT = 4096
#: While the last call sent is younger than this, new requests wait (for it to return,
#: or for this long) and then go together. Short beside a TPM quote (17-190 ms on
#: hardware), so a held request still joins the quote after the one under way; long
#: enough that a busy frontend with a fast TPM sends one call per handful of requests.
QUOTE_HOLD_SECONDS = 0.003

_Waiting = tuple[str, bytes, "asyncio.Future[bytes]"]


class BackendQuoteClient:
    """One backend's ``QuoteService``: the pod-mate's, or another pod's (quote_routing).

    Quotes go out in ``QuoteBatch`` calls. With no call out, a request goes at the next
    turn of the event loop (with whatever else arrived in that turn); while the last
    call sent is younger than ``QUOTE_HOLD_SECONDS``, new requests wait until no call is
    out or that much has passed, and go together. So an idle frontend sends each
    request at once, as before, and a busy one makes one backend call per batch. A
    backend without ``QuoteBatch`` (an older one, mid-upgrade) gets unary ``Quote``
    calls from then on.
    """

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = 30.0):
        self._quotes = control_pb2_grpc.QuoteServiceStub(channel)
        self._timeout = timeout
        self._waiting: list[_Waiting] = []
        self._in_flight = 0
        self._send_handle: asyncio.Handle | None = None
        self._send_at = 0.0
        self._last_sent = float("-inf")
        self._batches = True
        self._calls: set[asyncio.Task[None]] = set()

    async def quote(self, enclave_id: str, nonce: bytes) -> bytes:
        if not self._batches:
            return await self._quote_one(enclave_id, nonce)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting.append((enclave_id, nonce, future))
        self._schedule()
        return await future

    def _schedule(self) -> None:
        if self._in_flight >= QUOTE_CALLS_IN_FLIGHT:
            return  # the next call's return schedules the send
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = now if self._in_flight == 0 else self._last_sent + QUOTE_HOLD_SECONDS
        if self._send_handle is not None:
            if self._send_at <= due:
                return  # a send is due as soon already
            self._send_handle.cancel()
        self._send_at = due
        if due > now:
            self._send_handle = loop.call_at(due, self._send)
        else:
            self._send_handle = loop.call_soon(self._send)

    def _send(self) -> None:
        self._send_handle = None
        # A caller that went away (cancelled, deadline) is not asked for.
        waiting = [w for w in self._waiting if not w[2].done()]
        batch, self._waiting = waiting[:QUOTE_BATCH_LIMIT], waiting[QUOTE_BATCH_LIMIT:]
        if not batch:
            return
        self._in_flight += 1
        self._last_sent = asyncio.get_running_loop().time()
        call = asyncio.ensure_future(self._call(batch))
        self._calls.add(call)
        call.add_done_callback(self._call_done)
        if self._waiting:
            self._schedule()  # past QUOTE_BATCH_LIMIT

    def _call_done(self, call: asyncio.Task[None]) -> None:
        self._calls.discard(call)
        self._in_flight -= 1
        if self._waiting:
            self._schedule()

    async def _call(self, batch: list[_Waiting]) -> None:
        try:
            reply = await self._quotes.QuoteBatch(
                control_pb2.QuoteBatchRequest(
                    requests=[
                        control_pb2.QuoteRequest(enclave_id=enclave_id, nonce=nonce)
                        for enclave_id, nonce, _ in batch
                    ]
                ),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            if _no_batches(exc):
                _log.info("the backend has no QuoteBatch (an older version): unary quotes")
                self._batches = False
                for enclave_id, nonce, future in batch:
                    self._answer_later(future, self._quote_one(enclave_id, nonce))
                return
            error = _translate(exc)
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        except BaseException as exc:  # cancelled at shutdown, or a bug: nobody may hang
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(Unavailable("BACKEND_UNAVAILABLE", "quote call failed"))
            if not isinstance(exc, Exception):
                raise
            _log.exception("QuoteBatch failed")
            return
        for (_, _, future), result in zip(batch, reply.results, strict=False):
            if future.done():
                continue
            if result.WhichOneof("result") == "attestation":
                future.set_result(result.attestation)
            else:
                failed = result.error
                future.set_exception(
                    _verdict(
                        _CODES.get(failed.code, grpc.StatusCode.UNKNOWN),
                        failed.reason,
                        failed.message,
                        dict(failed.metadata),
                    )
                )
        for _, _, future in batch[len(reply.results) :]:
            if not future.done():
                future.set_exception(Unavailable("BACKEND_UNAVAILABLE", "no answer for a quote"))

    def _answer_later(self, future: asyncio.Future[bytes], answer: Awaitable[bytes]) -> None:
        async def settle() -> None:
            try:
                result = await answer
            except DomainError as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(result)

        task = asyncio.ensure_future(settle())
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _quote_one(self, enclave_id: str, nonce: bytes) -> bytes:
        try:
            reply = await self._quotes.Quote(
                control_pb2.QuoteRequest(enclave_id=enclave_id, nonce=nonce),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from exc
        return bytes(reply.attestation.SerializeToString())

    async def request_reattestation(self, enclave_id: str, nonce: bytes) -> None:
        try:
            await self._quotes.RequestReattestation(
                control_pb2.RequestReattestationRequest(enclave_id=enclave_id, nonce=nonce),
                timeout=_CALL_TIMEOUT,
            )
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from exc
