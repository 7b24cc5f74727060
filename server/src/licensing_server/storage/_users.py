"""Users, sessions and refresh tokens."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from licensing_common.errors import AlreadyExists, Unauthenticated
from licensing_server.storage._database import Database
from licensing_server.storage._models import RefreshToken, Session, User
from licensing_server.storage._notifications import SESSIONS_REVOKED, notify_on


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: str
    username: str
    password_hash: str
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: str
    user_id: str
    username: str
    client_certificate_sha256: bytes
    expires_at: dt.datetime


_USER = select(User.id, User.username, User.password_hash, User.created_at)
_USER_BY_NAME = _USER.where(User.username == bindparam("username"))
_USER_BY_ID = _USER.where(User.id == bindparam("id"))


class UserStore:
    """What the auth domain needs from the database, and nothing of SQL outside it."""

    def __init__(self, database: Database):
        self._db = database

    async def create_user(self, username: str, password_hash: str, now: dt.datetime) -> UserRecord:
        record = UserRecord(str(uuid.uuid4()), username, password_hash, now)
        statement = insert(User).values(dataclasses.asdict(record))
        try:
            await self._db.run(lambda connection: connection.execute(statement))
        except IntegrityError as exc:
            raise AlreadyExists(
                "USERNAME_TAKEN", "that username is taken", {"username": username}
            ) from exc
        return record

    async def find_user_by_name(self, username: str) -> UserRecord | None:
        def find(connection: Connection) -> UserRecord | None:
            row = connection.execute(_USER_BY_NAME, {"username": username}).first()
            return UserRecord(*row) if row else None

        # Every login asks this: one transaction in one hop (``Database.run``).
        return await self._db.run(find, writes=False)

    async def get_user(self, user_id: str) -> UserRecord | None:
        def find(connection: Connection) -> UserRecord | None:
            row = connection.execute(_USER_BY_ID, {"id": user_id}).first()
            return UserRecord(*row) if row else None

        return await self._db.run(find, writes=False)

    async def create_session(
        self,
        user: UserRecord,
        client_certificate_sha256: bytes,
        refresh_token_hash: bytes,
        now: dt.datetime,
        expires_at: dt.datetime,
    ) -> SessionRecord:
        session_id = str(uuid.uuid4())

        def create(connection: Connection) -> None:
            connection.execute(
                insert(Session).values(
                    id=session_id,
                    user_id=user.id,
                    client_certificate_sha256=client_certificate_sha256,
                    created_at=now,
                    expires_at=expires_at,
                )
            )
            connection.execute(
                insert(RefreshToken).values(
                    id=str(uuid.uuid4()),
                    session_id=session_id,
                    token_hash=refresh_token_hash,
                    created_at=now,
                    expires_at=expires_at,
                )
            )

        # Every login writes this: one transaction in one hop (``Database.run``).
        await self._db.run(create)
        return SessionRecord(
            session_id, user.id, user.username, client_certificate_sha256, expires_at
        )

    async def peek_refresh_token(self, presented_hash: bytes, now: dt.datetime) -> SessionRecord:
        """The live session of an unspent refresh token, without spending it."""
        live = await self._db.run(lambda c: _live_token(c, presented_hash, now), writes=False)
        if live.used:
            await self.revoke_session(live.record.id, now, "refresh_token_reused")
            raise _reused()
        return live.record

    async def rotate_refresh_token(
        self,
        presented_hash: bytes,
        new_hash: bytes,
        now: dt.datetime,
        new_client_certificate_sha256: bytes | None,
    ) -> SessionRecord:
        """Spend a refresh token and mint its successor in the same session.

        A token presented a second time (or raced) revokes the whole session:
        one of the two presenters is a thief, and we cannot tell which.
        """

        def rotate(connection: Connection) -> tuple[SessionRecord, bool]:
            live = _live_token(connection, presented_hash, now)
            record = live.record
            spent = connection.execute(
                update(RefreshToken)
                .where(RefreshToken.id == live.token_id, RefreshToken.used_at.is_(None))
                .values(used_at=now)
            )
            if spent.rowcount != 1:
                connection.execute(
                    update(Session)
                    .where(Session.id == record.id)
                    .values(revoked_at=now, revoked_reason="refresh_token_reused")
                )
                notify_on(connection, SESSIONS_REVOKED, record.id)
                return record, True
            if new_client_certificate_sha256 is not None:
                connection.execute(
                    update(Session)
                    .where(Session.id == record.id)
                    .values(client_certificate_sha256=new_client_certificate_sha256)
                )
                record = dataclasses.replace(
                    record, client_certificate_sha256=new_client_certificate_sha256
                )
            connection.execute(
                insert(RefreshToken).values(
                    id=str(uuid.uuid4()),
                    session_id=record.id,
                    token_hash=new_hash,
                    created_at=now,
                    expires_at=record.expires_at,
                )
            )
            return record, False

        # Every refresh writes this: one transaction in one hop (``Database.run``).
        record, reused = await self._db.run(rotate)
        if reused:
            raise _reused()
        return record

    async def revoke_session(self, session_id: str, now: dt.datetime, reason: str) -> None:
        def revoke(connection: Connection) -> None:
            connection.execute(
                update(Session)
                .where(Session.id == session_id, Session.revoked_at.is_(None))
                .values(revoked_at=now, revoked_reason=reason)
            )
            notify_on(connection, SESSIONS_REVOKED, session_id)

        await self._db.run(revoke)

    async def prune_expired_sessions(self, now: dt.datetime, limit: int = 1000) -> int:
        """Delete up to ``limit`` sessions that expired before ``now``, with their refresh
        tokens: every login adds a session and every refresh a token, so without this the
        tables would grow with every login ever made. An expired session's tokens are
        refused whether or not its rows remain. Returns how many sessions went."""

        def prune(connection: Connection) -> int:
            expired = list(
                connection.execute(
                    select(Session.id).where(Session.expires_at < now).limit(limit)
                ).scalars()
            )
            if expired:
                connection.execute(delete(RefreshToken).where(RefreshToken.session_id.in_(expired)))
                connection.execute(delete(Session).where(Session.id.in_(expired)))
            return len(expired)

        return await self._db.run(prune)

    async def session_is_active(self, session_id: str, now: dt.datetime) -> bool:
        def active(connection: Connection) -> bool:
            row = connection.execute(_SESSION_STATE, {"id": session_id}).first()
            return row is not None and row.revoked_at is None and row.expires_at > now

        return await self._db.run(active, writes=False)


@dataclass(frozen=True, slots=True)
class _LiveToken:
    token_id: str
    used: bool
    record: SessionRecord


_SESSION_STATE = select(Session.revoked_at, Session.expires_at).where(Session.id == bindparam("id"))
#: A refresh token with its session and user: no row if any of the three is gone.
_TOKEN_SESSION_USER = (
    select(
        RefreshToken.id,
        RefreshToken.used_at,
        RefreshToken.expires_at,
        Session.id.label("session_id"),
        Session.client_certificate_sha256,
        Session.expires_at.label("session_expires_at"),
        Session.revoked_at,
        User.id.label("user_id"),
        User.username,
    )
    .join(Session, Session.id == RefreshToken.session_id)
    .join(User, User.id == Session.user_id)
    .where(RefreshToken.token_hash == bindparam("token_hash"))
)


def _live_token(connection: Connection, presented_hash: bytes, now: dt.datetime) -> _LiveToken:
    """The presented refresh token with its session and user, if that session still lives."""
    row = connection.execute(_TOKEN_SESSION_USER, {"token_hash": presented_hash}).first()
    if row is None:
        raise Unauthenticated("REFRESH_TOKEN_INVALID", "the refresh token is not valid")
    if row.revoked_at is not None:
        raise Unauthenticated("SESSION_REVOKED", "this session was revoked; log in again")
    if row.expires_at <= now or row.session_expires_at <= now:
        raise Unauthenticated("REFRESH_TOKEN_EXPIRED", "the refresh token expired")
    record = SessionRecord(
        row.session_id,
        row.user_id,
        row.username,
        row.client_certificate_sha256,
        row.session_expires_at,
    )
    return _LiveToken(row.id, row.used_at is not None, record)


def _reused() -> Unauthenticated:
    return Unauthenticated(
        "REFRESH_TOKEN_REUSED",
        "this refresh token was already used; its session is revoked, log in again",
    )
