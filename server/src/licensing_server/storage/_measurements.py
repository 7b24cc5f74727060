"""The PCR 23 log: what the backend extended since it last reset PCR 23 (one epoch).

Each rewrite of PCR 23 (the set of live enclaves changed, or the TPM was reset)
starts a new epoch holding the one root it extended; older epochs are dropped in
the same transaction, so the table holds the current epoch only. With several
backends on one database each has its own TPM and so its own log: a store is one
backend's, and drops only that backend's older epochs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Connection, delete, insert, select

from licensing_server.storage._database import Database
from licensing_server.storage._models import Measurement, MeasurementEpoch


@dataclass(frozen=True, slots=True)
class MeasurementRecord:
    epoch_id: int
    sequence: int
    pcr: int
    digest: bytes
    kind: str
    enclave_id: str


@dataclass(frozen=True, slots=True)
class EpochRecord:
    id: int
    reset_count: int


class MeasurementStore:
    def __init__(self, database: Database, backend_id: str | None = None):
        """``backend_id``: whose TPM's log this is (None: SQLite's single backend)."""
        self._db = database
        self._backend_id = backend_id

    async def start_epoch(
        self,
        reset_count: int,
        now: dt.datetime,
        events: list[tuple[int, bytes, str, str]],
    ) -> tuple[EpochRecord, list[MeasurementRecord]]:
        """A new epoch with its ``(pcr, digest, kind, enclave_id)`` events; older ones go.

        Epoch ids keep rising across restarts (they are ``Attestation.log_epoch``).
        """

        def start(connection: Connection) -> tuple[EpochRecord, list[MeasurementRecord]]:
            epoch_id = connection.execute(
                insert(MeasurementEpoch)
                .values(reset_count=reset_count, started_at=now, backend_id=self._backend_id)
                .returning(MeasurementEpoch.id)
            ).scalar_one()
            records = [
                MeasurementRecord(epoch_id, sequence, pcr, digest, kind, enclave_id)
                for sequence, (pcr, digest, kind, enclave_id) in enumerate(events, start=1)
            ]
            if records:
                connection.execute(
                    insert(Measurement),
                    [{**dataclasses.asdict(record), "created_at": now} for record in records],
                )
            # Only this backend's older epochs: the others' belong to other TPMs.
            older = select(MeasurementEpoch.id).where(
                MeasurementEpoch.backend_id.is_not_distinct_from(self._backend_id),
                MeasurementEpoch.id < epoch_id,
            )
            connection.execute(delete(Measurement).where(Measurement.epoch_id.in_(older)))
            connection.execute(
                delete(MeasurementEpoch).where(MeasurementEpoch.id.in_(older.scalar_subquery()))
            )
            return EpochRecord(epoch_id, reset_count), records

        return await self._db.run(start)
