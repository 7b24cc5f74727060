"""``builtin``: the licensing CA in the backend's data directory signs enclave CSRs itself."""

from __future__ import annotations

from licensing_server.issuers._protocol import EnclaveCertificateRequest
from licensing_server.pki import CertificateAuthority, IssuedCertificate, parse_csr


class BuiltinCaIssuer:
    """Signs with ``CertificateAuthority`` in-process: no network, never ``Unavailable``."""

    def __init__(self, ca: CertificateAuthority):
        self._ca = ca

    @property
    def ca_certificates_pem(self) -> list[str]:
        return self._ca.ca_certificates_pem

    async def issue_enclave_certificate(
        self, request: EnclaveCertificateRequest
    ) -> IssuedCertificate:
        csr = parse_csr(request.csr_pem)
        return self._ca.issue(
            csr.public_key(),
            common_name=request.common_name,
            lifetime=request.lifetime,
            dns_names=request.dns_names,
            ip_addresses=request.ip_addresses,
            uris=request.uris,
            server=True,
        )

    async def close(self) -> None:
        """Nothing to release."""
