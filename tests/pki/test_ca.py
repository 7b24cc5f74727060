"""The built-in CA: created once with private files, and what it puts in every certificate."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from licensing_server.pki import (
    CertificateAuthority,
    IssuedCertificate,
    user_identity,
    write_private_file,
    write_public_file,
)
from tests.support import key_pem, new_key

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
_BACKDATE = dt.timedelta(minutes=5)
_E = TypeVar("_E", bound=x509.ExtensionType)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "data" / "ca-key.pem", tmp_path / "data" / "ca.pem"


@pytest.fixture
def ca(paths: tuple[Path, Path]) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(*paths, clock=lambda: NOW)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """Files must get their modes from the code, not from the umask it happens to run under."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _extension(cert: x509.Certificate, kind: type[_E]) -> x509.Extension[_E]:
    return cert.extensions.get_extension_for_class(kind)


def _sans(cert: x509.Certificate) -> list[x509.GeneralName]:
    return list(_extension(cert, x509.SubjectAlternativeName).value)


# The CA itself ----------------------------------------------------------------
@pytest.mark.usefixtures("permissive_umask")
def test_the_ca_is_created_with_a_private_key_file(paths: tuple[Path, Path]) -> None:
    key_path, cert_path = paths
    CertificateAuthority.load_or_create(key_path, cert_path)
    assert _mode(key_path) == 0o600
    assert _mode(cert_path) == 0o644
    assert _mode(key_path.parent) == 0o700
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    # No temporary file is left next to them.
    assert sorted(p.name for p in key_path.parent.iterdir()) == ["ca-key.pem", "ca.pem"]


def test_load_or_create_is_idempotent(paths: tuple[Path, Path]) -> None:
    key_path, cert_path = paths
    first = CertificateAuthority.load_or_create(key_path, cert_path)
    key_bytes, cert_bytes = key_path.read_bytes(), cert_path.read_bytes()
    key_path.chmod(0o644)  # loosened by hand: put right on the next start
    second = CertificateAuthority.load_or_create(key_path, cert_path)
    assert second.certificate == first.certificate
    assert second.ca_certificates_pem == first.ca_certificates_pem
    assert (key_path.read_bytes(), cert_path.read_bytes()) == (key_bytes, cert_bytes)
    assert _mode(key_path) == 0o600
    # The loaded key is the one that signed: what it issues chains to the first CA.
    issued = second.issue(new_key().public_key(), common_name="x", lifetime=dt.timedelta(days=1))
    issued.certificate.verify_directly_issued_by(first.certificate)


def test_a_ca_key_that_is_not_ec_is_refused(paths: tuple[Path, Path]) -> None:
    key_path, cert_path = paths
    CertificateAuthority.load_or_create(key_path, cert_path)
    write_private_file(key_path, key_pem(new_key("rsa1024")))
    with pytest.raises(ValueError, match="not an EC private key"):
        CertificateAuthority.load_or_create(key_path, cert_path)


def test_the_ca_certificate_may_sign_certificates_only(ca: CertificateAuthority) -> None:
    cert = ca.certificate
    cert.verify_directly_issued_by(cert)
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Licensing CA"
    constraints = _extension(cert, x509.BasicConstraints)
    assert constraints.critical
    assert (constraints.value.ca, constraints.value.path_length) == (True, 0)
    usage = _extension(cert, x509.KeyUsage)
    assert usage.critical
    assert (usage.value.key_cert_sign, usage.value.crl_sign) == (True, True)
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (
        NOW - _BACKDATE,
        NOW + dt.timedelta(days=3650),
    )
    assert ca.ca_certificates_pem == [cert.public_bytes(serialization.Encoding.PEM).decode()]


# What it issues ---------------------------------------------------------------
def test_a_server_certificate_has_exactly_the_names_and_usage_asked_for(
    ca: CertificateAuthority,
) -> None:
    key = new_key()
    issued = ca.issue(
        key.public_key(),
        common_name="frontend",
        lifetime=dt.timedelta(days=30),
        dns_names=["localhost", "licensing.example"],
        ip_addresses=["127.0.0.1", "::1"],
        uris=["spiffe://licensing.internal/frontend"],
        server=True,
    )
    cert = issued.certificate
    cert.verify_directly_issued_by(ca.certificate)
    assert cert.issuer == ca.certificate.subject
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "frontend"
    assert cert.public_key() == key.public_key()
    assert _sans(cert) == [
        x509.DNSName("localhost"),
        x509.DNSName("licensing.example"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
        x509.UniformResourceIdentifier("spiffe://licensing.internal/frontend"),
    ]
    assert list(_extension(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    constraints = _extension(cert, x509.BasicConstraints)
    assert constraints.critical
    assert not constraints.value.ca
    usage = _extension(cert, x509.KeyUsage)
    assert usage.critical
    assert (usage.value.digital_signature, usage.value.key_cert_sign) == (True, False)
    assert (
        _extension(cert, x509.AuthorityKeyIdentifier).value.key_identifier
        == _extension(ca.certificate, x509.SubjectKeyIdentifier).value.digest
    )


@pytest.mark.parametrize(
    ("server", "client", "usages"),
    [
        (False, False, None),
        (False, True, [ExtendedKeyUsageOID.CLIENT_AUTH]),
        (True, True, [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
    ],
)
def test_extended_key_usage_follows_server_and_client(
    ca: CertificateAuthority,
    server: bool,
    client: bool,
    usages: list[x509.ObjectIdentifier] | None,
) -> None:
    cert = ca.issue(
        new_key().public_key(),
        common_name="x",
        lifetime=dt.timedelta(days=1),
        server=server,
        client=client,
    ).certificate
    if usages is None:
        with pytest.raises(x509.ExtensionNotFound):
            _extension(cert, x509.ExtendedKeyUsage)
    else:
        assert list(_extension(cert, x509.ExtendedKeyUsage).value) == usages
    with pytest.raises(x509.ExtensionNotFound):  # no names asked for, none given
        _extension(cert, x509.SubjectAlternativeName)


def test_lifetimes_are_backdated_and_never_outlive_the_ca(ca: CertificateAuthority) -> None:
    day = ca.issue(new_key().public_key(), common_name="x", lifetime=dt.timedelta(days=1))
    assert (day.certificate.not_valid_before_utc, day.not_after) == (
        NOW - _BACKDATE,
        NOW + dt.timedelta(days=1),
    )
    forever = ca.issue(new_key().public_key(), common_name="x", lifetime=dt.timedelta(days=9999))
    assert forever.not_after == ca.certificate.not_valid_after_utc


def test_an_issued_certificate_carries_its_pem_and_fingerprint(ca: CertificateAuthority) -> None:
    one = ca.issue(new_key().public_key(), common_name="x", lifetime=dt.timedelta(days=1))
    two = ca.issue(new_key().public_key(), common_name="x", lifetime=dt.timedelta(days=1))
    assert x509.load_pem_x509_certificate(one.pem.encode()) == one.certificate
    der = one.certificate.public_bytes(serialization.Encoding.DER)
    assert one.sha256 == hashlib.sha256(der).digest()
    assert IssuedCertificate.of(one.certificate) == one
    assert one.certificate.serial_number != two.certificate.serial_number


def test_issue_key_pair_makes_a_fresh_p256_key_for_its_certificate(
    ca: CertificateAuthority,
) -> None:
    pem, issued = ca.issue_key_pair(common_name="backend", dns_names=["localhost"], server=True)
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert issued.certificate.public_key() == key.public_key()
    assert issued.not_after == NOW + dt.timedelta(days=30)  # the server lifetime by default
    other_pem, _ = ca.issue_key_pair(common_name="backend")
    assert other_pem != pem


def test_a_user_certificate_takes_nothing_but_the_key_from_the_csr(
    ca: CertificateAuthority,
) -> None:
    """Whatever the CSR asks for (a name, SANs, CA rights), the server sets the subject."""
    key = new_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")]))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("evil.example"),
                    x509.UniformResourceIdentifier("spiffe://licensing.internal/frontend"),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    user_id = "6f1c2b9e-0d5a-4c1e-9a57-2d1f0c8b7e44"
    issued = ca.sign_user_csr(
        csr, user_id=user_id, username="alice", lifetime=dt.timedelta(hours=24)
    )
    cert = issued.certificate
    cert.verify_directly_issued_by(ca.certificate)
    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")])
    assert _sans(cert) == [x509.UniformResourceIdentifier(user_identity(user_id))]
    assert list(_extension(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not _extension(cert, x509.BasicConstraints).value.ca
    assert cert.public_key() == key.public_key()
    assert issued.not_after == NOW + dt.timedelta(hours=24)


# Files ------------------------------------------------------------------------
@pytest.mark.usefixtures("permissive_umask")
def test_private_and_public_files_get_their_modes_whatever_was_there(tmp_path: Path) -> None:
    private, public = tmp_path / "key.pem", tmp_path / "cert.pem"
    private.write_bytes(b"old")
    private.chmod(0o666)
    write_private_file(private, b"secret")
    write_public_file(public, b"public")
    assert (private.read_bytes(), _mode(private)) == (b"secret", 0o600)
    assert (public.read_bytes(), _mode(public)) == (b"public", 0o644)
