"""The PCR 23 event log: which certificate hashes were extended, in which epoch."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select

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
    def __init__(self, database: Database):
        self._db = database

    async def current_epoch(self) -> EpochRecord | None:
        async with self._db.session() as session:
            row = await session.scalar(
                select(MeasurementEpoch).order_by(MeasurementEpoch.id.desc()).limit(1)
            )
            return EpochRecord(row.id, row.reset_count) if row else None

    async def start_epoch(self, reset_count: int, now: dt.datetime) -> EpochRecord:
        async with self._db.session() as session:
            row = MeasurementEpoch(reset_count=reset_count, started_at=now)
            session.add(row)
            await session.flush()
            return EpochRecord(row.id, row.reset_count)

    async def append(
        self,
        epoch: EpochRecord,
        pcr: int,
        digest: bytes,
        kind: str,
        enclave_id: str,
        now: dt.datetime,
    ) -> MeasurementRecord:
        async with self._db.session() as session:
            last = await session.scalar(
                select(func.max(Measurement.sequence)).where(Measurement.epoch_id == epoch.id)
            )
            row = Measurement(
                epoch_id=epoch.id,
                sequence=(last or 0) + 1,
                pcr=pcr,
                digest=digest,
                kind=kind,
                enclave_id=enclave_id,
                created_at=now,
            )
            session.add(row)
            return MeasurementRecord(epoch.id, row.sequence, pcr, digest, kind, enclave_id)

    async def events(self, epoch: EpochRecord) -> list[MeasurementRecord]:
        async with self._db.session() as session:
            rows = await session.scalars(
                select(Measurement)
                .where(Measurement.epoch_id == epoch.id)
                .order_by(Measurement.sequence)
            )
            return [
                MeasurementRecord(r.epoch_id, r.sequence, r.pcr, r.digest, r.kind, r.enclave_id)
                for r in rows
            ]
