"""The startup handshake with the backend over stdio: CSR out, certificate in, serving out.

``accept_issued`` holds the checks of an issued certificate; network enrolment
(``_enroll``) uses them too.

The key is made here and only its CSR leaves the process; the certificate that comes
back is accepted only if it certifies that very key.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

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
    return accept_issued(
        key, message.get("certificate_pem"), message.get("ca_certificates_pem", [])
    )


def accept_issued(key: EnclaveKey, certificate_pem: object, cas: object) -> EnclaveCertificate:
    """The checks every way of enrolling shares: for ``key``, unexpired, PEM throughout."""
    certificate = _load(certificate_pem, "certificate_pem")
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


class Enrolment(Protocol):
    """How the enclave gets its certificate, says it serves, and learns it should end.

    ``obtain`` raises ``StartupError`` when no certificate for the key can be had;
    ``ended`` returns (with what to log) only if the enclave should exit on its own.
    """

    async def obtain(self, key: EnclaveKey, enclave_id: str) -> EnclaveCertificate: ...

    def serving(self, address: str, certificate: EnclaveCertificate) -> None: ...

    async def ended(self) -> str: ...


class StdioEnrolment:
    """The local runtime's handshake: the parent on stdio, whose death (stdin EOF) ends us."""

    def __init__(self, out: ProtocolOut, within: float = HANDSHAKE_TIMEOUT):
        self._out = out
        self._within = within
        self._stdin: ParentStdin | None = None

    def _started_stdin(self) -> ParentStdin:
        if self._stdin is None:  # needs the running loop, so not in __init__
            self._stdin = ParentStdin()
            self._stdin.start()
        return self._stdin

    async def obtain(self, key: EnclaveKey, enclave_id: str) -> EnclaveCertificate:
        return await obtain_certificate(
            key, enclave_id, self._out, self._started_stdin(), self._within
        )

    def serving(self, address: str, certificate: EnclaveCertificate) -> None:
        announce_serving(self._out, address, certificate)

    async def ended(self) -> str:
        await self._started_stdin().wait_closed()
        return "stdin closed (parent gone)"

    async def revoked_sessions(self) -> AsyncIterator[list[str]]:
        """Session ids the backend says were revoked, as its control lines bring them."""
        stdin = self._started_stdin()
        while (line := await stdin.readline()) is not None:
            ids = _revoked_ids(line)
            if ids:
                yield ids


def _revoked_ids(line: bytes) -> list[str]:
    """``{"type":"revoke_sessions","session_ids":[...]}``; anything else is ignored."""
    try:
        message: Any = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return []
    if not isinstance(message, dict) or message.get("type") != "revoke_sessions":
        return []
    ids = message.get("session_ids")
    if not isinstance(ids, list):
        return []
    return [i for i in ids if isinstance(i, str) and 0 < len(i) <= 64]
