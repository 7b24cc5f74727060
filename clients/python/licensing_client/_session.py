"""A logged-in session and where it is kept between calls (and processes).

A refresh token is single use and presenting a spent one revokes the whole
session, so whoever refreshes must hold the store's ``lock`` and read the stored
session again under it: another holder of the same store may have rotated it
already. ``MemorySessionStore`` keeps a session for one process; the CLI keeps it
on disk under a file lock (``licensing_client.cli._store``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Session:
    """Tokens, their expiry, and the client certificate with its key (made locally)."""

    username: str
    user_id: str
    access_token: str
    access_token_expire_time: dt.datetime
    refresh_token: str
    refresh_token_expire_time: dt.datetime
    client_certificate_pem: bytes
    client_key_pem: bytes
    client_certificate_expire_time: dt.datetime

    def __repr__(self) -> str:  # never print tokens or the key
        return f"Session(username={self.username!r}, user_id={self.user_id!r})"


class SessionStore(Protocol):
    """Where ``LicensingClient`` keeps its session."""

    def load(self) -> Session | None:
        """The stored session, or None if there is none."""

    def save(self, session: Session) -> None:
        """Replace the stored session."""

    def lock(self) -> AbstractContextManager[object]:
        """Held while refreshing: excludes every other user of the same stored session."""


class MemorySessionStore:
    """The default store: the session lives as long as this object, in this process."""

    def __init__(self, session: Session | None = None) -> None:
        self._session = session

    def load(self) -> Session | None:
        return self._session

    def save(self, session: Session) -> None:
        self._session = session

    def lock(self) -> AbstractContextManager[object]:
        # One process: the client's own asyncio lock already serialises its refreshes.
        return contextlib.nullcontext()
