"""CSR policy: only sound keys, a valid self-signature, a bounded size; each refusal named."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

from licensing_common.errors import InvalidArgument
from licensing_server.pki import parse_csr


def _csr(key: CertificateIssuerPrivateKeyTypes) -> str:
    # Ed25519 and Ed448 sign without a separate hash.
    eddsa = isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
    algorithm = None if eddsa else hashes.SHA256()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "someone")]))
        .sign(key, algorithm)
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _refusal(csr_pem: str) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        parse_csr(csr_pem)
    return caught.value


_ACCEPTED: dict[str, Callable[[], CertificateIssuerPrivateKeyTypes]] = {
    "ec-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ec-p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "ec-p521": lambda: ec.generate_private_key(ec.SECP521R1()),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
    "rsa-2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
}


@pytest.mark.parametrize("kind", sorted(_ACCEPTED))
def test_sound_keys_are_accepted(kind: str) -> None:
    key = _ACCEPTED[kind]()
    csr = parse_csr(_csr(key))
    assert csr.public_key() == key.public_key()


@pytest.mark.parametrize(
    ("key", "metadata"),
    [
        (
            lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),
            {"key_type": "RSA", "key_size": "1024"},
        ),
        (lambda: rsa.generate_private_key(public_exponent=3, key_size=2048), {}),
        (lambda: ec.generate_private_key(ec.SECP192R1()), {"key_type": "EC", "curve": "secp192r1"}),
        (lambda: ec.generate_private_key(ec.SECP256K1()), {"key_type": "EC", "curve": "secp256k1"}),
    ],
    ids=["rsa-1024", "rsa-exponent-3", "ec-p192", "ec-secp256k1"],
)
def test_weak_keys_are_refused_as_csr_weak_key(
    key: Callable[[], CertificateIssuerPrivateKeyTypes], metadata: dict[str, str]
) -> None:
    refusal = _refusal(_csr(key()))
    assert (refusal.reason, refusal.metadata) == ("CSR_WEAK_KEY", metadata)


@pytest.mark.parametrize(
    "key",
    [ed448.Ed448PrivateKey.generate, lambda: dsa.generate_private_key(key_size=2048)],
    ids=["ed448", "dsa"],
)
def test_other_key_types_are_unsupported(
    key: Callable[[], CertificateIssuerPrivateKeyTypes],
) -> None:
    assert _refusal(_csr(key())).reason == "CSR_UNSUPPORTED_KEY"


def test_a_csr_whose_self_signature_does_not_verify_is_refused() -> None:
    pem = _csr(ec.generate_private_key(ec.SECP256R1()))
    der = bytearray(x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte of the signature
    body = base64.encodebytes(bytes(der)).decode()
    tampered = f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"
    assert _refusal(tampered).reason == "CSR_SIGNATURE_INVALID"


@pytest.mark.parametrize(
    ("csr_pem", "reason"),
    [
        ("", "CSR_REQUIRED"),
        ("not a certificate request", "CSR_MALFORMED"),
        (
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "CSR_MALFORMED",
        ),
        ("\udcff" * 10, "CSR_MALFORMED"),
    ],
    ids=["empty", "text", "bad-der", "unpaired-surrogates"],
)
def test_what_is_not_a_csr_is_named(csr_pem: str, reason: str) -> None:
    assert _refusal(csr_pem).reason == reason


def test_a_csr_over_16_kib_is_refused_before_parsing() -> None:
    pem = _csr(ec.generate_private_key(ec.SECP256R1()))
    refusal = _refusal(pem + " " * (16 * 1024))
    assert (refusal.reason, refusal.metadata) == ("CSR_TOO_LARGE", {"limit": "16384"})
