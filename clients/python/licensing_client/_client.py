"""The high-level client: sessions that refresh themselves, enclaves, attested enclave sessions.

``LicensingClient`` verifies the licensing server against the CA it is given and
nothing else. ``log_in`` makes the private key and CSR here (only the CSR is sent)
and keeps the session in a ``SessionStore``; before each call the access token is
refreshed if it expires within a minute (with a new key and certificate if the
certificate expires within an hour), and a call answered UNAUTHENTICATED /
TOKEN_EXPIRED is refreshed and retried once. A brief rate limit (RESOURCE_EXHAUSTED
with RetryInfo) is waited out. ``open_enclave`` verifies a fresh TPM attestation
before any connection to the enclave exists, then pins exactly the attested
certificate. Everything raised is a ``LicensingError``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import random
import secrets
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from licensing_client._attested import (
    NONCE_BYTES,
    EnclaveAttestation,
    attest_enclave,
    trust_anchors,
)
from licensing_client._connect import bearer, pinned_tls_context, split_address, tls_context
from licensing_client._errors import (
    TRANSPORT_ERRORS,
    AttestationFailedError,
    EnclaveFailedError,
    LicensingError,
    NotLoggedInError,
    RefreshFailedError,
    SessionEndedError,
    SignatureInvalidError,
    paced,
    reason_of,
    token_expired,
    translated,
)
from licensing_client._keys import new_key_and_csr, verify_signature
from licensing_client._session import MemorySessionStore, Session, SessionStore
from licensing_client.attestation import AttestationError, VerificationReport, verify_attestation
from licensing_client.gen.enclave import v1 as workload
from licensing_client.gen.licensing import v1

T = TypeVar("T")
Metadata = dict[str, str]
Event = v1.CreateEnclaveResponse | v1.WatchEnclaveResponse

DEFAULT_TIMEOUT = 30.0
ACCESS_TOKEN_MARGIN = dt.timedelta(seconds=60)
CERTIFICATE_MARGIN = dt.timedelta(hours=1)
#: Reconnects of a stream in a row without a new event before giving up.
STREAM_RETRIES = 5
_BACKOFF_FIRST, _BACKOFF_MAX = 0.5, 8.0
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

#: Refresh failures after which only a new login helps.
_SESSION_OVER = {
    "REFRESH_TOKEN_INVALID",
    "REFRESH_TOKEN_EXPIRED",
    "REFRESH_TOKEN_REUSED",
    "SESSION_REVOKED",
    "USER_NOT_FOUND",
}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def is_transient(error: BaseException) -> bool:
    """Worth reconnecting for: the server is unreachable or the connection dropped."""
    if isinstance(error, GRPCError):
        return error.status is Status.UNAVAILABLE
    if isinstance(error, LicensingError):
        return False
    if isinstance(error, ssl.SSLError):
        return False  # a handshake that fails once fails again
    return isinstance(error, TRANSPORT_ERRORS)


def certificate_sha256(certificate_pem: str) -> bytes:
    """SHA-256 of the certificate's DER (what enclaves report as their identity)."""
    certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest()


# Events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Progress:
    """One phase event of an enclave (``event`` is the server's message as it came)."""

    event: Event

    @property
    def enclave_id(self) -> str:
        return self.event.enclave_id

    @property
    def phase(self) -> v1.Phase:
        return self.event.phase

    @property
    def message(self) -> str:
        return self.event.message

    @property
    def sequence(self) -> int:
        return self.event.sequence

    @property
    def enclave(self) -> v1.Enclave | None:
        return self.event.enclave if self.event.enclave.id else None

    @property
    def attestation(self) -> v1.Attestation | None:
        """Only the ATTESTED event carries one (betterproto gives an empty message otherwise)."""
        return self.event.attestation if self.event.attestation.quote else None


@dataclass(frozen=True, slots=True)
class Reconnecting:
    """The stream dropped (``error``); it is reopened from ``from_sequence`` after ``delay``."""

    error: BaseException
    attempt: int
    attempts: int
    delay: float
    from_sequence: int


@dataclass(frozen=True, slots=True)
class FetchingAttestation:
    """The events brought no attestation over our nonce (``why``); a fresh one is fetched."""

    enclave_id: str
    why: str


@dataclass(frozen=True, slots=True)
class Created:
    """The last event of ``create_enclave``: the enclave, and its verified attestation
    (None only with ``verify=False``), from the ``ATTESTED event`` or ``GetAttestation``."""

    enclave: v1.Enclave
    attestation: EnclaveAttestation | None
    source: str


@dataclass(frozen=True, slots=True)
class Reattested:
    """One re-attestation round's evidence, verified here against the pinned certificate.

    ``requested`` is True when it binds the nonce this client asked for (so it is fresh
    by our own clock, not only the server's).
    """

    progress: Progress
    round: int
    attestation: EnclaveAttestation
    requested: bool


CreateEvent = Progress | Reconnecting | FetchingAttestation | Created
WatchEvent = Progress | Reconnecting
AttestationEvent = Progress | Reconnecting | Reattested


#: Phases after which a create or watch stream has said all it will.
_SETTLED_PHASES = frozenset({v1.Phase.ATTESTED, v1.Phase.FAILED, v1.Phase.DELETED})


@dataclass
class _Follow:
    """What a phase stream showed so far; replays (an event seen twice) are dropped."""

    last_sequence: int = 0
    enclave_id: str = ""
    last: Progress | None = None
    enclave: v1.Enclave | None = None
    attestation: v1.Attestation | None = None
    attempts: int = 0

    def see(self, event: Event) -> Progress | None:
        if event.sequence and event.sequence <= self.last_sequence:
            return None
        progress = Progress(event)
        self.last_sequence = max(self.last_sequence, event.sequence)
        self.enclave_id = event.enclave_id or self.enclave_id
        self.last = progress
        self.enclave = progress.enclave or self.enclave
        self.attestation = progress.attestation or self.attestation
        self.attempts = 0
        return progress


def provisioning_failure(
    last: Progress | None, enclave: v1.Enclave | None, enclave_id: str = ""
) -> EnclaveFailedError | None:
    """The error for a phase stream that ended FAILED, else None."""
    if last is None or last.phase != v1.Phase.FAILED:
        return None
    enclave_id = last.enclave_id or enclave_id
    reason = (
        (enclave.failure_reason if enclave is not None else "")
        or last.message
        or "no reason was given"
    )
    return EnclaveFailedError(
        f"enclave {enclave_id} failed: {reason.rstrip('.')} (FAILED)",
        enclave_id=enclave_id,
        phase=v1.Phase.FAILED,
    )


# Results -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Account:
    user_id: str
    username: str


@dataclass(frozen=True, slots=True)
class Identity:
    """``GetIdentity`` of an enclave, and whether it names the certificate we pinned."""

    enclave_id: str
    owner: str
    certificate_sha256: bytes
    certificate_pem: str
    matches_pinned_certificate: bool


@dataclass(frozen=True, slots=True)
class Signature:
    """A signature verified here against the attested, pinned certificate of the enclave."""

    signature: bytes
    certificate_pem: str


# The client --------------------------------------------------------------------------


class LicensingClient:
    """A user's client of one licensing server; use as ``async with``, or ``close()`` it."""

    def __init__(
        self,
        enroll_addr: str,
        api_addr: str,
        *,
        ca_pem: str | bytes | Sequence[str],
        store: SessionStore | None = None,
        rpc_timeout: float | None = DEFAULT_TIMEOUT,
        clock: Callable[[], dt.datetime] = _now,
    ) -> None:
        self.enroll_addr = enroll_addr
        self.api_addr = api_addr
        #: The trusted licensing CA, one PEM a certificate (``ValueError`` on junk, now).
        self.ca_anchors = trust_anchors(ca_pem)
        self.store: SessionStore = store if store is not None else MemorySessionStore()
        self.rpc_timeout = rpc_timeout
        #: The CA bundle the server sent with the last ``log_in`` (over the verified channel).
        self.login_ca_bundle: bytes | None = None
        self._clock = clock
        self._session: Session | None = None
        self._refreshing = asyncio.Lock()
        self._enrollment: Channel | None = None
        self._api: Channel | None = None
        self._enclaves: dict[str, Channel] = {}

    @classmethod
    def connect(
        cls,
        enroll_addr: str,
        api_addr: str,
        *,
        ca_pem: str | bytes | Sequence[str],
        store: SessionStore | None = None,
        rpc_timeout: float | None = DEFAULT_TIMEOUT,
    ) -> LicensingClient:
        """A client trusting only ``ca_pem`` (channels open on first use)."""
        return cls(enroll_addr, api_addr, ca_pem=ca_pem, store=store, rpc_timeout=rpc_timeout)

    async def __aenter__(self) -> LicensingClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._enrollment is not None:
            self._enrollment.close()
            self._enrollment = None
        self.reset_channels()

    # Channels ----------------------------------------------------------------------
    def _ca_pem(self) -> str:
        return "".join(self.ca_anchors)

    def _enroll(self) -> Channel:
        if self._enrollment is None:
            host, port = split_address(self.enroll_addr)
            self._enrollment = Channel(host, port, ssl=tls_context(ca_pem=self._ca_pem()))
        return self._enrollment

    def _api_channel(self) -> Channel:
        if self._api is None:
            session = self.session
            host, port = split_address(self.api_addr)
            context = tls_context(
                ca_pem=self._ca_pem(),
                cert_pem=session.client_certificate_pem,
                key_pem=session.client_key_pem,
            )
            self._api = Channel(host, port, ssl=context)
        return self._api

    def _enclave_channel(self, enclave: v1.Enclave) -> Channel:
        """Mutual TLS to an attested enclave, trusting only its attested certificate."""
        channel = self._enclaves.get(enclave.id)
        if channel is None:
            session = self.session
            host, port = split_address(enclave.endpoint)
            context = pinned_tls_context(
                enclave.certificate_pem,
                cert_pem=session.client_certificate_pem,
                key_pem=session.client_key_pem,
            )
            config = Configuration(ssl_target_name_override=enclave.tls_server_name or None)
            channel = Channel(host, port, ssl=context, config=config)
            self._enclaves[enclave.id] = channel
        return channel

    def reset_channels(self) -> None:
        """Drop the channels that present the client certificate (it changed, or broke)."""
        for channel in (self._api, *self._enclaves.values()):
            if channel is not None:
                channel.close()
        self._api = None
        self._enclaves.clear()

    # Accounts ----------------------------------------------------------------------
    async def sign_up(self, username: str, password: str) -> Account:
        with translated(self.enroll_addr):
            reply = await v1.AuthServiceStub(self._enroll()).sign_up(
                v1.SignUpRequest(username=username, password=password),
                timeout=self.rpc_timeout,
            )
        return Account(reply.user_id, reply.username)

    async def log_in(self, username: str, password: str) -> Session:
        """Log in with a key and CSR made here; the session is saved in the store."""
        fresh = new_key_and_csr(username)  # the private key stays here; only the CSR is sent
        with translated(self.enroll_addr):
            reply = await v1.AuthServiceStub(self._enroll()).login(
                v1.LoginRequest(username=username, password=password, csr_pem=fresh.csr_pem),
                timeout=self.rpc_timeout,
            )
        cert_pem = reply.client_certificate_pem.encode()
        try:
            matches = _same_key(cert_pem, fresh.key_pem)
        except ValueError as exc:
            raise LicensingError("the server sent an unreadable client certificate") from exc
        if not matches:
            raise LicensingError("the certificate the server issued is not for our key")
        self.login_ca_bundle = "".join(
            pem if pem.endswith("\n") else pem + "\n" for pem in reply.ca_certificates_pem
        ).encode()
        session = Session(
            username=_username_in(cert_pem, username),
            user_id=reply.user_id,
            access_token=reply.access_token,
            access_token_expire_time=reply.access_token_expire_time,
            refresh_token=reply.refresh_token,
            refresh_token_expire_time=reply.refresh_token_expire_time,
            client_certificate_pem=cert_pem,
            client_key_pem=fresh.key_pem,
            client_certificate_expire_time=reply.client_certificate_expire_time,
        )
        with self.store.lock():
            self.store.save(session)
        self._adopt(session)
        return session

    async def log_out(self) -> None:
        """End the session on the server (the store keeps it: remove it there if you like)."""
        await self._unary(
            lambda ch, md: v1.AuthServiceStub(ch).logout(
                v1.LogoutRequest(), metadata=md, timeout=self.rpc_timeout
            )
        )

    async def current_user(self) -> v1.User:
        reply = await self._unary(
            lambda ch, md: v1.AuthServiceStub(ch).get_current_user(
                v1.GetCurrentUserRequest(), metadata=md, timeout=self.rpc_timeout
            )
        )
        return reply.user

    # The session -------------------------------------------------------------------
    @property
    def session(self) -> Session:
        """The current session (from the store on first use); ``NotLoggedInError`` if none."""
        if self._session is None:
            stored = self.store.load()
            if stored is None:
                raise NotLoggedInError("not logged in")
            self._session = stored
        return self._session

    def _adopt(self, session: Session) -> None:
        previous = self._session
        self._session = session
        if previous is not None and previous.client_certificate_pem != (
            session.client_certificate_pem
        ):
            self.reset_channels()

    def _needs(self, session: Session) -> tuple[bool, bool]:
        """(refresh the access token, renew the certificate) for ``session`` now."""
        now = self._clock()
        renew = session.client_certificate_expire_time - now < CERTIFICATE_MARGIN
        refresh = renew or session.access_token_expire_time - now < ACCESS_TOKEN_MARGIN
        return refresh, renew

    async def ensure_fresh(self) -> Session:
        """The session, refreshed first if its token (or certificate) is about to expire."""
        session = self.session
        refresh, renew = self._needs(session)
        if refresh:
            return await self._refresh(session, renew_certificate=renew)
        return session

    async def refresh(self, *, renew_certificate: bool = False) -> Session:
        """Rotate the tokens now (and the key and certificate if asked)."""
        return await self._refresh(self.session, renew_certificate=renew_certificate)

    async def _refresh(self, used: Session, *, renew_certificate: bool) -> Session:
        """Rotate the session ``used`` was, unless someone (a task, a process) already did.

        Under the store's lock the stored session is read again: if it was rotated
        since, that one is used instead of spending a refresh token twice (which
        would revoke the session).
        """
        async with self._refreshing:
            with self.store.lock():
                stored = self.store.load()
                if stored is None:
                    raise NotLoggedInError("not logged in (the session was removed)")
                if stored.refresh_token != used.refresh_token:
                    self._adopt(stored)
                    refresh, renew_certificate = self._needs(stored)
                    if not refresh:
                        return stored
                if stored.refresh_token_expire_time <= self._clock():
                    raise SessionEndedError("the session expired")
                return await self._rotate(stored, renew_certificate=renew_certificate)

    async def _rotate(self, stored: Session, *, renew_certificate: bool) -> Session:
        fresh = new_key_and_csr(stored.username) if renew_certificate else None
        request = v1.RefreshTokenRequest(
            refresh_token=stored.refresh_token, csr_pem=fresh.csr_pem if fresh else ""
        )
        try:
            reply = await v1.AuthServiceStub(self._enroll()).refresh_token(
                request, timeout=self.rpc_timeout
            )
        except GRPCError as exc:
            ended = reason_of(exc) in _SESSION_OVER
            kind = SessionEndedError if ended else RefreshFailedError
            raise kind.from_grpc(exc, address=self.enroll_addr) from exc
        except TRANSPORT_ERRORS as exc:
            raise RefreshFailedError.from_transport(exc, address=self.enroll_addr) from exc
        session = dataclasses.replace(
            stored,
            access_token=reply.access_token,
            access_token_expire_time=reply.access_token_expire_time,
            refresh_token=reply.refresh_token,
            refresh_token_expire_time=(
                reply.refresh_token_expire_time
                if reply.refresh_token_expire_time != _EPOCH
                else stored.refresh_token_expire_time
            ),
        )
        if fresh is not None:
            if not reply.client_certificate_pem:
                raise RefreshFailedError("the server issued no new certificate")
            session = dataclasses.replace(
                session,
                client_certificate_pem=reply.client_certificate_pem.encode(),
                client_key_pem=fresh.key_pem,
                client_certificate_expire_time=reply.client_certificate_expire_time,
            )
        self.store.save(session)
        self._adopt(session)
        return session

    # Calls -------------------------------------------------------------------------
    async def call(self, fn: Callable[[Channel, Metadata], Awaitable[T]]) -> T:
        """``fn(channel, metadata)`` on the API channel with a fresh token, for any RPC
        without a typed method here (the stubs are ``licensing_client.gen``).

        Retried once, after a refresh, if the server says the token expired, and after
        the wait the server asks for if a rate limit refused it (``paced``). grpclib
        errors pass through as they are; the typed methods translate them.
        """
        return await self._call(fn, None)

    async def _call(
        self, fn: Callable[[Channel, Metadata], Awaitable[T]], enclave: v1.Enclave | None
    ) -> T:
        """``call``, or on the channel pinned to ``enclave``, which must be attested."""
        used = await self.ensure_fresh()
        try:
            return await paced(lambda: fn(self._target(enclave), bearer(used.access_token)))
        except GRPCError as exc:
            if not token_expired(exc):
                raise
        fresh = await self._refresh(used, renew_certificate=False)
        return await paced(lambda: fn(self._target(enclave), bearer(fresh.access_token)))

    async def _unary(
        self,
        fn: Callable[[Channel, Metadata], Awaitable[T]],
        *,
        enclave: v1.Enclave | None = None,
    ) -> T:
        with translated(self.api_addr if enclave is None else enclave.endpoint):
            return await self._call(fn, enclave)

    async def stream(self, fn: Callable[[Channel, Metadata], AsyncIterator[T]]) -> AsyncIterator[T]:
        """A server stream on the API; restarted once if the token expired before any message."""
        used = await self.ensure_fresh()
        started = False
        try:
            async for item in fn(self._api_channel(), bearer(used.access_token)):
                started = True
                yield item
            return
        except GRPCError as exc:
            # Only an expiry answered before anything arrived: the call did nothing yet.
            if started or not token_expired(exc):
                raise
        fresh = await self._refresh(used, renew_certificate=False)
        async for item in fn(self._api_channel(), bearer(fresh.access_token)):
            yield item

    def _target(self, enclave: v1.Enclave | None) -> Channel:
        return self._api_channel() if enclave is None else self._enclave_channel(enclave)

    async def _follow(
        self,
        state: _Follow,
        reopen: Callable[[], AsyncIterator[Event]],
        settled: frozenset[int] = _SETTLED_PHASES,
    ) -> AsyncIterator[WatchEvent]:
        """Phase events, the stream reopened (``reopen``) where it left off when it drops.

        At most ``STREAM_RETRIES`` reconnects in a row without a new event, with
        exponential backoff; raw grpclib errors pass (the callers translate).
        """
        while True:
            try:
                async for event in reopen():
                    progress = state.see(event)
                    if progress is not None:
                        yield progress
                return
            except Exception as exc:
                if state.last is not None and state.last.phase in settled:
                    # The stream broke after its final event, before it closed: nothing
                    # is missing. Resuming would wait for a later change (a loss, a
                    # deletion) that may take the enclave's whole lifetime.
                    return
                if not is_transient(exc) or state.attempts >= STREAM_RETRIES:
                    raise
                state.attempts += 1
                delay = min(_BACKOFF_FIRST * 2 ** (state.attempts - 1), _BACKOFF_MAX)
                delay *= random.uniform(0.8, 1.2)
                yield Reconnecting(exc, state.attempts, STREAM_RETRIES, delay, state.last_sequence)
                self.reset_channels()
                await asyncio.sleep(delay)

    def _watch_stream(self, state: _Follow) -> AsyncIterator[Event]:
        request = v1.WatchEnclaveRequest(
            enclave_id=state.enclave_id, from_sequence=state.last_sequence
        )
        return self.stream(
            lambda ch, md: v1.EnclaveServiceStub(ch).watch_enclave(request, metadata=md)
        )

    # Enclaves ----------------------------------------------------------------------
    async def create_enclave(
        self, request_id: str | None = None, nonce: bytes | None = None, *, verify: bool = True
    ) -> AsyncIterator[CreateEvent]:
        """Create an enclave: its progress events, ending in ``Created``.

        Idempotent by ``request_id`` (a new one if None): the same id never makes a
        second enclave, so a create that failed on the way can be repeated. A dropped
        stream is resumed (``Reconnecting``). With ``verify`` the attestation is
        verified against ``nonce`` (random if None), the enclave's certificate and the
        trusted CA; a repeated create replays the first request's events, over that
        request's nonce, so then a fresh attestation is fetched (``FetchingAttestation``).
        Raises ``EnclaveFailedError`` (FAILED, DELETED) and ``AttestationFailedError``.
        """
        request = v1.CreateEnclaveRequest(
            request_id=request_id or str(uuid.uuid4()),
            nonce=nonce if nonce is not None else secrets.token_bytes(NONCE_BYTES),
        )
        state = _Follow()

        def reopen() -> AsyncIterator[Event]:
            # Until the enclave has an id, CreateEnclave again (idempotent by request id);
            # after that, resume its events with WatchEnclave.
            if state.enclave_id:
                return self._watch_stream(state)
            return self.stream(
                lambda ch, md: v1.EnclaveServiceStub(ch).create_enclave(request, metadata=md)
            )

        with translated(self.api_addr):
            async for event in self._follow(state, reopen):
                yield event
        failure = provisioning_failure(state.last, state.enclave)
        if failure is not None:
            raise failure
        if state.last is None:
            raise LicensingError("the server sent no event")
        if state.last.phase == v1.Phase.DELETED:
            raise EnclaveFailedError(
                f"enclave {state.enclave_id} was deleted before it was ready",
                enclave_id=state.enclave_id,
                phase=v1.Phase.DELETED,
            )
        enclave = state.enclave or await self.get_enclave(state.enclave_id)
        if not verify:
            yield Created(enclave, None, "")
            return
        attestation, source = state.attestation, "ATTESTED event"
        if attestation is None or bytes(attestation.nonce) != request.nonce:
            why = (
                "no attestation arrived with the events"
                if attestation is None
                else "the ATTESTED event is a replay, over the nonce of the first create "
                "with this request id"
            )
            yield FetchingAttestation(enclave.id, why)
            attestation, source = (
                await self._get_attestation(enclave.id, request.nonce),
                ("GetAttestation"),
            )
        try:
            report = verify_attestation(
                attestation,
                nonce=request.nonce,
                expected_certificate_pem=enclave.certificate_pem,
                trusted_ca_pem=self.ca_anchors,
            )
        except AttestationError as exc:
            raise AttestationFailedError(
                exc, enclave_id=enclave.id, nonce=request.nonce, source=source
            ) from exc
        verified = EnclaveAttestation(enclave, request.nonce, attestation, report)
        yield Created(enclave, verified, source)

    async def watch_enclave(
        self, enclave_id: str, from_sequence: int = 0
    ) -> AsyncIterator[WatchEvent]:
        """An enclave's phase events after ``from_sequence``, until it settles (or is deleted)."""
        state = _Follow(last_sequence=from_sequence, enclave_id=enclave_id)
        with translated(self.api_addr):
            async for event in self._follow(state, lambda: self._watch_stream(state)):
                yield event

    async def follow_attestations(
        self, enclave_id: str, *, nonce: bytes | None = None, from_sequence: int = 0
    ) -> AsyncIterator[AttestationEvent]:
        """Every re-attestation of the enclave as it is made, each verified (``Reattested``).

        The certificate is pinned from ``GetEnclave`` when the call starts; every round's
        attestation must bind that very certificate and its own nonce, or this raises
        ``AttestationFailedError``. With ``nonce`` the next round also quotes over it
        (``requested``). Other events (the provisioning ones, old rounds whose evidence
        was pruned) come as ``Progress``. Ends with ``EnclaveFailedError`` when the
        licence is revoked (FAILED) or the enclave is deleted; resumes dropped streams.
        """
        pinned = await self.get_enclave(enclave_id)
        if nonce is not None:
            await self.request_attestation(enclave_id, nonce)
        state = _Follow(last_sequence=from_sequence, enclave_id=enclave_id)
        request = v1.WatchEnclaveRequest(enclave_id=enclave_id, follow_attestations=True)

        def reopen() -> AsyncIterator[Event]:
            request.from_sequence = state.last_sequence
            return self.stream(
                lambda ch, md: v1.EnclaveServiceStub(ch).watch_enclave(request, metadata=md)
            )

        ends = frozenset({v1.Phase.FAILED, v1.Phase.DELETED})
        with translated(self.api_addr):
            async for event in self._follow(state, reopen, ends):
                if isinstance(event, Progress) and event.event.attestation_round:
                    attestation = event.attestation
                    if attestation is not None:
                        yield self._verified_round(pinned, event, attestation, nonce)
                        continue
                yield event
        failure = provisioning_failure(state.last, state.enclave, enclave_id)
        if failure is not None:
            raise failure
        raise EnclaveFailedError(
            f"enclave {enclave_id} was deleted",
            enclave_id=enclave_id,
            phase=v1.Phase(v1.Phase.DELETED),
        )

    def _verified_round(
        self,
        pinned: v1.Enclave,
        progress: Progress,
        attestation: v1.Attestation,
        asked: bytes | None,
    ) -> Reattested:
        round_nonce = bytes(attestation.nonce)
        try:
            report = verify_attestation(
                attestation,
                nonce=round_nonce,
                expected_certificate_pem=pinned.certificate_pem,
                trusted_ca_pem=self.ca_anchors,
            )
        except AttestationError as exc:
            raise AttestationFailedError(
                exc,
                enclave_id=pinned.id,
                nonce=round_nonce,
                source=f"re-attestation round {progress.event.attestation_round}",
            ) from exc
        return Reattested(
            progress,
            progress.event.attestation_round,
            EnclaveAttestation(pinned, round_nonce, attestation, report),
            asked is not None and round_nonce == asked,
        )

    async def request_attestation(self, enclave_id: str, nonce: bytes) -> None:
        """Ask for the enclave's next re-attestation round to quote over ``nonce`` too."""
        await self._unary(
            lambda ch, md: v1.EnclaveServiceStub(ch).request_attestation(
                v1.RequestAttestationRequest(enclave_id=enclave_id, nonce=nonce),
                metadata=md,
                timeout=self.rpc_timeout,
            )
        )

    async def _get_attestation(self, enclave_id: str, nonce: bytes) -> v1.Attestation:
        reply = await self._unary(
            lambda ch, md: v1.AttestationServiceStub(ch).get_attestation(
                v1.GetAttestationRequest(enclave_id=enclave_id, nonce=nonce),
                metadata=md,
                timeout=self.rpc_timeout,
            )
        )
        return reply.attestation

    async def get_enclave(self, enclave_id: str) -> v1.Enclave:
        reply = await self._unary(
            lambda ch, md: v1.EnclaveServiceStub(ch).get_enclave(
                v1.GetEnclaveRequest(enclave_id=enclave_id), metadata=md, timeout=self.rpc_timeout
            )
        )
        return reply.enclave

    async def list_enclaves(self, page_size: int = 0) -> AsyncIterator[v1.Enclave]:
        """Every enclave of the user, fetched a page (``page_size``, 0: the server's) at a time."""
        token = ""
        seen: set[str] = set()
        while True:
            reply = await self._list_page(page_size, token)
            for enclave in reply.enclaves:
                yield enclave
            token = reply.next_page_token
            if not token:
                return
            if token in seen:
                raise LicensingError("the server repeated a page token")
            seen.add(token)

    async def _list_page(self, page_size: int, token: str) -> v1.ListEnclavesResponse:
        request = v1.ListEnclavesRequest(page_size=page_size, page_token=token)
        return await self._unary(
            lambda ch, md: v1.EnclaveServiceStub(ch).list_enclaves(
                request, metadata=md, timeout=self.rpc_timeout
            )
        )

    async def delete_enclave(self, enclave_id: str) -> None:
        await self._unary(
            lambda ch, md: v1.EnclaveServiceStub(ch).delete_enclave(
                v1.DeleteEnclaveRequest(enclave_id=enclave_id),
                metadata=md,
                timeout=self.rpc_timeout,
            )
        )

    async def attest(self, enclave_id: str) -> EnclaveAttestation:
        """Verify a fresh attestation (``GetAttestation`` over a new nonce) of the enclave.

        Raises ``EnclaveNotReady`` if it has no certificate to attest, and
        ``AttestationFailedError`` (naming the failed check) if it does not verify.
        """

        async def run(channel: Channel, metadata: Metadata) -> EnclaveAttestation:
            return await attest_enclave(
                channel,
                enclave_id,
                access_token=self.session.access_token,  # what ``metadata`` carries
                trusted_ca_pem=self.ca_anchors,
                rpc_timeout=self.rpc_timeout,
            )

        try:
            return await self._unary(run)
        except AttestationError as exc:
            raise AttestationFailedError(
                exc, enclave_id=enclave_id, nonce=None, source="GetAttestation"
            ) from exc

    async def open_enclave(self, enclave_id: str) -> EnclaveSession:
        """Attest the enclave (``attest``), then a session pinned to the attested certificate.

        Nothing connects to the enclave unless the attestation verified; an endpoint
        presenting any other certificate later fails the TLS handshake.
        """
        verified = await self.attest(enclave_id)
        previous = self._enclaves.pop(verified.enclave.id, None)
        if previous is not None:
            previous.close()
        return EnclaveSession(self, verified)


class EnclaveSession:
    """Calls to one attested enclave's WorkloadService, pinned to its attested certificate."""

    def __init__(self, client: LicensingClient, attestation: EnclaveAttestation) -> None:
        self.client = client
        self.attestation = attestation

    @property
    def enclave(self) -> v1.Enclave:
        return self.attestation.enclave

    @property
    def report(self) -> VerificationReport:
        return self.attestation.report

    async def _run(self, fn: Callable[[workload.WorkloadServiceStub, Metadata], Awaitable[T]]) -> T:
        timeout = self.client.rpc_timeout
        return await self.client._unary(
            lambda ch, md: fn(workload.WorkloadServiceStub(ch, timeout=timeout), md),
            enclave=self.enclave,
        )

    async def get_identity(self) -> Identity:
        reply = await self._run(
            lambda stub, md: stub.get_identity(workload.GetIdentityRequest(), metadata=md)
        )
        matches = reply.certificate_sha256 == certificate_sha256(self.enclave.certificate_pem)
        return Identity(
            reply.enclave_id,
            reply.owner,
            reply.certificate_sha256,
            reply.certificate_pem,
            matches,
        )

    async def put_secret(self, name: str, value: bytes) -> None:
        request = workload.PutSecretRequest(name=name, value=value)
        await self._run(lambda stub, md: stub.put_secret(request, metadata=md))

    async def get_secret(self, name: str) -> bytes:
        request = workload.GetSecretRequest(name=name)
        reply = await self._run(lambda stub, md: stub.get_secret(request, metadata=md))
        return reply.value

    async def list_secrets(self) -> list[str]:
        reply = await self._run(
            lambda stub, md: stub.list_secrets(workload.ListSecretsRequest(), metadata=md)
        )
        return list(reply.names)

    async def delete_secret(self, name: str) -> None:
        request = workload.DeleteSecretRequest(name=name)
        await self._run(lambda stub, md: stub.delete_secret(request, metadata=md))

    async def sign(self, data: bytes) -> Signature:
        """Sign ``data`` in the enclave; verified here against the pinned certificate
        (not the one the reply names), else ``SignatureInvalidError``."""
        request = workload.SignRequest(data=data)
        reply = await self._run(lambda stub, md: stub.sign(request, metadata=md))
        pinned = self.enclave.certificate_pem
        if not verify_signature(pinned, data, reply.signature):
            raise SignatureInvalidError(
                f"the signature from enclave {self.enclave.id} does not verify against its "
                "certificate"
            )
        return Signature(reply.signature, pinned)


def _same_key(cert_pem: bytes, key_pem: bytes) -> bool:
    certificate = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return certificate.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


def _username_in(cert_pem: bytes, fallback: str) -> str:
    """The server puts the normalised username in the certificate's subject."""
    names = x509.load_pem_x509_certificate(cert_pem).subject.get_attributes_for_oid(
        NameOID.COMMON_NAME
    )
    return str(names[0].value) if names else fallback
