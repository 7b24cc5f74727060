"""Refresh tokens: 256 random bits handed out once; only their SHA-256 is kept."""

from __future__ import annotations

import base64
import hashlib

from licensing_server.tokens import hash_refresh_token, new_refresh_token, x5t_s256


def test_a_new_refresh_token_is_random_prefixed_and_kept_only_as_its_hash() -> None:
    token, kept = new_refresh_token()
    assert token.startswith("lrt_")
    assert len(base64.urlsafe_b64decode(token[4:] + "=")) == 32  # 256 random bits
    assert kept == hashlib.sha256(token.encode()).digest() == hash_refresh_token(token)
    assert token.encode() not in kept
    tokens = {new_refresh_token()[0] for _ in range(100)}
    assert len(tokens) == 100


def test_hashing_is_stable_and_tells_tokens_apart() -> None:
    token, _ = new_refresh_token()
    assert hash_refresh_token(token) == hash_refresh_token(token)
    assert hash_refresh_token(token) != hash_refresh_token(token + "x")
    assert len(hash_refresh_token("")) == 32
    # Whatever a client sends (even text that is not UTF-8) hashes rather than raises.
    assert len(hash_refresh_token("lrt_\udcff")) == 32


def test_the_certificate_thumbprint_is_base64url_without_padding() -> None:
    digest = hashlib.sha256(b"certificate").digest()
    assert x5t_s256(digest) == base64.urlsafe_b64encode(digest).decode().rstrip("=")
    assert len(x5t_s256(digest)) == 43
