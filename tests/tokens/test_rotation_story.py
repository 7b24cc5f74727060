"""Rotating the signing key on a running server: no token anyone holds stops working.

A real stack (supervisor, backend, frontend, PostgreSQL) and real enclaves of the local
runtime; the rotation is ``licensing-admin token-keys rotate`` on the data directory,
picked up on SIGHUP (forwarded by the supervisor) or by the frontend's poll.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from enclave.v1 import workload_pb2
from licensing.v1 import auth_pb2, auth_pb2_grpc, trust_pb2, trust_pb2_grpc

from licensing_server.tokens import SINGLE_KEY_FILE, SigningKey
from tests.enclaves.helpers import Owner
from tests.support import LoggedIn, Stack, error_reason, free_port, start_stack, wait_for_port

TIMEOUT = 30.0


@pytest.fixture
def fresh_stack(tmp_path: Path) -> Iterator[Stack]:
    """A stack of its own (rotations and restarts must not touch the shared one) that
    polls its key files once an hour: only SIGHUP makes it see a rotation in time."""
    yield from start_stack(
        "postgresql",
        tmp_path,
        os.environ.get("LICENSING_TEST_POSTGRES_URL"),
        LICENSING_TOKEN_KEYS_RELOAD_SECONDS="3600",
    )


def _admin(stack: Stack, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "licensing_server.admin", "token-keys", *args],
        env=stack.env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _published_kids(stack: Stack) -> list[str]:
    stub: Any = trust_pb2_grpc.TrustServiceStub(stack.enroll_channel())
    bundle = stub.GetTrustBundle(trust_pb2.GetTrustBundleRequest(), timeout=TIMEOUT)
    return [k["kid"] for k in json.loads(bundle.jwks_json)["keys"]]


def _kids_of(described: dict[str, Any]) -> list[str]:
    """previous, current, next: the order the JWKS lists them."""
    roles = [*described["previous"], described["current"], described["next"]]
    return [r["kid"] for r in roles if r]


def _wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.2)


def _kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def _me(stack: Stack, user: LoggedIn, token: str) -> Any:
    stub: Any = auth_pb2_grpc.AuthServiceStub(stack.user_channel(user))
    return stub.GetCurrentUser(
        auth_pb2.GetCurrentUserRequest(),
        metadata=(("authorization", f"Bearer {token}"),),
        timeout=TIMEOUT,
    )


def _refreshed(stack: Stack, user: LoggedIn) -> str:
    """A new access token (from whatever key signs now); the user keeps the new refresh."""
    reply = stack.auth().RefreshToken(
        auth_pb2.RefreshTokenRequest(refresh_token=user.refresh_token), timeout=TIMEOUT
    )
    user.refresh_token = reply.refresh_token
    return str(reply.access_token)


def _secrets(owner: Owner, enclave: Any, token: str) -> Any:
    return owner.workload(enclave).ListSecrets(
        workload_pb2.ListSecretsRequest(),
        metadata=(("authorization", f"Bearer {token}"),),
        timeout=TIMEOUT,
    )


def _refused(call: Callable[[], object]) -> tuple[grpc.StatusCode, str | None]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), error_reason(caught.value)


def _stranger_token(genuine: str) -> str:
    """The genuine token's claims signed by a key no one published, under its own kid."""
    stranger = SigningKey(ec.generate_private_key(ec.SECP256R1()))
    claims = jwt.decode(genuine, options={"verify_signature": False})
    return jwt.encode(
        claims, stranger.private_key, algorithm="ES256", headers={"kid": stranger.kid}
    )


def test_tokens_of_either_key_verify_everywhere_across_a_rotation_and_a_restart(
    fresh_stack: Stack,
) -> None:
    stack = fresh_stack
    owner = Owner.of(stack)
    user = owner.user
    try:
        before = _admin(stack, "show")
        assert _published_kids(stack) == _kids_of(before)  # current and a pre-published next
        old_token = user.access_token
        assert _kid(old_token) == before["current"]["kid"]
        early = owner.create_attested()  # given the JWKS before the rotation

        # Rotate (the next key is seconds old: --force), then SIGHUP the supervisor.
        rotated = _admin(stack, "rotate", "--force")
        assert rotated["rotated"] is True
        assert rotated["current"]["kid"] == before["next"]["kid"]
        assert [p["kid"] for p in rotated["previous"]] == [before["current"]["kid"]]
        assert stack.proc is not None
        stack.proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: _published_kids(stack) == _kids_of(rotated))

        # The old key's token still works on the frontend and on the early enclave ...
        assert _me(stack, user, old_token).user.id == user.user_id
        assert _secrets(owner, early, old_token) is not None
        # ... and so does a token of the new current key: the enclave was given it as next.
        new_token = _refreshed(stack, user)
        assert _kid(new_token) == rotated["current"]["kid"]
        assert _me(stack, user, new_token).user.id == user.user_id
        assert _secrets(owner, early, new_token) is not None

        # A key nobody published: UNAUTHENTICATED with its own reason, everywhere.
        stranger = _stranger_token(new_token)
        expected = (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_KEY_UNKNOWN")
        assert _refused(lambda: _me(stack, user, stranger)) == expected
        assert _refused(lambda: _secrets(owner, early, stranger)) == expected

        # A second rotation is one too many for the early enclave; a later one is fine.
        later = owner.create_attested()
        again = _admin(stack, "rotate", "--force")
        os.kill(int((stack.data_dir / "run" / "frontend.pid").read_text()), signal.SIGHUP)
        _wait_for(lambda: _published_kids(stack) == _kids_of(again))
        newest = _refreshed(stack, user)
        assert _kid(newest) == again["current"]["kid"] == rotated["next"]["kid"]
        assert _secrets(owner, later, newest) is not None
        assert _refused(lambda: _secrets(owner, early, newest)) == expected
        assert _secrets(owner, early, new_token) is not None  # what it knew still works
        owner.delete_all()
    finally:
        owner.close()

    # A restart on the same data directory keeps the set: same keys, tokens still good.
    stack.stop()
    stack.start()
    assert _published_kids(stack) == _kids_of(again)
    assert _admin(stack, "show") == {k: again[k] for k in ("current", "next", "previous")}
    assert _me(stack, user, newest).user.id == user.user_id
    assert _me(stack, user, new_token).user.id == user.user_id


def test_a_single_key_data_directory_starts_unchanged_and_its_first_rotation_publishes_next(
    tmp_path: Path,
) -> None:
    """A data directory from before key sets: the same key signs; rotation adds a next key.

    The frontend notices by its poll (one second here), with no signal.
    """
    legacy = SigningKey.load_or_create(tmp_path / f"data-postgresql/frontend/{SINGLE_KEY_FILE}")
    stacks = start_stack(
        "postgresql",
        tmp_path,
        os.environ.get("LICENSING_TEST_POSTGRES_URL"),
        LICENSING_TOKEN_KEYS_RELOAD_SECONDS="1",
    )
    stack = next(stacks)
    try:
        assert _published_kids(stack) == [legacy.kid]
        user = stack.new_user()
        assert _kid(user.access_token) == legacy.kid

        rotated = _admin(stack, "rotate")  # no --force: a single key has no next to wait for
        assert rotated["rotated"] is False
        assert rotated["current"]["kid"] == legacy.kid
        _wait_for(lambda: _published_kids(stack) == [legacy.kid, rotated["next"]["kid"]])
        assert not (stack.data_dir / "frontend" / SINGLE_KEY_FILE).exists()
        assert _kid(_refreshed(stack, user)) == legacy.kid  # still the signer
        assert _me(stack, user, user.access_token).user.id == user.user_id

        # The next key was published just now: promoting it waits an enclave lifetime.
        done = subprocess.run(
            [sys.executable, "-m", "licensing_server.admin", "token-keys", "rotate"],
            env=stack.env(),
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert done.returncode != 0
        assert "not rotated" in done.stderr
        assert "PRIVATE" not in done.stdout + done.stderr
    finally:
        next(stacks, None)


@pytest.fixture
def second_replica(fresh_stack: Stack, tmp_path: Path) -> Iterator[Stack]:
    """Another frontend process on the same data directory, database and backend: a replica
    that polls once an hour, so it lags behind a rotation until it gets its SIGHUP."""
    replica = Stack(
        fresh_stack.database,
        fresh_stack.data_dir,
        fresh_stack.database_url,
        free_port(),
        free_port(),
        fresh_stack.backend_port,
        extra_env={
            **fresh_stack.extra_env,
            "LICENSING_FRONTEND_METRICS_ADDR": "off",
            "LICENSING_TOKEN_KEYS_RELOAD_SECONDS": "3600",
        },
        swtpm_port=fresh_stack.swtpm_port,
    )
    log = (tmp_path / "replica.log").open("ab")
    replica.proc = subprocess.Popen(
        [sys.executable, "-m", "licensing_server.frontend.app"],
        env=replica.env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(replica.api_port, 60, replica.proc)
        yield replica
    finally:
        replica.stop()
        log.close()


def test_a_replica_that_has_not_seen_the_rotation_yet_and_one_that_has_accept_each_other(
    fresh_stack: Stack, second_replica: Stack
) -> None:
    """Why next is published a rotation ahead and previous kept after: replicas switch at
    different moments (a Secret update reaches each pod's files on its own schedule)."""
    first, second = fresh_stack, second_replica
    user = first.new_user()
    before = _admin(first, "show")
    assert _published_kids(second) == _published_kids(first) == _kids_of(before)
    assert _me(second, user, user.access_token).user.id == user.user_id

    rotated = _admin(first, "rotate", "--force")
    assert first.proc is not None
    first.proc.send_signal(signal.SIGHUP)  # the second replica is not told
    _wait_for(lambda: _published_kids(first) == _kids_of(rotated))
    assert _published_kids(second) == _kids_of(before)

    from_first = _refreshed(first, user)  # the new current key: the lagging one knows it
    assert _kid(from_first) == rotated["current"]["kid"]
    assert _me(second, user, from_first).user.id == user.user_id
    from_second = _refreshed(second, user)  # still the old key: the first keeps it
    assert _kid(from_second) == before["current"]["kid"]
    assert _me(first, user, from_second).user.id == user.user_id

    assert second.proc is not None
    second.proc.send_signal(signal.SIGHUP)
    _wait_for(lambda: _published_kids(second) == _kids_of(rotated))
    assert _kid(_refreshed(second, user)) == rotated["current"]["kid"]
