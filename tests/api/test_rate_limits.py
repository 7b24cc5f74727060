"""Rate limits: every RPC has one, callers over it are told when to retry, others are unaffected."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from grpclib.exceptions import GRPCError
from licensing.v1 import auth_pb2, enclave_pb2, enclave_pb2_grpc

from licensing_client import api_channel, bearer
from licensing_client.cli._session import paced, retry_delay
from licensing_client.gen.licensing import v1
from licensing_common.rpc.guard import client_address
from licensing_server.api.limits import FRONTEND_RATE_LIMITS, CountedBy
from licensing_server.api.policy import FRONTEND_POLICY, Access
from tests.api.test_policy import FRONTEND_METHODS, OPS_METHODS
from tests.support import PASSWORD, LoggedIn, Stack, error_info, make_csr, new_key, start_stack


@pytest.mark.parametrize("method", sorted(FRONTEND_METHODS | OPS_METHODS))
def test_every_frontend_method_has_a_rate_limit(method: str) -> None:
    limit = FRONTEND_RATE_LIMITS[method]
    # Who is counted follows who is known: users once authenticated, addresses before.
    user_method = FRONTEND_POLICY[method] is Access.USER
    expected = CountedBy.USER if user_method else CountedBy.CLIENT_ADDRESS
    assert limit.counted_by is expected
    assert limit.rate.per_second > 0
    assert limit.rate.burst >= 1


def test_the_rate_limit_table_has_no_stale_entries() -> None:
    assert set(FRONTEND_RATE_LIMITS) - (FRONTEND_METHODS | OPS_METHODS) == set()


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.1:50412", "127.0.0.1"),
        ("ipv6:[::1]:50412", "::1"),
        ("unix:/run/licensing.sock", "unix:/run/licensing.sock"),
    ],
)
def test_the_client_address_drops_the_port(peer: str, address: str) -> None:
    assert client_address(peer) == address


# Against a server with the production limits ------------------------------------------------


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Production rate limits; failed logins limited to 3 a minute to keep the story short."""
    yield from start_stack(
        "sqlite",
        tmp_path_factory.mktemp("limited"),
        None,
        LICENSING_RATE_LIMIT_PERCENT="100",
        LICENSING_LOGIN_FAILURES_PER_MINUTE="3",
    )


def _retry_delay_ms(error: grpc.RpcError) -> int | None:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            return int(retry.retry_delay.ToMilliseconds())
    return None


def _refusal(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    return caught.value


def _login(stack: Stack, username: str, password: str) -> auth_pb2.LoginResponse:
    request = auth_pb2.LoginRequest(
        username=username, password=password, csr_pem=make_csr(new_key())
    )
    return stack.auth().Login(request, timeout=30)


def test_repeated_failed_logins_for_a_name_make_it_wait(limited: Stack) -> None:
    victim = limited.sign_up()
    bystander = limited.sign_up()

    for _ in range(3):
        wrong = _refusal(lambda: _login(limited, victim, "not the password"))
        assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED

    # Now even the right password waits: a guesser learns nothing from this answer.
    throttled = _refusal(lambda: _login(limited, victim, PASSWORD))
    assert throttled.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(throttled)
    assert info is not None
    assert info.reason == "LOGIN_THROTTLED"
    assert 0 < int(info.metadata["retry_after_ms"]) <= 20_000
    assert _retry_delay_ms(throttled) == int(info.metadata["retry_after_ms"])

    # A name that does not exist is throttled the same way, so throttling reveals nothing.
    for _ in range(3):
        _refusal(lambda: _login(limited, "nobody-here", "not the password"))
    unknown = _refusal(lambda: _login(limited, "nobody-here", "not the password"))
    info = error_info(unknown)
    assert unknown.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info is not None
    assert info.reason == "LOGIN_THROTTLED"

    # Other accounts are not affected.
    assert _login(limited, bystander, PASSWORD).user_id


def _lister(stack: Stack, user: LoggedIn) -> Callable[[], object]:
    stub = enclave_pb2_grpc.EnclaveServiceStub(stack.api_channel(user.key_pem, user.cert_pem))
    return lambda: stub.ListEnclaves(
        enclave_pb2.ListEnclavesRequest(),
        metadata=(("authorization", f"Bearer {user.access_token}"),),
        timeout=10,
    )


def _first_refusals(call: Callable[[], object], attempts: int) -> list[grpc.RpcError]:
    """Call as fast as one client can until refused (the limit refills while we call)."""
    refusals: list[grpc.RpcError] = []
    for _ in range(attempts):
        try:
            call()
        except grpc.RpcError as exc:
            refusals.append(exc)
            if len(refusals) == 3:
                break
    return refusals


def test_a_user_over_the_limit_is_told_when_to_retry_and_others_are_served(
    limited: Stack,
) -> None:
    busy, other = limited.new_user(), limited.new_user()
    list_as_busy, list_as_other = _lister(limited, busy), _lister(limited, other)

    refusals = _first_refusals(list_as_busy, 5000)
    assert refusals, "5000 calls as fast as one client can make them were never refused"
    refused = refusals[0]
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(refused)
    assert info is not None
    assert info.reason == "RATE_LIMITED"
    assert info.metadata["method"] == "/licensing.v1.EnclaveService/ListEnclaves"
    assert 0 < int(info.metadata["retry_after_ms"]) <= 1000
    # The standard google.rpc.RetryInfo says the same, for clients that back off by it.
    assert _retry_delay_ms(refused) == int(info.metadata["retry_after_ms"])

    list_as_other()  # counted per user: the other user is served at once


async def test_the_python_client_waits_out_a_short_rate_limit_and_carries_on(
    limited: Stack, tmp_path: Path
) -> None:
    user = limited.new_user()
    (tmp_path / "me.key").write_bytes(user.key_pem)
    (tmp_path / "me.pem").write_bytes(user.cert_pem)
    channel = api_channel(
        limited.api_addr,
        ca_file=limited.ca_path,
        cert_file=tmp_path / "me.pem",
        key_file=tmp_path / "me.key",
    )
    stub = v1.EnclaveServiceStub(channel)

    async def list_enclaves() -> v1.ListEnclavesResponse:
        return await stub.list_enclaves(
            v1.ListEnclavesRequest(), metadata=bearer(user.access_token)
        )

    try:
        # Drain the user's ListEnclaves bucket until the server refuses.
        for _ in range(5000):
            try:
                await list_enclaves()
            except GRPCError as exc:
                refused = exc
                break
        else:
            raise AssertionError("the rate limit never refused")
        # The generated client decodes the server's RetryInfo...
        delay = retry_delay(refused)
        assert delay is not None
        assert 0 < delay <= 1.0
        # ...and a paced call waits as told instead of failing.
        for _ in range(3):
            await paced(list_enclaves)
    finally:
        channel.close()


def test_sign_ups_from_one_address_are_limited_and_refusals_write_nothing(
    limited: Stack,
) -> None:
    auth = limited.auth()
    before = limited.row_counts()["users"]
    made = 0

    def sign_up() -> None:
        nonlocal made
        auth.SignUp(auth_pb2.SignUpRequest(username=f"burst-{made}", password=PASSWORD), timeout=30)
        made += 1

    refused = _first_refusals(sign_up, 500)
    assert refused
    assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert {getattr(error_info(e), "reason", None) for e in refused} == {"RATE_LIMITED"}
    assert limited.row_counts()["users"] == before + made
