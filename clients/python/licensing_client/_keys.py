"""Client keys and certificates: made and checked locally; only the CSR leaves."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True, slots=True)
class KeyAndCsr:
    """A fresh EC P-256 key (PKCS#8 PEM) and a CSR for it."""

    key_pem: bytes
    csr_pem: str


def new_key_and_csr(common_name: str) -> KeyAndCsr:
    """The server sets the certificate's subject itself; the CN here is a courtesy."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return KeyAndCsr(key_pem, csr.public_bytes(serialization.Encoding.PEM).decode())


def load_certificates(pem: bytes) -> list[x509.Certificate]:
    """Every certificate in ``pem``; ``ValueError`` if there is none."""
    return x509.load_pem_x509_certificates(pem)


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the DER, as ``openssl x509 -noout -fingerprint -sha256`` prints it."""
    digest = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2)).upper()


def subject_of(certificate: x509.Certificate) -> str:
    return certificate.subject.rfc4514_string()


def not_after(cert_pem: bytes) -> dt.datetime:
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc


def verify_signature(certificate_pem: str, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` (DER ECDSA, SHA-256, as enclaves sign) by the certificate's key
    covers ``data``."""
    public_key = x509.load_pem_x509_certificate(certificate_pem.encode()).public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        return False
    try:
        public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True
