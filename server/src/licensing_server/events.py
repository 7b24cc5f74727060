"""Following an enclave's events: the history from the database, then what comes next."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator

from licensing_common.errors import Unavailable
from licensing_server.storage import (
    ENCLAVE_EVENTS,
    DatabaseUnavailable,
    EnclaveStore,
    EventRecord,
    Notifications,
    Phase,
    parse_event_payload,
)
from licensing_server.tasks import spawn

_log = logging.getLogger(__name__)


class Wake:
    """A watcher's doorbell: rung when its enclave has a newer event, or is gone.

    ``follow_events`` says what it has read and waits; a ring for an event it has
    not read yet (even one rung before it began to wait) returns at once, so none
    is missed, and ``fallback_seconds`` bounds the wait should a ring be lost.
    """

    #: Events handed over by a notification, kept until read (a watcher that falls
    #: further behind reads the database instead).
    OFFERED_KEPT = 16

    def __init__(self, seen: int = 0, *, fallback_seconds: float = 1.0):
        self.seen = seen
        self._newest = seen
        self._gone = False
        self._fallback = fallback_seconds
        self._rung = asyncio.Event()
        self._offered: dict[int, EventRecord] = {}

    def offer(self, event: EventRecord) -> None:
        """Ring with the event itself, so the watcher need not read it back."""
        if event.sequence > self.seen and len(self._offered) < self.OFFERED_KEPT:
            self._offered[event.sequence] = event
        self.ring(event.sequence)

    def offered_after(self, sequence: int) -> list[EventRecord]:
        """The offered events right after ``sequence``, in order, with no gap (maybe none)."""
        run = []
        while (event := self._offered.pop(sequence + 1, None)) is not None:
            run.append(event)
            sequence += 1
        for stale in [s for s in self._offered if s <= sequence]:
            del self._offered[stale]
        return run

    def ring(self, newest: int | None) -> None:
        """``newest``: the enclave's newest event sequence, or None once it is deleted."""
        if newest is None:
            self._gone = True
        else:
            self._newest = max(self._newest, newest)
        self._rung.set()

    async def wait(self, seen: int) -> None:
        self.seen = seen
        if self._gone or self._newest > seen:
            self._gone = False
            return
        self._rung.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._rung.wait(), self._fallback)


def _discard(wakes: dict[str, set[Wake]], enclave_id: str, wake: Wake) -> None:
    """Forget one follower, and the enclave once nobody follows it."""
    followers = wakes.get(enclave_id)
    if followers is not None:
        followers.discard(wake)
        if not followers:
            del wakes[enclave_id]


class EventBus:
    """In-process fan-out: rings the followers of an enclave once its event is written."""

    def __init__(self) -> None:
        self._subscribers: defaultdict[str, set[Wake]] = defaultdict(set)

    def publish(self, event: EventRecord) -> None:
        for wake in self._subscribers.get(event.enclave_id, ()):
            wake.ring(event.sequence)

    def close(self, enclave_id: str) -> None:
        """Tell followers the enclave is gone."""
        for wake in self._subscribers.pop(enclave_id, set()):
            wake.ring(None)

    @contextlib.contextmanager
    def subscribe(self, enclave_id: str, after: int) -> Iterator[Wake]:
        wake = Wake(after)
        self._subscribers[enclave_id].add(wake)
        try:
            yield wake
        finally:
            _discard(self._subscribers, enclave_id, wake)


class EventTail:
    """Wakes this process's watchers when another process writes their enclave's events.

    Without it every watcher would poll the database on its own; with it one query
    per tick asks for the newest sequence of every watched enclave, and only the
    watchers that have not seen it (or whose enclave is gone) are rung to read.
    Correctness never depends on a ring: watchers read from their own sequence,
    and fall back to a slow poll of their own.
    """

    #: How often a watcher reads the database on its own. Rings compare state (newest
    #: sequence against what the watcher has seen), so a failed tick loses nothing:
    #: the next one rings. This is only a net for bugs, and costs a read per watcher.
    FALLBACK_SECONDS = 60.0
    #: How often to try while the database is unavailable (each try logs a warning).
    OUTAGE_POLL_SECONDS = 1.0

    #: How often to poll while PostgreSQL notifications are heard: a net for lost ones.
    NOTIFIED_POLL_SECONDS = 1.0

    def __init__(self, store: EnclaveStore, *, poll_seconds: float = 0.1):
        self._store = store
        self._poll = poll_seconds
        self._watchers: defaultdict[str, set[Wake]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._notifications: Notifications | None = None
        self._resync = asyncio.Event()

    def listen(self, notifications: Notifications) -> None:
        """Ring watchers the moment another process commits their enclave's event.

        The poll goes on, slower, while the notifications are heard; after they
        were lost for a while, one tick at once catches up with what was missed.
        """
        self._notifications = notifications
        notifications.subscribe(ENCLAVE_EVENTS, self._notified)
        notifications.on_reconnect(self._resync.set)

    def _notified(self, payload: str) -> None:
        event = parse_event_payload(payload)
        if isinstance(event, str):  # deleted
            for wake in self._watchers.get(event, ()):
                wake.ring(None)
            return
        for wake in self._watchers.get(event.enclave_id, ()):
            wake.offer(event)

    @property
    def watched(self) -> int:
        return len(self._watchers)

    async def follow(
        self, enclave_id: str, after: int, is_terminal: Callable[[Phase], bool]
    ) -> AsyncIterator[EventRecord]:
        """``follow_events``, rung by this tail."""
        wake = Wake(after, fallback_seconds=self.FALLBACK_SECONDS)
        self._watchers[enclave_id].add(wake)
        if self._task is None or self._task.done():
            self._task = spawn(self._run(), name="event-tail")
        try:
            events = follow_events(self._store, enclave_id, after, is_terminal, wake=wake)
            async for event in events:
                yield event
        finally:
            _discard(self._watchers, enclave_id, wake)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        """Poll while anyone watches; stop when nobody does (the next watcher restarts it)."""
        while self._watchers:
            heard = self._notifications is not None and self._notifications.connected
            pause = self.NOTIFIED_POLL_SECONDS if heard else self._poll
            self._resync.clear()
            try:
                await self._tick()
            except Unavailable:
                # The database is down: a later tick rings what changed meanwhile.
                pause = max(pause, self.OUTAGE_POLL_SECONDS)
            except Exception:  # a bug here must not silence every watch
                _log.exception("event tail tick failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._resync.wait()
        self._task = None

    async def _tick(self) -> None:
        heads = await self._store.newest_sequences(list(self._watchers))
        for enclave_id, watchers in self._watchers.items():
            newest = heads.get(enclave_id)  # None: the enclave is gone
            for wake in watchers:
                if newest is None or newest > wake.seen:
                    wake.ring(newest)


async def follow_events(
    store: EnclaveStore,
    enclave_id: str,
    after: int,
    is_terminal: Callable[[Phase], bool],
    *,
    poll_seconds: float = 0.1,
    wake: Wake | None = None,
) -> AsyncIterator[EventRecord]:
    """Yield events with sequence > ``after`` until a terminal phase or deletion.

    The database is the source of truth, so this works across processes and
    restarts. With a ``wake`` (from ``EventBus`` or ``EventTail``, registered
    before the first read) it reads again when rung; without one, every
    ``poll_seconds``. Deletion ends the stream with a synthetic ``DELETED`` event.
    While the database is unavailable it waits and reads again; the caller's
    deadline bounds how long.
    """
    last = after
    while True:
        offered = wake.offered_after(last) if wake is not None else []
        try:
            if offered:  # handed over by a notification: no need to read them back
                events, gone = offered, False
            else:
                events = await store.events_after(enclave_id, last)
                gone = not events and await store.get(enclave_id) is None
        except DatabaseUnavailable:
            # An outage ends no stream: once the database is back, followers learn how
            # their enclave ended (the reconciler settles what the outage interrupted).
            events, gone = [], False
        for event in events:
            last = event.sequence
            yield event
            if is_terminal(event.phase):
                return
        if gone:
            now = dt.datetime.now(dt.UTC)
            yield EventRecord(enclave_id, last + 1, Phase.DELETED, "the enclave was deleted", now)
            return
        if wake is None:
            await asyncio.sleep(poll_seconds)
        else:
            await wake.wait(last)
