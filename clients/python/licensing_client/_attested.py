"""Connect to an enclave only after a fresh TPM attestation of its certificate verifies.

``connect_attested_enclave`` asks the licensing API for the enclave (``GetEnclave``),
then for a fresh attestation over a random nonce of our own (``GetAttestation``),
verifies it (``licensing_client.attestation.verify_attestation``) against the
certificate ``GetEnclave`` reported and the trusted licensing CA, and only then
builds a channel to the enclave pinned to exactly that certificate. A failed check
raises ``AttestationError`` before any channel to the enclave exists, so nothing,
least of all the access token, is sent to it; and an endpoint that presents any
other certificate later, even one of the same CA, fails the TLS handshake.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import betterproto
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpclib.client import Channel

from licensing_client._connect import bearer, enclave_channel
from licensing_client._errors import EnclaveNotReady
from licensing_client.attestation import VerificationReport, verify_attestation
from licensing_client.gen.licensing import v1

#: The nonce we send with every GetAttestation: fresh random bytes each time.
NONCE_BYTES = 32
DEFAULT_TIMEOUT = 30.0
#: Phases in which an enclave runs with its certificate (the server quotes only these).
ATTESTABLE_PHASES = frozenset({v1.Phase.READY, v1.Phase.ATTESTING, v1.Phase.ATTESTED})


@dataclass(frozen=True, slots=True)
class EnclaveAttestation:
    """A verified attestation: the enclave as ``GetEnclave`` reported it, our nonce, the
    attestation the server returned for it, and the verifier's report."""

    enclave: v1.Enclave
    nonce: bytes
    attestation: v1.Attestation
    report: VerificationReport


class AttestedEnclave(NamedTuple):
    """What ``connect_attested_enclave`` returns: ``(report, channel, enclave)``.

    ``channel`` trusts exactly the attested certificate (``enclave.certificate_pem``).
    """

    report: VerificationReport
    channel: Channel
    enclave: v1.Enclave


def trust_anchors(pem: str | bytes | Sequence[str]) -> list[str]:
    """Every certificate of a PEM bundle (or of several bundles), each as its own PEM.

    ``verify_attestation`` reads one certificate per entry, so a CA file holding
    several certificates (a rotation) is split here rather than truncated.
    """
    bundles: Sequence[str | bytes] = [pem] if isinstance(pem, (str, bytes)) else pem
    anchors: list[str] = []
    for bundle in bundles:
        data = bundle.encode() if isinstance(bundle, str) else bundle
        anchors.extend(
            cert.public_bytes(serialization.Encoding.PEM).decode()
            for cert in x509.load_pem_x509_certificates(data)
        )
    return anchors


def _same_id(reported: str, requested: str) -> bool:
    """Enclave ids are UUIDs, which the server accepts in any of their spellings."""
    try:
        return uuid.UUID(reported) == uuid.UUID(requested)
    except ValueError:
        return reported == requested


def _channel_of(api: Channel | betterproto.ServiceStub) -> Channel:
    return api.channel if isinstance(api, betterproto.ServiceStub) else api


async def attest_enclave(
    api: Channel | betterproto.ServiceStub,
    enclave_id: str,
    *,
    access_token: str,
    trusted_ca_pem: str | bytes | Sequence[str],
    rpc_timeout: float | None = DEFAULT_TIMEOUT,
) -> EnclaveAttestation:
    """``GetEnclave``, then ``GetAttestation`` over a fresh 32-byte nonce, verified.

    ``api`` is a channel to the licensing API listener (mutual TLS), or any betterproto
    stub on one. Raises ``EnclaveNotReady`` if the enclave has no certificate to attest,
    ``AttestationError`` (naming the failed check) if the attestation does not verify,
    and grpclib errors as the server answers them.
    """
    anchors = trust_anchors(trusted_ca_pem)  # bad input fails here, before any call
    channel = _channel_of(api)
    metadata = bearer(access_token)
    reply = await v1.EnclaveServiceStub(channel).get_enclave(
        v1.GetEnclaveRequest(enclave_id=enclave_id), metadata=metadata, timeout=rpc_timeout
    )
    enclave = reply.enclave
    if not _same_id(enclave.id, enclave_id):
        raise ValueError(f"asked for enclave {enclave_id}, the server described {enclave.id}")
    if (
        enclave.phase not in ATTESTABLE_PHASES
        or not enclave.endpoint
        or not enclave.certificate_pem
    ):
        raise EnclaveNotReady(enclave)
    nonce = secrets.token_bytes(NONCE_BYTES)
    attested = await v1.AttestationServiceStub(channel).get_attestation(
        v1.GetAttestationRequest(enclave_id=enclave.id, nonce=nonce),
        metadata=metadata,
        timeout=rpc_timeout,
    )
    report = verify_attestation(
        attested.attestation,
        nonce=nonce,
        expected_certificate_pem=enclave.certificate_pem,
        trusted_ca_pem=anchors,
    )
    return EnclaveAttestation(enclave, nonce, attested.attestation, report)


async def connect_attested_enclave(
    api: Channel | betterproto.ServiceStub,
    enclave_id: str,
    *,
    cert_file: Path | str,
    key_file: Path | str,
    access_token: str,
    trusted_ca_pem: str | bytes | Sequence[str],
    rpc_timeout: float | None = DEFAULT_TIMEOUT,
) -> AttestedEnclave:
    """Attest the enclave (``attest_enclave``), then open mutual TLS pinned to its certificate.

    ``cert_file``/``key_file`` are the user's client certificate and key (the access
    token is bound to that certificate); ``trusted_ca_pem`` is the pinned licensing CA
    (a PEM bundle, or a list of them) that must have certified the attestation key.

    Returns ``(report, channel, enclave)``; the caller owns ``channel`` (close it). No
    channel to the enclave exists unless every check passed.
    """
    verified = await attest_enclave(
        api,
        enclave_id,
        access_token=access_token,
        trusted_ca_pem=trusted_ca_pem,
        rpc_timeout=rpc_timeout,
    )
    enclave = verified.enclave
    channel = enclave_channel(
        enclave.endpoint,
        tls_server_name=enclave.tls_server_name,
        pinned_certificate_pem=enclave.certificate_pem,
        cert_file=cert_file,
        key_file=key_file,
    )
    return AttestedEnclave(verified.report, channel, enclave)
