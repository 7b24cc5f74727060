"""Leader election on PostgreSQL: a session-level advisory lock on a connection of its own.

The lock belongs to the connection holding it: the server lets go of it the moment that
connection ends (the process died, the connection was killed, the network failed and
keepalives gave up), and then this candidate stops leading at once, before anything
it would do could conflict with the next leader's, which needs the same database.
"""

from __future__ import annotations

import asyncio
import logging

import psycopg

from licensing_server.leadership._protocol import ElectionState, Leadership, candidate_identity
from licensing_server.observability import LeaderMetrics

__all__ = ["LEADER_LOCK_KEY", "AdvisoryLockElection"]

_log = logging.getLogger(__name__)

#: ``pg_try_advisory_lock``'s key: the first 8 bytes of sha256("licensing-backend-leader").
#: Advisory locks are per database: backends of different databases never compete.
LEADER_LOCK_KEY = 8214754393609715960


def _libpq_url(url: str) -> str:
    """The SQLAlchemy URL (``postgresql+psycopg://``) as psycopg itself takes it."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql://{rest}" if sep and scheme.startswith("postgresql") else url


#: How long a new leader holds the lock before it leads. The server ends the old
#: leader's connection and grants the lock at the same moment, and the old leader stops
#: its leader-only work only once it has read that: this lets it read it first.
TAKEOVER_GRACE_SECONDS = 0.05


class AdvisoryLockElection(ElectionState):
    """Leads while its own connection holds ``pg_try_advisory_lock(LEADER_LOCK_KEY)``.

    A candidate that does not hold it asks again every ``retry_seconds``; the leader
    waits on its connection (a server that ends it is seen at once) and pings it every
    ``check_seconds`` (a silent network: a ping that takes that long is a lost lock).
    """

    def __init__(
        self,
        database_url: str,
        *,
        retry_seconds: float = 2.0,
        check_seconds: float = 2.0,
        key: int = LEADER_LOCK_KEY,
        metrics: LeaderMetrics | None = None,
        identity: str = "",
    ):
        self._url = _libpq_url(database_url)
        self._retry = retry_seconds
        self._check = check_seconds
        self._key = key
        self._state = Leadership(
            identity or candidate_identity(), "PostgreSQL advisory lock", metrics
        )
        #: The backend pid of the connection holding (or asking for) the lock, for tests.
        self.connection_pid: int | None = None

    async def run(self) -> None:
        """Campaign until cancelled; closing the connection on the way out frees the lock."""
        try:
            while True:
                try:
                    await self._campaign()
                except (psycopg.Error, OSError, TimeoutError) as exc:
                    self._state.lost(f"the connection holding the lock failed ({exc})")
                    _log.debug("leader election: %s; connecting again", exc)
                except Exception:  # a bug: logged, and the campaign goes on
                    self._state.lost("the election failed (logged)")
                    _log.exception("leader election failed; trying again")
                finally:
                    self.connection_pid = None
                await asyncio.sleep(self._retry)
        finally:
            self._state.lost("the backend is stopping")

    async def _campaign(self) -> None:
        # asyncio.timeout, not wait_for: 3.11's wait_for swallows a cancellation that
        # lands as the awaited call completes, and a stopping backend would campaign on.
        async with asyncio.timeout(max(self._check, 5.0)):
            conn = await psycopg.AsyncConnection.connect(
                self._url,
                autocommit=True,
                application_name=f"licensing-leader {self.identity}"[:63],
                keepalives=1,
                keepalives_idle=5,
                keepalives_interval=2,
                keepalives_count=3,
            )
        async with conn:
            self.connection_pid = conn.info.backend_pid
            while True:
                if await self._ask(conn):
                    break
                await asyncio.sleep(self._retry)
            await asyncio.sleep(TAKEOVER_GRACE_SECONDS)
            self._state.gained()
            while True:
                # Returns after check_seconds without a notification; raises the moment
                # the server ends the connection (pg_terminate_backend, a restart).
                async for _ in conn.notifies(timeout=self._check):
                    pass
                async with asyncio.timeout(self._check):
                    await conn.execute("SELECT 1")

    async def _ask(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> bool:
        async with asyncio.timeout(self._check):
            cursor = await conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,))
        row = await cursor.fetchone()
        return bool(row and row[0])
