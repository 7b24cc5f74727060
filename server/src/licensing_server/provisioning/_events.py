"""Following an enclave's events: the history from the database, then what comes next."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator

from licensing_server.storage import EnclaveStore, EventRecord, Phase


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


async def follow_events(
    store: EnclaveStore,
    enclave_id: str,
    after: int,
    is_terminal: Callable[[Phase], bool],
    *,
    poll_seconds: float = 0.1,
    wake: asyncio.Queue[EventRecord | None] | None = None,
) -> AsyncIterator[EventRecord]:
    """Yield events with sequence > ``after`` until a terminal phase or deletion.

    The database is the source of truth, so this works across processes and
    restarts; ``wake`` (an ``EventBus`` subscription) only saves polling delay.
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
                await asyncio.wait_for(wake.get(), poll_seconds * 10)
