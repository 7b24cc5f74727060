"""A logged-in session: channels, bearer tokens, and refresh without being asked.

Before each call the access token is refreshed if it expires within a minute (with
a new key and CSR if the client certificate expires within an hour), and a call
answered UNAUTHENTICATED / TOKEN_EXPIRED is refreshed and retried once. Refreshes
are serialised between processes through a lock in the config directory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from google.rpc import error_details_pb2
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from licensing_client import (
    AttestedEnclave,
    api_channel,
    bearer,
    connect_attested_enclave,
    enclave_channel,
    enrollment_channel,
)
from licensing_client.cli._errors import (
    CliError,
    SessionEnded,
    describe_status,
    explain,
    reason_of,
)
from licensing_client._keys import new_key_and_csr
from licensing_client.cli._store import CredentialStore, SessionRecord
from licensing_client.gen.licensing import v1

T = TypeVar("T")
Metadata = dict[str, str]

CALL_TIMEOUT = 30.0
ACCESS_TOKEN_MARGIN = dt.timedelta(seconds=60)
CERTIFICATE_MARGIN = dt.timedelta(hours=1)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

#: Refresh failures after which only a new Login helps.
_SESSION_OVER = {
    "REFRESH_TOKEN_INVALID",
    "REFRESH_TOKEN_EXPIRED",
    "REFRESH_TOKEN_REUSED",
    "SESSION_REVOKED",
    "USER_NOT_FOUND",
}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def token_expired(error: GRPCError) -> bool:
    return error.status is Status.UNAUTHENTICATED and reason_of(error) == "TOKEN_EXPIRED"


#: A rate-limited call is retried when the server asks for at most this wait, this often.
MAX_RETRY_WAIT_SECONDS = 5.0
RATE_LIMIT_RETRIES = 3


def retry_delay(error: GRPCError) -> float | None:
    """How long the server asks us to wait before calling again, if it refused by rate limit.

    A rate-limited call was refused before anything ran, so calling again is safe.
    """
    if error.status is not Status.RESOURCE_EXHAUSTED or reason_of(error) != "RATE_LIMITED":
        return None
    for detail in error.details or ():
        if isinstance(detail, error_details_pb2.RetryInfo):
            return float(detail.retry_delay.ToMilliseconds()) / 1000
    return None


async def paced(call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, waited out and repeated while a rate limit refuses it briefly."""
    for _ in range(RATE_LIMIT_RETRIES):
        try:
            return await call()
        except GRPCError as exc:
            delay = retry_delay(exc)
            if delay is None or delay > MAX_RETRY_WAIT_SECONDS:
                raise
        await asyncio.sleep(delay)
    return await call()


class Connections:
    """The channels one command opens; all closed together."""

    def __init__(self, *, server: str, ca_path: Path) -> None:
        self.server = server
        self.ca_path = ca_path
        self._enrollment: Channel | None = None
        self._opened: list[Channel] = []

    @property
    def trust_hint(self) -> str:
        return (
            f"it does not verify against the pinned CA {self.ca_path}; if the server's CA "
            "really changed, compare fingerprints and pass --ca-file"
        )

    def keep(self, channel: Channel) -> Channel:
        self._opened.append(channel)
        return channel

    def enrollment(self) -> Channel:
        if self._enrollment is None:
            self._enrollment = self.keep(enrollment_channel(self.server, ca_file=self.ca_path))
        return self._enrollment

    def close(self) -> None:
        for channel in self._opened:
            channel.close()
        self._opened.clear()
        self._enrollment = None


class Session:
    """The stored session of one user, used by one command."""

    def __init__(
        self,
        store: CredentialStore,
        connections: Connections,
        record: SessionRecord,
        *,
        api: str,
        clock: Callable[[], dt.datetime] = _now,
    ) -> None:
        self.store = store
        self.connections = connections
        self.record = record
        self.api_address = api
        self._clock = clock
        self._api: Channel | None = None
        self._enclaves: dict[str, Channel] = {}
        #: Enclaves whose attestation verified, as GetEnclave described them then.
        self._attested: dict[str, v1.Enclave] = {}

    # Channels ----------------------------------------------------------------------
    @property
    def api_peer(self) -> str:
        return f"the licensing API at {self.api_address}"

    def api(self) -> Channel:
        if self._api is None:
            self._api = self.connections.keep(
                api_channel(
                    self.api_address,
                    ca_file=self.connections.ca_path,
                    cert_file=self.store.cert_path,
                    key_file=self.store.key_path,
                )
            )
        return self._api

    async def connect_enclave(self, enclave_id: str) -> AttestedEnclave:
        """Attest the enclave (fresh nonce), then keep a channel pinned to its attested certificate.

        ``connect_attested_enclave`` raises ``AttestationError`` before any channel to
        the enclave exists if a check fails; the trust anchors are the pinned CA.
        """

        async def attest(channel: Channel, metadata: Metadata) -> AttestedEnclave:
            return await connect_attested_enclave(
                channel,
                enclave_id,
                cert_file=self.store.cert_path,
                key_file=self.store.key_path,
                access_token=self.record.access_token,  # what ``metadata`` carries
                trusted_ca_pem=self.connections.ca_path.read_bytes(),
                rpc_timeout=CALL_TIMEOUT,
            )

        attested = await self.call(attest)
        enclave = attested.enclave
        previous = self._enclaves.pop(enclave.id, None)
        if previous is not None:
            previous.close()
        self._attested[enclave.id] = enclave
        self._enclaves[enclave.id] = self.connections.keep(attested.channel)
        return attested

    def enclave(self, enclave: v1.Enclave) -> Channel:
        """The channel to an enclave attested by ``connect_enclave``, pinned to that certificate.

        After ``reset_channels`` (a renewed client certificate) it is opened again,
        pinned to the same attested certificate. An enclave that was not attested in
        this session has no channel at all.
        """
        attested = self._attested.get(enclave.id)
        if attested is None:
            raise RuntimeError(f"enclave {enclave.id} was not attested; call connect_enclave")
        if enclave.id not in self._enclaves:
            self._enclaves[enclave.id] = self.connections.keep(
                enclave_channel(
                    attested.endpoint,
                    tls_server_name=attested.tls_server_name,
                    pinned_certificate_pem=attested.certificate_pem,
                    cert_file=self.store.cert_path,
                    key_file=self.store.key_path,
                )
            )
        return self._enclaves[enclave.id]

    def reset_channels(self) -> None:
        """Drop the channels that present the client certificate (it changed, or broke)."""
        for channel in (self._api, *self._enclaves.values()):
            if channel is not None:
                channel.close()
        self._api = None
        self._enclaves.clear()

    def bearer(self) -> Metadata:
        return bearer(self.record.access_token)

    # Refresh -----------------------------------------------------------------------
    def _needs(self, record: SessionRecord) -> tuple[bool, bool]:
        """(refresh the access token, renew the certificate) for ``record`` now."""
        now = self._clock()
        renew = record.client_certificate_expire_time - now < CERTIFICATE_MARGIN
        refresh = renew or record.access_token_expire_time - now < ACCESS_TOKEN_MARGIN
        return refresh, renew

    async def ensure_fresh(self) -> None:
        refresh, renew = self._needs(self.record)
        if refresh:
            await self.refresh(renew_certificate=renew)

    async def refresh(self, *, renew_certificate: bool = False) -> None:
        """Rotate the tokens (and the key and certificate if asked) and store them.

        Under the store's lock the stored session is read again: if another process
        already rotated it, that result is used instead of spending a refresh token
        twice (which would revoke the session).
        """
        with self.store.lock():
            stored = self.store.load_session()
            if stored is None:
                raise CliError(
                    "not logged in (the session was removed); run `licensing login USERNAME`"
                )
            if stored.refresh_token != self.record.refresh_token:
                changed_certificate = (
                    stored.client_certificate_expire_time
                    != self.record.client_certificate_expire_time
                )
                self.record = stored
                if changed_certificate:
                    self.reset_channels()
                refresh, renew_certificate = self._needs(stored)
                if not refresh:
                    return
            if stored.refresh_token_expire_time <= self._clock():
                raise SessionEnded("the session expired; run `licensing login USERNAME` again")
            await self._rotate(stored, renew_certificate=renew_certificate)

    async def _rotate(self, stored: SessionRecord, *, renew_certificate: bool) -> None:
        fresh_key = new_key_and_csr(stored.username) if renew_certificate else None
        request = v1.RefreshTokenRequest(
            refresh_token=stored.refresh_token, csr_pem=fresh_key.csr_pem if fresh_key else ""
        )
        try:
            with explain(
                "refreshing the session",
                peer=f"the licensing server at {self.connections.server}",
                trust=self.connections.trust_hint,
            ):
                reply = await v1.AuthServiceStub(self.connections.enrollment()).refresh_token(
                    request, timeout=CALL_TIMEOUT
                )
        except CliError as exc:
            cause = exc.__cause__
            if isinstance(cause, GRPCError) and reason_of(cause) in _SESSION_OVER:
                raise SessionEnded(
                    f"the session has ended: {describe_status(cause)}; "
                    "run `licensing login USERNAME` again"
                ) from cause
            raise
        certificate_expiry = stored.client_certificate_expire_time
        if fresh_key is not None:
            if not reply.client_certificate_pem:
                raise CliError(
                    "refreshing the session failed: the server issued no new certificate"
                )
            self.store.save_credentials(fresh_key.key_pem, reply.client_certificate_pem.encode())
            certificate_expiry = reply.client_certificate_expire_time
            self.reset_channels()
        self.record = dataclasses.replace(
            stored,
            access_token=reply.access_token,
            access_token_expire_time=reply.access_token_expire_time,
            refresh_token=reply.refresh_token,
            refresh_token_expire_time=(
                reply.refresh_token_expire_time
                if reply.refresh_token_expire_time != _EPOCH
                else stored.refresh_token_expire_time
            ),
            client_certificate_expire_time=certificate_expiry,
        )
        self.store.save_session(self.record)

    # Calls -------------------------------------------------------------------------
    async def call(
        self,
        fn: Callable[[Channel, Metadata], Awaitable[T]],
        *,
        enclave: v1.Enclave | None = None,
    ) -> T:
        """``fn(channel, metadata)`` on the API (or an enclave) with a fresh token.

        Retried once, after a refresh, if the server says the token expired, and after
        the wait the server asks for if a rate limit refused it (``paced``).
        """
        await self.ensure_fresh()
        try:
            return await paced(lambda: fn(self._target(enclave), self.bearer()))
        except GRPCError as exc:
            if not token_expired(exc):
                raise
        await self.refresh()
        return await paced(lambda: fn(self._target(enclave), self.bearer()))

    async def stream(self, fn: Callable[[Channel, Metadata], AsyncIterator[T]]) -> AsyncIterator[T]:
        """A server stream on the API; restarted once if the token expired before any message."""
        await self.ensure_fresh()
        started = False
        try:
            async for item in fn(self.api(), self.bearer()):
                started = True
                yield item
            return
        except GRPCError as exc:
            # Only an expiry answered before anything arrived: the call did nothing yet.
            if started or not token_expired(exc):
                raise
        await self.refresh()
        async for item in fn(self.api(), self.bearer()):
            yield item

    def _target(self, enclave: v1.Enclave | None) -> Channel:
        return self.api() if enclave is None else self.enclave(enclave)
