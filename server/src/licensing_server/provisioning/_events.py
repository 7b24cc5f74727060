"""Following an enclave's events: the history from the database, then what comes next."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from licensing_server.errors import Unavailable
from licensing_server.storage import EnclaveStore, EventRecord, Phase

_log = logging.getLogger(__name__)


class EventBus:
    """In-process fan-out of events, published only after they are written."""

    def __init__(self) -> None:
        self._subscribers: defaultdict[str, set[asyncio.Queue[EventRecord | None]]] = defaultdict(
            set
        )

    def publish(self, event: EventRecord) -> None:
        for queue in self._subscribers.get(event.enclave_id, ()):
            queue.put_nowait(event)

    def close(self, enclave_id: str) -> None:
        """Tell followers the enclave is gone."""
        for queue in self._subscribers.pop(enclave_id, set()):
            queue.put_nowait(None)

    @contextlib.contextmanager
    def subscribe(self, enclave_id: str) -> Iterator[asyncio.Queue[EventRecord | None]]:
        queue: asyncio.Queue[EventRecord | None] = asyncio.Queue()
        self._subscribers[enclave_id].add(queue)
        try:
            yield queue
        finally:
            subscribers = self._subscribers.get(enclave_id)
            if subscribers is not None:
                subscribers.discard(queue)
                if not subscribers:
                    del self._subscribers[enclave_id]


class EventTail:
    """Wakes this process's watchers when another process writes their enclave's events.

    Without it every watcher would poll the database on its own; with it one query
    per tick asks for the newest sequence of every watched enclave, and only the
    watchers of enclaves that moved (or vanished) are woken to read their events.
    Correctness never depends on a wake: watchers read from their own sequence,
    and fall back to a slow poll of their own.
    """

    #: How often a watcher reads the database on its own should a wake ever be missed.
    FALLBACK_SECONDS = 5.0

    def __init__(self, store: EnclaveStore, *, poll_seconds: float = 0.1):
        self._store = store
        self._poll = poll_seconds
        self._watchers: defaultdict[str, set[asyncio.Queue[None]]] = defaultdict(set)
        self._seen: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def watched(self) -> int:
        return len(self._watchers)

    @contextlib.contextmanager
    def subscribe(self, enclave_id: str) -> Iterator[asyncio.Queue[None]]:
        """A queue that gets an item whenever the enclave may have new events."""
        queue: asyncio.Queue[None] = asyncio.Queue(maxsize=1)
        self._watchers[enclave_id].add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="event-tail")
        try:
            yield queue
        finally:
            watchers = self._watchers.get(enclave_id)
            if watchers is not None:
                watchers.discard(queue)
                if not watchers:
                    del self._watchers[enclave_id]
                    self._seen.pop(enclave_id, None)

    async def follow(
        self, enclave_id: str, after: int, is_terminal: Callable[[Phase], bool]
    ) -> AsyncIterator[EventRecord]:
        """``follow_events`` woken by this tail, with a slow poll of its own as a safety net."""
        with self.subscribe(enclave_id) as wake:
            async for event in follow_events(
                self._store,
                enclave_id,
                after,
                is_terminal,
                wake=wake,
                fallback_seconds=self.FALLBACK_SECONDS,
            ):
                yield event

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        """Poll while anyone watches; stop when nobody does (the next subscriber restarts it)."""
        while self._watchers:
            try:
                await self._tick()
            except Unavailable:
                pass  # the watchers' own fallback polls report nothing new either
            except Exception:  # a bug here must not silence every watch
                _log.exception("event tail tick failed")
            await asyncio.sleep(self._poll)
        self._task = None

    async def _tick(self) -> None:
        ids = list(self._watchers)
        heads = await self._store.newest_sequences(ids)
        for enclave_id in ids:
            head = heads.get(enclave_id, -1)  # -1: the enclave is gone
            if self._seen.get(enclave_id) == head:
                continue
            self._seen[enclave_id] = head
            for queue in self._watchers.get(enclave_id, ()):
                if queue.empty():
                    queue.put_nowait(None)


async def follow_events(
    store: EnclaveStore,
    enclave_id: str,
    after: int,
    is_terminal: Callable[[Phase], bool],
    *,
    poll_seconds: float = 0.1,
    wake: asyncio.Queue[Any] | None = None,
    fallback_seconds: float = 1.0,
) -> AsyncIterator[EventRecord]:
    """Yield events with sequence > ``after`` until a terminal phase or deletion.

    The database is the source of truth, so this works across processes and
    restarts. ``wake`` (an ``EventBus`` or ``EventTail`` subscription, taken
    before the first read) replaces the ``poll_seconds`` poll; without a wake the
    database is read again after ``fallback_seconds``.
    Deletion ends the stream with a synthetic ``DELETED`` event.
    """
    last = after
    while True:
        events = await store.events_after(enclave_id, last)
        for event in events:
            last = event.sequence
            yield event
            if is_terminal(event.phase):
                return
        if not events and await store.get(enclave_id) is None:
            now = dt.datetime.now(dt.UTC)
            yield EventRecord(enclave_id, last + 1, Phase.DELETED, "the enclave was deleted", now)
            return
        if wake is None:
            await asyncio.sleep(poll_seconds)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.get(), fallback_seconds)
