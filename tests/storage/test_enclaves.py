"""EnclaveStore on a real database: licences, the event log, the reaper's and reconciler's views."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest
import sqlalchemy as sa

from licensing_common.errors import FailedPrecondition, NotFound, ResourceExhausted
from licensing_server.storage import (
    Database,
    EnclaveRecord,
    EnclaveStore,
    Limits,
    Phase,
    UserRecord,
)
from tests.storage.conftest import NOW, new_user
from tests.support import AFTER_ACCEPTED

_HOUR = dt.timedelta(hours=1)
_LIMITS = Limits(max_enclaves=3, enclave_ttl=_HOUR)


async def _reserve(
    store: EnclaveStore,
    owner: UserRecord,
    request_id: str | None = None,
    limits: Limits = _LIMITS,
    now: dt.datetime = NOW,
) -> tuple[EnclaveRecord, bool]:
    return await store.reserve(
        owner_id=owner.id,
        request_id=request_id or uuid.uuid4().hex,
        nonce=b"n" * 32,
        limits=limits,
        now=now,
    )


# Licences ---------------------------------------------------------------------
async def test_reserve_records_accepted_as_event_one(database: Database) -> None:
    store = EnclaveStore(database)
    owner = await new_user(database)
    record, created = await _reserve(store, owner, "r1")
    assert created
    assert (record.owner_id, record.request_id, record.phase, record.last_sequence) == (
        owner.id,
        "r1",
        Phase.ACCEPTED,
        1,
    )
    assert (record.created_at, record.expires_at, record.nonce) == (NOW, NOW + _HOUR, b"n" * 32)
    assert await store.get(record.id) == record
    [event] = await store.events_after(record.id, 0)
    assert (event.enclave_id, event.sequence, event.phase, event.time) == (
        record.id,
        1,
        Phase.ACCEPTED,
        NOW,
    )
    assert event.message == "licence reserved (1 of 3)"


async def test_reserve_is_idempotent_by_request_id(database: Database) -> None:
    store = EnclaveStore(database)
    owner = await new_user(database)
    first, created = await _reserve(store, owner, "same")
    again, created_again = await _reserve(store, owner, "same", now=NOW + _HOUR)
    assert (created, created_again) == (True, False)
    assert again == first
    assert len(await store.list_owned(owner.id, 10, None)) == 1
    # Request ids are per owner: another user's "same" is another enclave.
    other, other_created = await _reserve(store, await new_user(database), "same")
    assert other_created
    assert other.id != first.id


async def test_concurrent_reserves_of_one_request_id_make_one_enclave(database: Database) -> None:
    store = EnclaveStore(database)
    owner = await new_user(database)
    results = await asyncio.gather(*(_reserve(store, owner, "raced") for _ in range(5)))
    assert len({record.id for record, _ in results}) == 1
    assert [created for _, created in results].count(True) == 1
    assert len(await store.list_owned(owner.id, 10, None)) == 1


async def test_reserve_refuses_past_the_limit_and_says_by_how_much(database: Database) -> None:
    store = EnclaveStore(database)
    owner = await new_user(database)
    for _ in range(_LIMITS.max_enclaves):
        await _reserve(store, owner)
    with pytest.raises(ResourceExhausted) as caught:
        await _reserve(store, owner)
    assert caught.value.reason == "ENCLAVE_LIMIT_REACHED"
    assert caught.value.metadata == {"limit": "3", "held": "3"}
    assert len(await store.list_owned(owner.id, 10, None)) == 3
    # Repeating a request that already holds a licence still answers, at the limit.
    held = await store.list_owned(owner.id, 10, None)
    again, created = await _reserve(store, owner, held[0].request_id)
    assert (again.id, created) == (held[0].id, False)


async def test_a_limit_of_zero_refuses_every_enclave(database: Database) -> None:
    store = EnclaveStore(database)
    with pytest.raises(ResourceExhausted) as caught:
        await _reserve(store, await new_user(database), limits=Limits(0, _HOUR))
    assert caught.value.metadata == {"limit": "0", "held": "0"}


async def test_failed_enclaves_hold_no_licence_and_removed_ones_free_theirs(
    database: Database,
) -> None:
    store = EnclaveStore(database)
    owner = await new_user(database)
    limits = Limits(1, _HOUR)
    failed, _ = await _reserve(store, owner, limits=limits)
    await store.advance(failed.id, Phase.FAILED, "did not start", NOW, failure_reason="X")
    live, created = await _reserve(store, owner, limits=limits)
    assert created
    with pytest.raises(ResourceExhausted):
        await _reserve(store, owner, limits=limits)
    await store.remove(live.id)
    _, created = await _reserve(store, owner, limits=limits)
    assert created


async def test_limits_are_the_defaults_until_an_entitlement_overrides_them(
    database: Database,
) -> None:
    store = EnclaveStore(database)
    owner = await new_user(database)
    assert await store.limits(owner.id, _LIMITS) == _LIMITS
    user_id = await store.set_entitlement(owner.username, 7, None, NOW)
    assert user_id == owner.id
    assert await store.limits(owner.id, _LIMITS) == Limits(7, _HOUR)
    # None keeps the value already set...
    await store.set_entitlement(owner.username, None, 60, NOW)
    assert await store.limits(owner.id, _LIMITS) == Limits(7, dt.timedelta(seconds=60))
    # ...unless the entitlement is replaced: then None means the default again.
    await store.set_entitlement(owner.username, None, 120, NOW, replace=True)
    assert await store.limits(owner.id, _LIMITS) == Limits(3, dt.timedelta(seconds=120))


async def test_an_entitlement_for_an_unknown_user_is_not_found(database: Database) -> None:
    with pytest.raises(NotFound) as caught:
        await EnclaveStore(database).set_entitlement("nobody-has-this-name", 1, None, NOW)
    assert caught.value.reason == "USER_NOT_FOUND"


# The event log ----------------------------------------------------------------
async def test_events_are_contiguous_and_carry_what_came_with_them(database: Database) -> None:
    store = EnclaveStore(database)
    record, _ = await _reserve(store, await new_user(database))
    for minute, phase in enumerate(AFTER_ACCEPTED, start=1):
        event = await store.advance(
            record.id, phase, f"now {phase}", NOW + dt.timedelta(minutes=minute)
        )
        assert (event.sequence, event.phase) == (minute + 1, phase)
    events = await store.events_after(record.id, 0)
    assert [e.sequence for e in events] == list(range(1, len(AFTER_ACCEPTED) + 2))
    assert [e.phase for e in events] == [Phase.ACCEPTED, *AFTER_ACCEPTED]
    assert [e.time for e in events] == [NOW + dt.timedelta(minutes=m) for m in range(7)]
    assert [e.sequence for e in await store.events_after(record.id, 4)] == [5, 6, 7]
    assert await store.events_after(record.id, 7) == []
    current = await store.get(record.id)
    assert current is not None
    assert (current.phase, current.last_sequence) == (Phase.ATTESTED, 7)
    assert await store.newest_sequences([record.id]) == {record.id: 7}


async def test_advance_stores_the_fields_given_and_keeps_the_others(database: Database) -> None:
    store = EnclaveStore(database)
    record, _ = await _reserve(store, await new_user(database))
    await store.advance(
        record.id,
        Phase.RUNNING,
        "started",
        NOW,
        endpoint="127.0.0.1:9000",
        tls_server_name="e.licensing.internal",
        runtime_handle='{"pid": 1}',
    )
    await store.advance(
        record.id,
        Phase.ATTESTED,
        "x" * 5000,
        NOW,
        certificate_pem="PEM",
        certificate_sha256=b"\x01" * 32,
        attestation=b"evidence",
    )
    current = await store.get(record.id)
    assert current is not None
    assert (current.endpoint, current.tls_server_name, current.runtime_handle) == (
        "127.0.0.1:9000",
        "e.licensing.internal",
        '{"pid": 1}',
    )
    assert (current.certificate_pem, current.certificate_sha256, current.attestation) == (
        "PEM",
        b"\x01" * 32,
        b"evidence",
    )
    assert current.failure_reason == ""
    # Messages are cut to what the column holds rather than refused.
    assert len((await store.events_after(record.id, 2))[0].message) == 1024
    await store.set_runtime_handle(record.id, '{"pid": 2}')
    current = await store.get(record.id)
    assert current is not None
    assert (current.runtime_handle, current.last_sequence) == ('{"pid": 2}', 3)


async def test_nothing_follows_failed(database: Database) -> None:
    """FAILED is final: a late step of a provisioning that failed cannot revive the enclave."""
    store = EnclaveStore(database)
    record, _ = await _reserve(store, await new_user(database))
    await store.advance(record.id, Phase.SCHEDULED, "scheduled", NOW)
    await store.advance(record.id, Phase.FAILED, "gone", NOW, failure_reason="WORKLOAD_EXITED")
    for phase in (Phase.RUNNING, Phase.READY, Phase.FAILED):
        with pytest.raises(FailedPrecondition) as caught:
            await store.advance(record.id, phase, "too late", NOW)
        assert caught.value.reason == "ENCLAVE_FAILED"
    current = await store.get(record.id)
    assert current is not None
    assert (current.phase, current.last_sequence, current.failure_reason) == (
        Phase.FAILED,
        3,
        "WORKLOAD_EXITED",
    )
    assert [e.sequence for e in await store.events_after(record.id, 0)] == [1, 2, 3]


async def test_advancing_an_enclave_that_is_gone_is_not_found(database: Database) -> None:
    store = EnclaveStore(database)
    with pytest.raises(NotFound) as caught:
        await store.advance(str(uuid.uuid4()), Phase.RUNNING, "started", NOW)
    assert caught.value.reason == "ENCLAVE_NOT_FOUND"


async def test_newest_sequences_leaves_out_enclaves_that_do_not_exist(database: Database) -> None:
    store = EnclaveStore(database)
    owner = await new_user(database)
    one, _ = await _reserve(store, owner)
    two, _ = await _reserve(store, owner)
    await store.advance(two.id, Phase.SCHEDULED, "scheduled", NOW)
    # More ids than one IN (...) takes: the store asks in chunks.
    unknown = [str(uuid.uuid4()) for _ in range(1200)]
    heads = await store.newest_sequences([*unknown[:700], one.id, *unknown[700:], two.id])
    assert heads == {one.id: 1, two.id: 2}
    assert await store.newest_sequences([]) == {}


# Reading ----------------------------------------------------------------------
async def test_list_owned_pages_in_creation_order(database: Database) -> None:
    store = EnclaveStore(database)
    owner = await new_user(database)
    limits = Limits(10, _HOUR)
    made = [
        (await _reserve(store, owner, limits=limits, now=NOW + dt.timedelta(seconds=s)))[0]
        for s in (3, 1, 2, 1, 5)
    ]
    expected = sorted(made, key=lambda r: (r.created_at, r.id))
    pages: list[EnclaveRecord] = []
    after: tuple[dt.datetime, str] | None = None
    while page := await store.list_owned(owner.id, 2, after):
        assert len(page) <= 2
        pages += page
        after = (page[-1].created_at, page[-1].id)
    assert pages == expected
    await _reserve(store, await new_user(database))
    assert len(await store.list_owned(owner.id, 100, None)) == 5


async def test_in_phases_returns_the_enclaves_in_those_phases_only(database: Database) -> None:
    store = EnclaveStore(database)
    owner = await new_user(database)
    accepted, _ = await _reserve(store, owner)
    running, _ = await _reserve(store, owner)
    failed, _ = await _reserve(store, owner)
    await store.advance(running.id, Phase.RUNNING, "started", NOW)
    await store.advance(failed.id, Phase.FAILED, "gone", NOW)
    mine = {accepted.id, running.id, failed.id}

    async def ids(phases: set[Phase]) -> set[str]:
        return {r.id for r in await store.in_phases(phases)} & mine

    assert await ids({Phase.ACCEPTED}) == {accepted.id}
    assert await ids({Phase.RUNNING, Phase.FAILED}) == {running.id, failed.id}
    assert await ids({Phase.ATTESTED}) == set()
    assert await ids(set()) == set()


async def test_expired_is_every_enclave_whose_time_is_up(database: Database) -> None:
    store = EnclaveStore(database)
    owner = await new_user(database)
    short, _ = await _reserve(store, owner, limits=Limits(3, dt.timedelta(minutes=1)))
    long, _ = await _reserve(store, owner, limits=Limits(3, dt.timedelta(hours=2)))
    mine = {short.id, long.id}

    async def ids(now: dt.datetime) -> set[str]:
        return {r.id for r in await store.expired(now)} & mine

    assert await ids(NOW) == set()
    assert await ids(NOW + dt.timedelta(minutes=1)) == {short.id}  # expires_at itself is up
    assert await ids(NOW + dt.timedelta(hours=3)) == {short.id, long.id}
    assert mine <= await store.all_ids()


# Removing ---------------------------------------------------------------------
async def test_remove_takes_the_enclave_and_all_its_events(database: Database) -> None:
    store = EnclaveStore(database)
    owner = await new_user(database)
    record, _ = await _reserve(store, owner)
    kept, _ = await _reserve(store, owner)
    await store.advance(record.id, Phase.SCHEDULED, "scheduled", NOW)
    await store.remove(record.id)
    assert await store.get(record.id) is None
    assert await store.events_after(record.id, 0) == []
    assert record.id not in await store.all_ids()
    assert await store.newest_sequences([record.id, kept.id]) == {kept.id: 1}
    assert await _event_rows(database, record.id) == 0
    await store.remove(record.id)  # removing twice is harmless


async def test_deleting_a_user_cascades_to_their_enclaves_and_events(database: Database) -> None:
    """The foreign keys cascade on both databases (SQLite only with ``foreign_keys=ON``)."""
    store = EnclaveStore(database)
    owner = await new_user(database)
    record, _ = await _reserve(store, owner)
    await store.advance(record.id, Phase.SCHEDULED, "scheduled", NOW)
    await store.set_entitlement(owner.username, 5, None, NOW)
    async with database.session() as session:
        await session.execute(sa.text("DELETE FROM users WHERE id = :id"), {"id": owner.id})
    assert await store.get(record.id) is None
    assert await _event_rows(database, record.id) == 0
    async with database.session() as session:
        entitlements = await session.scalar(
            sa.text("SELECT count(*) FROM entitlements WHERE user_id = :id"), {"id": owner.id}
        )
    assert entitlements == 0


async def _event_rows(database: Database, enclave_id: str) -> int:
    async with database.session() as session:
        count = await session.scalar(
            sa.text("SELECT count(*) FROM enclave_events WHERE enclave_id = :id"),
            {"id": enclave_id},
        )
    return int(count or 0)


# Ownership (replicas) -----------------------------------------------------------
async def test_a_claimed_enclave_names_its_backend(database: Database) -> None:
    store = EnclaveStore(database)
    record, _ = await _reserve(store, await new_user(database))
    assert record.backend_id is None  # reserved: no backend drives it yet
    await store.claim(record.id, "backend-a")
    current = await store.get(record.id)
    assert current is not None
    assert current.backend_id == "backend-a"


async def test_a_backend_is_live_while_its_heartbeat_is_recent(
    database: Database, database_url: str
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip(reason="heartbeats are PostgreSQL's (SQLite has one backend)")
    store = EnclaveStore(database)
    name = f"backend-{uuid.uuid4().hex[:8]}"
    await store.heartbeat(name)
    await store.heartbeat(name)  # again: the same row, moved on
    assert name in await store.live_backends(dt.timedelta(seconds=30))
    await asyncio.sleep(1.2)
    assert name not in await store.live_backends(dt.timedelta(seconds=1))
