"""UserStore on a real database: accounts, sessions and the refresh-token family."""

from __future__ import annotations

import datetime as dt
import hashlib
import os

import pytest
import sqlalchemy as sa

from licensing_common.errors import AlreadyExists, Unauthenticated
from licensing_server.storage import Database, SessionRecord, UserRecord, UserStore
from licensing_server.storage._models import RefreshToken
from tests.storage.conftest import NOW, new_user

_DAY = dt.timedelta(days=1)
_CERT = hashlib.sha256(b"client certificate").digest()


def _hash() -> bytes:
    return hashlib.sha256(os.urandom(16)).digest()


async def _session(store: UserStore, user: UserRecord, token_hash: bytes) -> SessionRecord:
    return await store.create_session(user, _CERT, token_hash, NOW, NOW + _DAY)


async def test_a_user_is_found_by_name_and_by_id_with_utc_times(database: Database) -> None:
    store = UserStore(database)
    user = await new_user(database)
    by_name = await store.find_user_by_name(user.username)
    by_id = await store.get_user(user.id)
    assert by_name == by_id == user
    assert by_name is not None
    assert by_name.created_at == NOW
    assert by_name.created_at.tzinfo is not None
    assert await store.find_user_by_name("nobody-has-this-name") is None
    assert await store.get_user("00000000-0000-0000-0000-000000000000") is None


async def test_a_taken_username_is_already_exists(database: Database) -> None:
    store = UserStore(database)
    user = await new_user(database)
    with pytest.raises(AlreadyExists) as caught:
        await store.create_user(user.username, "another-hash", NOW)
    assert caught.value.reason == "USERNAME_TAKEN"
    assert caught.value.metadata == {"username": user.username}


async def test_a_session_is_active_until_it_expires_or_is_revoked(database: Database) -> None:
    store = UserStore(database)
    user = await new_user(database)
    session = await _session(store, user, _hash())
    assert (session.user_id, session.username, session.client_certificate_sha256) == (
        user.id,
        user.username,
        _CERT,
    )
    assert await store.session_is_active(session.id, NOW)
    assert not await store.session_is_active(session.id, NOW + _DAY)
    await store.revoke_session(session.id, NOW, "logout")
    assert not await store.session_is_active(session.id, NOW)
    assert not await store.session_is_active("00000000-0000-0000-0000-000000000000", NOW)


async def test_peek_finds_the_session_without_spending_the_token(database: Database) -> None:
    store = UserStore(database)
    token = _hash()
    session = await _session(store, await new_user(database), token)
    assert await store.peek_refresh_token(token, NOW) == session
    assert await store.peek_refresh_token(token, NOW) == session
    rotated = await store.rotate_refresh_token(token, _hash(), NOW, None)
    assert rotated == session


async def test_rotation_mints_a_successor_and_may_rebind_the_certificate(
    database: Database,
) -> None:
    store = UserStore(database)
    first, second, third = _hash(), _hash(), _hash()
    session = await _session(store, await new_user(database), first)
    await store.rotate_refresh_token(first, second, NOW, None)
    new_cert = hashlib.sha256(b"renewed certificate").digest()
    rebound = await store.rotate_refresh_token(second, third, NOW, new_cert)
    assert (rebound.id, rebound.client_certificate_sha256) == (session.id, new_cert)
    assert (await store.peek_refresh_token(third, NOW)).client_certificate_sha256 == new_cert


async def test_a_spent_token_presented_again_revokes_the_whole_session(
    database: Database,
) -> None:
    store = UserStore(database)
    first, second = _hash(), _hash()
    session = await _session(store, await new_user(database), first)
    await store.rotate_refresh_token(first, second, NOW, None)
    with pytest.raises(Unauthenticated) as caught:
        await store.rotate_refresh_token(first, _hash(), NOW, None)
    assert caught.value.reason == "REFRESH_TOKEN_REUSED"
    assert not await store.session_is_active(session.id, NOW)
    # The successor, held by whoever rotated first, dies with its session.
    with pytest.raises(Unauthenticated) as caught:
        await store.rotate_refresh_token(second, _hash(), NOW, None)
    assert caught.value.reason == "SESSION_REVOKED"


async def test_peeking_a_spent_token_revokes_the_session(database: Database) -> None:
    store = UserStore(database)
    first, second = _hash(), _hash()
    session = await _session(store, await new_user(database), first)
    await store.rotate_refresh_token(first, second, NOW, None)
    with pytest.raises(Unauthenticated) as caught:
        await store.peek_refresh_token(first, NOW)
    assert caught.value.reason == "REFRESH_TOKEN_REUSED"
    assert not await store.session_is_active(session.id, NOW)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("unknown", "REFRESH_TOKEN_INVALID"),
        ("expired", "REFRESH_TOKEN_EXPIRED"),
        ("revoked", "SESSION_REVOKED"),
    ],
)
async def test_a_refresh_token_that_cannot_be_used_names_why(
    database: Database, case: str, reason: str
) -> None:
    store = UserStore(database)
    token = _hash()
    session = await _session(store, await new_user(database), token)
    when = NOW
    if case == "unknown":
        token = _hash()
    elif case == "expired":
        when = NOW + _DAY
    else:
        await store.revoke_session(session.id, NOW, "logout")
    with pytest.raises(Unauthenticated) as caught:
        await store.peek_refresh_token(token, when)
    assert caught.value.reason == reason
    with pytest.raises(Unauthenticated) as caught:
        await store.rotate_refresh_token(token, _hash(), when, None)
    assert caught.value.reason == reason


async def test_expired_sessions_go_with_their_refresh_tokens_and_live_ones_stay(
    database: Database,
) -> None:
    """Every login adds a session and every refresh a token: pruning keeps them to the live."""
    store = UserStore(database)
    user = await new_user(database)
    long_ago = NOW - 10 * _DAY
    expired = []
    for _ in range(3):
        first, second = _hash(), _hash()
        session = await store.create_session(user, _CERT, first, long_ago - _DAY, long_ago)
        await store.rotate_refresh_token(first, second, long_ago - _DAY, None)
        expired.append((session, second))
    live_token = _hash()
    live = await _session(store, user, live_token)

    assert await store.prune_expired_sessions(NOW, limit=2) == 2  # a pass takes a batch
    assert await store.prune_expired_sessions(NOW, limit=2) == 1
    assert await store.prune_expired_sessions(NOW) == 0

    ids = [session.id for session, _ in expired]
    async with database.read() as db:
        left = await db.scalar(
            sa.select(sa.func.count())
            .select_from(RefreshToken)
            .where(RefreshToken.session_id.in_(ids))
        )
    assert left == 0  # the rows are gone, not only refused
    for session, token in expired:
        assert not await store.session_is_active(session.id, long_ago - _DAY)
        with pytest.raises(Unauthenticated):
            await store.peek_refresh_token(token, long_ago - _DAY)
    assert await store.session_is_active(live.id, NOW)
    assert (await store.peek_refresh_token(live_token, NOW)).id == live.id
