"""The enclave's own key: generated in memory at start, gone when the process ends.

Nothing here writes to disk. The only serialization is the PEM handed to gRPC's
TLS stack in memory, because ``grpc.ssl_server_credentials`` takes no key object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

from licensing_common.identity import certificate_sha256


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


class EnclaveKey:
    """An EC P-256 key that signs the CSR, the TLS handshakes and ``Sign`` requests."""

    def __init__(self) -> None:
        self._private = ec.generate_private_key(ec.SECP256R1())

    def __repr__(self) -> str:  # never let a debug print show more than what it is
        return "EnclaveKey(P-256)"

    def csr_pem(
        self, common_name: str, *, dns_names: Sequence[str] = (), uris: Sequence[str] = ()
    ) -> str:
        """A CSR. The built-in CA takes only its public key (and sets subject and SANs
        itself); cert-manager signs its names, so in Kubernetes it asks for the names
        the backend gave the pod, which the backend checks."""
        builder = x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        )
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.UniformResourceIdentifier(u) for u in uris]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        csr = builder.sign(self._private, hashes.SHA256())
        return csr.public_bytes(serialization.Encoding.PEM).decode()

    def owns(self, certificate: x509.Certificate) -> bool:
        """Whether a certificate was issued for this key (and not for some other one)."""
        return _spki(certificate.public_key()) == _spki(self._private.public_key())

    def sign(self, data: bytes) -> bytes:
        """ECDSA P-256 with SHA-256, DER-encoded, as ``cryptography`` verifies it."""
        return self._private.sign(data, ec.ECDSA(hashes.SHA256()))

    def tls_private_key_pem(self) -> bytes:
        """For ``grpc.ssl_server_credentials`` only; callers must not store or log it."""
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass(frozen=True, slots=True)
class EnclaveCertificate:
    """The certificate the backend issued for the enclave key, with the chain to serve."""

    certificate: x509.Certificate
    pem: str
    sha256: bytes
    #: Leaf first, then any intermediates (self-signed roots are left to the clients).
    chain_pem: bytes

    @classmethod
    def of(
        cls, certificate: x509.Certificate, ca_certificates: list[x509.Certificate]
    ) -> EnclaveCertificate:
        pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
        intermediates = [c for c in ca_certificates if c.subject != c.issuer]
        chain = pem.encode() + b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in intermediates
        )
        return cls(certificate, pem, certificate_sha256(certificate), chain)
