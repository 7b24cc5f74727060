"""The only backend there can be (embedded SQLite): always the leader."""

from __future__ import annotations

import asyncio

from licensing_server.leadership._protocol import Leadership, candidate_identity
from licensing_server.observability import LeaderMetrics

__all__ = ["SoleBackend"]


class SoleBackend:
    """Leads from ``run`` until it is cancelled: nothing else can open the database."""

    def __init__(self, metrics: LeaderMetrics | None = None, identity: str = ""):
        self._state = Leadership(identity or candidate_identity(), "the only backend", metrics)

    @property
    def identity(self) -> str:
        return self._state.identity

    @property
    def is_leader(self) -> bool:
        return self._state.is_leader

    async def run(self) -> None:
        self._state.gained()
        try:
            await asyncio.Event().wait()
        finally:
            self._state.lost("the backend is stopping")

    async def leading(self) -> None:
        await self._state.leading()

    async def not_leading(self) -> None:
        await self._state.not_leading()
