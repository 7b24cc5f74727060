"""Rules shared by the frontend and the backend about attestation requests."""

from __future__ import annotations

from licensing_common.errors import InvalidArgument
from licensing_common.phases import ATTESTABLE

__all__ = ["ATTESTABLE", "MAX_NONCE", "MIN_NONCE", "check_nonce"]

MIN_NONCE, MAX_NONCE = 16, 64


def check_nonce(nonce: bytes, *, optional: bool = False) -> bytes:
    if optional and not nonce:
        return nonce
    if not MIN_NONCE <= len(nonce) <= MAX_NONCE:
        raise InvalidArgument(
            "NONCE_INVALID",
            f"nonce must be {MIN_NONCE} to {MAX_NONCE} bytes",
            {"min_bytes": str(MIN_NONCE), "max_bytes": str(MAX_NONCE)},
        )
    return nonce
