"""Certificate issuers: who signs enclave certificates (``builtin`` CA, or ``cert-manager``).

``CertificateIssuer`` is the contract; ``licensing_server.catalog`` resolves the
configured one (``LICENSING_CERTIFICATE_ISSUER``).
"""

from typing import TYPE_CHECKING

from licensing_server.issuers._builtin import BuiltinCaIssuer
from licensing_server.issuers._protocol import CertificateIssuer, EnclaveCertificateRequest

if TYPE_CHECKING:
    from licensing_server.issuers._cert_manager import CertManagerIssuer

__all__ = ["BuiltinCaIssuer", "CertManagerIssuer", "CertificateIssuer", "EnclaveCertificateRequest"]


def __getattr__(name: str) -> object:
    """``CertManagerIssuer`` on first use: it loads the ``kubernetes`` client."""
    if name == "CertManagerIssuer":
        from licensing_server.issuers._cert_manager import CertManagerIssuer

        return CertManagerIssuer
    raise AttributeError(name)
