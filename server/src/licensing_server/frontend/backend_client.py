"""The frontend's view of the backend: an mTLS channel with the internal client certificate."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence
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
    passed: dict[grpc.StatusCode, type[DomainError]] = {
        grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
        grpc.StatusCode.NOT_FOUND: NotFound,
        grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    }
    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and _reason(error) != "BACKEND_ERROR":
        # The backend's own queue for the caller's request is full (re-attestation
        # nonces); grpc's own RESOURCE_EXHAUSTED (no ErrorInfo) is not the caller's.
        return ResourceExhausted(_reason(error), error.details() or "try again later")
    if error.code() == grpc.StatusCode.UNAVAILABLE and _reason(error) != "BACKEND_ERROR":
        # The backend is up but a dependency of it (the TPM) is not: say which, and
        # pass its figures on (a TPM in lockout says when it recovers).
        reason, metadata = _error_info(error)
        return Unavailable(reason, error.details() or "unavailable", metadata)
    kind = passed.get(error.code())
    if kind is not None:
        return kind(_reason(error), error.details() or "rejected by the backend")
    return Unavailable("BACKEND_UNAVAILABLE", "the licensing backend is unavailable")


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


class BackendQuoteClient:
    """One backend's ``QuoteService``: the pod-mate's, or another pod's (quote_routing)."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = 30.0):
        self._quotes = control_pb2_grpc.QuoteServiceStub(channel)
        self._timeout = timeout

    async def quote(self, enclave_id: str, nonce: bytes) -> bytes:
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
