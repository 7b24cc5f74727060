"""Access tokens only work with their own certificate; forged ones never; sessions end."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import grpc
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from licensing.v1 import auth_pb2, auth_pb2_grpc, trust_pb2, trust_pb2_grpc

from tests.support import (
    LoggedIn,
    Stack,
    error_reason,
    key_pem,
    make_csr,
    new_key,
    signing_key_pem,
)

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
#: The frontend reuses a session's "still active" answer for 2 s; allow for slow machines.
REVOCATION_DEADLINE = 5.0


# Helpers -------------------------------------------------------------------------------


def _refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str | None]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), error_reason(caught.value)


def _me(channel: grpc.Channel, token: str | None) -> Callable[[], Any]:
    """GetCurrentUser over ``channel``, presenting ``token`` (if any) as a bearer token."""
    stub: Any = auth_pb2_grpc.AuthServiceStub(channel)
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    return lambda: stub.GetCurrentUser(
        auth_pb2.GetCurrentUserRequest(), metadata=metadata, timeout=10
    )


def _refresh(stack: Stack, refresh_token: str, csr_pem: str = "") -> Callable[[], Any]:
    return lambda: stack.auth().RefreshToken(
        auth_pb2.RefreshTokenRequest(refresh_token=refresh_token, csr_pem=csr_pem), timeout=20
    )


def _refused_within(call: Callable[[], object], deadline: float) -> tuple[str | None, float]:
    """Poll ``call`` until it fails; return the failure's reason and how long it took."""
    start = time.monotonic()
    while True:
        try:
            call()
        except grpc.RpcError as error:
            code, reason = error.code(), error_reason(error)
            if code != UNAUTHENTICATED:
                pytest.fail(f"expected UNAUTHENTICATED, got {code}: {error.details()}")
            return reason, time.monotonic() - start
        if time.monotonic() - start > deadline:
            pytest.fail(f"the call still succeeded after {deadline} s")
        time.sleep(0.1)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _ = token.split(".")
    return json.loads(_unb64url(header)), json.loads(_unb64url(payload))


def _segment(obj: dict[str, Any]) -> str:
    return _b64url(json.dumps(obj, separators=(",", ":")).encode())


def _frontend_signing_key(stack: Stack) -> ec.EllipticCurvePrivateKey:
    # The test reads the frontend's private key file ONLY to mint a token the server must
    # refuse for another reason (its exp is in the past); no client could do this.
    key = serialization.load_pem_private_key(signing_key_pem(stack), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _public_key_pem_from_jwks(stack: Stack, kid: str) -> bytes:
    stub: Any = trust_pb2_grpc.TrustServiceStub(stack.enroll_channel())
    bundle = stub.GetTrustBundle(trust_pb2.GetTrustBundleRequest(), timeout=10)
    jwk = next(k for k in json.loads(bundle.jwks_json)["keys"] if k["kid"] == kid)
    public = jwt.PyJWK.from_dict(jwk).key
    pem: bytes = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem


def _forge(stack: Stack, genuine: str, how: str) -> str:
    """A token with the genuine token's claims (same user, session, certificate binding)
    whose only defect is ``how``."""
    header, claims = _parts(genuine)
    if how == "expired":
        now = int(time.time())
        claims.update(iat=now - 3600, nbf=now - 3600, exp=now - 60)
        return jwt.encode(claims, _frontend_signing_key(stack), algorithm="ES256", headers=header)
    if how == "tampered":
        head, payload, signature = genuine.split(".")
        middle = len(payload) // 2
        flipped = "B" if payload[middle] == "A" else "A"
        return f"{head}.{payload[:middle]}{flipped}{payload[middle + 1 :]}.{signature}"
    if how == "claims-rewritten":
        head, _, signature = genuine.split(".")
        claims["exp"] = claims["exp"] + 365 * 86400
        return f"{head}.{_segment(claims)}.{signature}"
    if how == "alg-none":
        return f"{_segment({**header, 'alg': 'none'})}.{_segment(claims)}."
    if how == "hs256-with-public-key":
        # The classic confusion attack: HMAC "signed" with the published public key.
        # Built by hand because PyJWT refuses to use a PEM key as an HMAC secret.
        secret = _public_key_pem_from_jwks(stack, header["kid"])
        signing_input = f"{_segment({**header, 'alg': 'HS256'})}.{_segment(claims)}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64url(mac)}"
    if how == "signed-by-another-key":
        stranger = ec.generate_private_key(ec.SECP256R1())
        return jwt.encode(claims, stranger, algorithm="ES256", headers=header)
    raise ValueError(how)


def _cert_sha256(cert_pem: bytes) -> bytes:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


# Binding a token to its certificate ----------------------------------------------------


def test_a_token_without_any_client_certificate_is_refused(stack: Stack) -> None:
    alice = stack.new_user()
    before = stack.row_counts()

    # The enrollment listener is TLS-only: the token is sent, but no certificate can be.
    assert _refusal(_me(stack.enroll_channel(), alice.access_token)) == (
        UNAUTHENTICATED,
        "CLIENT_CERTIFICATE_REQUIRED",
    )
    assert stack.row_counts() == before


def test_a_token_with_another_users_certificate_is_refused(stack: Stack) -> None:
    alice, bob = stack.new_user(), stack.new_user()
    before = stack.row_counts()

    assert _refusal(_me(stack.user_channel(bob), alice.access_token)) == (
        UNAUTHENTICATED,
        "TOKEN_CERTIFICATE_MISMATCH",
    )
    assert stack.row_counts() == before
    # Each of them still gets in with their own pair.
    assert _me(stack.user_channel(alice), alice.access_token)().user.id == alice.user_id
    assert _me(stack.user_channel(bob), bob.access_token)().user.id == bob.user_id


def test_a_token_with_the_same_users_other_certificate_is_refused(stack: Stack) -> None:
    # Alice logs in on two devices; a token stolen from one does not work with the other's key.
    laptop = stack.new_user()
    phone = stack.log_in(laptop.username)
    before = stack.row_counts()

    assert _refusal(_me(stack.user_channel(phone), laptop.access_token)) == (
        UNAUTHENTICATED,
        "TOKEN_CERTIFICATE_MISMATCH",
    )
    assert stack.row_counts() == before


def test_a_certificate_without_a_token_is_refused(stack: Stack) -> None:
    alice = stack.new_user()
    before = stack.row_counts()

    assert _refusal(_me(stack.user_channel(alice), None)) == (UNAUTHENTICATED, "TOKEN_REQUIRED")
    assert stack.row_counts() == before


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        pytest.param("Basic YWxpY2U6cGFzc3dvcmQ=", "TOKEN_MALFORMED", id="basic-auth"),
        pytest.param("Bearer", "TOKEN_MALFORMED", id="bearer-without-token"),
        pytest.param("Bearer not.a.jwt", "TOKEN_INVALID", id="garbage-token"),
    ],
)
def test_a_malformed_authorization_header_is_refused(
    stack: Stack, header: str, reason: str
) -> None:
    alice = stack.new_user()
    stub: Any = auth_pb2_grpc.AuthServiceStub(stack.user_channel(alice))
    before = stack.row_counts()

    assert _refusal(
        lambda: stub.GetCurrentUser(
            auth_pb2.GetCurrentUserRequest(), metadata=(("authorization", header),), timeout=10
        )
    ) == (UNAUTHENTICATED, reason)
    assert stack.row_counts() == before


# Forged tokens -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("expired", "TOKEN_EXPIRED"),
        ("tampered", "TOKEN_INVALID"),
        ("claims-rewritten", "TOKEN_INVALID"),
        ("alg-none", "TOKEN_INVALID"),
        ("hs256-with-public-key", "TOKEN_INVALID"),
        ("signed-by-another-key", "TOKEN_INVALID"),
    ],
)
def test_a_forged_token_is_refused(stack: Stack, how: str, reason: str) -> None:
    alice = stack.new_user()
    channel = stack.user_channel(alice)
    assert _me(channel, alice.access_token)().user.id == alice.user_id  # the genuine one works
    forged = _forge(stack, alice.access_token, how)
    assert forged != alice.access_token
    before = stack.row_counts()

    assert _refusal(_me(channel, forged)) == (UNAUTHENTICATED, reason)
    assert stack.row_counts() == before


def test_the_genuine_token_is_bound_to_the_login_certificate(stack: Stack) -> None:
    # What the forgeries above copy: cnf.x5t#S256 is the SHA-256 of Alice's certificate.
    alice = stack.new_user()
    header, claims = _parts(alice.access_token)

    assert header["alg"] == "ES256"
    assert claims["sub"] == alice.user_id
    assert _unb64url(claims["cnf"]["x5t#S256"]) == _cert_sha256(alice.cert_pem)


# Refresh tokens -----------------------------------------------------------------------


def test_refresh_rotates_the_refresh_token(stack: Stack) -> None:
    alice = stack.new_user()
    before = stack.row_counts()

    first = _refresh(stack, alice.refresh_token)()
    assert first.refresh_token not in ("", alice.refresh_token)
    assert _me(stack.user_channel(alice), first.access_token)().user.id == alice.user_id

    second = _refresh(stack, first.refresh_token)()  # the new one works
    assert second.refresh_token not in ("", first.refresh_token, alice.refresh_token)
    assert stack.row_counts() == {**before, "refresh_tokens": before["refresh_tokens"] + 2}

    # The old one is spent.
    assert _refusal(_refresh(stack, alice.refresh_token)) == (
        UNAUTHENTICATED,
        "REFRESH_TOKEN_REUSED",
    )


def test_a_reused_refresh_token_revokes_the_whole_session(stack: Stack) -> None:
    alice = stack.new_user()
    channel = stack.user_channel(alice)
    assert _me(channel, alice.access_token)().user.id == alice.user_id  # session check cached
    rotated = _refresh(stack, alice.refresh_token)()
    before = stack.row_counts()

    # A thief replays the refresh token Alice already spent.
    assert _refusal(_refresh(stack, alice.refresh_token)) == (
        UNAUTHENTICATED,
        "REFRESH_TOKEN_REUSED",
    )
    assert stack.row_counts() == before

    # Alice's newer refresh token dies with the session ...
    assert _refusal(_refresh(stack, rotated.refresh_token)) == (
        UNAUTHENTICATED,
        "SESSION_REVOKED",
    )
    # ... and so do her access tokens, once the frontend's 2 s session cache expires.
    for token in (alice.access_token, rotated.access_token):
        reason, took = _refused_within(_me(channel, token), REVOCATION_DEADLINE)
        assert reason == "SESSION_REVOKED", took
    assert stack.row_counts() == before


def test_another_session_of_the_same_user_survives_a_reuse_revocation(stack: Stack) -> None:
    laptop = stack.new_user()
    phone = stack.log_in(laptop.username)
    _refresh(stack, laptop.refresh_token)()

    _refusal(_refresh(stack, laptop.refresh_token))  # replay: the laptop's session is revoked
    _refused_within(_me(stack.user_channel(laptop), laptop.access_token), REVOCATION_DEADLINE)

    assert _me(stack.user_channel(phone), phone.access_token)().user.id == phone.user_id
    assert _refresh(stack, phone.refresh_token)().refresh_token


@pytest.mark.parametrize(
    ("token", "code", "reason"),
    [
        pytest.param("", grpc.StatusCode.INVALID_ARGUMENT, "REFRESH_TOKEN_REQUIRED", id="empty"),
        pytest.param("lrt_" + "A" * 43, UNAUTHENTICATED, "REFRESH_TOKEN_INVALID", id="unknown"),
        pytest.param("x" * 4096, UNAUTHENTICATED, "REFRESH_TOKEN_INVALID", id="huge"),
    ],
)
def test_a_refresh_token_the_server_never_issued_is_refused(
    stack: Stack, token: str, code: grpc.StatusCode, reason: str
) -> None:
    before = stack.row_counts()

    assert _refusal(_refresh(stack, token)) == (code, reason)
    assert stack.row_counts() == before


def test_an_access_token_is_no_refresh_token(stack: Stack) -> None:
    alice = stack.new_user()
    before = stack.row_counts()

    assert _refusal(_refresh(stack, alice.access_token)) == (
        UNAUTHENTICATED,
        "REFRESH_TOKEN_INVALID",
    )
    assert stack.row_counts() == before


# Logout -------------------------------------------------------------------------------


def test_logout_ends_the_session(stack: Stack) -> None:
    alice = stack.new_user()
    channel = stack.user_channel(alice)
    stub: Any = auth_pb2_grpc.AuthServiceStub(channel)
    assert _me(channel, alice.access_token)().user.id == alice.user_id
    before = stack.row_counts()

    stub.Logout(auth_pb2.LogoutRequest(), metadata=alice.bearer, timeout=10)

    assert _refusal(_refresh(stack, alice.refresh_token)) == (UNAUTHENTICATED, "SESSION_REVOKED")
    reason, took = _refused_within(_me(channel, alice.access_token), REVOCATION_DEADLINE)
    assert reason == "SESSION_REVOKED", took
    assert stack.row_counts() == before
    # Logging out twice is refused too: the token belongs to a dead session.
    assert _refusal(
        lambda: stub.Logout(auth_pb2.LogoutRequest(), metadata=alice.bearer, timeout=10)
    ) == (UNAUTHENTICATED, "SESSION_REVOKED")


def test_logout_needs_the_token_and_its_certificate(stack: Stack) -> None:
    alice = stack.new_user()
    stub: Any = auth_pb2_grpc.AuthServiceStub(stack.enroll_channel())
    before = stack.row_counts()

    assert _refusal(
        lambda: stub.Logout(auth_pb2.LogoutRequest(), metadata=alice.bearer, timeout=10)
    ) == (UNAUTHENTICATED, "CLIENT_CERTIFICATE_REQUIRED")
    assert stack.row_counts() == before
    # The session is untouched: the refresh token still works.
    assert _refresh(stack, alice.refresh_token)().refresh_token


# Certificate renewal -------------------------------------------------------------------


def test_refresh_with_a_csr_renews_the_certificate_and_binds_the_token_to_it(
    stack: Stack,
) -> None:
    alice = stack.new_user()
    new = new_key()

    reply = _refresh(stack, alice.refresh_token, make_csr(new))()

    assert reply.client_certificate_pem
    renewed = LoggedIn(
        user_id=alice.user_id,
        username=alice.username,
        key_pem=key_pem(new),
        cert_pem=reply.client_certificate_pem.encode(),
        access_token=reply.access_token,
        refresh_token=reply.refresh_token,
    )
    assert _cert_sha256(renewed.cert_pem) != _cert_sha256(alice.cert_pem)
    assert _me(stack.user_channel(renewed), renewed.access_token)().user.id == alice.user_id
    # The new token is bound to the new certificate only.
    assert _refusal(_me(stack.user_channel(alice), renewed.access_token)) == (
        UNAUTHENTICATED,
        "TOKEN_CERTIFICATE_MISMATCH",
    )
    # A later refresh without a CSR keeps the token bound to the renewed certificate.
    later = _refresh(stack, renewed.refresh_token)()
    assert not later.client_certificate_pem
    assert _me(stack.user_channel(renewed), later.access_token)().user.id == alice.user_id


def test_refresh_with_a_weak_csr_is_refused_and_does_not_spend_the_token(stack: Stack) -> None:
    alice = stack.new_user()
    before = stack.row_counts()

    assert _refusal(_refresh(stack, alice.refresh_token, make_csr(new_key("rsa1024")))) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "CSR_WEAK_KEY",
    )
    assert stack.row_counts() == before
    assert _refresh(stack, alice.refresh_token)().refresh_token  # still unspent


def test_refresh_with_a_csr_and_a_spent_token_signs_nothing(stack: Stack) -> None:
    alice = stack.new_user()
    _refresh(stack, alice.refresh_token)()
    before = stack.row_counts()

    assert _refusal(_refresh(stack, alice.refresh_token, make_csr(new_key()))) == (
        UNAUTHENTICATED,
        "REFRESH_TOKEN_REUSED",
    )
    assert stack.row_counts() == before
