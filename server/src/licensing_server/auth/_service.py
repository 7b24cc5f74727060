"""The auth domain: every rule about accounts and sessions, none about gRPC."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from licensing_common.errors import (
    InvalidArgument,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from licensing_common.throttle import BucketStore, Rate, TokenBuckets
from licensing_server.auth._passwords import PasswordHasher, check_password_policy
from licensing_server.auth._usernames import normalise_username
from licensing_server.pki import parse_csr
from licensing_server.storage import (
    SESSIONS_REVOKED,
    Notifications,
    SessionRecord,
    UserRecord,
    UserStore,
)
from licensing_server.tokens import (
    MAX_REFRESH_TOKEN_LENGTH,
    AccessClaims,
    AccessTokenSigner,
    AccessTokenVerifier,
    hash_refresh_token,
    new_refresh_token,
)

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SignedUserCertificate:
    pem: str
    sha256: bytes
    expires_at: dt.datetime
    ca_certificates_pem: list[str]


class UserCertificateSigner(Protocol):
    """Gets a user's CSR signed by the licensing CA (the frontend never holds the CA key).

    Raises ``InvalidArgument`` for a CSR the CA refuses and ``Unavailable`` when
    the CA cannot be reached.
    """

    async def sign_user_certificate(
        self, *, user_id: str, username: str, csr_pem: str, lifetime: dt.timedelta
    ) -> SignedUserCertificate: ...


@dataclass(frozen=True, slots=True)
class LoginResult:
    user_id: str
    access_token: str
    access_token_expires_at: dt.datetime
    refresh_token: str
    refresh_token_expires_at: dt.datetime
    certificate: SignedUserCertificate | None


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _failure_key(name: str) -> str:
    """The failed-login bucket of a (normalised) username, apart from the guard's keys."""
    return f"login-failures {name}"


_BAD_CREDENTIALS = ("INVALID_CREDENTIALS", "username or password is incorrect")


@dataclass(frozen=True, slots=True)
class UserProfile:
    """An account as its owner sees it: no password hash, so it may be kept in memory."""

    id: str
    username: str
    created_at: dt.datetime


class ProfileCache:
    """Recently seen profiles, so GetCurrentUser needs no database round trip.

    Sound because an account never changes once created (there is no rename or
    delete); whatever adds either must call ``forget``.
    """

    def __init__(self, size: int = 65_536):
        self._size = size
        self._items: OrderedDict[str, UserProfile] = OrderedDict()

    def get(self, user_id: str) -> UserProfile | None:
        found = self._items.get(user_id)
        if found is not None:
            self._items.move_to_end(user_id)
        return found

    def put(self, profile: UserProfile) -> None:
        self._items[profile.id] = profile
        self._items.move_to_end(profile.id)
        if len(self._items) > self._size:
            self._items.popitem(last=False)

    def forget(self, user_id: str) -> None:
        self._items.pop(user_id, None)


class AuthService:
    # How long a session's "not revoked" answer may be reused: other replicas' logouts
    # reach this one by PostgreSQL notification at once, and by this re-check when the
    # notifications are not heard (SQLite has one frontend; a lost listening connection).
    SESSION_CHECK_TTL = 2.0
    NOTIFIED_SESSION_CHECK_TTL = 30.0
    #: Revoked session ids kept to refuse at once (older ones fall back to the database).
    REVOKED_KEPT = 100_000

    def __init__(
        self,
        *,
        users: UserStore,
        passwords: PasswordHasher,
        signer: AccessTokenSigner,
        verifier: AccessTokenVerifier,
        certificates: UserCertificateSigner,
        refresh_token_ttl: dt.timedelta,
        client_certificate_ttl: dt.timedelta,
        login_failures_per_minute: int = 10,
        failures: BucketStore | None = None,
        clock: Callable[[], dt.datetime] = _utcnow,
    ):
        self._users = users
        self._passwords = passwords
        self._signer = signer
        self._verifier = verifier
        self._certificates = certificates
        self._refresh_ttl = refresh_token_ttl
        self._cert_ttl = client_certificate_ttl
        self._clock = clock
        self._active_sessions: dict[str, float] = {}
        self._checks: dict[str, asyncio.Task[bool]] = {}
        self._revoked: OrderedDict[str, None] = OrderedDict()
        self._notifications: Notifications | None = None
        self._profiles = ProfileCache()
        # Shared through the database when replicas share one (storage.rate_buckets).
        self._failures: BucketStore = failures if failures is not None else TokenBuckets()
        per_minute = login_failures_per_minute
        self._failure_rate = Rate(per_minute / 60, per_minute) if per_minute > 0 else None

    async def sign_up(self, username: str, password: str) -> UserRecord:
        name = normalise_username(username)
        secret = check_password_policy(password)
        password_hash = await self._passwords.hash(secret)
        user = await self._users.create_user(name, password_hash, self._clock())
        _log.info("user signed up: %s", user.id)
        return user

    async def login(self, username: str, password: str, csr_pem: str) -> LoginResult:
        # Shape checks first: they are cheap and reveal nothing about accounts.
        try:
            name = normalise_username(username)
        except InvalidArgument:
            name = None
        secret = check_password_policy(password, min_bytes=1)
        parse_csr(csr_pem)
        # Online guessing: a name with too many recent failures waits, whether it exists
        # or not (so this tells nothing either), before any bcrypt work is spent on it.
        # (A name that is not valid cannot log in; it is not worth a bucket.)
        if name:
            await self._check_login_throttle(name)
        user = await self._users.find_user_by_name(name) if name else None
        # One bcrypt check on every path, so timing does not tell whether the user exists.
        ok = await self._passwords.verify(secret, user.password_hash if user else None)
        if not ok or user is None:
            if name and self._failure_rate is not None:
                await self._failures.take(_failure_key(name), self._failure_rate)
            raise Unauthenticated(*_BAD_CREDENTIALS)
        cert = await self._certificates.sign_user_certificate(
            user_id=user.id, username=user.username, csr_pem=csr_pem, lifetime=self._cert_ttl
        )
        now = self._clock()
        refresh_token, refresh_hash = new_refresh_token()
        session = await self._users.create_session(
            user, cert.sha256, refresh_hash, now, now + self._refresh_ttl
        )
        access, access_exp = self._signer.sign(
            user_id=user.id,
            username=user.username,
            session_id=session.id,
            certificate_sha256=cert.sha256,
        )
        self._profiles.put(UserProfile(user.id, user.username, user.created_at))
        _log.info("user logged in: %s session %s", user.id, session.id)
        return LoginResult(user.id, access, access_exp, refresh_token, session.expires_at, cert)

    async def _check_login_throttle(self, name: str) -> None:
        if self._failure_rate is None:
            return
        wait = await self._failures.wait_time(_failure_key(name), self._failure_rate)
        if wait > 0:
            retry_ms = math.ceil(wait * 1000)
            raise ResourceExhausted(
                "LOGIN_THROTTLED",
                f"too many failed logins for this username; retry in {retry_ms} ms",
                {"retry_after_ms": str(retry_ms)},
            )

    async def refresh(self, refresh_token: str, csr_pem: str) -> LoginResult:
        if not refresh_token:
            raise InvalidArgument("REFRESH_TOKEN_REQUIRED", "refresh_token is required")
        if len(refresh_token) > MAX_REFRESH_TOKEN_LENGTH:
            raise Unauthenticated("REFRESH_TOKEN_INVALID", "the refresh token is not valid")
        if csr_pem:
            parse_csr(csr_pem)
        new_token, new_hash = new_refresh_token()
        now = self._clock()
        presented = hash_refresh_token(refresh_token)
        cert: SignedUserCertificate | None = None
        if csr_pem:
            # Check the token before signing anything for its bearer.
            owner = await self._users.peek_refresh_token(presented, now)
            cert = await self._certificates.sign_user_certificate(
                user_id=owner.user_id,
                username=owner.username,
                csr_pem=csr_pem,
                lifetime=self._cert_ttl,
            )
        session = await self._users.rotate_refresh_token(
            presented, new_hash, now, cert.sha256 if cert else None
        )
        access, access_exp = self._signer.sign(
            user_id=session.user_id,
            username=session.username,
            session_id=session.id,
            certificate_sha256=session.client_certificate_sha256,
        )
        return LoginResult(session.user_id, access, access_exp, new_token, session.expires_at, cert)

    def listen(self, notifications: Notifications) -> None:
        """Hear every replica's revocations the moment they commit."""
        self._notifications = notifications
        notifications.subscribe(SESSIONS_REVOKED, self._session_revoked)
        # Revocations sent while the connection was down are lost: check every session again.
        notifications.on_reconnect(self._active_sessions.clear)

    def _session_revoked(self, session_id: str) -> None:
        self._active_sessions.pop(session_id, None)
        self._revoked[session_id] = None
        if len(self._revoked) > self.REVOKED_KEPT:
            self._revoked.popitem(last=False)
        self._verifier.forget(session_id)

    #: How often a frontend deletes expired sessions (any replica may: the delete is
    #: idempotent, and each pass takes at most ``SESSIONS_PRUNED_PER_PASS`` at a time).
    SESSION_PRUNE_SECONDS = 600.0
    SESSIONS_PRUNED_PER_PASS = 1000

    async def prune_expired_sessions(self) -> int:
        """Delete the sessions (and their refresh tokens) that expired; how many went."""
        pruned = 0
        while True:
            batch = await self._users.prune_expired_sessions(
                self._clock(), self.SESSIONS_PRUNED_PER_PASS
            )
            pruned += batch
            if batch < self.SESSIONS_PRUNED_PER_PASS:
                return pruned

    async def prune_sessions_forever(self) -> None:
        """The session tables hold live sessions only, however many logins there ever were."""
        while True:
            try:
                pruned = await self.prune_expired_sessions()
            except Unavailable:
                pruned = 0  # the next pass catches up
            if pruned:
                _log.info("pruned %d expired sessions", pruned)
            await asyncio.sleep(self.SESSION_PRUNE_SECONDS)

    #: Told each logged-out session id after it is revoked (the frontend tells the
    #: backend, which pushes it to the enclaves); its failure never fails the logout.
    on_session_revoked: Callable[[str], Awaitable[None]] | None = None

    async def logout(self, claims: AccessClaims) -> None:
        await self._users.revoke_session(claims.session_id, self._clock(), "logout")
        # Also remembered as revoked: a session check that was in flight (or started
        # ahead) before the revocation committed must not mark it active again.
        self._session_revoked(claims.session_id)
        _log.info("user logged out: %s session %s", claims.user_id, claims.session_id)
        if self.on_session_revoked is not None:
            try:
                await self.on_session_revoked(claims.session_id)
            except Exception as exc:  # the session is revoked all the same
                _log.warning("could not tell the enclaves of a logout: %r", exc)

    def known_profile(self, user_id: str) -> UserProfile | None:
        """The profile if it is in memory: ``current_user`` without a coroutine."""
        return self._profiles.get(user_id)

    async def current_user(self, claims: AccessClaims) -> UserProfile:
        profile = self._profiles.get(claims.user_id)
        if profile is None:
            user = await self._users.get_user(claims.user_id)
            if user is None:
                raise Unauthenticated(
                    "USER_NOT_FOUND", "the account of this token no longer exists"
                )
            profile = UserProfile(user.id, user.username, user.created_at)
            self._profiles.put(profile)
        return profile

    def authenticate(
        self, token: str, certificate_sha256: bytes
    ) -> AccessClaims | Awaitable[AccessClaims]:
        """Verify a bearer token over the connection's client certificate, session included.

        The claims at once when the session was checked within its TTL (nearly every
        call), else an awaitable of them after the session's check: no coroutine per call.
        """
        claims = self._verifier.verify(token, certificate_sha256)
        session_id = claims.session_id
        if session_id in self._revoked:
            raise Unauthenticated("SESSION_REVOKED", "this session was revoked; log in again")
        checked = self._active_sessions.get(session_id)
        if checked is not None:
            age = time.monotonic() - checked
            heard = self._notifications is not None and self._notifications.connected
            ttl = self.NOTIFIED_SESSION_CHECK_TTL if heard else self.SESSION_CHECK_TTL
            if age <= ttl:
                if age > ttl * self.SESSION_RECHECK_AHEAD and session_id not in self._checks:
                    # Still within its TTL: answered from the last check while a new one
                    # runs, so busy sessions never all wait on the database at once.
                    self._session_check(session_id).add_done_callback(_ignore_outcome)
                return claims
        return self._after_session_check(claims)

    async def _after_session_check(self, claims: AccessClaims) -> AccessClaims:
        # Every call of the session that arrives while it is checked waits for that one
        # check (not one query each: they would queue behind each other, ~14 ms at
        # 2,000 calls/s on SQLite); shielded, so a caller that goes away cancels nothing.
        if not await asyncio.shield(self._session_check(claims.session_id)):
            raise Unauthenticated("SESSION_REVOKED", "this session was revoked; log in again")
        return claims

    #: The share of the TTL after which a busy session's next check starts ahead.
    SESSION_RECHECK_AHEAD = 0.5

    def _session_check(self, session_id: str) -> asyncio.Task[bool]:
        """The one check of ``session_id`` in flight, started if there is none."""
        task = self._checks.get(session_id)
        if task is None:
            task = asyncio.create_task(self._check_session(session_id))
            self._checks[session_id] = task
        return task

    async def _check_session(self, session_id: str) -> bool:
        """Whether the session is active now; remembered as checked when the query began."""
        try:
            started = time.monotonic()
            if not await self._users.session_is_active(session_id, self._clock()):
                self._active_sessions.pop(session_id, None)
                return False
            if session_id in self._revoked:  # revoked while we asked
                return False
            self._active_sessions[session_id] = started
            if len(self._active_sessions) > 100_000:
                self._active_sessions.clear()
            return True
        finally:
            self._checks.pop(session_id, None)


def _ignore_outcome(task: asyncio.Task[bool]) -> None:
    """A check started ahead that failed (the database away) is simply not remembered:
    the next call after the TTL waits for a check of its own and sees the error."""
    if not task.cancelled():
        task.exception()


__all__ = [
    "AuthService",
    "LoginResult",
    "ProfileCache",
    "SessionRecord",
    "SignedUserCertificate",
    "UserProfile",
]
