"""A person uses the ``licensing`` command line: sign up, log in, whoami, refresh, log out.

The CLI runs as a subprocess (``python -m licensing_client.cli``) against the real
stack, with its own config directory per test.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import stat
import time
import uuid
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.clients.attestation_support import self_signed_ca_pem
from tests.clients.cli_support import Cli
from tests.support import PASSWORD, Stack, free_port

PAST = "2000-01-01T00:00:00Z"
FAR_FUTURE = "2999-01-01T00:00:00Z"
#: The shortest access token lifetime the server accepts.


def fingerprint(pem: bytes) -> str:
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def public_der(key: ec.EllipticCurvePublicKey | object) -> bytes:
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def assert_key_matches_certificate(config: Path) -> None:
    """The certificate certifies the key made locally: only the CSR was sent."""
    key = serialization.load_pem_private_key((config / "key.pem").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    cert = x509.load_pem_x509_certificate((config / "cert.pem").read_bytes())
    assert public_der(cert.public_key()) == public_der(key.public_key())


def other_ca(tmp: Path) -> Path:
    path = tmp / "other-ca.pem"
    path.write_text(self_signed_ca_pem())
    return path


# Stories -------------------------------------------------------------------------------


def test_signup_login_whoami_with_trust_on_first_use(stack: Stack, tmp_path: Path) -> None:
    config = tmp_path / "config"
    cli = Cli(stack, config)
    name = f"Cli-{uuid.uuid4().hex[:8]}"

    signed_up = cli.run("signup", name, "--password-stdin", stdin=PASSWORD + "\n").ok()
    # No CA was pinned: it was fetched, pinned on first use, and its fingerprint shown.
    assert "first use" in signed_up.stderr
    assert fingerprint(stack.ca_pem) in signed_up.stderr
    assert "--ca-file" not in signed_up.stderr.split("first use")[0]
    assert (config / "ca.pem").read_bytes().strip() == stack.ca_pem.strip()
    assert f"signed up as {name.lower()}" in signed_up.stdout

    logged_in = cli.run("login", name, env={"LICENSING_PASSWORD": PASSWORD}).ok()
    assert "first use" not in logged_in.stderr  # pinned now, verified from here on
    assert f"logged in as {name.lower()}" in logged_in.stdout

    assert mode(config) == 0o700
    for file in ("key.pem", "cert.pem", "ca.pem", "session.json"):
        assert mode(config / file) == 0o600, file
    assert not list(config.glob("*.tmp"))
    assert not list(config.glob(".*.tmp"))
    assert_key_matches_certificate(config)
    session = cli.session()
    assert session["username"] == name.lower()
    assert session["server"] == stack.enroll_addr
    assert session["api"] == stack.api_addr
    for field in ("access_token", "refresh_token", "user_id"):
        assert session[field]
    assert (config / "key.pem").read_text() not in json.dumps(session)

    whoami = cli.run("whoami").ok()
    assert whoami.stdout.startswith(f"{name.lower()} (user id {session['user_id']}")

    as_json = cli.run("whoami", "--output", "json").ok().json()
    assert as_json["username"] == name.lower()
    assert as_json["id"] == session["user_id"]
    assert as_json["create_time"].endswith("Z")
    # Global flags work before the command too, and the session remembers the addresses.
    before = cli.run("--output", "json", "whoami", addresses=False).ok().json()
    assert before == as_json


def test_ca_file_is_pinned_without_trust_on_first_use(stack: Stack, tmp_path: Path) -> None:
    config = tmp_path / "config"
    cli = Cli(stack, config)
    name = f"cli-{uuid.uuid4().hex[:8]}"

    signed_up = cli.run(
        "--ca-file", str(stack.ca_path), "signup", name, "--password-stdin", stdin=PASSWORD
    ).ok()
    assert "first use" not in signed_up.stderr
    assert "--ca-file" in signed_up.stderr
    assert fingerprint(stack.ca_pem) in signed_up.stderr
    assert (config / "ca.pem").read_bytes() == stack.ca_pem
    assert mode(config / "ca.pem") == 0o600


def test_a_server_that_does_not_match_the_pinned_ca_is_refused(
    stack: Stack, tmp_path: Path
) -> None:
    cli = Cli(stack, tmp_path / "config")
    result = cli.run(
        "--ca-file",
        str(other_ca(tmp_path)),
        "signup",
        "someone",
        "--password-stdin",
        stdin=PASSWORD,
    )
    assert result.returncode == 1
    line = result.error_line()
    assert line.startswith("error: sign-up failed: the TLS certificate of the licensing server")
    assert "pinned CA" in line


def test_wrong_password_is_a_sentence_and_exit_code_1(stack: Stack, tmp_path: Path) -> None:
    config = tmp_path / "config"
    cli = Cli(stack, config)
    name = f"cli-{uuid.uuid4().hex[:8]}"
    cli.run("signup", name, "--password-stdin", stdin=PASSWORD).ok()

    result = cli.run("login", name, "--password-stdin", stdin="not the password\n")
    assert result.returncode == 1
    assert result.error_line() == (
        "error: login failed: username or password is incorrect "
        "(UNAUTHENTICATED, INVALID_CREDENTIALS)"
    )
    assert not (config / "session.json").exists()
    assert not (config / "key.pem").exists()

    taken = cli.run("signup", name, "--password-stdin", stdin=PASSWORD)
    assert taken.returncode == 1
    assert "(ALREADY_EXISTS, USERNAME_TAKEN)" in taken.error_line()


def test_logout_ends_the_session_and_whoami_then_fails_cleanly(
    stack: Stack, tmp_path: Path
) -> None:
    config = tmp_path / "config"
    cli = Cli(stack, config)
    cli.signup_and_login()
    # A copy of the session as it was, to show the server revoked it.
    copy = tmp_path / "copy"
    copy.mkdir(mode=0o700)
    for file in ("ca.pem", "key.pem", "cert.pem", "session.json"):
        (copy / file).write_bytes((config / file).read_bytes())

    logged_out = cli.run("logout").ok()
    assert "logged out" in logged_out.stdout
    for file in ("session.json", "key.pem", "cert.pem"):
        assert not (config / file).exists(), file
    assert (config / "ca.pem").exists()  # the pin stays

    whoami = cli.run("whoami")
    assert whoami.returncode == 1
    assert whoami.error_line().startswith("error: not logged in")

    # The old refresh token no longer works: the session was revoked on the server.
    stale = Cli(stack, copy)
    stale.edit_session(access_token_expire_time=PAST)
    result = stale.run("whoami")
    assert result.returncode == 1
    line = result.error_line()
    assert "the session has ended" in line
    assert "UNAUTHENTICATED" in line


def test_an_expiring_access_token_is_refreshed_by_itself(stack: Stack, tmp_path: Path) -> None:
    config = tmp_path / "config"
    cli = Cli(stack, config)
    cli.signup_and_login()
    before = cli.session()
    key_before = (config / "key.pem").read_bytes()
    cli.edit_session(access_token_expire_time=PAST)

    cli.run("whoami").ok()

    after = cli.session()
    assert after["refresh_token"] != before["refresh_token"]  # rotated
    assert after["access_token"] != before["access_token"]
    expiry = dt.datetime.fromisoformat(after["access_token_expire_time"].replace("Z", "+00:00"))
    assert expiry > dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60)
    assert (config / "key.pem").read_bytes() == key_before  # the certificate was still good
    assert mode(config / "session.json") == 0o600

    # And the rotated session keeps working without another refresh.
    cli.run("whoami").ok()
    assert cli.session()["refresh_token"] == after["refresh_token"]


def test_a_certificate_about_to_expire_is_renewed_with_a_new_local_key(
    stack: Stack, tmp_path: Path
) -> None:
    config = tmp_path / "config"
    cli = Cli(stack, config)
    cli.signup_and_login()
    key_before = (config / "key.pem").read_bytes()
    cert_before = (config / "cert.pem").read_bytes()
    refresh_before = cli.session()["refresh_token"]
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    cli.edit_session(client_certificate_expire_time=soon)

    cli.run("whoami").ok()

    assert (config / "key.pem").read_bytes() != key_before
    assert (config / "cert.pem").read_bytes() != cert_before
    assert_key_matches_certificate(config)
    assert cli.session()["refresh_token"] != refresh_before
    for file in ("key.pem", "cert.pem", "session.json"):
        assert mode(config / file) == 0o600, file
    cli.run("whoami").ok()  # the new certificate and its bound token work together


def test_a_token_the_server_calls_expired_is_refreshed_and_the_call_retried(
    short_lived_stack: Stack, tmp_path: Path
) -> None:
    cli = Cli(short_lived_stack, tmp_path / "config")
    cli.signup_and_login()
    before = cli.session()
    expiry = dt.datetime.fromisoformat(before["access_token_expire_time"].replace("Z", "+00:00"))
    # The stored expiry claims the token is good for ages, so no refresh happens up front:
    # the server's UNAUTHENTICATED / TOKEN_EXPIRED is what makes the CLI refresh and retry.
    cli.edit_session(access_token_expire_time=FAR_FUTURE)
    time.sleep(max(0.0, (expiry - dt.datetime.now(dt.UTC)).total_seconds()) + 1.5)

    whoami = cli.run("whoami").ok()
    assert whoami.stdout.startswith(before["username"])
    after = cli.session()
    assert after["refresh_token"] != before["refresh_token"]
    assert after["access_token"] != before["access_token"]
    assert after["access_token_expire_time"] != FAR_FUTURE


def test_concurrent_refreshes_share_one_rotation(stack: Stack, tmp_path: Path) -> None:
    """Two commands refreshing at once must not spend one refresh token twice (which revokes)."""
    cli = Cli(stack, tmp_path / "config")
    cli.signup_and_login()
    cli.edit_session(access_token_expire_time=PAST)

    procs = [cli.popen("whoami") for _ in range(3)]
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    cli.run("whoami").ok()


def test_usage_errors_exit_2(stack: Stack, tmp_path: Path) -> None:
    cli = Cli(stack, tmp_path / "config")
    for args in (
        ("enclave", "create", "--nonce-hex", "not-hex"),
        ("enclave", "create", "--nonce-hex", "00"),
        ("enclave", "create", "--request-id", "no spaces allowed"),
        ("--server", "nonsense", "whoami"),
        ("enclave",),
        ("frobnicate",),
    ):
        result = cli.run(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_an_unreachable_server_is_a_sentence(stack: Stack, tmp_path: Path) -> None:
    cli = Cli(stack, tmp_path / "config")
    port = free_port()
    result = cli.run(
        "--server",
        f"127.0.0.1:{port}",
        "signup",
        "someone",
        "--password-stdin",
        stdin=PASSWORD,
        addresses=False,
    )
    assert result.returncode == 1
    assert result.error_line() == (
        "error: fetching the trust bundle for trust on first use failed: "
        f"cannot reach the licensing server at 127.0.0.1:{port}: connection refused"
    )
