"""PostgreSQL LISTEN/NOTIFY: replicas learn at once what another process just committed.

Two things are worth telling every process the moment they are committed: an
enclave has a new event (its watchers, wherever they are connected, should read
it) and a session was revoked (every frontend must refuse its tokens). Writers
call ``notify_on`` inside their transaction, so PostgreSQL delivers the message on
commit and never for a rollback. Each process holds one ``Notifications``
connection that listens and hands each message to the callbacks registered for
its channel.

A notification is a hint, never the truth: anything sent while the listening
connection was down is lost, so subscribers also hear ``on_reconnect`` and
resynchronise from the database then (and keep a slow poll as a net). SQLite
has a single backend and frontend on one machine and no NOTIFY: there
``notify_on`` does nothing and no listener runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Connection, func, select

from licensing_server.storage._database import Database
from licensing_server.tasks import spawn

__all__ = [
    "ENCLAVE_EVENTS",
    "SESSIONS_REVOKED",
    "Notifications",
    "notifications",
    "notify_on",
]

_log = logging.getLogger(__name__)

#: Payload: the event as JSON (``storage.event_payload``), or ``{"id", "deleted"}``.
ENCLAVE_EVENTS = "licensing_enclave_events"
#: Payload: the revoked session's id.
SESSIONS_REVOKED = "licensing_sessions_revoked"

#: How long to wait before reconnecting after the listening connection failed.
RECONNECT_SECONDS = 1.0
CONNECT_TIMEOUT_SECONDS = 2
#: How long start-up waits for the first connection before going on with polls alone.
FIRST_CONNECT_WAIT_SECONDS = 3.0


def notify_on(connection: Connection, channel: str, payload: str) -> None:
    """Send ``payload`` on ``channel`` when the transaction of ``connection`` (one of
    ``Database.run``) commits; PostgreSQL only."""
    if connection.dialect.name == "postgresql":
        connection.execute(select(func.pg_notify(channel, payload)))


Callback = Callable[[str], None]


class Notifications:
    """One listening connection per process, dispatching each message by channel.

    Callbacks run on the event loop and must not block. ``connected`` is False
    while the connection is down: subscribers then fall back to their polls.
    """

    def __init__(self, conninfo: str):
        self._conninfo = conninfo
        self._callbacks: defaultdict[str, list[Callback]] = defaultdict(list)
        self._reconnected: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.connected = False

    def subscribe(self, channel: str, callback: Callback) -> None:
        """Register before ``start``: the channels are listened to on each (re)connect."""
        self._callbacks[channel].append(callback)

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        """Called after every connect but the first: what was sent meanwhile is lost."""
        self._reconnected.append(callback)

    async def start(self) -> None:
        """Begin listening; wait briefly for the first connection (later ones retry)."""
        self._task = spawn(self._run(), name="notifications")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FIRST_CONNECT_WAIT_SECONDS):
                await self._ready.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        first = True
        while True:
            try:
                await self._listen(first)
            except (psycopg.Error, OSError) as exc:
                _log.warning("notifications: connection lost (%s); retrying", type(exc).__name__)
            finally:
                self.connected = False
            first = False
            await asyncio.sleep(RECONNECT_SECONDS)

    async def _listen(self, first: bool) -> None:
        conn: psycopg.AsyncConnection[tuple[Any, ...]] = await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
        )
        async with conn:
            for channel in self._callbacks:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            self.connected = True
            self._ready.set()
            if not first:
                for resync in self._reconnected:
                    resync()
            async for message in conn.notifies():
                for callback in self._callbacks.get(message.channel, ()):
                    try:
                        callback(message.payload)
                    except Exception:  # one subscriber's bug must not deafen the others
                        _log.exception("notifications: a %s callback failed", message.channel)


@contextlib.asynccontextmanager
async def notifications(
    database: Database, subscribe: Callable[[Notifications], None]
) -> AsyncIterator[Notifications | None]:
    """A started listener on PostgreSQL (``subscribe`` registers its callbacks); None on SQLite."""
    if database.engine.dialect.name != "postgresql":
        yield None
        return
    url = database.engine.url.set(drivername="postgresql")
    listener = Notifications(url.render_as_string(hide_password=False))
    subscribe(listener)
    await listener.start()
    try:
        yield listener
    finally:
        await listener.close()
