"""The built-in licensing CA (``cryptography``), kept in the backend's data directory.

Subjects and extensions of everything it issues are set here from what the
backend knows; nothing but the public key is taken from a CSR.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from licensing_common.identity import certificate_sha256, user_identity
from licensing_server.pki._files import write_private_file, write_public_file

_log = logging.getLogger(__name__)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    certificate: x509.Certificate
    pem: str
    sha256: bytes

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    @classmethod
    def of(cls, cert: x509.Certificate) -> IssuedCertificate:
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        return cls(certificate=cert, pem=pem, sha256=certificate_sha256(cert))


class CertificateAuthority:
    """Issues every certificate of the deployment from one EC P-256 CA key."""

    CA_LIFETIME = dt.timedelta(days=3650)
    SERVER_LIFETIME = dt.timedelta(days=30)
    # Backdating tolerates small clock skew between issuer and verifier.
    BACKDATE = dt.timedelta(minutes=5)

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        certificate: x509.Certificate,
        clock: Callable[[], dt.datetime] = _utcnow,
    ):
        self._key = key
        self._cert = certificate
        self._clock = clock
        self._ca_pem = certificate.public_bytes(serialization.Encoding.PEM).decode()

    @classmethod
    def load_or_create(
        cls, key_path: Path, cert_path: Path, clock: Callable[[], dt.datetime] = _utcnow
    ) -> CertificateAuthority:
        """Load the CA key and certificate, creating both on first start."""
        if key_path.exists() and cert_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{key_path} is not an EC private key")
            key_path.chmod(0o600)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            return cls(key, cert, clock)
        key = ec.generate_private_key(ec.SECP256R1())
        now = clock()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Licensing"),
                x509.NameAttribute(NameOID.COMMON_NAME, "Licensing CA"),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - cls.BACKDATE)
            .not_valid_after(now + cls.CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        write_private_file(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        write_public_file(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        _log.info("created licensing CA %s", cert_path)
        return cls(key, cert, clock)

    @property
    def certificate(self) -> x509.Certificate:
        return self._cert

    @property
    def ca_certificates_pem(self) -> list[str]:
        return [self._ca_pem]

    def issue(
        self,
        public_key: CertificatePublicKeyTypes,
        *,
        common_name: str,
        lifetime: dt.timedelta,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        uris: Sequence[str] = (),
        server: bool = False,
        client: bool = False,
    ) -> IssuedCertificate:
        now = self._clock()
        not_after = min(now + lifetime, self._cert.not_valid_after_utc)
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        sans += [x509.UniformResourceIdentifier(u) for u in uris]
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - self.BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), False
            )
        )
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return IssuedCertificate.of(builder.sign(self._key, hashes.SHA256()))

    def sign_user_csr(
        self,
        csr: x509.CertificateSigningRequest,
        *,
        user_id: str,
        username: str,
        lifetime: dt.timedelta,
    ) -> IssuedCertificate:
        """A client certificate for a user: subject and SAN from the account, key from the CSR."""
        return self.issue(
            csr.public_key(),
            common_name=username,
            lifetime=lifetime,
            uris=[user_identity(user_id)],
            client=True,
        )

    def issue_key_pair(
        self,
        *,
        common_name: str,
        lifetime: dt.timedelta | None = None,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        uris: Sequence[str] = (),
        server: bool = False,
        client: bool = False,
    ) -> tuple[bytes, IssuedCertificate]:
        """A fresh P-256 key and its certificate, for the deployment's own services."""
        key = ec.generate_private_key(ec.SECP256R1())
        issued = self.issue(
            key.public_key(),
            common_name=common_name,
            lifetime=lifetime or self.SERVER_LIFETIME,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
            uris=uris,
            server=server,
            client=client,
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return key_pem, issued
