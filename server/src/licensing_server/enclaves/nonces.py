"""Rules shared by the frontend and the backend about attestation requests."""

from __future__ import annotations

from licensing_server.errors import InvalidArgument
from licensing_server.storage import Phase

MIN_NONCE, MAX_NONCE = 16, 64
#: Phases in which an enclave's certificate can be quoted.
ATTESTABLE = frozenset({Phase.READY, Phase.ATTESTING, Phase.ATTESTED})


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
