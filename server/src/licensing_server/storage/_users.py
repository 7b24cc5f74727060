"""Users, sessions and refresh tokens."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from licensing_common.errors import AlreadyExists, Unauthenticated
from licensing_server.storage._database import Database
from licensing_server.storage._models import RefreshToken, Session, User
from licensing_server.storage._notifications import SESSIONS_REVOKED, notify


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


_USER_BY_NAME = select(User.id, User.username, User.password_hash, User.created_at).where(
    User.username == bindparam("username")
)


def _user(row: User) -> UserRecord:
    return UserRecord(row.id, row.username, row.password_hash, row.created_at)


class UserStore:
    """What the auth domain needs from the database, and nothing of SQL outside it."""

    def __init__(self, database: Database):
        self._db = database

    async def create_user(self, username: str, password_hash: str, now: dt.datetime) -> UserRecord:
        row = User(
            id=str(uuid.uuid4()), username=username, password_hash=password_hash, created_at=now
        )
        try:
            async with self._db.session() as session:
                session.add(row)
        except IntegrityError as exc:
            raise AlreadyExists(
                "USERNAME_TAKEN", "that username is taken", {"username": username}
            ) from exc
        return _user(row)

    async def find_user_by_name(self, username: str) -> UserRecord | None:
        def find(connection: Connection) -> UserRecord | None:
            row = connection.execute(_USER_BY_NAME, {"username": username}).first()
            return UserRecord(*row) if row else None

        # Every login asks this: one transaction in one hop (``Database.run``).
        return await self._db.run(find, writes=False)

    async def get_user(self, user_id: str) -> UserRecord | None:
        async with self._db.read() as session:
            row = await session.get(User, user_id)
            return _user(row) if row else None

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
        async with self._db.session() as session:
            token, family, user = await _live_token(session, presented_hash, now)
            reused = token.used_at is not None
            record = _session_record(family, user)
        if reused:
            await self.revoke_session(record.id, now, "refresh_token_reused")
            raise _reused()
        return record

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
        reused = False
        async with self._db.session() as session:
            token, family, user = await _live_token(session, presented_hash, now)
            spent = await session.execute(
                update(RefreshToken)
                .where(RefreshToken.id == token.id, RefreshToken.used_at.is_(None))
                .values(used_at=now)
            )
            if spent.rowcount != 1:  # type: ignore[attr-defined]
                reused = True
                await session.execute(
                    update(Session)
                    .where(Session.id == family.id)
                    .values(revoked_at=now, revoked_reason="refresh_token_reused")
                )
                await notify(session, SESSIONS_REVOKED, family.id)
            else:
                if new_client_certificate_sha256 is not None:
                    family.client_certificate_sha256 = new_client_certificate_sha256
                session.add(
                    RefreshToken(
                        id=str(uuid.uuid4()),
                        session_id=family.id,
                        token_hash=new_hash,
                        created_at=now,
                        expires_at=family.expires_at,
                    )
                )
            record = _session_record(family, user)
        if reused:
            raise _reused()
        return record

    async def revoke_session(self, session_id: str, now: dt.datetime, reason: str) -> None:
        async with self._db.session() as session:
            await session.execute(
                update(Session)
                .where(Session.id == session_id, Session.revoked_at.is_(None))
                .values(revoked_at=now, revoked_reason=reason)
            )
            await notify(session, SESSIONS_REVOKED, session_id)

    async def prune_expired_sessions(self, now: dt.datetime, limit: int = 1000) -> int:
        """Delete up to ``limit`` sessions that expired before ``now``, with their refresh
        tokens: every login adds a session and every refresh a token, so without this the
        tables would grow with every login ever made. An expired session's tokens are
        refused whether or not its rows remain. Returns how many sessions went."""
        async with self._db.session() as session:
            expired = list(
                await session.scalars(
                    select(Session.id).where(Session.expires_at < now).limit(limit)
                )
            )
            if expired:
                await session.execute(
                    delete(RefreshToken).where(RefreshToken.session_id.in_(expired))
                )
                await session.execute(delete(Session).where(Session.id.in_(expired)))
            return len(expired)

    async def session_is_active(self, session_id: str, now: dt.datetime) -> bool:
        async with self._db.read() as session:
            row = await session.get(Session, session_id)
            return row is not None and row.revoked_at is None and row.expires_at > now


async def _live_token(
    session: AsyncSession, presented_hash: bytes, now: dt.datetime
) -> tuple[RefreshToken, Session, User]:
    """The presented refresh token with its session and user, if that session still lives."""
    token = await session.scalar(
        select(RefreshToken).where(RefreshToken.token_hash == presented_hash)
    )
    family = await session.get(Session, token.session_id) if token else None
    user = await session.get(User, family.user_id) if family else None
    if token is None or family is None or user is None:
        raise Unauthenticated("REFRESH_TOKEN_INVALID", "the refresh token is not valid")
    if family.revoked_at is not None:
        raise Unauthenticated("SESSION_REVOKED", "this session was revoked; log in again")
    if token.expires_at <= now or family.expires_at <= now:
        raise Unauthenticated("REFRESH_TOKEN_EXPIRED", "the refresh token expired")
    return token, family, user


def _session_record(family: Session, user: User) -> SessionRecord:
    return SessionRecord(
        family.id, user.id, user.username, family.client_certificate_sha256, family.expires_at
    )


def _reused() -> Unauthenticated:
    return Unauthenticated(
        "REFRESH_TOKEN_REUSED",
        "this refresh token was already used; its session is revoked, log in again",
    )
