"""The only backend there can be (embedded SQLite): always the leader."""

from __future__ import annotations

import asyncio

from licensing_server.leadership._protocol import ElectionState, Leadership, candidate_identity
from licensing_server.observability import LeaderMetrics

__all__ = ["SoleBackend"]


class SoleBackend(ElectionState):
    """Leads from ``run`` until it is cancelled: nothing else can open the database."""

    def __init__(self, metrics: LeaderMetrics | None = None, identity: str = ""):
        self._state = Leadership(identity or candidate_identity(), "the only backend", metrics)

    async def run(self) -> None:
        self._state.gained()
        try:
            await asyncio.Event().wait()
        finally:
            self._state.lost("the backend is stopping")
