"""Signing ES256 access tokens: the frontend's key, published to verifiers as a JWKS."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from licensing_common.tokens import ALGORITHM, x5t_s256
from licensing_server.pki import write_private_file

_log = logging.getLogger(__name__)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _public_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    numbers = key.public_numbers()
    return {
        "crv": "P-256",
        "kty": "EC",
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
    }


class SigningKey:
    """The frontend's token signing key; ``kid`` is its RFC 7638 thumbprint."""

    def __init__(self, key: ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("token signing key must be P-256 for ES256")
        self.private_key = key
        jwk = _public_jwk(key.public_key())
        canonical = json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode()
        self.kid = _b64url(hashlib.sha256(canonical).digest())
        self.public_jwk = {**jwk, "kid": self.kid, "alg": ALGORITHM, "use": "sig"}

    @classmethod
    def load_or_create(cls, path: Path) -> SigningKey:
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{path} is not an EC private key")
            path.chmod(0o600)
            return cls(key)
        key = ec.generate_private_key(ec.SECP256R1())
        write_private_file(
            path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        _log.info("created token signing key %s", path)
        return cls(key)

    def jwks_json(self) -> str:
        return json.dumps({"keys": [self.public_jwk]}, sort_keys=True)


class AccessTokenSigner:
    """Signs with ``key``, or with whatever ``key()`` returns now (a rotating key set)."""

    def __init__(
        self,
        key: SigningKey | Callable[[], SigningKey],
        *,
        issuer: str,
        audience: str,
        ttl: dt.timedelta,
        clock: Callable[[], dt.datetime] = _utcnow,
    ):
        self._key = key
        self._issuer = issuer
        self._audience = audience
        self._ttl = ttl
        self._clock = clock

    def sign(
        self, *, user_id: str, username: str, session_id: str, certificate_sha256: bytes
    ) -> tuple[str, dt.datetime]:
        key = self._key if isinstance(self._key, SigningKey) else self._key()
        now = self._clock().replace(microsecond=0)
        expires = now + self._ttl
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "sub": user_id,
            "aud": self._audience,
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int(expires.timestamp()),
            "jti": str(uuid.uuid4()),
            "sid": session_id,
            "preferred_username": username,
            "cnf": {"x5t#S256": x5t_s256(certificate_sha256)},
        }
        token = jwt.encode(
            claims,
            key.private_key,
            algorithm=ALGORITHM,
            headers={"kid": key.kid, "typ": "at+jwt"},
        )
        return token, expires
