"""CSR checks: only the public key of a CSR is ever used, and only a sound one."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from licensing_common.errors import InvalidArgument

MAX_CSR_BYTES = 16 * 1024
_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


def parse_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    """Parse and vet a PEM CSR; raise ``InvalidArgument`` naming what is wrong."""
    if not csr_pem:
        raise InvalidArgument("CSR_REQUIRED", "csr_pem is required")
    raw = csr_pem.encode("utf-8", errors="replace")
    if len(raw) > MAX_CSR_BYTES:
        raise InvalidArgument(
            "CSR_TOO_LARGE", f"csr_pem is over {MAX_CSR_BYTES} bytes", {"limit": str(MAX_CSR_BYTES)}
        )
    try:
        csr = x509.load_pem_x509_csr(raw)
        key = csr.public_key()
        signature_ok = csr.is_signature_valid
    except (ValueError, TypeError, x509.UnsupportedGeneralNameType) as exc:
        raise InvalidArgument("CSR_MALFORMED", "csr_pem is not a PEM certificate request") from exc
    except Exception as exc:
        raise InvalidArgument("CSR_UNSUPPORTED_KEY", "the CSR's key type is not supported") from exc
    _check_key(key)
    if not signature_ok:
        raise InvalidArgument("CSR_SIGNATURE_INVALID", "the CSR's self-signature does not verify")
    return csr


def _check_key(key: object) -> None:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise InvalidArgument(
                "CSR_WEAK_KEY",
                f"RSA keys must be at least 2048 bits, got {key.key_size}",
                {"key_type": "RSA", "key_size": str(key.key_size)},
            )
        if key.key_size > 8192:
            raise InvalidArgument("CSR_UNSUPPORTED_KEY", "RSA keys over 8192 bits are not accepted")
        if key.public_numbers().e < 65537:
            raise InvalidArgument("CSR_WEAK_KEY", "RSA public exponent must be at least 65537")
        return
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _CURVES):
            raise InvalidArgument(
                "CSR_WEAK_KEY",
                f"EC curve {key.curve.name} is not accepted (P-256, P-384, P-521 are)",
                {"key_type": "EC", "curve": key.curve.name},
            )
        return
    if isinstance(key, ed25519.Ed25519PublicKey):
        return
    raise InvalidArgument(
        "CSR_UNSUPPORTED_KEY",
        "the CSR's key type is not accepted (EC P-256/P-384/P-521, Ed25519, RSA >= 2048 are)",
    )
