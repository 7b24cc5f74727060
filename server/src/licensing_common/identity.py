"""Who a certificate speaks for: SPIFFE-style URI SANs under one trust domain."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field

from cryptography import x509

TRUST_DOMAIN = "licensing.internal"
FRONTEND_IDENTITY = f"spiffe://{TRUST_DOMAIN}/frontend"
BACKEND_IDENTITY = f"spiffe://{TRUST_DOMAIN}/backend"
_USER_PREFIX = f"spiffe://{TRUST_DOMAIN}/user/"


def user_identity(user_id: str) -> str:
    return _USER_PREFIX + user_id


def certificate_sha256(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """The verified client certificate of a TLS peer."""

    uri: str | None
    sha256: bytes
    #: Read on every authenticated call; worked out once per certificate.
    user_id: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "user_id", _user_id(self.uri))

    @property
    def is_frontend(self) -> bool:
        return self.uri == FRONTEND_IDENTITY


def _user_id(uri: str | None) -> str | None:
    if uri is None or not uri.startswith(_USER_PREFIX):
        return None
    try:
        return str(uuid.UUID(uri[len(_USER_PREFIX) :]))
    except ValueError:
        return None


def peer_identity(pem: bytes) -> PeerIdentity:
    """Parse a peer certificate that TLS already verified against our CA."""
    cert = x509.load_pem_x509_certificate(pem)
    uri: str | None = None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        uri = uris[0] if len(uris) == 1 else None
    except x509.ExtensionNotFound:
        uri = None
    return PeerIdentity(uri=uri, sha256=certificate_sha256(cert))
