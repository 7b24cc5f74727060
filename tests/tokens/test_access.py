"""Access tokens: what the signer puts in, and every way the verifier refuses one."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Mapping
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from licensing_common.errors import Unauthenticated
from licensing_server.tokens import (
    AccessClaims,
    AccessTokenSigner,
    AccessTokenVerifier,
    SigningKey,
    jwks_public_keys,
    x5t_s256,
)
from tests.support import ABSURD_TIME_CLAIMS, key_pem, resigned

ISSUER = AUDIENCE = "licensing"
TTL = dt.timedelta(minutes=10)
CERT = hashlib.sha256(b"the client certificate").digest()
OTHER_CERT = hashlib.sha256(b"another client certificate").digest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


class Clock:
    """A clock the test moves: the verifier's cache is only as good as its idea of now."""

    def __init__(self) -> None:
        self.now = _now()

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey(ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture(scope="module")
def signing_pem(key: SigningKey) -> bytes:
    return key_pem(key.private_key)


def _signer(key: SigningKey, **overrides: object) -> AccessTokenSigner:
    options: dict[str, object] = {"issuer": ISSUER, "audience": AUDIENCE, "ttl": TTL}
    options.update(overrides)
    return AccessTokenSigner(key, **options)  # type: ignore[arg-type]


def _verifier(key: SigningKey, clock: Clock | None = None) -> AccessTokenVerifier:
    return AccessTokenVerifier(
        jwks_public_keys(key.jwks_json()),
        issuer=ISSUER,
        audience=AUDIENCE,
        clock=clock or Clock(),
    )


def _token(key: SigningKey, **overrides: object) -> tuple[str, dt.datetime]:
    return _signer(key, **overrides).sign(
        user_id="user-1", username="alice", session_id="session-1", certificate_sha256=CERT
    )


def _refusal(verifier: AccessTokenVerifier, token: str, cert: bytes = CERT) -> str:
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(token, cert)
    return str(caught.value.reason)


def test_a_signed_token_verifies_to_its_claims(key: SigningKey) -> None:
    token, expires = _token(key)
    claims = _verifier(key).verify(token, CERT)
    assert claims == AccessClaims(
        user_id="user-1",
        username="alice",
        session_id="session-1",
        token_id=claims.token_id,
        expires_at=expires,
        certificate_thumbprint=x5t_s256(CERT),
    )
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES256", "kid": key.kid, "typ": "at+jwt"}
    payload = jwt.decode(token, options={"verify_signature": False})
    assert payload["exp"] - payload["iat"] == TTL.total_seconds()
    assert payload["cnf"] == {"x5t#S256": x5t_s256(CERT)}
    assert (payload["iss"], payload["aud"], payload["sub"]) == (ISSUER, AUDIENCE, "user-1")
    # Every token is its own: a fresh jti each time.
    assert _verifier(key).verify(_token(key)[0], CERT).token_id != claims.token_id


def test_an_expired_token_is_token_expired(key: SigningKey) -> None:
    clock = Clock()
    clock.now -= TTL + dt.timedelta(minutes=1)
    token, _ = _token(key, clock=clock)
    assert _refusal(_verifier(key), token) == "TOKEN_EXPIRED"


def test_a_cached_token_expires_too(key: SigningKey) -> None:
    clock = Clock()
    verifier = _verifier(key, clock)
    token, expires = _token(key)
    verifier.verify(token, CERT)
    clock.now = expires
    assert _refusal(verifier, token) == "TOKEN_EXPIRED"


def test_the_certificate_binding_is_checked_on_every_call(key: SigningKey) -> None:
    verifier = _verifier(key)
    token, _ = _token(key)
    assert _refusal(verifier, token, OTHER_CERT) == "TOKEN_CERTIFICATE_MISMATCH"
    verifier.verify(token, CERT)  # now cached
    assert _refusal(verifier, token, OTHER_CERT) == "TOKEN_CERTIFICATE_MISMATCH"


@pytest.mark.parametrize(
    "overrides", [{"issuer": "someone-else"}, {"audience": "someone-else"}], ids=["iss", "aud"]
)
def test_another_issuer_or_audience_is_token_invalid(
    key: SigningKey, overrides: dict[str, str]
) -> None:
    token, _ = _token(key, **overrides)
    assert _refusal(_verifier(key), token) == "TOKEN_INVALID"


def test_a_key_the_verifier_does_not_know_is_token_key_unknown(key: SigningKey) -> None:
    stranger = SigningKey(ec.generate_private_key(ec.SECP256R1()))
    token, _ = _token(stranger)
    assert _refusal(_verifier(key), token) == "TOKEN_KEY_UNKNOWN"
    # Nor does naming a known kid help a token signed by another key.
    forged = jwt.encode(
        jwt.decode(token, options={"verify_signature": False}),
        stranger.private_key,
        algorithm="ES256",
        headers={"kid": key.kid, "typ": "at+jwt"},
    )
    assert _refusal(_verifier(key), forged) == "TOKEN_INVALID"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hand_made(header: dict[str, object], payload: dict[str, object], secret: bytes | None) -> str:
    """A JWT put together by hand (PyJWT will not sign these)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = b"" if secret is None else hmac.digest(secret, signing_input.encode(), "sha256")
    return f"{signing_input}.{_b64(signature)}"


def test_other_algorithms_are_token_invalid(key: SigningKey) -> None:
    token, _ = _token(key)
    payload = jwt.decode(token, options={"verify_signature": False})
    public_pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # HS256 keyed with the public key: the classic algorithm confusion.
    confused = _hand_made({"alg": "HS256", "kid": key.kid}, payload, public_pem)
    none = _hand_made({"alg": "none", "kid": key.kid}, payload, None)
    p384 = ec.generate_private_key(ec.SECP384R1())
    es384 = jwt.encode(payload, p384, algorithm="ES384", headers={"kid": key.kid})
    verifier = _verifier(key)
    for forged in (confused, none, es384):
        assert _refusal(verifier, forged) == "TOKEN_INVALID"


@pytest.mark.parametrize("claim", ["exp", "iat", "sub", "jti", "iss", "aud", "cnf"])
def test_a_token_missing_a_required_claim_is_token_invalid(
    key: SigningKey, signing_pem: bytes, claim: str
) -> None:
    token, _ = _token(key)
    payload = jwt.decode(token, options={"verify_signature": False})
    del payload[claim]
    stripped = jwt.encode(
        payload, signing_pem, algorithm="ES256", headers=jwt.get_unverified_header(token)
    )
    assert _refusal(_verifier(key), stripped) == "TOKEN_INVALID"


@pytest.mark.parametrize("cnf", [{}, {"x5t#S256": 5}, "bound", None])
def test_a_token_without_a_thumbprint_is_not_certificate_bound(
    key: SigningKey, signing_pem: bytes, cnf: object
) -> None:
    token = resigned(_token(key)[0], signing_pem, cnf=cnf)
    assert _refusal(_verifier(key), token) == "TOKEN_INVALID"


@pytest.mark.parametrize("claims", ABSURD_TIME_CLAIMS, ids=str)
def test_absurd_times_are_token_invalid(
    key: SigningKey, signing_pem: bytes, claims: dict[str, object]
) -> None:
    token = resigned(_token(key)[0], signing_pem, **claims)
    assert _refusal(_verifier(key), token) == "TOKEN_INVALID"


@pytest.mark.parametrize("token", ["", "a.b.c", "x" * 5000, "e30.e30.", "ey.ey.ey"])
def test_what_is_not_a_token_is_token_invalid(key: SigningKey, token: str) -> None:
    assert _refusal(_verifier(key), token) == "TOKEN_INVALID"


# Keys and key sets ------------------------------------------------------------
def test_the_kid_is_the_rfc_7638_thumbprint_and_the_jwks_round_trips(key: SigningKey) -> None:
    jwk = key.public_jwk
    canonical = json.dumps(
        {name: jwk[name] for name in ("crv", "kty", "x", "y")}, separators=(",", ":")
    )
    thumbprint = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest())
    assert key.kid == thumbprint.rstrip(b"=").decode()
    assert (jwk["alg"], jwk["use"], jwk["kid"]) == ("ES256", "sig", key.kid)
    assert "d" not in jwk  # the private part never leaves the frontend
    keys = jwks_public_keys(key.jwks_json())
    assert list(keys) == [key.kid]
    assert keys[key.kid].public_numbers() == key.private_key.public_key().public_numbers()


def test_signing_keys_must_be_p256() -> None:
    with pytest.raises(ValueError, match="P-256"):
        SigningKey(ec.generate_private_key(ec.SECP384R1()))


def test_the_signing_key_file_is_created_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "token-key.pem"
    first = SigningKey.load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o644)
    second = SigningKey.load_or_create(path)
    assert second.kid == first.kid
    assert path.stat().st_mode & 0o777 == 0o600


def _jwks(*keys: Mapping[str, object]) -> str:
    return json.dumps({"keys": list(keys)})


def test_keys_a_verifier_cannot_use_are_left_out_of_the_set(key: SigningKey) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    unusable: list[Mapping[str, object]] = [
        {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(p384)), "kid": "p384"},
        {"kty": "RSA", "kid": "rsa", "n": "sXch", "e": "AQAB"},
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        {name: value for name, value in key.public_jwk.items() if name != "kid"},
    ]
    assert jwks_public_keys(_jwks(*unusable, key.public_jwk)) == jwks_public_keys(key.jwks_json())
    assert jwks_public_keys(_jwks(*unusable)) == {}
    assert jwks_public_keys("{}") == {}


def test_a_p256_key_that_is_not_a_key_is_refused(key: SigningKey) -> None:
    off_the_curve = {**key.public_jwk, "y": key.public_jwk["x"]}
    short = {**key.public_jwk, "x": base64.urlsafe_b64encode(b"short").decode()}
    for broken in (off_the_curve, short):
        with pytest.raises(jwt.InvalidKeyError):
            jwks_public_keys(_jwks(broken))


def test_a_key_set_that_is_not_json_is_refused() -> None:
    with pytest.raises(ValueError, match="Expecting value"):
        jwks_public_keys("not json")
