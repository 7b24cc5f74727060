"""The backends' directory: where each backend's TPM answers, and which AK it proved.

Each backend has its own TPM and AK. It announces the address frontends of other pods
reach its QuoteService on, and its AK certificate chain; a frontend routes an enclave's
``GetAttestation`` to the backend that measured it (``enclaves.backend_id``), and lists
every live backend's AK chain in the trust bundle. Liveness is the heartbeat in the same
row (``EnclaveStore.heartbeat``), on the database's clock.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from licensing_server.storage._database import Database
from licensing_server.storage._models import Backend

#: Between the PEM blocks of a chain in ``backends.ak_certificate_chain_pem``.
_PEM_END = "-----END CERTIFICATE-----"


@dataclass(frozen=True, slots=True)
class BackendRecord:
    id: str
    quote_address: str
    ak_certificate_chain_pem: tuple[str, ...]
    #: The heartbeat is younger than the ``within`` asked for.
    live: bool


def _join(chain: list[str]) -> str:
    return "\n".join(pem.strip() for pem in chain)


def _split(joined: str) -> tuple[str, ...]:
    blocks = [b.strip() for b in joined.split(_PEM_END) if b.strip()]
    return tuple(f"{block}\n{_PEM_END}\n" for block in blocks)


class BackendDirectory:
    def __init__(self, database: Database):
        self._db = database

    async def announce(
        self, backend_id: str, *, quote_address: str, ak_certificate_chain_pem: list[str]
    ) -> None:
        """Record where ``backend_id``'s QuoteService answers and its AK chain (a heartbeat too)."""
        values = {
            "quote_address": quote_address,
            "ak_certificate_chain_pem": _join(ak_certificate_chain_pem),
            "heartbeat_at": func.now(),
        }
        insert = sqlite_insert if self._db.engine.dialect.name == "sqlite" else pg_insert
        statement = insert(Backend).values(id=backend_id, **values)
        statement = statement.on_conflict_do_update(index_elements=[Backend.id], set_=values)
        await self._db.run(lambda connection: connection.execute(statement))

    async def find(self, backend_id: str, within: dt.timedelta) -> BackendRecord | None:
        """``backend_id``'s row, and whether its heartbeat is younger than ``within``."""
        query = select(
            Backend.quote_address,
            Backend.ak_certificate_chain_pem,
            (Backend.heartbeat_at > func.now() - within).label("live"),
        ).where(Backend.id == backend_id)
        row = await self._db.run(lambda c: c.execute(query).first(), writes=False)
        if row is None:
            return None
        return BackendRecord(
            backend_id, row.quote_address, _split(row.ak_certificate_chain_pem), bool(row.live)
        )

    async def ak_certificate_chains(self, within: dt.timedelta) -> list[tuple[str, ...]]:
        """The AK chain of every backend whose heartbeat is younger than ``within``."""
        query = (
            select(Backend.ak_certificate_chain_pem)
            .where(Backend.heartbeat_at > func.now() - within)
            .where(Backend.ak_certificate_chain_pem != "")
            .order_by(Backend.id)
        )
        return await self._db.run(
            lambda c: [_split(joined) for joined in c.execute(query).scalars()], writes=False
        )
