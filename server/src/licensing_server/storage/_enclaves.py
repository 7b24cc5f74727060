"""Enclave rows and their event log: the durable record every phase is written to first."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Select, bindparam, delete, func, insert, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError

from licensing_common.errors import FailedPrecondition, NotFound, ResourceExhausted
from licensing_common.phases import Phase
from licensing_server.storage._database import Database
from licensing_server.storage._models import Backend, Enclave, EnclaveEvent, Entitlement, User
from licensing_server.storage._notifications import ENCLAVE_EVENTS, notify_on

#: Phases that hold a licence: everything but FAILED (deleted enclaves have no row).
_NOT_COUNTED = (Phase.FAILED.value,)
#: The largest event sequence the schema can hold (a 32-bit ``Integer`` column);
#: callers validate sequences against it before they reach a query.
MAX_SEQUENCE = 2**31 - 1
#: Ids per ``IN (...)``: well under SQLite's and PostgreSQL's bound-parameter limits.
_IN_CHUNK = 500


@dataclass(frozen=True, slots=True)
class EnclaveRecord:
    id: str
    owner_id: str
    request_id: str
    phase: Phase
    last_sequence: int
    created_at: dt.datetime
    expires_at: dt.datetime
    nonce: bytes
    endpoint: str
    tls_server_name: str
    certificate_pem: str
    certificate_sha256: bytes
    failure_reason: str
    runtime_handle: str
    attestation: bytes | None = None
    backend_id: str | None = None


@dataclass(frozen=True, slots=True)
class EventRecord:
    enclave_id: str
    sequence: int
    phase: Phase
    message: str
    time: dt.datetime


@dataclass(frozen=True, slots=True)
class Limits:
    max_enclaves: int
    enclave_ttl: dt.timedelta


def _record(row: Any) -> EnclaveRecord:
    """The record of an enclaves row (a row of ``_ENCLAVES``, read by column name)."""
    return EnclaveRecord(
        id=row.id,
        owner_id=row.owner_id,
        request_id=row.request_id,
        phase=Phase(row.phase),
        last_sequence=row.last_sequence,
        created_at=row.created_at,
        expires_at=row.expires_at,
        nonce=row.nonce,
        endpoint=row.endpoint,
        tls_server_name=row.tls_server_name,
        certificate_pem=row.certificate_pem,
        certificate_sha256=row.certificate_sha256,
        failure_reason=row.failure_reason,
        runtime_handle=row.runtime_handle,
        attestation=row.attestation,
        backend_id=row.backend_id,
    )


#: Every column of an enclave, as ``_record`` reads them (Core: no ORM objects to build).
_ENCLAVES = select(Enclave.__table__)
# The statements every create runs are built once: a statement built per call costs
# SQLAlchemy its cache key each time (~5 % of a process's samples while provisioning).
_ENCLAVE_BY_ID = _ENCLAVES.where(Enclave.id == bindparam("id"))
_ENCLAVE_BY_REQUEST = _ENCLAVES.where(
    Enclave.owner_id == bindparam("owner_id"), Enclave.request_id == bindparam("request_id")
)
_LIMITS = select(Entitlement.max_enclaves, Entitlement.enclave_ttl_seconds).where(
    Entitlement.user_id == bindparam("user_id")
)
_LOCK_OWNER = select(User.id).where(User.id == bindparam("owner_id")).with_for_update()
_HELD = (
    select(func.count())
    .select_from(Enclave)
    .where(Enclave.owner_id == bindparam("owner_id"), Enclave.phase.not_in(_NOT_COUNTED))
)
_INSERT_EVENT = insert(EnclaveEvent)
#: What a phase change may bring along; a ``None`` keeps the column as it is.
_BROUGHT = (
    Enclave.endpoint,
    Enclave.tls_server_name,
    Enclave.certificate_pem,
    Enclave.certificate_sha256,
    Enclave.failure_reason,
    Enclave.runtime_handle,
    Enclave.attestation,
)
#: The next sequence is taken in the UPDATE itself: no read-then-write window in which
#: another process's advance could take the same one.
_ADVANCE = (
    update(Enclave)
    .where(Enclave.id == bindparam("b_id"), Enclave.phase != Phase.FAILED.value)
    .values(
        last_sequence=Enclave.last_sequence + 1,
        phase=bindparam("b_phase", type_=Enclave.phase.type),
        updated_at=bindparam("b_now", type_=Enclave.updated_at.type),
        **{
            column.key: func.coalesce(bindparam(f"b_{column.key}", type_=column.type), column)
            for column in _BROUGHT
        },
    )
    .returning(Enclave.last_sequence)
)
_BY_B_ID = update(Enclave).where(Enclave.id == bindparam("b_id"))
_SET_HANDLE = _BY_B_ID.values(runtime_handle=bindparam("b_value"))
_CLAIM = _BY_B_ID.values(backend_id=bindparam("b_value"))
_DELETE_EVENTS = delete(EnclaveEvent).where(EnclaveEvent.enclave_id == bindparam("id"))
_DELETE_ENCLAVE = delete(Enclave).where(Enclave.id == bindparam("id"))


def event_row(event: EventRecord) -> dict[str, object]:
    """The ``enclave_events`` row of ``event``, for an INSERT."""
    return {
        "enclave_id": event.enclave_id,
        "sequence": event.sequence,
        "phase": event.phase.value,
        "message": event.message,
        "created_at": event.time,
    }


def event_payload(event: EventRecord) -> str:
    """The event as a notification carries it (a message is at most 1,024 characters, so
    even escaped it stays under PostgreSQL's 8,000-byte payload limit)."""
    return json.dumps(
        {
            "id": event.enclave_id,
            "seq": event.sequence,
            "phase": event.phase.value,
            "message": event.message,
            "time": event.time.isoformat(),
        }
    )


def parse_event_payload(payload: str) -> EventRecord | str:
    """The event a notification carries, or the id of the enclave it says was deleted."""
    fields = json.loads(payload)
    if fields.get("deleted"):
        return str(fields["id"])
    return EventRecord(
        str(fields["id"]),
        int(fields["seq"]),
        Phase(fields["phase"]),
        str(fields["message"]),
        dt.datetime.fromisoformat(fields["time"]),
    )


_EVENTS_AFTER = (
    select(EnclaveEvent.sequence, EnclaveEvent.phase, EnclaveEvent.message, EnclaveEvent.created_at)
    .where(
        EnclaveEvent.enclave_id == bindparam("enclave_id"),
        EnclaveEvent.sequence > bindparam("after"),
    )
    .order_by(EnclaveEvent.sequence)
)


class EnclaveStore:
    """Each method is one transaction of ``Database.run``: on SQLite one hop to a worker
    thread, where the async ORM paid one per driver call (six to eight per statement)."""

    def __init__(self, database: Database):
        self._db = database

    # Licences -----------------------------------------------------------------
    async def limits(self, user_id: str, defaults: Limits) -> Limits:
        row = await self._db.run(
            lambda connection: connection.execute(_LIMITS, {"user_id": user_id}).first(),
            writes=False,
        )
        if row is None:
            return defaults
        return Limits(
            row.max_enclaves if row.max_enclaves is not None else defaults.max_enclaves,
            dt.timedelta(seconds=row.enclave_ttl_seconds)
            if row.enclave_ttl_seconds is not None
            else defaults.enclave_ttl,
        )

    async def set_entitlement(
        self,
        username: str,
        max_enclaves: int | None,
        enclave_ttl_seconds: int | None,
        now: dt.datetime,
        *,
        replace: bool = False,
    ) -> str:
        """Override a user's limits; ``None`` keeps the current value unless ``replace``."""
        values: dict[str, object] = {"updated_at": now}
        if replace or max_enclaves is not None:
            values["max_enclaves"] = max_enclaves
        if replace or enclave_ttl_seconds is not None:
            values["enclave_ttl_seconds"] = enclave_ttl_seconds

        def entitle(connection: Connection) -> str:
            user_id = connection.execute(select(User.id).where(User.username == username)).scalar()
            if user_id is None:
                raise NotFound("USER_NOT_FOUND", f"no user named {username!r}")
            updated = connection.execute(
                update(Entitlement).where(Entitlement.user_id == user_id).values(**values)
            )
            if updated.rowcount == 0:
                connection.execute(insert(Entitlement).values(user_id=user_id, **values))
            return str(user_id)

        return await self._db.run(entitle)

    # Creating -----------------------------------------------------------------
    async def reserve(
        self, *, owner_id: str, request_id: str, nonce: bytes, limits: Limits, now: dt.datetime
    ) -> tuple[EnclaveRecord, bool]:
        """Reserve a licence and record ACCEPTED, or return the enclave of this request id.

        The owner's user row is locked first (PostgreSQL) so concurrent creates of
        one user count one after another; SQLite serialises writers by itself.
        """

        def find(connection: Connection) -> EnclaveRecord | None:
            row = connection.execute(
                _ENCLAVE_BY_REQUEST, {"owner_id": owner_id, "request_id": request_id}
            ).first()
            return _record(row) if row is not None else None

        def reserve(connection: Connection) -> tuple[EnclaveRecord, bool]:
            connection.execute(_LOCK_OWNER, {"owner_id": owner_id})
            existing = find(connection)
            if existing is not None:
                return existing, False
            held = connection.execute(_HELD, {"owner_id": owner_id}).scalar_one()
            if held >= limits.max_enclaves:
                raise ResourceExhausted(
                    "ENCLAVE_LIMIT_REACHED",
                    f"your licence allows {limits.max_enclaves} enclaves at once",
                    {"limit": str(limits.max_enclaves), "held": str(held)},
                )
            record = EnclaveRecord(
                id=str(uuid.uuid4()),
                owner_id=owner_id,
                request_id=request_id,
                phase=Phase.ACCEPTED,
                last_sequence=1,
                created_at=now,
                expires_at=now + limits.enclave_ttl,
                nonce=nonce,
                endpoint="",
                tls_server_name="",
                certificate_pem="",
                certificate_sha256=b"",
                failure_reason="",
                runtime_handle="",
            )
            row = dataclasses.asdict(record) | {"phase": record.phase.value, "updated_at": now}
            connection.execute(insert(Enclave).values(row))
            message = f"licence reserved ({held + 1} of {limits.max_enclaves})"
            accepted = EventRecord(record.id, 1, record.phase, message, now)
            connection.execute(_INSERT_EVENT, event_row(accepted))
            return record, True

        try:
            return await self._db.run(reserve)
        except IntegrityError:
            # A concurrent create with the same request id won the insert.
            existing = await self._db.run(find, writes=False)
            if existing is None:
                raise
            return existing, False

    async def advance(
        self,
        enclave_id: str,
        phase: Phase,
        message: str,
        now: dt.datetime,
        *,
        endpoint: str | None = None,
        tls_server_name: str | None = None,
        certificate_pem: str | None = None,
        certificate_sha256: bytes | None = None,
        failure_reason: str | None = None,
        runtime_handle: str | None = None,
        attestation: bytes | None = None,
    ) -> EventRecord:
        """Record a phase change (and what came with it) as the next event."""
        parameters = {
            "b_id": enclave_id,
            "b_phase": phase.value,
            "b_now": now,
            "b_endpoint": endpoint,
            "b_tls_server_name": tls_server_name,
            "b_certificate_pem": certificate_pem,
            "b_certificate_sha256": certificate_sha256,
            "b_failure_reason": failure_reason,
            "b_runtime_handle": runtime_handle,
            "b_attestation": attestation,
        }

        def advance(connection: Connection) -> EventRecord:
            sequence = connection.execute(_ADVANCE, parameters).scalar()
            if sequence is None:
                exists = connection.execute(_ENCLAVE_BY_ID, {"id": enclave_id}).first()
                if exists is None:
                    raise NotFound("ENCLAVE_NOT_FOUND", "the enclave no longer exists")
                raise FailedPrecondition("ENCLAVE_FAILED", "the enclave already failed")
            record = EventRecord(enclave_id, sequence, phase, message[:1024], now)
            connection.execute(_INSERT_EVENT, event_row(record))
            notify_on(connection, ENCLAVE_EVENTS, event_payload(record))
            return record

        return await self._db.run(advance)

    async def set_runtime_handle(self, enclave_id: str, handle: str) -> None:
        parameters = {"b_id": enclave_id, "b_value": handle}
        await self._db.run(lambda connection: connection.execute(_SET_HANDLE, parameters))

    async def claim(self, enclave_id: str, backend_id: str) -> None:
        """Record that ``backend_id`` drives the enclave's provisioning from now on."""
        parameters = {"b_id": enclave_id, "b_value": backend_id}
        await self._db.run(lambda connection: connection.execute(_CLAIM, parameters))

    # Backends (PostgreSQL replicas) ---------------------------------------------
    async def heartbeat(self, backend_id: str) -> None:
        """``backend_id`` is alive now, by the database's clock (one clock for all backends)."""
        statement = pg_insert(Backend).values(id=backend_id, heartbeat_at=func.now())
        statement = statement.on_conflict_do_update(
            index_elements=[Backend.id], set_={"heartbeat_at": func.now()}
        )
        await self._db.run(lambda connection: connection.execute(statement))

    async def live_backends(self, within: dt.timedelta) -> set[str]:
        """Backends whose heartbeat is younger than ``within`` (the database's clock)."""
        query = select(Backend.id).where(Backend.heartbeat_at > func.now() - within)
        return await self._db.run(
            lambda connection: set(connection.execute(query).scalars()), writes=False
        )

    # Reading ------------------------------------------------------------------
    async def get(self, enclave_id: str) -> EnclaveRecord | None:
        def read(connection: Connection) -> EnclaveRecord | None:
            row = connection.execute(_ENCLAVE_BY_ID, {"id": enclave_id}).first()
            return _record(row) if row is not None else None

        return await self._db.run(read, writes=False)

    async def list_owned(
        self, owner_id: str, limit: int, after: tuple[dt.datetime, str] | None
    ) -> list[EnclaveRecord]:
        query = _ENCLAVES.where(Enclave.owner_id == owner_id)
        if after is not None:
            query = query.where(tuple_(Enclave.created_at, Enclave.id) > tuple_(*after))
        return await self._records(query.order_by(Enclave.created_at, Enclave.id).limit(limit))

    async def events_after(self, enclave_id: str, sequence: int) -> list[EventRecord]:
        def read(connection: Connection) -> list[EventRecord]:
            rows = connection.execute(_EVENTS_AFTER, {"enclave_id": enclave_id, "after": sequence})
            return [
                EventRecord(enclave_id, r.sequence, Phase(r.phase), r.message, r.created_at)
                for r in rows
            ]

        # Every watcher reads this when rung.
        return await self._db.run(read, writes=False)

    async def newest_sequences(self, enclave_ids: Sequence[str]) -> dict[str, int]:
        """The newest event sequence of each enclave; enclaves that no longer exist are absent."""

        def read(connection: Connection) -> dict[str, int]:
            heads: dict[str, int] = {}
            for start in range(0, len(enclave_ids), _IN_CHUNK):
                chunk = enclave_ids[start : start + _IN_CHUNK]
                rows = connection.execute(
                    select(EnclaveEvent.enclave_id, func.max(EnclaveEvent.sequence))
                    .where(EnclaveEvent.enclave_id.in_(chunk))
                    .group_by(EnclaveEvent.enclave_id)
                )
                heads.update({enclave_id: int(newest) for enclave_id, newest in rows})
            return heads

        # The event tail asks this every tick while anyone watches (``EventTail``).
        return await self._db.run(read, writes=False)

    async def in_phases(self, phases: set[Phase]) -> list[EnclaveRecord]:
        return await self._records(_ENCLAVES.where(Enclave.phase.in_([p.value for p in phases])))

    async def expired(self, now: dt.datetime) -> list[EnclaveRecord]:
        return await self._records(_ENCLAVES.where(Enclave.expires_at <= now))

    async def all_ids(self) -> set[str]:
        query = select(Enclave.id)
        return await self._db.run(
            lambda connection: set(connection.execute(query).scalars()), writes=False
        )

    async def _records(self, query: Select[Any]) -> list[EnclaveRecord]:
        return await self._db.run(
            lambda connection: [_record(row) for row in connection.execute(query)], writes=False
        )

    # Removing -----------------------------------------------------------------
    async def remove(self, enclave_id: str) -> None:
        """Delete the enclave and its events: nothing of it stays behind."""

        def remove(connection: Connection) -> None:
            connection.execute(_DELETE_EVENTS, {"id": enclave_id})
            connection.execute(_DELETE_ENCLAVE, {"id": enclave_id})
            notify_on(connection, ENCLAVE_EVENTS, json.dumps({"id": enclave_id, "deleted": True}))

        await self._db.run(remove)
