"""Edge inputs once answered INTERNAL: integer extremes, deep nesting, absurd token times.

Each now gets a deliberate status with an ErrorInfo reason, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import struct
import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest
from licensing.v1 import auth_pb2, auth_pb2_grpc, enclave_pb2

from tests.enclaves.helpers import Owner, code_and_reason, refusal
from tests.support import ABSURD_TIME_CLAIMS, Stack, resigned, signing_key_pem

TIMEOUT = 30.0


def _code_and_reason(call: Callable[[], object]) -> tuple[grpc.StatusCode, str | None]:
    return code_and_reason(refusal(call))


@pytest.fixture(scope="module")
def attested(stack: Stack) -> Iterator[tuple[Owner, str]]:
    """An owner and their attested enclave (its watch ends at a final phase)."""
    owner = Owner.of(stack)
    enclave = owner.create_attested()
    yield owner, enclave.id
    owner.delete_all()
    owner.close()


@pytest.mark.parametrize("from_sequence", [2**31, 2**63 - 1, 2**63, 2**64 - 1])
def test_watch_from_a_sequence_no_event_can_have_is_invalid(
    attested: tuple[Owner, str], from_sequence: int
) -> None:
    owner, enclave_id = attested
    request = enclave_pb2.WatchEnclaveRequest(enclave_id=enclave_id, from_sequence=from_sequence)
    assert _code_and_reason(
        lambda: list(owner.stub.WatchEnclave(request, metadata=owner.bearer, timeout=TIMEOUT))
    ) == (grpc.StatusCode.INVALID_ARGUMENT, "FROM_SEQUENCE_INVALID")


def test_watch_from_zero_still_replays_every_event(
    attested: tuple[Owner, str],
) -> None:
    owner, enclave_id = attested
    events = list(owner.watch(enclave_id, from_sequence=0, timeout=TIMEOUT))
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[-1].phase == enclave_pb2.PHASE_ATTESTED


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


_ID = uuid.UUID(int=1).bytes
EDGE_PAGE_TOKENS = {
    "nested brackets": _b64(b"[" * 100_000),
    "nested objects": _b64(b'{"a":' * 50_000),
    "a megabyte": "A" * (1 << 20),
    "old json layout": _b64(
        b'["2024-01-01T00:00:00+00:00", "' + str(uuid.UUID(int=1)).encode() + b'"]'
    ),
    "time past year 9999": _b64(struct.pack(">Bq16s", 1, 2**63 - 1, _ID)),
    "time before year 1": _b64(struct.pack(">Bq16s", 1, -(2**63), _ID)),
    "unknown version": _b64(struct.pack(">Bq16s", 2, 0, _ID)),
    "stray characters": _b64(struct.pack(">Bq16s", 1, 0, _ID))[:-1] + "!",
    "padding bits set": _b64(struct.pack(">Bq16s", 1, 0, _ID))[:-1] + "B",
    "non-ascii": "\u00e9" * 34,
}


@pytest.mark.parametrize("token", EDGE_PAGE_TOKENS.values(), ids=EDGE_PAGE_TOKENS.keys())
def test_list_with_an_edge_page_token_is_invalid(stack: Stack, token: str) -> None:
    owner = Owner.of(stack)
    try:
        assert _code_and_reason(lambda: owner.list_page(2, token)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "PAGE_TOKEN_INVALID",
        )
    finally:
        owner.close()


@pytest.mark.parametrize("page_size", [2**31 - 1, -(2**31)])
def test_list_with_an_extreme_page_size_is_answered(stack: Stack, page_size: int) -> None:
    owner = Owner.of(stack)
    try:
        if page_size < 0:
            assert _code_and_reason(lambda: owner.list_page(page_size)) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "PAGE_SIZE_INVALID",
            )
        else:
            assert owner.list_page(page_size).next_page_token == ""
    finally:
        owner.close()


def _claims_id(claims: dict[str, object]) -> str:
    return ",".join(f"{name}={str(value)[:12]}" for name, value in claims.items())


@pytest.mark.parametrize("claims", ABSURD_TIME_CLAIMS, ids=_claims_id)
def test_a_well_signed_token_with_absurd_times_is_unauthenticated(
    stack: Stack, claims: dict[str, object]
) -> None:
    user = stack.new_user()
    token = resigned(user.access_token, signing_key_pem(stack), **claims)
    stub = auth_pb2_grpc.AuthServiceStub(stack.user_channel(user))
    assert _code_and_reason(
        lambda: stub.GetCurrentUser(
            auth_pb2.GetCurrentUserRequest(),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=TIMEOUT,
        )
    ) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
    # The real token of the same login still works.
    assert stub.GetCurrentUser(
        auth_pb2.GetCurrentUserRequest(), metadata=user.bearer, timeout=TIMEOUT
    ).user.id
