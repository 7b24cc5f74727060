"""The licensing CA: certificates for servers, the frontend's internal identity, users, enclaves."""

from licensing_common.identity import (
    BACKEND_IDENTITY,
    FRONTEND_IDENTITY,
    TRUST_DOMAIN,
    PeerIdentity,
    certificate_sha256,
    peer_identity,
    user_identity,
)
from licensing_server.pki._ca import CertificateAuthority, IssuedCertificate
from licensing_server.pki._csr import parse_csr
from licensing_server.pki._files import write_private_file, write_public_file

__all__ = [
    "BACKEND_IDENTITY",
    "FRONTEND_IDENTITY",
    "TRUST_DOMAIN",
    "CertificateAuthority",
    "IssuedCertificate",
    "PeerIdentity",
    "certificate_sha256",
    "parse_csr",
    "peer_identity",
    "user_identity",
    "write_private_file",
    "write_public_file",
]
