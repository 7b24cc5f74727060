"""The contract of a certificate issuer: who signs an enclave's CSR."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from licensing_server.pki import IssuedCertificate


@dataclass(frozen=True, slots=True)
class EnclaveCertificateRequest:
    """What the backend wants in an enclave's certificate; only the key comes from the CSR."""

    csr_pem: str
    common_name: str
    lifetime: dt.timedelta
    dns_names: Sequence[str] = ()
    ip_addresses: Sequence[str] = ()
    uris: Sequence[str] = ()
    #: For issuers that label what they create (``cert-manager``); empty: unlabelled.
    enclave_id: str = ""


class CertificateIssuer(Protocol):
    """Signs enclave certificates; one per backend, named by ``LICENSING_CERTIFICATE_ISSUER``.

    The issuer sets subject, SANs, lifetime and usages (a TLS server certificate)
    from the request; it takes nothing from the CSR but its public key, and
    refuses a CSR that is malformed or has a weak key with ``InvalidArgument``
    (``licensing_server.pki.parse_csr``'s reasons). An issuer it cannot reach
    raises ``Unavailable``. The certificate may be shorter-lived than asked (never
    past its CA). Whoever trusts enclaves pins ``ca_certificates_pem``.
    """

    @property
    def ca_certificates_pem(self) -> list[str]:
        """The CA certificates that verify what this issuer signs, the root first."""
        ...

    async def issue_enclave_certificate(
        self, request: EnclaveCertificateRequest
    ) -> IssuedCertificate:
        """Sign ``request.csr_pem`` as described; the result's ``pem`` is the leaf only."""
        ...

    async def close(self) -> None:
        """Release connections (the backend is stopping); idempotent."""
        ...
