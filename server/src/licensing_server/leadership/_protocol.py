"""What a leader election is, the state every implementation shares, and running work
only while leading."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol

from licensing_server.observability import LeaderMetrics

__all__ = ["LeaderElection", "Leadership", "candidate_identity", "while_leading"]

_log = logging.getLogger(__name__)


def candidate_identity() -> str:
    """Who campaigns: the pod (``POD_NAME``, else the host name), the pid and a random part,
    so that a restarted process, or a second one in the same pod, is never taken for the
    one before it."""
    host = os.environ.get("POD_NAME", "").strip() or socket.gethostname()
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


class LeaderElection(Protocol):
    """One of several backends against one database is the leader at any time, or none.

    ``run`` campaigns until cancelled (then steps down, and lets go of what it holds
    when it can); ``is_leader`` is this candidate's belief, True only while the lock or
    lease is held and, for a lease, not yet expired by this candidate's own clock.
    """

    @property
    def identity(self) -> str: ...

    @property
    def is_leader(self) -> bool: ...

    async def run(self) -> None: ...

    async def leading(self) -> None:
        """Return once this candidate leads (at once if it does)."""
        ...

    async def not_leading(self) -> None:
        """Return once this candidate does not lead (at once if it does not)."""
        ...


class Leadership:
    """The one place an election's outcome changes: two events, the gauge, a log line."""

    def __init__(self, identity: str, how: str, metrics: LeaderMetrics | None = None):
        self.identity = identity
        self._how = how
        self._metrics = metrics or LeaderMetrics()
        self._leading = asyncio.Event()
        self._not_leading = asyncio.Event()
        self._not_leading.set()
        self._metrics.leader.set(0)

    @property
    def is_leader(self) -> bool:
        return self._leading.is_set()

    def gained(self) -> None:
        if self._leading.is_set():
            return
        self._not_leading.clear()
        self._leading.set()
        self._metrics.leader.set(1)
        _log.info("this backend (%s) is now the leader (%s)", self.identity, self._how)

    def lost(self, why: str) -> None:
        if not self._leading.is_set():
            return
        self._leading.clear()
        self._not_leading.set()
        self._metrics.leader.set(0)
        _log.warning("this backend (%s) is no longer the leader: %s", self.identity, why)

    async def leading(self) -> None:
        await self._leading.wait()

    async def not_leading(self) -> None:
        await self._not_leading.wait()


class ElectionState:
    """What every election answers from its ``Leadership``: set ``_state`` in ``__init__``."""

    _state: Leadership

    @property
    def identity(self) -> str:
        return self._state.identity

    @property
    def is_leader(self) -> bool:
        return self._state.is_leader

    async def leading(self) -> None:
        await self._state.leading()

    async def not_leading(self) -> None:
        await self._state.not_leading()


async def while_leading(election: LeaderElection, work: Callable[[], Awaitable[None]]) -> None:
    """Run ``work`` each time ``election`` leads; cancel it the moment leadership ends.

    ``work`` runs forever (the reconciler's passes); should it end while leading, it is
    started again a second later.
    """
    while True:
        await election.leading()
        task = asyncio.ensure_future(work())
        lost = asyncio.ensure_future(election.not_leading())
        try:
            await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in (task, lost):
                pending.cancel()
            for pending in (task, lost):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending
        if task.done() and not task.cancelled() and election.is_leader:
            _log.error("leader-only work ended (%r); starting it again", task.exception())
            await asyncio.sleep(1)
