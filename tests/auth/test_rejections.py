"""Sign-up and login refuse bad input with a precise status and reason, and write nothing."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from licensing.control.v1 import control_pb2, control_pb2_grpc
from licensing.v1 import auth_pb2, auth_pb2_grpc

from tests.support import PASSWORD, Stack, error_reason, make_csr, new_key

INVALID = grpc.StatusCode.INVALID_ARGUMENT
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


def _name(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _auth(stack: Stack) -> Any:
    return auth_pb2_grpc.AuthServiceStub(stack.enroll_channel())


def _refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str | None, str]:
    """Run a call that must fail; return its (code, ErrorInfo reason, message)."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    return error.code(), error_reason(error), error.details() or ""


def _sign_up(stack: Stack, username: str, password: str = PASSWORD) -> Callable[[], object]:
    return lambda: _auth(stack).SignUp(
        auth_pb2.SignUpRequest(username=username, password=password), timeout=20
    )


def _login(
    stack: Stack, username: str, password: str = PASSWORD, csr_pem: str | None = None
) -> Callable[[], object]:
    csr = make_csr(new_key()) if csr_pem is None else csr_pem
    return lambda: _auth(stack).Login(
        auth_pb2.LoginRequest(username=username, password=password, csr_pem=csr), timeout=20
    )


# Credentials ----------------------------------------------------------------------


def test_a_wrong_password_is_refused_and_opens_no_session(stack: Stack) -> None:
    name = stack.sign_up()
    before = stack.row_counts()

    code, reason, _ = _refusal(_login(stack, name, "not the password at all"))

    assert (code, reason) == (UNAUTHENTICATED, "INVALID_CREDENTIALS")
    assert stack.row_counts() == before


def test_an_unknown_user_gets_exactly_the_wrong_password_answer(stack: Stack) -> None:
    name = stack.sign_up()
    before = stack.row_counts()

    wrong_password = _refusal(_login(stack, name, "not the password at all"))
    unknown_user = _refusal(_login(stack, _name("nobody")))

    assert wrong_password[0] == UNAUTHENTICATED
    assert unknown_user == wrong_password  # same code, same reason, same message
    assert stack.row_counts() == before


def test_a_look_alike_name_cannot_log_in_as_the_real_user(stack: Stack) -> None:
    real = stack.sign_up(_name("alice"))
    cyrillic = "\u0430" + real[1:]  # Cyrillic small a (U+0430) for the Latin 'a'
    before = stack.row_counts()

    code, reason, _ = _refusal(_login(stack, cyrillic))

    # Not INVALID_ARGUMENT: login must not tell which names are well-formed accounts.
    assert (code, reason) == (UNAUTHENTICATED, "INVALID_CREDENTIALS")
    assert stack.row_counts() == before


# Usernames --------------------------------------------------------------------------


def test_signing_up_a_taken_name_is_already_exists(stack: Stack) -> None:
    name = stack.sign_up()
    before = stack.row_counts()

    code, reason, _ = _refusal(_sign_up(stack, name, "a different password"))

    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "USERNAME_TAKEN")
    assert stack.row_counts() == before


@pytest.mark.parametrize("contenders", [2, 6])
def test_simultaneous_signups_of_one_name_have_exactly_one_winner(
    stack: Stack, contenders: int
) -> None:
    name = _name("race")
    channels = [stack.enroll_channel() for _ in range(contenders)]
    for channel in channels:  # connect first, so that the sign-ups themselves overlap
        grpc.channel_ready_future(channel).result(timeout=10)
    stubs = [auth_pb2_grpc.AuthServiceStub(channel) for channel in channels]
    before = stack.row_counts()
    request = auth_pb2.SignUpRequest(username=name, password=PASSWORD)

    futures = [stub.SignUp.future(request, timeout=30) for stub in stubs]
    winners, losers = [], []
    for future in futures:
        try:
            winners.append(future.result())
        except grpc.RpcError as error:
            losers.append((error.code(), error_reason(error)))

    assert len(winners) == 1, losers
    assert winners[0].username == name
    assert losers == [(grpc.StatusCode.ALREADY_EXISTS, "USERNAME_TAKEN")] * (contenders - 1)
    assert stack.row_counts() == {**before, "users": before["users"] + 1}


@pytest.mark.parametrize(
    ("username", "reason"),
    [
        pytest.param("", "USERNAME_REQUIRED", id="empty"),
        pytest.param("a" * 33, "USERNAME_TOO_LONG", id="33-characters"),
        pytest.param("ab", "USERNAME_TOO_SHORT", id="2-characters"),
        pytest.param("ali\x00ce", "USERNAME_INVALID_CHARACTERS", id="nul"),
        pytest.param("ali\nce", "USERNAME_INVALID_CHARACTERS", id="newline"),
        pytest.param("\talice", "USERNAME_INVALID_CHARACTERS", id="tab"),
        pytest.param("alice\x7f", "USERNAME_INVALID_CHARACTERS", id="delete"),
        pytest.param("\u0430lice", "USERNAME_INVALID_CHARACTERS", id="cyrillic-a"),
        pytest.param(
            "\uff41\uff4c\uff49\uff43\uff45", "USERNAME_INVALID_CHARACTERS", id="fullwidth"
        ),
        pytest.param("alice\u200b", "USERNAME_INVALID_CHARACTERS", id="zero-width-space"),
        pytest.param("alice smith", "USERNAME_INVALID_CHARACTERS", id="space"),
        pytest.param("-alice", "USERNAME_INVALID_CHARACTERS", id="leading-dash"),
    ],
)
def test_a_bad_username_is_refused_at_sign_up(stack: Stack, username: str, reason: str) -> None:
    before = stack.row_counts()

    code, got, _ = _refusal(_sign_up(stack, username))

    assert (code, got) == (INVALID, reason)
    assert stack.row_counts() == before


def test_a_32_character_username_is_just_short_enough(stack: Stack) -> None:
    name = (uuid.uuid4().hex * 2)[:32]

    assert stack.sign_up(name) == name
    assert stack.log_in(name).user_id


def test_alice_is_stored_as_lower_case_and_upper_case_collides(stack: Stack) -> None:
    name = _name("Alice")

    reply = _auth(stack).SignUp(auth_pb2.SignUpRequest(username=name, password=PASSWORD))
    assert reply.username == name.lower()
    before = stack.row_counts()

    code, reason, _ = _refusal(_sign_up(stack, name.upper()))
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "USERNAME_TAKEN")
    assert stack.row_counts() == before

    # Any spelling of the name logs in to the one account.
    assert stack.log_in(name.upper()).user_id == reply.user_id


# Passwords --------------------------------------------------------------------------

TOO_LONG_PASSWORDS = [
    pytest.param("x" * 73, id="73-ascii-bytes"),
    pytest.param("\u00e9" * 72, id="72-characters-144-bytes"),
    pytest.param("\u20ac" * 25, id="25-characters-75-bytes"),
]


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        pytest.param("", "PASSWORD_REQUIRED", id="empty"),
        pytest.param("short", "PASSWORD_TOO_SHORT", id="5-bytes"),
        pytest.param("pass\x00word-123", "PASSWORD_INVALID_CHARACTERS", id="nul"),
        *[pytest.param(p.values[0], "PASSWORD_TOO_LONG", id=p.id) for p in TOO_LONG_PASSWORDS],
    ],
)
def test_a_bad_password_is_refused_at_sign_up(stack: Stack, password: str, reason: str) -> None:
    before = stack.row_counts()

    code, got, _ = _refusal(_sign_up(stack, _name(), password))

    assert (code, got) == (INVALID, reason)
    assert stack.row_counts() == before


@pytest.mark.parametrize(
    "password",
    [pytest.param("x" * 72, id="72-ascii-bytes"), pytest.param("\u20ac" * 24, id="24-euros")],
)
def test_a_password_of_exactly_72_bytes_is_accepted(stack: Stack, password: str) -> None:
    name = stack.sign_up(password=password)

    assert stack.log_in(name, password).user_id


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        pytest.param("", "PASSWORD_REQUIRED", id="empty"),
        *[pytest.param(p.values[0], "PASSWORD_TOO_LONG", id=p.id) for p in TOO_LONG_PASSWORDS],
    ],
)
def test_a_bad_password_is_refused_at_login(stack: Stack, password: str, reason: str) -> None:
    name = stack.sign_up()
    before = stack.row_counts()

    code, got, _ = _refusal(_login(stack, name, password))

    assert (code, got) == (INVALID, reason)
    assert stack.row_counts() == before


def test_a_password_longer_than_72_bytes_is_not_truncated_into_a_match(stack: Stack) -> None:
    # bcrypt would silently use only the first 72 bytes; the server must refuse instead.
    password = "p" * 72
    name = stack.sign_up(password=password)

    code, reason, _ = _refusal(_login(stack, name, password + "anything"))

    assert (code, reason) == (INVALID, "PASSWORD_TOO_LONG")


# Certificate signing requests --------------------------------------------------------


def _csr_with_bad_signature() -> str:
    der = bytearray(
        x509.load_pem_x509_csr(make_csr(new_key()).encode()).public_bytes(
            serialization.Encoding.DER
        )
    )
    der[-1] ^= 0x01  # the last byte of the ECDSA signature's s
    body = base64.encodebytes(bytes(der)).decode()
    pem = f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"
    assert not x509.load_pem_x509_csr(pem.encode()).is_signature_valid  # precondition
    return pem


def _bad_csr(kind: str) -> str:
    if kind == "empty":
        return ""
    if kind == "not-pem":
        return "please sign me"
    if kind == "garbage-body":
        return "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
    if kind == "rsa1024":
        return make_csr(new_key("rsa1024"))
    if kind == "ec192":
        return make_csr(new_key("ec192"))
    if kind == "bad-signature":
        return _csr_with_bad_signature()
    raise ValueError(kind)


BAD_CSRS = [
    ("empty", "CSR_REQUIRED"),
    ("not-pem", "CSR_MALFORMED"),
    ("garbage-body", "CSR_MALFORMED"),
    ("rsa1024", "CSR_WEAK_KEY"),
    ("ec192", "CSR_WEAK_KEY"),
    ("bad-signature", "CSR_SIGNATURE_INVALID"),
]


@pytest.mark.parametrize(("kind", "reason"), BAD_CSRS)
def test_login_with_a_bad_csr_is_refused_and_opens_no_session(
    stack: Stack, kind: str, reason: str
) -> None:
    name = stack.sign_up()
    before = stack.row_counts()

    code, got, _ = _refusal(_login(stack, name, csr_pem=_bad_csr(kind)))

    assert (code, got) == (INVALID, reason)
    assert stack.row_counts() == before


@pytest.mark.parametrize(("kind", "reason"), [c for c in BAD_CSRS if c[0] != "empty"])
def test_the_ca_itself_refuses_a_bad_csr_from_the_frontend(
    stack: Stack, kind: str, reason: str
) -> None:
    # Defence in depth: even the frontend's own internal certificate cannot get a bad CSR signed.
    frontend = stack.data_dir / "frontend"
    channel = stack.backend_channel(
        (frontend / "internal-client-key.pem").read_bytes(),
        (frontend / "internal-client.pem").read_bytes(),
    )
    stub: Any = control_pb2_grpc.CertificateServiceStub(channel)
    request = control_pb2.SignUserCertificateRequest(
        user_id=str(uuid.uuid4()), username="someone", csr_pem=_bad_csr(kind)
    )

    code, got, _ = _refusal(lambda: stub.SignUserCertificate(request, timeout=20))

    assert (code, got) == (INVALID, reason)


def test_a_bad_csr_is_checked_before_the_password(stack: Stack) -> None:
    # Cheap shape checks first: a weak key with a wrong password says "weak key", and the
    # same answer comes for an unknown user, so the CSR check reveals nothing about accounts.
    name = stack.sign_up()
    weak = make_csr(new_key("rsa1024"))

    known = _refusal(_login(stack, name, "wrong password!", csr_pem=weak))
    unknown = _refusal(_login(stack, _name("nobody"), "wrong password!", csr_pem=weak))

    assert known[:2] == (INVALID, "CSR_WEAK_KEY")
    assert unknown == known
