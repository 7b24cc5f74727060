"""Login must not tell, by its timing, whether a username exists."""

from __future__ import annotations

import statistics
import time

import grpc
import pytest
from licensing.v1 import auth_pb2

from tests.support import Stack, make_csr, new_key


def test_unknown_user_and_wrong_password_take_comparable_time(stack: Stack) -> None:
    # Both paths must run one bcrypt check. Without the dummy check the unknown-user
    # path would skip bcrypt entirely (a fraction of the time), which this ratio catches;
    # the bounds are wide because the machine is shared.
    known = stack.sign_up()
    auth = stack.auth()
    csr = make_csr(new_key())

    def attempt(username: str) -> float:
        start = time.perf_counter()
        with pytest.raises(grpc.RpcError) as refused:
            auth.Login(
                auth_pb2.LoginRequest(username=username, password="wrong password!", csr_pem=csr),
                timeout=30,
            )
        elapsed = time.perf_counter() - start
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        return elapsed

    attempt(known)  # warm the connection
    wrong, unknown = [], []
    for _ in range(12):
        wrong.append(attempt(known))
        unknown.append(attempt("nobody-by-this-name"))
    ratio = statistics.median(unknown) / statistics.median(wrong)
    assert 0.5 < ratio < 2.0, f"unknown/known login time ratio {ratio:.2f}"
