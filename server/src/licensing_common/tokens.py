"""Verifying ES256 access tokens, RFC 8705 certificate-bound (``cnf.x5t#S256``).

The signer lives in the frontend only (``licensing_server.tokens``); verifiers
(frontend, enclaves) get the public keys as a JWKS and therefore cannot mint tokens.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import hmac
import json
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from licensing_common.errors import Unauthenticated

ALGORITHM = "ES256"
MAX_TOKEN_LENGTH = 4096
_REQUIRED = ["exp", "iat", "sub", "jti", "iss", "aud"]
#: No token we sign lives longer (``LICENSING_ACCESS_TOKEN_TTL_SECONDS`` is at most an hour);
#: a longer-lived one is refused however well it is signed.
MAX_TOKEN_LIFETIME = dt.timedelta(days=1)
#: NumericDate claims must name a second a ``datetime`` can hold (years 1970-9999).
_LAST_SECOND = int(dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC).timestamp())


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@functools.lru_cache(maxsize=4096)
def x5t_s256(certificate_sha256: bytes) -> str:
    """RFC 8705 thumbprint of a certificate from the SHA-256 of its DER.

    Memoized: the binding is checked on every call, with one thumbprint per connection.
    """
    return _b64url(certificate_sha256)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def jwks_public_keys(jwks_json: str) -> dict[str, ec.EllipticCurvePublicKey]:
    """The ES256 keys of a JWK Set, by ``kid``; anything else in the set is ignored."""
    keys: dict[str, ec.EllipticCurvePublicKey] = {}
    for jwk in json.loads(jwks_json).get("keys", []):
        if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256" or "kid" not in jwk:
            continue
        key = jwt.PyJWK.from_dict(jwk, algorithm=ALGORITHM).key
        if isinstance(key, ec.EllipticCurvePublicKey):
            keys[str(jwk["kid"])] = key
    return keys


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: str
    username: str
    session_id: str
    token_id: str
    expires_at: dt.datetime
    certificate_thumbprint: str


class AccessTokenVerifier:
    """Checks signature, claims and the certificate binding of every presented token.

    Verified tokens are cached (bounded, until ``exp``) because an ES256 verify
    per call halves throughput; the certificate binding is still checked per call.
    The cache is keyed by the token's SHA-256, so a full cache holds 32 bytes per
    token rather than the token itself.
    """

    def __init__(
        self,
        keys: Mapping[str, ec.EllipticCurvePublicKey],
        *,
        issuer: str,
        audience: str,
        clock: Callable[[], dt.datetime] = _utcnow,
        cache_size: int = 10_000,
    ):
        self._keys = dict(keys)
        self._issuer = issuer
        self._audience = audience
        self._clock = clock
        self._cache: OrderedDict[bytes, AccessClaims] = OrderedDict()
        self._cache_size = cache_size

    def verify(self, token: str, certificate_sha256: bytes) -> AccessClaims:
        key = hashlib.sha256(token.encode(errors="surrogatepass")).digest()
        claims = self._cache.get(key)
        if claims is not None:
            if claims.expires_at <= self._clock():
                del self._cache[key]
                raise Unauthenticated("TOKEN_EXPIRED", "the access token expired")
            self._cache.move_to_end(key)
        else:
            claims = self._decode(token)
            self._cache[key] = claims
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        if not hmac.compare_digest(claims.certificate_thumbprint, x5t_s256(certificate_sha256)):
            raise Unauthenticated(
                "TOKEN_CERTIFICATE_MISMATCH",
                "the access token is bound to a different client certificate",
            )
        return claims

    def replace_keys(self, keys: Mapping[str, ec.EllipticCurvePublicKey]) -> None:
        """Accept exactly ``keys`` from now on (the frontend's key set was rotated).

        A key dropped from the set must stop working at once, cached tokens included.
        """
        dropped = set(self._keys) - set(keys)
        self._keys = dict(keys)
        if dropped:
            self._cache.clear()

    def forget(self, session_id: str) -> None:
        """Drop cached tokens of a revoked session."""
        for key in [k for k, c in self._cache.items() if c.session_id == session_id]:
            del self._cache[key]

    def _decode(self, token: str) -> AccessClaims:
        if len(token) > MAX_TOKEN_LENGTH:
            raise Unauthenticated("TOKEN_INVALID", "the access token is not valid")
        try:
            header = jwt.get_unverified_header(token)
            kid = header.get("kid")
            if not isinstance(kid, str) or header.get("alg") != ALGORITHM:
                raise Unauthenticated("TOKEN_INVALID", "the access token is not valid")
            key = self._keys.get(kid)
            if key is None:
                # Its own reason: an enclave provisioned before this key was published
                # (two rotations ago) refuses it, and only a new enclave helps.
                raise Unauthenticated(
                    "TOKEN_KEY_UNKNOWN",
                    "the access token is signed by a key this verifier does not know",
                )
            payload = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": _REQUIRED},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("TOKEN_EXPIRED", "the access token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated("TOKEN_INVALID", "the access token is not valid") from exc
        expires_at = _check_times(payload)
        cnf = payload.get("cnf")
        thumbprint = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
        sub, sid, jti = payload.get("sub"), payload.get("sid", ""), payload.get("jti")
        if not isinstance(thumbprint, str) or not isinstance(sub, str) or not isinstance(jti, str):
            raise Unauthenticated("TOKEN_INVALID", "the access token is not certificate-bound")
        return AccessClaims(
            user_id=sub,
            username=str(payload.get("preferred_username", "")),
            session_id=str(sid),
            token_id=jti,
            expires_at=expires_at,
            certificate_thumbprint=thumbprint,
        )


def _numeric_date(payload: Mapping[str, Any], claim: str) -> int | None:
    """A NumericDate claim as whole seconds, or None if absent; absurd values are refused."""
    value = payload.get(claim)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unauthenticated("TOKEN_INVALID", f"the access token's {claim} is not a time")
    # No float conversion of an int: 10**400 would overflow it (and NaN compares false).
    finite = not isinstance(value, float) or math.isfinite(value)
    if not (finite and 0 <= value <= _LAST_SECOND):
        raise Unauthenticated("TOKEN_INVALID", f"the access token's {claim} is out of range")
    return int(value)


def _check_times(payload: Mapping[str, Any]) -> dt.datetime:
    """``exp``, ``iat`` and ``nbf`` in range, and a lifetime no token of ours exceeds.

    PyJWT has already refused tokens that expired or claim to be from the future;
    this refuses the rest (an ``exp`` of 2**70, a lifetime of years) with a reason
    instead of letting ``datetime`` overflow. With ``iat`` not in the future, the
    lifetime bound also bounds how far ahead ``exp`` may be.
    """
    exp, iat = _numeric_date(payload, "exp"), _numeric_date(payload, "iat")
    _numeric_date(payload, "nbf")
    if exp is None or iat is None:  # PyJWT requires both; kept for the type checker
        raise Unauthenticated("TOKEN_INVALID", "the access token is not valid")
    if exp - iat > MAX_TOKEN_LIFETIME.total_seconds():
        raise Unauthenticated("TOKEN_INVALID", "the access token's lifetime is too long")
    return dt.datetime.fromtimestamp(exp, dt.UTC)
