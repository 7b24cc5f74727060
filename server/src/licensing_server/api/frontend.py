"""Servicers of the public ``licensing.v1`` API: parse, call the domain, build replies."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from licensing.v1 import (
    attestation_pb2,
    attestation_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    enclave_pb2,
    enclave_pb2_grpc,
    trust_pb2,
    trust_pb2_grpc,
)

from licensing_common.errors import Unavailable
from licensing_common.rpc.guard import current_claims
from licensing_server.api.convert import enclave_message, phase_number, timestamp, wrapped
from licensing_server.auth import AuthService, UserProfile
from licensing_server.enclaves import EnclaveCatalog, EnclaveUpdate
from licensing_server.storage import Phase

Context = grpc.aio.ServicerContext[Any, Any]

SERVICE_NAMES = (
    "licensing.v1.AuthService",
    "licensing.v1.TrustService",
    "licensing.v1.EnclaveService",
    "licensing.v1.AttestationService",
)


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    #: GetCurrentUser replies kept per user (building one is a fifth of the servicer's
    #: CPU on that cheap call); a reply is reused only for the very profile it was made of.
    REPLY_CACHE_SIZE = 65_536

    def __init__(self, auth: AuthService):
        self._auth = auth
        self._current_user_replies: dict[
            str, tuple[UserProfile, auth_pb2.GetCurrentUserResponse]
        ] = {}

    async def SignUp(
        self, request: auth_pb2.SignUpRequest, context: Context
    ) -> auth_pb2.SignUpResponse:
        user = await self._auth.sign_up(request.username, request.password)
        return auth_pb2.SignUpResponse(user_id=user.id, username=user.username)

    async def Login(
        self, request: auth_pb2.LoginRequest, context: Context
    ) -> auth_pb2.LoginResponse:
        result = await self._auth.login(request.username, request.password, request.csr_pem)
        assert result.certificate is not None
        return auth_pb2.LoginResponse(
            access_token=result.access_token,
            refresh_token=result.refresh_token,
            access_token_expire_time=timestamp(result.access_token_expires_at),
            client_certificate_pem=result.certificate.pem,
            ca_certificates_pem=result.certificate.ca_certificates_pem,
            refresh_token_expire_time=timestamp(result.refresh_token_expires_at),
            client_certificate_expire_time=timestamp(result.certificate.expires_at),
            user_id=result.user_id,
        )

    async def RefreshToken(
        self, request: auth_pb2.RefreshTokenRequest, context: Context
    ) -> auth_pb2.RefreshTokenResponse:
        result = await self._auth.refresh(request.refresh_token, request.csr_pem)
        reply = auth_pb2.RefreshTokenResponse(
            access_token=result.access_token,
            refresh_token=result.refresh_token,
            access_token_expire_time=timestamp(result.access_token_expires_at),
            refresh_token_expire_time=timestamp(result.refresh_token_expires_at),
        )
        if result.certificate is not None:
            reply.client_certificate_pem = result.certificate.pem
            reply.client_certificate_expire_time.CopyFrom(timestamp(result.certificate.expires_at))
        return reply

    async def Logout(
        self, request: auth_pb2.LogoutRequest, context: Context
    ) -> auth_pb2.LogoutResponse:
        await self._auth.logout(current_claims())
        return auth_pb2.LogoutResponse()

    async def GetCurrentUser(
        self, request: auth_pb2.GetCurrentUserRequest, context: Context
    ) -> auth_pb2.GetCurrentUserResponse:
        claims = current_claims()
        user = self._auth.known_profile(claims.user_id) or await self._auth.current_user(claims)
        cached = self._current_user_replies.get(user.id)
        if cached is not None and cached[0] is user:
            return cached[1]
        reply = auth_pb2.GetCurrentUserResponse(
            user=auth_pb2.User(
                id=user.id, username=user.username, create_time=timestamp(user.created_at)
            )
        )
        if len(self._current_user_replies) >= self.REPLY_CACHE_SIZE:
            self._current_user_replies.clear()
        self._current_user_replies[user.id] = (user, reply)
        return reply


class TrustServicer(trust_pb2_grpc.TrustServiceServicer):
    def __init__(
        self,
        *,
        ca_certificates_pem: Callable[[], list[str]],
        ak_certificate_chain_pem: Callable[[], Awaitable[list[str]]],
        jwks_json: Callable[[], str],
        issuer: str,
        audience: str,
    ):
        self._ca = ca_certificates_pem
        self._ak = ak_certificate_chain_pem
        self._jwks = jwks_json
        self._issuer = issuer
        self._audience = audience

    async def GetTrustBundle(
        self, request: trust_pb2.GetTrustBundleRequest, context: Context
    ) -> trust_pb2.GetTrustBundleResponse:
        return trust_pb2.GetTrustBundleResponse(
            ca_certificates_pem=self._ca(),
            jwks_json=self._jwks(),
            ak_certificate_chain_pem=await self._ak(),
            token_issuer=self._issuer,
            token_audience=self._audience,
        )


_Event = TypeVar("_Event", enclave_pb2.CreateEnclaveResponse, enclave_pb2.WatchEnclaveResponse)


def _event(kind: type[_Event], update: EnclaveUpdate) -> _Event:
    """One event of the enclave's history; the stored attestation is already wire bytes."""
    event = update.event
    reply = kind(
        enclave_id=event.enclave_id,
        phase=phase_number(event.phase),
        message=event.message,
        sequence=event.sequence,
        time=timestamp(event.time),
    )
    if update.enclave is not None:
        reply.enclave.CopyFrom(enclave_message(update.enclave))
    if update.attestation:
        reply.attestation.ParseFromString(update.attestation)
    reply.attestation_round = update.attestation_round
    return reply


class EnclaveServicer(enclave_pb2_grpc.EnclaveServiceServicer):
    def __init__(self, catalog: EnclaveCatalog):
        self._catalog = catalog

    async def CreateEnclave(
        self, request: enclave_pb2.CreateEnclaveRequest, context: Context
    ) -> AsyncIterator[enclave_pb2.CreateEnclaveResponse]:
        owner = current_claims().user_id
        updates = await self._catalog.create(
            owner,
            request.request_id,
            request.nonce,
            follow_attestations=request.follow_attestations,
        )
        async for update in updates:
            yield _event(enclave_pb2.CreateEnclaveResponse, update)
            if update.event.phase is Phase.FAILED:
                record = update.enclave
                raise Unavailable(
                    "ENCLAVE_FAILED",
                    f"the enclave failed: {update.event.message}",
                    {
                        "enclave_id": update.event.enclave_id,
                        "failure_reason": record.failure_reason if record else "",
                    },
                )

    async def WatchEnclave(
        self, request: enclave_pb2.WatchEnclaveRequest, context: Context
    ) -> AsyncIterator[enclave_pb2.WatchEnclaveResponse]:
        owner = current_claims().user_id
        updates = await self._catalog.watch(
            owner,
            request.enclave_id,
            request.from_sequence,
            follow_attestations=request.follow_attestations,
            attestation_nonce=request.attestation_nonce,
        )
        async for update in updates:
            yield _event(enclave_pb2.WatchEnclaveResponse, update)

    async def RequestAttestation(
        self, request: enclave_pb2.RequestAttestationRequest, context: Context
    ) -> enclave_pb2.RequestAttestationResponse:
        await self._catalog.request_attestation(
            current_claims().user_id, request.enclave_id, request.nonce
        )
        return enclave_pb2.RequestAttestationResponse()

    async def GetEnclave(
        self, request: enclave_pb2.GetEnclaveRequest, context: Context
    ) -> enclave_pb2.GetEnclaveResponse:
        record = await self._catalog.owned(current_claims().user_id, request.enclave_id)
        return enclave_pb2.GetEnclaveResponse(enclave=enclave_message(record))

    async def ListEnclaves(
        self, request: enclave_pb2.ListEnclavesRequest, context: Context
    ) -> enclave_pb2.ListEnclavesResponse:
        records, token = await self._catalog.list(
            current_claims().user_id, request.page_size, request.page_token
        )
        return enclave_pb2.ListEnclavesResponse(
            enclaves=[enclave_message(r) for r in records], next_page_token=token
        )

    async def DeleteEnclave(
        self, request: enclave_pb2.DeleteEnclaveRequest, context: Context
    ) -> enclave_pb2.DeleteEnclaveResponse:
        await self._catalog.delete(current_claims().user_id, request.enclave_id)
        return enclave_pb2.DeleteEnclaveResponse()


class AttestationServicer(attestation_pb2_grpc.AttestationServiceServicer):
    def __init__(self, catalog: EnclaveCatalog):
        self._catalog = catalog

    async def GetAttestation(
        self, request: attestation_pb2.GetAttestationRequest, context: Context
    ) -> attestation_pb2.GetAttestationResponse:
        raw = await self._catalog.attest(
            current_claims().user_id, request.enclave_id, request.nonce
        )
        # One parse of the backend's bytes as the reply, not a parse and a copy.
        return attestation_pb2.GetAttestationResponse.FromString(wrapped(raw))


__all__ = [
    "SERVICE_NAMES",
    "AttestationServicer",
    "AuthServicer",
    "EnclaveServicer",
    "TrustServicer",
    "attestation_pb2",
]
