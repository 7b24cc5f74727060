"""Certificate issuers: who signs enclave certificates (``builtin`` CA; ``cert-manager`` next).

``CertificateIssuer`` is the contract; ``licensing_server.catalog`` resolves the
configured one (``LICENSING_CERTIFICATE_ISSUER``).
"""

from licensing_server.issuers._builtin import BuiltinCaIssuer
from licensing_server.issuers._protocol import CertificateIssuer, EnclaveCertificateRequest

__all__ = ["BuiltinCaIssuer", "CertificateIssuer", "EnclaveCertificateRequest"]
