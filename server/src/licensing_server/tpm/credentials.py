"""Software halves of TPM protocols: what a verifier computes without a TPM."""

from __future__ import annotations

from typing import Any

from tpm2_pytss.types import TPM2B_NAME, TPM2B_PUBLIC
from tpm2_pytss.utils import make_credential as _make_credential


def _public(marshalled: bytes) -> Any:
    public, used = TPM2B_PUBLIC.unmarshal(marshalled)
    if used != len(marshalled):
        raise ValueError("trailing bytes after TPM2B_PUBLIC")
    return public


def make_credential(ek_public: bytes, secret: bytes, name: bytes) -> tuple[bytes, bytes]:
    """MakeCredential: (credential blob, encrypted seed) that only that EK's TPM can open,
    and only for the key named ``name``."""
    blob, encrypted = _make_credential(_public(ek_public), secret, TPM2B_NAME(name))
    return bytes(blob.marshal()), bytes(encrypted.marshal())


def public_key_pem(tpm2b_public: bytes) -> bytes:
    """The key of a marshalled TPM2B_PUBLIC as a PEM SubjectPublicKeyInfo."""
    return bytes(_public(tpm2b_public).to_pem())
