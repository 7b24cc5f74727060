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
from typing import Any

from sqlalchemy import Connection, Integer, bindparam, delete, func, insert, select, update

from licensing_common.phases import Phase
from licensing_server.storage._database import Database
from licensing_server.storage._enclaves import EventRecord, event_payload, event_row
from licensing_server.storage._models import Enclave, EnclaveEvent, Reattestation
from licensing_server.storage._notifications import ENCLAVE_EVENTS, notify_on

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
        ids = sorted(by_id)  # one lock order for every writer

        def record(connection: Connection) -> list[EventRecord]:
            rows: list[Any] = []
            for start in range(0, len(ids), _IN_CHUNK):
                rows.extend(
                    connection.execute(
                        select(Enclave.id, Enclave.last_sequence)
                        .where(
                            Enclave.id.in_(ids[start : start + _IN_CHUNK]),
                            Enclave.phase == Phase.ATTESTED.value,
                        )
                        .order_by(Enclave.id)
                        .with_for_update()
                    )
                )
            written: list[EventRecord] = []
            evidence: list[dict[str, object]] = []
            for row in rows:
                sequence = row.last_sequence
                for result in by_id[row.id]:
                    sequence += 1
                    message = result.message
                    if not message.startswith(REATTESTED_PREFIX):
                        message = f"{REATTESTED_PREFIX}: {message}"
                    event = EventRecord(row.id, sequence, Phase.ATTESTED, message[:1024], now)
                    written.append(event)
                    evidence.append(
                        {
                            "enclave_id": row.id,
                            "sequence": sequence,
                            "round": result.round,
                            "attestation": result.attestation,
                            "created_at": now,
                        }
                    )
                    notify_on(connection, ENCLAVE_EVENTS, event_payload(event))
            if not written:
                return written
            newest = [
                {"b_id": enclave_id, "b_sequence": sequence}
                for enclave_id, sequence in {e.enclave_id: e.sequence for e in written}.items()
            ]
            connection.execute(_SET_LAST_SEQUENCE.values(updated_at=now), newest)
            connection.execute(insert(EnclaveEvent), [event_row(e) for e in written])
            connection.execute(insert(Reattestation), evidence)
            # The rounds' history is bounded too: an enclave that lives for months would
            # otherwise add an event every interval, and every replay reads them.
            connection.execute(_PRUNE_EVIDENCE, newest)
            connection.execute(_PRUNE_EVENTS, newest)
            return written

        # One transaction in one hop (``Database.run``), however many enclaves the round had.
        return await self._db.run(record)

    async def last_round(self) -> int:
        """The highest round number kept: a restarted backend numbers its rounds on from it,
        so a watcher never sees ``attestation_round`` go back to 1."""
        query = select(func.max(Reattestation.round))
        return await self._db.run(
            lambda connection: int(connection.execute(query).scalar() or 0), writes=False
        )

    async def get(self, enclave_id: str, sequence: int) -> tuple[int, bytes] | None:
        """(round, attestation) of the enclave's event ``sequence``, if it was a round's."""

        def read(connection: Connection) -> tuple[int, bytes] | None:
            row = connection.execute(
                _EVIDENCE, {"enclave_id": enclave_id, "sequence": sequence}
            ).first()
            return (row.round, row.attestation) if row is not None else None

        return await self._db.run(read, writes=False)


# Statements run once per enclave of a round (executemany): ``b_id`` and ``b_sequence``,
# the enclave's newest sequence after the round.
_B_SEQUENCE = bindparam("b_sequence", type_=Integer)
_SET_LAST_SEQUENCE = (
    update(Enclave).where(Enclave.id == bindparam("b_id")).values(last_sequence=_B_SEQUENCE)
)
_PRUNE_EVIDENCE = delete(Reattestation).where(
    Reattestation.enclave_id == bindparam("b_id"),
    Reattestation.sequence <= _B_SEQUENCE - KEPT_PER_ENCLAVE,
)
_PRUNE_EVENTS = delete(EnclaveEvent).where(
    EnclaveEvent.enclave_id == bindparam("b_id"),
    EnclaveEvent.sequence <= _B_SEQUENCE - KEPT_PER_ENCLAVE,
    EnclaveEvent.message.startswith(REATTESTED_PREFIX),
)
_EVIDENCE = select(Reattestation.round, Reattestation.attestation).where(
    Reattestation.enclave_id == bindparam("enclave_id"),
    Reattestation.sequence == bindparam("sequence"),
)
