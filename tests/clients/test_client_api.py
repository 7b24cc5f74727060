"""A Python developer uses ``licensing_client.LicensingClient`` against the real stack.

User stories: sign up and log in (the key made locally), create an enclave and
watch it reach a verified attestation, open an attested, pinned enclave session
and use it, have the session refresh itself, and get typed errors with reasons.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpclib.const import Status
from grpclib.exceptions import StreamTerminatedError

from licensing_client import (
    AttestationFailedError,
    Created,
    LicensingClient,
    LicensingError,
    MemorySessionStore,
    NotLoggedInError,
    Progress,
    Reconnecting,
    Session,
)
from licensing_client.attestation import Check
from licensing_client.gen.licensing import v1
from tests.clients.attestation_support import (
    ConnectionSpy,
    flip_last_quote_byte,
    port_of,
    tamper_get_attestation,
)
from tests.clients.test_cli_enclaves import CHECKS, PHASES
from tests.support import PASSWORD, Stack

FAR_FUTURE = dt.datetime(2999, 1, 1, tzinfo=dt.UTC)
PAST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def _client(stack: Stack, store: MemorySessionStore | None = None) -> LicensingClient:
    return LicensingClient.connect(
        stack.enroll_addr, stack.api_addr, ca_pem=stack.ca_pem, store=store
    )


async def _logged_in(client: LicensingClient) -> Session:
    name = f"api-{uuid.uuid4().hex[:10]}"
    await client.sign_up(name, PASSWORD)
    return await client.log_in(name, PASSWORD)


def _public_der(cert_or_key: x509.Certificate | ec.EllipticCurvePrivateKey) -> bytes:
    public = cert_or_key.public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


async def test_sign_up_log_in_create_and_use_an_attested_enclave(stack: Stack) -> None:
    store = MemorySessionStore()
    async with _client(stack, store) as client:
        name = f"Api-{uuid.uuid4().hex[:10]}"
        account = await client.sign_up(name, PASSWORD)
        assert account.username == name.lower()
        session = await client.log_in(name, PASSWORD)
        # The key was made here and the certificate is for it; the store holds the session.
        key = serialization.load_pem_private_key(session.client_key_pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        cert = x509.load_pem_x509_certificate(session.client_certificate_pem)
        assert _public_der(cert) == _public_der(key)
        assert session.user_id == account.user_id
        assert session.username == account.username
        assert store.load() == session
        assert (await client.current_user()).id == account.user_id

        nonce = b"api-nonce-" + uuid.uuid4().bytes
        events = [event async for event in client.create_enclave(nonce=nonce)]
        phases = [v1.Phase(e.phase).name for e in events if isinstance(e, Progress)]
        assert phases == PHASES
        created = events[-1]
        assert isinstance(created, Created)
        assert created.source == "ATTESTED event"
        assert created.attestation is not None
        assert created.attestation.nonce == nonce
        assert [c.check.value for c in created.attestation.report.checks] == CHECKS
        enclave = created.enclave
        assert enclave.phase == v1.Phase.ATTESTED
        assert enclave.owner == account.user_id

        listed = [e.id async for e in client.list_enclaves(page_size=1)]
        assert enclave.id in listed
        assert (await client.get_enclave(enclave.id)).certificate_pem == enclave.certificate_pem
        fresh = await client.attest(enclave.id)
        assert fresh.nonce != nonce
        assert len(fresh.nonce) == 32

        workload = await client.open_enclave(enclave.id)
        assert workload.enclave.certificate_pem == enclave.certificate_pem
        identity = await workload.get_identity()
        assert identity.matches_pinned_certificate
        assert identity.owner == account.user_id
        await workload.put_secret("licence", b"\x00value\xff")
        assert await workload.get_secret("licence") == b"\x00value\xff"
        assert await workload.list_secrets() == ["licence"]
        signed = await workload.sign(b"sign me")
        pinned = x509.load_pem_x509_certificate(enclave.certificate_pem.encode()).public_key()
        assert isinstance(pinned, ec.EllipticCurvePublicKey)
        pinned.verify(signed.signature, b"sign me", ec.ECDSA(hashes.SHA256()))  # raises if not
        await workload.delete_secret("licence")
        assert await workload.list_secrets() == []

        await client.delete_enclave(enclave.id)
        after = [e async for e in client.list_enclaves()]
        assert all(e.id != enclave.id or e.phase == v1.Phase.DELETED for e in after)


async def test_errors_are_typed_with_the_servers_reason(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _client(stack) as client:
        with pytest.raises(NotLoggedInError):
            await client.current_user()
        session = await _logged_in(client)

        with pytest.raises(LicensingError) as taken:
            await client.sign_up(session.username, PASSWORD)
        assert (taken.value.code, taken.value.reason) == (Status.ALREADY_EXISTS, "USERNAME_TAKEN")
        with pytest.raises(LicensingError) as wrong:
            await client.log_in(session.username, "not the password")
        assert (wrong.value.code, wrong.value.reason) == (
            Status.UNAUTHENTICATED,
            "INVALID_CREDENTIALS",
        )
        with pytest.raises(LicensingError) as missing:
            await client.get_enclave(str(uuid.uuid4()))
        assert missing.value.code is Status.NOT_FOUND
        assert missing.value.reason

        # A tampered attestation: the failed check is named, and the enclave never dialled.
        created = [event async for event in client.create_enclave()][-1]
        assert isinstance(created, Created)
        enclave = created.enclave
        tamper_get_attestation(monkeypatch, flip_last_quote_byte)
        spy = ConnectionSpy().install(monkeypatch)
        with pytest.raises(AttestationFailedError) as failed:
            await client.open_enclave(enclave.id)
        assert failed.value.error.check is Check.SIGNATURE
        assert failed.value.enclave_id == enclave.id
        assert port_of(enclave.endpoint) not in spy.ports()
        monkeypatch.undo()
        await client.delete_enclave(enclave.id)


async def test_a_token_about_to_expire_is_refreshed_before_the_call(stack: Stack) -> None:
    store = MemorySessionStore()
    async with _client(stack, store) as client:
        session = await _logged_in(client)
    # Another client of the same store (a later run) finds the token about to expire.
    store.save(dataclasses.replace(session, access_token_expire_time=PAST))
    async with _client(stack, store) as client:
        assert (await client.current_user()).id == session.user_id
        after = store.load()
        assert after is not None
        assert after.refresh_token != session.refresh_token  # rotated, and kept in the store
        assert after.access_token != session.access_token
        assert after.access_token_expire_time > dt.datetime.now(dt.UTC)
        assert after.client_key_pem == session.client_key_pem  # the certificate was still good
        assert client.session == after


async def test_a_token_the_server_calls_expired_is_refreshed_and_the_call_retried(
    short_lived_stack: Stack,
) -> None:
    store = MemorySessionStore()
    async with _client(short_lived_stack, store) as client:
        session = await _logged_in(client)
    # The stored expiry claims the token is good for ages, so no refresh happens up front:
    # the server's UNAUTHENTICATED / TOKEN_EXPIRED is what makes the client refresh.
    store.save(dataclasses.replace(session, access_token_expire_time=FAR_FUTURE))
    wait = (session.access_token_expire_time - dt.datetime.now(dt.UTC)).total_seconds()
    await asyncio.sleep(max(0.0, wait) + 1.5)

    async with _client(short_lived_stack, store) as client:
        assert (await client.current_user()).username == session.username
    after = store.load()
    assert after is not None
    assert after.refresh_token != session.refresh_token
    assert after.access_token != session.access_token
    assert after.access_token_expire_time != FAR_FUTURE


async def test_a_create_stream_dropped_after_its_final_event_is_not_resumed(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream breaks after ATTESTED arrived but before it closed (in this process only):
    nothing is missing, so the client ends with the enclave instead of resuming a watch that
    would wait for the enclave's next change, which may be its expiry an hour later."""
    original = v1.EnclaveServiceStub.create_enclave
    watches: list[int] = []
    original_watch = v1.EnclaveServiceStub.watch_enclave

    async def breaking(
        self: v1.EnclaveServiceStub, request: v1.CreateEnclaveRequest, **kwargs: Any
    ) -> AsyncIterator[v1.CreateEnclaveResponse]:
        async for event in original(self, request, **kwargs):
            yield event
            if v1.Phase(event.phase) == v1.Phase.ATTESTED:
                raise StreamTerminatedError("connection lost after the last event (test)")

    def counting_watch(self: v1.EnclaveServiceStub, *args: Any, **kwargs: Any) -> Any:
        watches.append(1)
        return original_watch(self, *args, **kwargs)

    monkeypatch.setattr(v1.EnclaveServiceStub, "create_enclave", breaking)
    monkeypatch.setattr(v1.EnclaveServiceStub, "watch_enclave", counting_watch)
    async with _client(stack) as client:
        await _logged_in(client)
        events = [event async for event in client.create_enclave()]
        assert not [e for e in events if isinstance(e, Reconnecting)]
        assert watches == []
        created = events[-1]
        assert isinstance(created, Created)
        assert created.attestation is not None
        await client.delete_enclave(created.enclave.id)


async def test_a_dropped_create_stream_is_resumed_from_the_last_event(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first CreateEnclave stream breaks after two events (in this process only); the
    client says so, resumes with WatchEnclave from sequence 2, and shows no event twice."""
    original = v1.EnclaveServiceStub.create_enclave
    calls: list[int] = []

    async def breaking(
        self: v1.EnclaveServiceStub, request: v1.CreateEnclaveRequest, **kwargs: Any
    ) -> AsyncIterator[v1.CreateEnclaveResponse]:
        calls.append(1)
        seen = 0
        async for event in original(self, request, **kwargs):
            yield event
            seen += 1
            if seen == 2 and len(calls) == 1:
                raise StreamTerminatedError("connection lost (test)")

    monkeypatch.setattr(v1.EnclaveServiceStub, "create_enclave", breaking)
    async with _client(stack) as client:
        await _logged_in(client)
        events = [event async for event in client.create_enclave()]
        reconnects = [e for e in events if isinstance(e, Reconnecting)]
        assert [(r.attempt, r.from_sequence) for r in reconnects] == [(1, 2)]
        assert isinstance(reconnects[0].error, StreamTerminatedError)
        progress = [e for e in events if isinstance(e, Progress)]
        assert [v1.Phase(e.phase).name for e in progress] == PHASES
        assert len({e.sequence for e in progress}) == len(progress)
        assert calls == [1]  # resumed by WatchEnclave, not a second CreateEnclave
        created = events[-1]
        assert isinstance(created, Created)
        assert created.attestation is not None
        await client.delete_enclave(created.enclave.id)
