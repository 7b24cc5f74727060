"""Who a verified peer certificate speaks for: one SPIFFE URI SAN, or nobody."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from licensing_server.pki import (
    BACKEND_IDENTITY,
    FRONTEND_IDENTITY,
    TRUST_DOMAIN,
    CertificateAuthority,
    certificate_sha256,
    peer_identity,
    user_identity,
)
from tests.support import new_key


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    data = tmp_path_factory.mktemp("ca")
    return CertificateAuthority.load_or_create(data / "ca-key.pem", data / "ca.pem")


def _pem(ca: CertificateAuthority, uris: list[str]) -> tuple[bytes, x509.Certificate]:
    issued = ca.issue(
        new_key().public_key(), common_name="peer", lifetime=dt.timedelta(hours=1), uris=uris
    )
    return issued.certificate.public_bytes(serialization.Encoding.PEM), issued.certificate


def test_identities_live_under_one_trust_domain() -> None:
    assert TRUST_DOMAIN == "licensing.internal"
    assert FRONTEND_IDENTITY == "spiffe://licensing.internal/frontend"
    assert BACKEND_IDENTITY == "spiffe://licensing.internal/backend"
    assert user_identity("u1") == "spiffe://licensing.internal/user/u1"


def test_a_user_certificate_names_its_user(ca: CertificateAuthority) -> None:
    user_id = uuid.uuid4()
    pem, cert = _pem(ca, [user_identity(str(user_id).upper())])
    peer = peer_identity(pem)
    assert peer.user_id == str(user_id)  # the canonical form, whatever the case in the URI
    assert not peer.is_frontend
    assert peer.sha256 == certificate_sha256(cert)


def test_the_frontend_certificate_is_the_frontend_and_no_user(ca: CertificateAuthority) -> None:
    peer = peer_identity(_pem(ca, [FRONTEND_IDENTITY])[0])
    assert (peer.uri, peer.is_frontend, peer.user_id) == (FRONTEND_IDENTITY, True, None)


@pytest.mark.parametrize(
    "uris",
    [
        [],
        [user_identity(str(uuid.uuid4())), FRONTEND_IDENTITY],
        [user_identity("not-a-uuid")],
        [f"spiffe://elsewhere.example/user/{uuid.uuid4()}"],
    ],
    ids=["no-uri", "two-uris", "not-a-uuid", "other-trust-domain"],
)
def test_anything_else_speaks_for_nobody(ca: CertificateAuthority, uris: list[str]) -> None:
    peer = peer_identity(_pem(ca, uris)[0])
    assert (peer.user_id, peer.is_frontend) == (None, False)
