"""Opaque refresh tokens: 256 random bits, stored only as SHA-256."""

from __future__ import annotations

import hashlib
import secrets

_PREFIX = "lrt_"
MAX_REFRESH_TOKEN_LENGTH = 128


def new_refresh_token() -> tuple[str, bytes]:
    """Return the token (given to the client once) and the hash we keep."""
    token = _PREFIX + secrets.token_urlsafe(32)
    return token, hash_refresh_token(token)


def hash_refresh_token(token: str) -> bytes:
    # A fast hash is right here: the token has 256 bits of entropy, nothing to brute-force.
    return hashlib.sha256(token.encode("utf-8", errors="replace")).digest()
