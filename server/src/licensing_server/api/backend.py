"""Servicers of the internal ``licensing.control.v1`` API (frontend-only, by policy)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from licensing.control.v1 import control_pb2, control_pb2_grpc

from licensing_common.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from licensing_common.rpc.errors import code_of
from licensing_server.api.convert import phase_number, timestamp, wrapped
from licensing_server.attestation import AttestationEncoder, Attestor
from licensing_server.auth import normalise_username
from licensing_server.enclaves.nonces import ATTESTABLE, check_nonce
from licensing_server.pki import CertificateAuthority, parse_csr
from licensing_server.provisioning import EnclaveProvisioner, ReattestationRounds
from licensing_server.storage import EnclaveStore, Phase

Context = grpc.aio.ServicerContext[Any, Any]

QUOTE_SERVICE = "licensing.control.v1.QuoteService"
SERVICE_NAMES = (
    "licensing.control.v1.CertificateService",
    "licensing.control.v1.ProvisioningService",
    QUOTE_SERVICE,
)


class CertificateServicer(control_pb2_grpc.CertificateServiceServicer):
    def __init__(
        self,
        ca: CertificateAuthority,
        *,
        max_user_lifetime: dt.timedelta,
        ak_certificate_chain_pem: Callable[[], list[str]],
    ):
        self._ca = ca
        self._ak_chain = ak_certificate_chain_pem
        self._max_lifetime = max_user_lifetime

    async def SignUserCertificate(
        self, request: control_pb2.SignUserCertificateRequest, context: Context
    ) -> control_pb2.SignUserCertificateResponse:
        try:
            user_id = str(uuid.UUID(request.user_id))
        except ValueError as exc:
            raise InvalidArgument("USER_ID_INVALID", "user_id must be a UUID") from exc
        username = normalise_username(request.username)
        csr = parse_csr(request.csr_pem)
        lifetime = self._max_lifetime
        if request.lifetime_seconds:
            lifetime = min(lifetime, dt.timedelta(seconds=request.lifetime_seconds))
        issued = self._ca.sign_user_csr(csr, user_id=user_id, username=username, lifetime=lifetime)
        return control_pb2.SignUserCertificateResponse(
            certificate_pem=issued.pem,
            certificate_sha256=issued.sha256,
            expire_time=timestamp(issued.not_after),
            ca_certificates_pem=self._ca.ca_certificates_pem,
        )

    async def GetCaCertificates(
        self, request: control_pb2.GetCaCertificatesRequest, context: Context
    ) -> control_pb2.GetCaCertificatesResponse:
        return control_pb2.GetCaCertificatesResponse(
            ca_certificates_pem=self._ca.ca_certificates_pem,
            ak_certificate_chain_pem=self._ak_chain(),
        )


class ProvisioningServicer(control_pb2_grpc.ProvisioningServiceServicer):
    def __init__(
        self,
        provisioner: EnclaveProvisioner,
        revoke_sessions: Callable[[list[str]], Awaitable[int]] | None = None,
    ):
        self._provisioner = provisioner
        self._revoke_sessions = revoke_sessions

    async def RevokeSessions(
        self, request: control_pb2.RevokeSessionsRequest, context: Context
    ) -> control_pb2.RevokeSessionsResponse:
        """Logout on the frontend: this backend's enclaves refuse the sessions from now on."""
        ids = [_session_id(raw) for raw in request.session_ids[:100]]
        if self._revoke_sessions is not None and ids:
            await self._revoke_sessions(ids)
        return control_pb2.RevokeSessionsResponse()

    async def Provision(
        self, request: control_pb2.ProvisionRequest, context: Context
    ) -> AsyncIterator[control_pb2.ProvisionResponse]:
        enclave_id = _enclave_id(request.enclave_id)
        await self._provisioner.start(enclave_id, request.owner, request.jwks_json)
        # The frontend reads the enclave and its attestation from the database.
        async for event in self._provisioner.follow(enclave_id, 0):
            yield control_pb2.ProvisionResponse(
                enclave_id=event.enclave_id,
                phase=phase_number(event.phase),
                message=event.message,
                sequence=event.sequence,
                time=timestamp(event.time),
            )

    async def Deprovision(
        self, request: control_pb2.DeprovisionRequest, context: Context
    ) -> control_pb2.DeprovisionResponse:
        await self._provisioner.deprovision(_enclave_id(request.enclave_id))
        return control_pb2.DeprovisionResponse()


#: The most requests one QuoteBatch may carry (the frontend sends at most this many).
MAX_QUOTE_BATCH = 4096


def _quote_error(error: DomainError) -> control_pb2.QuoteResult:
    """One request's error, as the status a unary ``Quote`` would have ended with."""
    return control_pb2.QuoteResult(
        error=control_pb2.QuoteError(
            code=code_of(error).value[0],
            reason=error.reason,
            message=error.message,
            metadata=dict(error.metadata),
        )
    )


def _session_id(raw: str) -> str:
    try:
        return str(uuid.UUID(raw))
    except ValueError as exc:
        raise InvalidArgument("SESSION_ID_INVALID", "session_ids must be UUIDs") from exc


def _enclave_id(raw: str) -> str:
    try:
        return str(uuid.UUID(raw))
    except ValueError as exc:
        raise InvalidArgument("ENCLAVE_ID_INVALID", "enclave_id must be a UUID") from exc


#: How long a quoted enclave's row is trusted without reading it again. The attestor's
#: live set is checked on every call (a delete or failure here drops the entry at once);
#: this bounds staleness when another replica deletes it.
ATTESTABLE_ROW_SECONDS = 1.0
_MAX_CACHED_ROWS = 65_536


@dataclass(frozen=True, slots=True)
class _Attestable:
    certificate_pem: str
    certificate_sha256: bytes
    read_at: float


class QuoteServicer(control_pb2_grpc.QuoteServiceServicer):
    def __init__(
        self,
        attestor: Attestor,
        store: EnclaveStore,
        rounds: ReattestationRounds | None = None,
    ):
        self._attestor = attestor
        self._store = store
        # Attestable rows by enclave id: saves a database read on every quote.
        self._rows: dict[str, _Attestable] = {}
        self._reading: dict[str, asyncio.Future[_Attestable]] = {}
        self._encoder = AttestationEncoder()
        self._rounds = rounds

    async def RequestReattestation(
        self, request: control_pb2.RequestReattestationRequest, context: Context
    ) -> control_pb2.RequestReattestationResponse:
        """Queue the client's nonce for the enclave's next re-attestation round."""
        nonce = check_nonce(request.nonce)
        record = await self._store.get(_enclave_id(request.enclave_id))
        if record is None:
            raise NotFound("ENCLAVE_NOT_FOUND", "no such enclave")
        if record.phase is not Phase.ATTESTED or self._rounds is None:
            raise FailedPrecondition(
                "ENCLAVE_NOT_ATTESTED",
                f"the enclave is {record.phase.value}; only an ATTESTED enclave is re-attested",
                {"phase": record.phase.value},
            )
        if not self._rounds.request(record.id, nonce):
            raise ResourceExhausted(
                "ATTESTATION_REQUESTS_QUEUED",
                "too many nonces already wait for this enclave's next round; try after it",
            )
        return control_pb2.RequestReattestationResponse()

    async def Quote(
        self, request: control_pb2.QuoteRequest, context: Context
    ) -> control_pb2.QuoteResponse:
        nonce = check_nonce(request.nonce)
        row = await self._attestable(request.enclave_id)
        evidence = await self._attestor.attest(row.certificate_pem, row.certificate_sha256, nonce)
        # Parsed from bytes in C: cheaper than building the message field by field.
        return control_pb2.QuoteResponse.FromString(wrapped(self._encoder.encode(evidence)))

    async def QuoteBatch(
        self, request: control_pb2.QuoteBatchRequest, context: Context
    ) -> control_pb2.QuoteBatchResponse:
        """Each request answered as ``Quote`` would, all of them in the attestor's queue at once."""
        if len(request.requests) > MAX_QUOTE_BATCH:
            raise InvalidArgument(
                "QUOTE_BATCH_TOO_LARGE", f"at most {MAX_QUOTE_BATCH} requests per QuoteBatch"
            )
        results = [control_pb2.QuoteResult() for _ in request.requests]
        asked: list[tuple[str, bytes, bytes]] = []
        asked_at: list[int] = []
        for index, one in enumerate(request.requests):
            try:
                nonce = check_nonce(one.nonce)
                row = await self._attestable(one.enclave_id)
            except DomainError as exc:
                results[index] = _quote_error(exc)
                continue
            asked.append((row.certificate_pem, row.certificate_sha256, nonce))
            asked_at.append(index)
        for index, outcome in zip(asked_at, await self._attestor.attest_many(asked), strict=True):
            if isinstance(outcome, DomainError):
                results[index] = _quote_error(outcome)
            else:
                results[index] = control_pb2.QuoteResult(attestation=self._encoder.encode(outcome))
        return control_pb2.QuoteBatchResponse(results=results)

    async def _attestable(self, raw_id: str) -> _Attestable:
        """The enclave's certificate, from the cache while the attestor still measures it."""
        cached = self._rows.get(raw_id)
        if (
            cached is not None
            and time.monotonic() - cached.read_at < ATTESTABLE_ROW_SECONDS
            and self._attestor.is_measured(_enclave_id(raw_id), cached.certificate_sha256)
        ):
            return cached
        # One read per enclave at a time: a batch of answers arrives, and asks again, at once.
        reading = self._reading.get(raw_id)
        if reading is None:
            reading = asyncio.ensure_future(self._read(raw_id))
            self._reading[raw_id] = reading
            reading.add_done_callback(lambda done: self._read_done(raw_id, done))
        return await asyncio.shield(reading)

    def _read_done(self, raw_id: str, done: asyncio.Future[_Attestable]) -> None:
        self._reading.pop(raw_id, None)
        if not done.cancelled():
            done.exception()  # retrieved here too, in case every waiter went away

    async def _read(self, raw_id: str) -> _Attestable:
        self._rows.pop(raw_id, None)
        record = await self._store.get(_enclave_id(raw_id))
        if record is None:
            raise NotFound("ENCLAVE_NOT_FOUND", "no such enclave")
        if record.phase not in ATTESTABLE or not record.certificate_sha256:
            raise FailedPrecondition(
                "ENCLAVE_NOT_ATTESTABLE",
                f"the enclave is {record.phase.value}; only a running enclave can be attested",
                {"phase": record.phase.value},
            )
        row = _Attestable(record.certificate_pem, record.certificate_sha256, time.monotonic())
        if len(self._rows) >= _MAX_CACHED_ROWS:
            self._rows.clear()
        self._rows[raw_id] = row
        return row
