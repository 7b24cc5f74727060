"""Helpers for attestation tests of the Python client and the CLI.

Attestations from the real stack always verify; to see a failure, these helpers
tamper with what the betterproto client receives (in this process only), and
``ConnectionSpy`` records every TCP connection the client opens, so a test can
show that nothing dialled an enclave whose attestation failed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from licensing_client.cli import main
from licensing_client.gen.licensing import v1
from tests.clients.cli_support import Result
from tests.support import Stack

Tamper = Callable[[v1.Attestation], None]


def flip_last_quote_byte(attestation: v1.Attestation) -> None:
    """The TPM signed other bytes than these: the ``signature`` check fails."""
    quote = bytearray(attestation.quote)
    quote[-1] ^= 0x01
    attestation.quote = bytes(quote)


def self_signed_ca_pem(name: str = "Not The Licensing CA") -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def tamper_get_attestation(monkeypatch: pytest.MonkeyPatch, tamper: Tamper) -> list[bytes]:
    """Every GetAttestation reply is tampered with; returns the nonces the client sent."""
    original = v1.AttestationServiceStub.get_attestation
    nonces: list[bytes] = []

    async def patched(
        self: v1.AttestationServiceStub, request: v1.GetAttestationRequest, **kwargs: Any
    ) -> v1.GetAttestationResponse:
        nonces.append(request.nonce)
        reply = await original(self, request, **kwargs)
        tamper(reply.attestation)
        return reply

    monkeypatch.setattr(v1.AttestationServiceStub, "get_attestation", patched)
    return nonces


def record_get_attestation(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The nonces the client sends with GetAttestation, replies untouched."""
    return tamper_get_attestation(monkeypatch, lambda attestation: None)


def tamper_created_attestation(monkeypatch: pytest.MonkeyPatch, tamper: Tamper) -> None:
    """The attestation of the ATTESTED event of every CreateEnclave stream is tampered with."""
    original = v1.EnclaveServiceStub.create_enclave

    async def patched(
        self: v1.EnclaveServiceStub, request: v1.CreateEnclaveRequest, **kwargs: Any
    ) -> AsyncIterator[v1.CreateEnclaveResponse]:
        async for event in original(self, request, **kwargs):
            if event.attestation.quote:
                tamper(event.attestation)
            yield event

    monkeypatch.setattr(v1.EnclaveServiceStub, "create_enclave", patched)


@dataclass
class Dial:
    host: str
    port: int
    #: None if the connection (TCP and TLS handshake) was made, else what it raised.
    error: BaseException | None = None


@dataclass
class ConnectionSpy:
    """Every ``loop.create_connection`` (grpclib's only way to connect), in order."""

    dials: list[Dial] = field(default_factory=list)
    #: If given, ``dial <port>`` is appended for each, to order dials among other events.
    log: list[str] | None = None

    def install(self, monkeypatch: pytest.MonkeyPatch) -> ConnectionSpy:
        original = asyncio.BaseEventLoop.create_connection
        dials, log = self.dials, self.log

        async def spy(
            loop: asyncio.BaseEventLoop, factory: Any, host: Any = None, port: Any = None, **kw: Any
        ) -> Any:
            dial = Dial(str(host), int(port))
            dials.append(dial)
            if log is not None:
                log.append(f"dial {dial.port}")
            try:
                return await original(loop, factory, host, port, **kw)
            except BaseException as exc:
                dial.error = exc
                raise

        monkeypatch.setattr(asyncio.BaseEventLoop, "create_connection", spy)
        return self

    def ports(self) -> set[int]:
        return {dial.port for dial in self.dials}

    def handshake_failures(self, port: int) -> list[BaseException]:
        return [d.error for d in self.dials if d.port == port and isinstance(d.error, ssl.SSLError)]


def port_of(endpoint: str) -> int:
    return int(endpoint.rpartition(":")[2])


def run_cli_in_process(
    capsys: pytest.CaptureFixture[str], stack: Stack, config: Path, *args: str
) -> Result:
    """``licensing`` in this process (so monkeypatches apply), on a thread of its own.

    ``main`` runs ``asyncio.run``; a thread keeps that off the test's event loop.
    """
    argv = [
        "--config-dir",
        str(config),
        "--server",
        stack.enroll_addr,
        "--api",
        stack.api_addr,
        *args,
    ]
    capsys.readouterr()  # only this command's output
    with ThreadPoolExecutor(1) as pool:
        code = pool.submit(main, argv).result(timeout=120)
    out, err = capsys.readouterr()
    return Result(argv, code, out, err)
