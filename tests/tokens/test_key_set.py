"""The signing key set rotates without a token anyone holds failing: stories on real files."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from licensing_common.errors import Unauthenticated
from licensing_server.tokens import (
    KEY_SET_FILE,
    SINGLE_KEY_FILE,
    AccessTokenSigner,
    AccessTokenVerifier,
    KeySetFiles,
    KeySetMissing,
    RotationRefused,
    SigningKey,
    TokenKeyRing,
    TokenKeySet,
    jwks_public_keys,
)

CERT = b"\x01" * 32
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
KEEP = dt.timedelta(minutes=15)
HOUR = dt.timedelta(hours=1)


def _signer(key: SigningKey | TokenKeyRing) -> AccessTokenSigner:
    source = key.signing_key if isinstance(key, TokenKeyRing) else key
    return AccessTokenSigner(
        source, issuer="licensing", audience="licensing", ttl=dt.timedelta(minutes=10)
    )


def _token(key: SigningKey | TokenKeyRing) -> str:
    token, _ = _signer(key).sign(
        user_id="u1", username="alice", session_id="s1", certificate_sha256=CERT
    )
    return token


def _verifier(jwks_json: str) -> AccessTokenVerifier:
    """A verifier as an enclave makes one: from the JWKS it was given."""
    return AccessTokenVerifier(
        jwks_public_keys(jwks_json), issuer="licensing", audience="licensing"
    )


def _refusal(verifier: AccessTokenVerifier, token: str) -> str:
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(token, CERT)
    return str(caught.value.reason)


def test_a_fresh_set_publishes_its_next_key_from_the_start(tmp_path: Path) -> None:
    key_set = KeySetFiles(tmp_path, create=True).load()
    assert key_set.next is not None
    kids = [k["kid"] for k in json.loads(key_set.jwks_json())["keys"]]
    assert kids == [key_set.signing_key.kid, key_set.next.key.kid]
    assert (tmp_path / KEY_SET_FILE).stat().st_mode & 0o777 == 0o600
    # Read again (a restart), it is the same set.
    again = KeySetFiles(tmp_path, create=True).load()
    assert again.jwks_json() == key_set.jwks_json()
    assert again.signing_key.kid == key_set.signing_key.kid


def test_a_deployment_with_only_the_single_key_file_starts_unchanged(tmp_path: Path) -> None:
    legacy = SigningKey.load_or_create(tmp_path / SINGLE_KEY_FILE)
    key_set = KeySetFiles(tmp_path, create=True).load()
    assert key_set.signing_key.kid == legacy.kid
    assert key_set.jwks_json() == legacy.jwks_json()
    assert not (tmp_path / KEY_SET_FILE).exists()


def test_rotating_a_single_key_first_publishes_a_next_key_and_keeps_signing(
    tmp_path: Path,
) -> None:
    """Promoting a key nobody was given would break every enclave made before."""
    legacy = SigningKey.load_or_create(tmp_path / SINGLE_KEY_FILE)
    files = KeySetFiles(tmp_path, create=False)
    rotated = files.load().rotated(T0, keep_previous_for=KEEP, min_next_age=HOUR)
    files.save(rotated)
    assert rotated.signing_key.kid == legacy.kid
    assert rotated.next is not None
    # The set file replaces the single key file (one source, read atomically).
    assert not (tmp_path / SINGLE_KEY_FILE).exists()
    assert files.load().jwks_json() == rotated.jwks_json()


def test_tokens_of_the_old_key_verify_after_a_rotation_and_new_ones_on_old_verifiers() -> None:
    before = TokenKeySet.fresh(T0)
    old_token = _token(before.signing_key)
    enclave = _verifier(before.jwks_json())  # provisioned before the rotation
    after = before.rotated(T0 + HOUR, keep_previous_for=KEEP, min_next_age=HOUR)
    assert before.next is not None
    assert after.signing_key.kid == before.next.key.kid
    assert [p.key.kid for p in after.previous] == [before.signing_key.kid]
    new_token = _token(after.signing_key)
    frontend = _verifier(after.jwks_json())
    for verifier in (frontend, enclave):
        for token in (old_token, new_token):
            assert verifier.verify(token, CERT).user_id == "u1"


def test_an_enclave_survives_one_rotation_not_two() -> None:
    first = TokenKeySet.fresh(T0)
    enclave = _verifier(first.jwks_json())
    second = first.rotated(T0 + HOUR, keep_previous_for=KEEP, min_next_age=HOUR)
    third = second.rotated(T0 + 2 * HOUR, keep_previous_for=KEEP, min_next_age=HOUR)
    assert enclave.verify(_token(second.signing_key), CERT)
    assert _refusal(enclave, _token(third.signing_key)) == "TOKEN_KEY_UNKNOWN"


def test_a_next_key_younger_than_an_enclave_lifetime_is_promoted_only_by_force() -> None:
    key_set = TokenKeySet.fresh(T0)
    with pytest.raises(RotationRefused, match="rotate after"):
        key_set.rotated(T0 + HOUR / 2, keep_previous_for=KEEP, min_next_age=HOUR)
    forced = key_set.rotated(T0 + HOUR / 2, keep_previous_for=KEEP, min_next_age=HOUR, force=True)
    assert key_set.next is not None
    assert forced.signing_key.kid == key_set.next.key.kid


def test_previous_keys_are_kept_for_the_token_lifetime_then_dropped() -> None:
    first = TokenKeySet.fresh(T0)
    second = first.rotated(T0, keep_previous_for=KEEP, force=True)
    third = second.rotated(T0 + KEEP / 2, keep_previous_for=KEEP, force=True)
    assert [p.key.kid for p in third.previous] == [
        first.signing_key.kid,
        second.signing_key.kid,
    ]
    fourth = third.rotated(T0 + KEEP, keep_previous_for=KEEP, force=True)
    assert [p.key.kid for p in fourth.previous] == [
        second.signing_key.kid,
        third.signing_key.kid,
    ]


def test_a_leaked_key_is_discarded_at_once() -> None:
    key_set = TokenKeySet.fresh(T0)
    leaked = _token(key_set.signing_key)
    rotated = key_set.rotated(
        T0 + HOUR, keep_previous_for=KEEP, min_next_age=HOUR, discard_previous=True
    )
    assert rotated.previous == ()
    assert _refusal(_verifier(rotated.jwks_json()), leaked) == "TOKEN_KEY_UNKNOWN"


def test_the_stored_set_round_trips_and_nothing_else_is_read_as_one() -> None:
    key_set = TokenKeySet.fresh(T0).rotated(T0 + HOUR, keep_previous_for=KEEP)
    again = TokenKeySet.from_json(key_set.to_json())
    assert again.describe() == key_set.describe()
    for text in ("{}", '{"format": "something-else"}', "[]"):
        with pytest.raises(ValueError, match="format"):
            TokenKeySet.from_json(text)
    doubled = json.loads(key_set.to_json())
    doubled["next"] = doubled["current"]
    with pytest.raises(ValueError, match="twice"):
        TokenKeySet.from_json(json.dumps(doubled))
    assert "PRIVATE" not in json.dumps(key_set.describe())


def test_a_directory_given_to_us_without_a_key_is_an_error_not_a_new_key(tmp_path: Path) -> None:
    """A replica that made its own key would sign tokens no other replica accepts."""
    with pytest.raises(KeySetMissing):
        KeySetFiles(tmp_path, create=False).load()
    assert list(tmp_path.iterdir()) == []


def test_the_key_ring_follows_the_files_and_its_verifier_drops_removed_keys(
    tmp_path: Path,
) -> None:
    files = KeySetFiles(tmp_path, create=True)
    ring = TokenKeyRing(files)
    verifier = AccessTokenVerifier(ring.public_keys(), issuer="licensing", audience="licensing")
    ring.on_change(lambda key_set: verifier.replace_keys(key_set.public_keys()))
    first = _token(ring)
    assert verifier.verify(first, CERT)  # cached from now on
    assert ring.reload() is False  # nothing changed

    # Another process (licensing-admin, a Secret update) rotates the files.
    with files.locked():
        files.save(files.load().rotated(T0, keep_previous_for=KEEP, force=True))
    assert ring.reload() is True
    second = _token(ring)
    assert jwks_header_kid(second) != jwks_header_kid(first)
    assert verifier.verify(first, CERT)
    assert verifier.verify(second, CERT)

    # A leaked key discarded: even its cached token is refused at once.
    with files.locked():
        files.save(
            files.load().rotated(T0, keep_previous_for=KEEP, force=True, discard_previous=True)
        )
    assert ring.reload() is True
    assert _refusal(verifier, first) == "TOKEN_KEY_UNKNOWN"


def test_an_unreadable_key_file_keeps_the_set_in_use(tmp_path: Path) -> None:
    files = KeySetFiles(tmp_path, create=True)
    ring = TokenKeyRing(files)
    kid = ring.signing_key().kid
    (tmp_path / KEY_SET_FILE).write_text("half a file")
    os.utime(tmp_path / KEY_SET_FILE, ns=(1, 1))
    assert ring.reload() is False
    assert ring.signing_key().kid == kid


def test_a_key_file_gone_missing_keeps_the_set_in_use_and_makes_no_new_one(
    tmp_path: Path,
) -> None:
    files = KeySetFiles(tmp_path, create=True)
    ring = TokenKeyRing(files)
    kid = ring.signing_key().kid
    (tmp_path / KEY_SET_FILE).unlink()
    assert ring.reload() is False
    assert ring.signing_key().kid == kid
    assert not (tmp_path / KEY_SET_FILE).exists()


def test_a_non_ec_single_key_is_refused(tmp_path: Path) -> None:
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / SINGLE_KEY_FILE).write_bytes(pem)
    with pytest.raises(ValueError, match="not an EC private key"):
        KeySetFiles(tmp_path, create=False).load()


def jwks_header_kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])
