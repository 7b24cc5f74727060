"""Two frontend replicas on one PostgreSQL count rate limits together, as one frontend would."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import grpc
import pytest
from licensing.v1 import auth_pb2, auth_pb2_grpc, trust_pb2, trust_pb2_grpc

from tests.support import (
    PASSWORD,
    Stack,
    error_info,
    make_csr,
    new_key,
    second_frontend,
    start_stack,
)

FAILURES_PER_MINUTE = 3


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Stack]]:
    """A stack (backend + frontend) and a second frontend beside it: same database,
    same backend, same data directory (certificates, signing key), other ports."""
    started = contextlib.contextmanager(start_stack)(
        "postgresql",
        tmp_path_factory.mktemp("replicas"),
        os.environ.get("LICENSING_TEST_POSTGRES_URL"),
        LICENSING_RATE_LIMIT_PERCENT="100",
        LICENSING_LOGIN_FAILURES_PER_MINUTE=str(FAILURES_PER_MINUTE),
    )
    with started as first, second_frontend(first) as second:
        yield first, second


def _login(stack: Stack, username: str, password: str) -> grpc.RpcError | None:
    request = auth_pb2.LoginRequest(
        username=username, password=password, csr_pem=make_csr(new_key())
    )
    try:
        stack.auth().Login(request, timeout=30)
    except grpc.RpcError as exc:
        return exc
    return None


def test_failed_logins_spread_over_both_replicas_throttle_after_the_same_count(
    replicas: tuple[Stack, Stack],
) -> None:
    first, second = replicas
    victim = first.sign_up()

    for attempt in range(FAILURES_PER_MINUTE):
        wrong = _login((first, second)[attempt % 2], victim, "not the password")
        assert wrong is not None
        assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED

    # Neither replica saw three failures by itself; together they did.
    for replica in (first, second):
        throttled = _login(replica, victim, PASSWORD)
        assert throttled is not None
        assert throttled.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info = error_info(throttled)
        assert info is not None
        assert info.reason == "LOGIN_THROTTLED"
        assert 0 < int(info.metadata["retry_after_ms"]) <= 20_000

    # Another name is not affected, on either replica.
    bystander = second.sign_up()
    assert _login(first, bystander, PASSWORD) is None


def test_a_per_address_rate_limit_is_counted_across_both_replicas(
    replicas: tuple[Stack, Stack],
) -> None:
    """GetTrustBundle: 20/s, burst 100 per address. Alternating replicas as fast as one
    client can, the address gets the burst (plus what refills meanwhile) once, not twice."""
    stubs = [trust_pb2_grpc.TrustServiceStub(replica.enroll_channel()) for replica in replicas]
    granted = 0
    refusal: grpc.RpcError | None = None
    started = time.monotonic()
    for call in range(400):
        try:
            stubs[call % 2].GetTrustBundle(trust_pb2.GetTrustBundleRequest(), timeout=10)
        except grpc.RpcError as exc:
            refusal = exc
            break
        granted += 1
    refilled = (time.monotonic() - started) * 20

    assert refusal is not None, "400 calls were never refused"
    assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(refusal)
    assert info is not None
    assert info.reason == "RATE_LIMITED"
    assert info.metadata["method"] == "/licensing.v1.TrustService/GetTrustBundle"
    assert 0 < int(info.metadata["retry_after_ms"]) <= 50
    # Shared: the burst once, and what refilled meanwhile. Per replica it would be 200 and more.
    assert 100 <= granted <= 100 + refilled + 1, (granted, refilled)
    assert granted < 200


def test_a_logout_through_one_replica_is_refused_by_the_other_at_once(
    replicas: tuple[Stack, Stack],
) -> None:
    """The second replica has just checked the session (and may trust that answer for 30 s
    while it hears notifications): the logout's notification must reach it first."""
    first, second = replicas
    alice = first.new_user()
    on_second = auth_pb2_grpc.AuthServiceStub(second.user_channel(alice))
    on_first = auth_pb2_grpc.AuthServiceStub(first.user_channel(alice))
    on_second.GetCurrentUser(auth_pb2.GetCurrentUserRequest(), metadata=alice.bearer, timeout=10)

    on_first.Logout(auth_pb2.LogoutRequest(), metadata=alice.bearer, timeout=10)
    # A notification takes a round trip from PostgreSQL: allow it a few milliseconds, far
    # less than any re-check interval (2 s without notifications, 30 s with them).
    deadline = time.monotonic() + 0.5
    while True:
        try:
            on_second.GetCurrentUser(
                auth_pb2.GetCurrentUserRequest(), metadata=alice.bearer, timeout=10
            )
        except grpc.RpcError as exc:
            refusal = exc
            break
        assert time.monotonic() < deadline, "the other replica still accepts the session"
        time.sleep(0.005)
    assert refusal.code() == grpc.StatusCode.UNAUTHENTICATED
    info = error_info(refusal)
    assert info is not None
    assert info.reason == "SESSION_REVOKED"
