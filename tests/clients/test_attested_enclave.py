"""A Python developer connects to an enclave only after its TPM attestation verifies.

``licensing_client.connect_attested_enclave`` fetches the enclave and a fresh
attestation over a random nonce, verifies it against the enclave's certificate and
the licensing CA, and only then returns a channel pinned to exactly that certificate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Status
from grpclib.exceptions import GRPCError

import licensing_client
import licensing_client._attested as attested_module
from licensing_client import (
    AttestedEnclave,
    api_channel,
    bearer,
    connect_attested_enclave,
    tls_context,
)
from licensing_client.attestation import AttestationError, Check, verify_attestation
from licensing_client.gen.enclave import v1 as workload
from licensing_client.gen.licensing import v1
from tests.clients.attestation_support import (
    ConnectionSpy,
    flip_last_quote_byte,
    port_of,
    record_get_attestation,
    self_signed_ca_pem,
    tamper_get_attestation,
)
from tests.support import Stack

ALL_CHECKS = list(Check)


def sha256_of(certificate_pem: str) -> bytes:
    cert = x509.load_pem_x509_certificate(certificate_pem.encode())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


@dataclass
class Client:
    """One user of the Python client: key and certificate files, a token, an API channel."""

    stack: Stack
    cert_file: Path
    key_file: Path
    token: str
    api: Channel

    async def create(self) -> tuple[v1.Enclave, bytes, v1.Attestation]:
        nonce = os.urandom(32)
        events = [
            event
            async for event in v1.EnclaveServiceStub(self.api).create_enclave(
                v1.CreateEnclaveRequest(request_id=uuid.uuid4().hex, nonce=nonce),
                metadata=bearer(self.token),
                timeout=60,
            )
        ]
        phases = [event.phase for event in events]
        assert phases[-3:] == [v1.Phase.READY, v1.Phase.ATTESTING, v1.Phase.ATTESTED], phases
        return events[-1].enclave, nonce, events[-1].attestation

    async def connect(
        self, enclave_id: str, *, trusted_ca_pem: str | bytes | None = None
    ) -> AttestedEnclave:
        return await connect_attested_enclave(
            self.api,
            enclave_id,
            cert_file=self.cert_file,
            key_file=self.key_file,
            access_token=self.token,
            trusted_ca_pem=trusted_ca_pem if trusted_ca_pem is not None else self.stack.ca_pem,
        )

    async def identity(self, channel: Channel) -> workload.GetIdentityResponse:
        return await workload.WorkloadServiceStub(channel).get_identity(
            workload.GetIdentityRequest(), metadata=bearer(self.token), timeout=30
        )

    async def delete(self, enclave_id: str) -> None:
        await v1.EnclaveServiceStub(self.api).delete_enclave(
            v1.DeleteEnclaveRequest(enclave_id=enclave_id), metadata=bearer(self.token), timeout=30
        )


@pytest.fixture
async def client(stack: Stack, tmp_path: Path) -> AsyncIterator[Client]:
    made = _client(stack, tmp_path)
    try:
        yield made
    finally:
        made.api.close()


def _client(stack: Stack, tmp_path: Path) -> Client:
    user = stack.new_user()
    (tmp_path / "me.key").write_bytes(user.key_pem)
    (tmp_path / "me.pem").write_bytes(user.cert_pem)
    api = api_channel(
        stack.api_addr,
        ca_file=stack.ca_path,
        cert_file=tmp_path / "me.pem",
        key_file=tmp_path / "me.key",
    )
    return Client(stack, tmp_path / "me.pem", tmp_path / "me.key", user.access_token, api)


async def test_verifies_a_fresh_attestation_then_pins_exactly_that_certificate(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    enclave, create_nonce, created = await client.create()
    # The verifier reads the betterproto message as it comes (it duck-types protobuf too).
    assert isinstance(created, v1.Attestation)
    created_report = verify_attestation(
        created,
        nonce=create_nonce,
        expected_certificate_pem=enclave.certificate_pem,
        trusted_ca_pem=[client.stack.ca_pem.decode()],
    )
    assert [result.check for result in created_report.checks] == ALL_CHECKS

    nonces = record_get_attestation(monkeypatch)
    report, channel, described = await client.connect(enclave.id)
    try:
        assert [result.check for result in report.checks] == ALL_CHECKS
        assert report.enclave_certificate_sha256 == sha256_of(enclave.certificate_pem)
        assert described.id == enclave.id
        assert described.certificate_pem == enclave.certificate_pem
        # A fresh random 32-byte nonce, not the one the enclave was created with.
        assert len(nonces) == 1
        assert len(nonces[0]) == licensing_client.NONCE_BYTES == 32
        assert nonces[0] != create_nonce

        identity = await client.identity(channel)
        assert identity.enclave_id == enclave.id
        assert identity.certificate_sha256 == report.enclave_certificate_sha256
    finally:
        channel.close()

    # A stub on the API channel works as well as the channel, and every call has its own nonce.
    again = await connect_attested_enclave(
        v1.AttestationServiceStub(client.api),
        enclave.id,
        cert_file=client.cert_file,
        key_file=client.key_file,
        access_token=client.token,
        trusted_ca_pem=[client.stack.ca_pem.decode()],
    )
    again.channel.close()
    assert len(nonces) == 2
    assert nonces[1] != nonces[0]
    assert again.report.enclave_certificate_sha256 == report.enclave_certificate_sha256
    await client.delete(enclave.id)


def _replay(old: v1.Attestation) -> Callable[[v1.Attestation], None]:
    """Answer every GetAttestation with ``old`` (made over another nonce)."""

    def tamper(attestation: v1.Attestation) -> None:
        for spec in dataclasses.fields(old):
            setattr(attestation, spec.name, getattr(old, spec.name))

    return tamper


@pytest.mark.parametrize(
    ("case", "failed_check"),
    [
        ("attestation key certified by a CA we do not trust", Check.AK_CERTIFICATE_CHAIN),
        ("quote tampered with", Check.SIGNATURE),
        ("an old attestation replayed", Check.QUALIFYING_DATA),
    ],
)
async def test_a_failing_attestation_raises_naming_the_check_and_nothing_connects(
    client: Client, monkeypatch: pytest.MonkeyPatch, case: str, failed_check: Check
) -> None:
    enclave, _, created = await client.create()
    trusted: str | None = None
    if case.startswith("attestation key"):
        trusted = self_signed_ca_pem()
    elif case.startswith("quote"):
        tamper_get_attestation(monkeypatch, flip_last_quote_byte)
    else:
        tamper_get_attestation(monkeypatch, _replay(created))
    channels: list[str] = []

    def counting_enclave_channel(endpoint: str, **kwargs: Any) -> Channel:
        channels.append(endpoint)
        return licensing_client.enclave_channel(endpoint, **kwargs)

    monkeypatch.setattr(attested_module, "enclave_channel", counting_enclave_channel)
    spy = ConnectionSpy().install(monkeypatch)

    with pytest.raises(AttestationError) as failed:
        await client.connect(enclave.id, trusted_ca_pem=trusted)
    assert failed.value.check is failed_check, (case, failed.value)
    assert f"'{failed_check.value}'" in str(failed.value)
    # No channel to the enclave was made, and nothing dialled its endpoint.
    assert channels == []
    assert port_of(enclave.endpoint) not in spy.ports()

    monkeypatch.undo()  # the same enclave, honestly attested, connects
    attested = await client.connect(enclave.id)
    try:
        assert (await client.identity(attested.channel)).enclave_id == enclave.id
    finally:
        attested.channel.close()
    await client.delete(enclave.id)


async def test_an_enclave_that_is_gone_is_not_attested(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    enclave, _, _ = await client.create()
    await client.delete(enclave.id)
    nonces = record_get_attestation(monkeypatch)
    with pytest.raises(GRPCError) as raised:
        await client.connect(enclave.id)
    assert raised.value.status is Status.NOT_FOUND
    assert nonces == []  # GetEnclave said so; nothing was asked to attest


# An endpoint that presents another certificate ------------------------------------------


def _host_port(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host, int(port)


def _report_address(monkeypatch: pytest.MonkeyPatch, enclave_id: str, other: v1.Enclave) -> None:
    """GetEnclave reports ``other``'s endpoint and TLS name for ``enclave_id``.

    Neither is attested (the certificate is), so only the handshake pinned to the
    attested certificate can notice that another enclave answers there.
    """
    original = v1.EnclaveServiceStub.get_enclave

    async def patched(
        self: v1.EnclaveServiceStub, request: v1.GetEnclaveRequest, **kwargs: Any
    ) -> v1.GetEnclaveResponse:
        reply = await original(self, request, **kwargs)
        if reply.enclave.id == enclave_id:
            reply.enclave.endpoint = other.endpoint
            reply.enclave.tls_server_name = other.tls_server_name
        return reply

    monkeypatch.setattr(v1.EnclaveServiceStub, "get_enclave", patched)


async def test_an_endpoint_presenting_another_certificate_fails_the_handshake_before_the_token(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _, _ = await client.create()
    b, _, _ = await client.create()
    # Two enclaves of the same CA, each certified for its own name.
    ca = x509.load_pem_x509_certificate(client.stack.ca_pem)
    for enclave in (a, b):
        cert = x509.load_pem_x509_certificate(enclave.certificate_pem.encode())
        cert.verify_directly_issued_by(ca)
    assert a.certificate_pem != b.certificate_pem
    assert a.endpoint != b.endpoint

    # Verifying against the CA and B's name would accept B: only the pin tells them apart.
    by_ca = Channel(
        *_host_port(b.endpoint),
        ssl=tls_context(client.stack.ca_path, cert_file=client.cert_file, key_file=client.key_file),
        config=Configuration(ssl_target_name_override=b.tls_server_name),
    )
    try:
        assert (await client.identity(by_ca)).enclave_id == b.id
    finally:
        by_ca.close()

    # A's attestation verifies and the channel is pinned to A's certificate, but it dials B.
    _report_address(monkeypatch, a.id, b)
    spy = ConnectionSpy().install(monkeypatch)
    report, channel, described = await client.connect(a.id)
    try:
        assert report.enclave_certificate_sha256 == sha256_of(a.certificate_pem)
        assert described.endpoint == b.endpoint
        assert described.tls_server_name == b.tls_server_name
        with pytest.raises(ssl.SSLCertVerificationError):
            await client.identity(channel)
    finally:
        channel.close()
    # Every dial of B failed inside create_connection, that is in the TLS handshake:
    # grpclib never had a connection to send the request, or the token, on.
    dials = [d for d in spy.dials if d.port == port_of(b.endpoint)]
    assert dials
    assert all(isinstance(d.error, ssl.SSLCertVerificationError) for d in dials)

    # B itself is reached through its own attestation, and A at its real endpoint.
    monkeypatch.undo()
    for enclave in (a, b):
        attested = await client.connect(enclave.id)
        try:
            assert (await client.identity(attested.channel)).enclave_id == enclave.id
        finally:
            attested.channel.close()
        await client.delete(enclave.id)
