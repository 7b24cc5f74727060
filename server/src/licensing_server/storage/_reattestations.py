"""Re-attestation results: one ATTESTED event per enclave per round, with its evidence.

A round's results for every enclave go in one transaction (a round over 1,000
enclaves is one commit, not 1,000), each as the enclave's next event plus a
``reattestations`` row holding that event's attestation. Only the newest
``KEPT_PER_ENCLAVE`` rounds of an enclave are kept, events and evidence both: an
older round is stale anyway, and what is kept does not grow with the enclave's age
(a resumed watch just sees the sequence jump to the rounds still kept).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, func, select

from licensing_common.phases import Phase
from licensing_server.storage._database import Database
from licensing_server.storage._enclaves import EventRecord, event_payload
from licensing_server.storage._models import Enclave, EnclaveEvent, Reattestation
from licensing_server.storage._notifications import ENCLAVE_EVENTS, notify

#: How every re-attestation event's message begins (a round's event whose evidence was
#: pruned is still told apart from the provisioning ATTESTED event by it).
REATTESTED_PREFIX = "re-attested"
#: Attestations kept per enclave (the newest ones).
KEPT_PER_ENCLAVE = 16
#: Ids per ``IN (...)``: well under SQLite's and PostgreSQL's bound-parameter limits.
_IN_CHUNK = 500


@dataclass(frozen=True, slots=True)
class ReattestationResult:
    """What one round verified for one enclave."""

    enclave_id: str
    round: int
    attestation: bytes  # a serialized licensing.v1.Attestation
    message: str


class ReattestationStore:
    def __init__(self, database: Database):
        self._db = database

    async def record(
        self, results: Sequence[ReattestationResult], now: dt.datetime
    ) -> list[EventRecord]:
        """Each result as its enclave's next ATTESTED event (several for one enclave: one
        each, in order); enclaves no longer ATTESTED (failed, deleted meanwhile) are skipped."""
        if not results:
            return []
        by_id: dict[str, list[ReattestationResult]] = {}
        for result in results:
            by_id.setdefault(result.enclave_id, []).append(result)
        written: list[EventRecord] = []
        ids = sorted(by_id)  # one lock order for every writer
        async with self._db.session() as session:
            rows: list[Enclave] = []
            for start in range(0, len(ids), _IN_CHUNK):
                rows.extend(
                    await session.scalars(
                        select(Enclave)
                        .where(
                            Enclave.id.in_(ids[start : start + _IN_CHUNK]),
                            Enclave.phase == Phase.ATTESTED.value,
                        )
                        .order_by(Enclave.id)
                        .with_for_update()
                    )
                )
            for row in rows:
                for result in by_id[row.id]:
                    row.last_sequence += 1
                    row.updated_at = now
                    message = result.message
                    if not message.startswith(REATTESTED_PREFIX):
                        message = f"{REATTESTED_PREFIX}: {message}"
                    event = EnclaveEvent(
                        enclave_id=row.id,
                        sequence=row.last_sequence,
                        phase=Phase.ATTESTED.value,
                        message=message[:1024],
                        created_at=now,
                    )
                    session.add(event)
                    session.add(
                        Reattestation(
                            enclave_id=row.id,
                            sequence=row.last_sequence,
                            round=result.round,
                            attestation=result.attestation,
                            created_at=now,
                        )
                    )
                    record = EventRecord(row.id, event.sequence, Phase.ATTESTED, event.message, now)
                    written.append(record)
                    await notify(session, ENCLAVE_EVENTS, event_payload(record))
            await session.flush()
            newest = {record.enclave_id: record.sequence for record in written}
            for enclave_id, sequence in newest.items():
                # The rounds' history is bounded too: an enclave that lives for months
                # would otherwise add an event every interval, and every replay reads them.
                await session.execute(
                    delete(Reattestation).where(
                        Reattestation.enclave_id == enclave_id,
                        Reattestation.sequence <= sequence - KEPT_PER_ENCLAVE,
                    )
                )
                await session.execute(
                    delete(EnclaveEvent).where(
                        EnclaveEvent.enclave_id == enclave_id,
                        EnclaveEvent.sequence <= sequence - KEPT_PER_ENCLAVE,
                        EnclaveEvent.message.startswith(REATTESTED_PREFIX),
                    )
                )
        return written

    async def last_round(self) -> int:
        """The highest round number kept: a restarted backend numbers its rounds on from it,
        so a watcher never sees ``attestation_round`` go back to 1."""
        async with self._db.read() as session:
            return int(await session.scalar(select(func.max(Reattestation.round))) or 0)

    async def get(self, enclave_id: str, sequence: int) -> tuple[int, bytes] | None:
        """(round, attestation) of the enclave's event ``sequence``, if it was a round's."""
        async with self._db.read() as session:
            row = await session.get(Reattestation, (enclave_id, sequence))
            return (row.round, row.attestation) if row is not None else None
