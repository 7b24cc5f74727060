"""The startup handshake with the backend over stdio: CSR out, certificate in, serving out.

The key is made here and only its CSR leaves the process; the certificate that comes
back is accepted only if it certifies that very key.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from cryptography import x509

from licensing_enclave._keys import EnclaveCertificate, EnclaveKey
from licensing_enclave._stdio import ParentStdin, ProtocolOut

#: How long the backend may take to sign the CSR before the enclave gives up.
HANDSHAKE_TIMEOUT = 60.0


class StartupError(Exception):
    """The enclave cannot start; the message goes to stderr, the exit status is 1."""


def _send(out: ProtocolOut, message: Mapping[str, object]) -> None:
    try:
        out.send(message)
    except OSError as exc:
        raise StartupError(f"cannot write to stdout (parent gone?): {exc}") from exc


async def obtain_certificate(
    key: EnclaveKey,
    enclave_id: str,
    out: ProtocolOut,
    stdin: ParentStdin,
    within: float = HANDSHAKE_TIMEOUT,
) -> EnclaveCertificate:
    """Send the CSR, wait for the certificate line, and check it is for our key."""
    _send(out, {"type": "csr", "csr_pem": key.csr_pem(enclave_id)})
    try:
        async with asyncio.timeout(within):
            line = await stdin.readline()
    except TimeoutError as exc:
        raise StartupError(f"no certificate on stdin within {within:g}s") from exc
    if line is None:
        raise StartupError("stdin closed before the certificate arrived")
    return accept_certificate(key, line)


def _load(pem: object, what: str) -> x509.Certificate:
    if not isinstance(pem, str) or not pem:
        raise StartupError(f"{what} must be a PEM string")
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError as exc:
        raise StartupError(f"{what} is not a PEM certificate") from exc


def accept_certificate(key: EnclaveKey, line: bytes) -> EnclaveCertificate:
    """Parse ``{"type":"certificate",...}``; refuse anything not issued for ``key``."""
    try:
        message: Any = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StartupError("the certificate message is not a JSON line") from exc
    if not isinstance(message, dict) or message.get("type") != "certificate":
        raise StartupError('expected {"type":"certificate",...} on stdin')
    certificate = _load(message.get("certificate_pem"), "certificate_pem")
    cas = message.get("ca_certificates_pem", [])
    if not isinstance(cas, list):
        raise StartupError("ca_certificates_pem must be a list of PEM strings")
    ca_certificates = [_load(pem, "ca_certificates_pem[]") for pem in cas]
    if not key.owns(certificate):
        raise StartupError("the certificate is not for this enclave's key")
    if certificate.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        raise StartupError("the certificate has already expired")
    return EnclaveCertificate.of(certificate, ca_certificates)


def announce_serving(out: ProtocolOut, address: str, certificate: EnclaveCertificate) -> None:
    """The last protocol line: clients may connect from now on."""
    _send(
        out,
        {
            "type": "serving",
            "address": address,
            "certificate_sha256": certificate.sha256.hex(),
        },
    )
