"""MeasurementStore on a real database: one epoch of the PCR 23 log at a time."""

from __future__ import annotations

import hashlib

import sqlalchemy as sa

from licensing_server.storage import Database, EpochRecord, MeasurementRecord, MeasurementStore
from tests.storage.conftest import NOW


def _events(*names: str) -> list[tuple[int, bytes, str, str]]:
    return [(23, hashlib.sha256(n.encode()).digest(), "enclave_set", n) for n in names]


async def _rows(database: Database, query: str) -> list[tuple[object, ...]]:
    async with database.session() as session:
        result = await session.execute(sa.text(query))
        return [tuple(row) for row in result]


async def test_an_epoch_numbers_its_events_from_one(database: Database) -> None:
    epoch, records = await MeasurementStore(database).start_epoch(4, NOW, _events("a", "b", "c"))
    assert epoch.reset_count == 4
    assert records == [
        MeasurementRecord(epoch.id, sequence, 23, digest, kind, enclave_id)
        for sequence, (_, digest, kind, enclave_id) in enumerate(_events("a", "b", "c"), start=1)
    ]


async def test_a_new_epoch_replaces_the_old_ones_and_its_id_keeps_rising(
    database: Database,
) -> None:
    store = MeasurementStore(database)
    first, _ = await store.start_epoch(1, NOW, _events("a", "b"))
    second, _ = await store.start_epoch(1, NOW, _events("c"))
    third, records = await store.start_epoch(2, NOW, [])
    assert first.id < second.id < third.id
    assert (third, records) == (EpochRecord(third.id, 2), [])
    fourth, records = await store.start_epoch(2, NOW, _events("d"))
    assert [r.epoch_id for r in records] == [fourth.id]
    # Only the newest epoch and its events are kept.
    assert await _rows(database, "SELECT id FROM measurement_epochs") == [(fourth.id,)]
    assert await _rows(database, "SELECT epoch_id, sequence FROM measurements") == [(fourth.id, 1)]


_BACKENDS_EPOCHS = (
    "SELECT id, backend_id FROM measurement_epochs WHERE backend_id IS NOT NULL ORDER BY id"
)


async def test_each_backend_drops_only_its_own_older_epochs(database: Database) -> None:
    """Two backends (two TPMs) on one database: one's rewrites never drop the other's log."""
    a, b = MeasurementStore(database, "backend-a"), MeasurementStore(database, "backend-b")
    a_first, _ = await a.start_epoch(1, NOW, _events("a1"))
    b_first, _ = await b.start_epoch(7, NOW, _events("b1"))
    for _ in range(3):
        await b.start_epoch(7, NOW, _events("b2"))
    b_last, _ = await b.start_epoch(7, NOW, _events("b3"))
    epochs = await _rows(database, _BACKENDS_EPOCHS)
    assert epochs == [(a_first.id, "backend-a"), (b_last.id, "backend-b")]
    a_second, _ = await a.start_epoch(1, NOW, _events("a2"))
    epochs = await _rows(database, _BACKENDS_EPOCHS)
    assert epochs == [(b_last.id, "backend-b"), (a_second.id, "backend-a")]
    kept = await _rows(
        database,
        "SELECT m.enclave_id FROM measurements m JOIN measurement_epochs e ON e.id = m.epoch_id "
        "WHERE e.backend_id IS NOT NULL ORDER BY m.epoch_id",
    )
    assert kept == [("b3",), ("a2",)]
    assert b_first.id < b_last.id
