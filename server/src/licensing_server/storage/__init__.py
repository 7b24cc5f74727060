"""Persistence: SQLAlchemy 2 models, Alembic migrations and the stores the domain uses."""

from licensing_common.phases import Phase
from licensing_server.storage._backends import BackendDirectory, BackendRecord
from licensing_server.storage._buckets import SharedBuckets, rate_buckets
from licensing_server.storage._database import Database, DatabaseUnavailable, run_migrations
from licensing_server.storage._enclaves import (
    MAX_SEQUENCE,
    EnclaveRecord,
    EnclaveStore,
    EventRecord,
    Limits,
    event_payload,
    parse_event_payload,
)
from licensing_server.storage._measurements import (
    EpochRecord,
    MeasurementRecord,
    MeasurementStore,
)
from licensing_server.storage._notifications import (
    ENCLAVE_EVENTS,
    SESSIONS_REVOKED,
    Notifications,
    notifications,
)
from licensing_server.storage._reattestations import (
    REATTESTED_PREFIX,
    ReattestationResult,
    ReattestationStore,
)
from licensing_server.storage._users import SessionRecord, UserRecord, UserStore

__all__ = [
    "ENCLAVE_EVENTS",
    "MAX_SEQUENCE",
    "REATTESTED_PREFIX",
    "SESSIONS_REVOKED",
    "BackendDirectory",
    "BackendRecord",
    "Database",
    "DatabaseUnavailable",
    "EnclaveRecord",
    "EnclaveStore",
    "EpochRecord",
    "EventRecord",
    "Limits",
    "MeasurementRecord",
    "MeasurementStore",
    "Notifications",
    "Phase",
    "ReattestationResult",
    "ReattestationStore",
    "SessionRecord",
    "SharedBuckets",
    "UserRecord",
    "UserStore",
    "event_payload",
    "notifications",
    "parse_event_payload",
    "rate_buckets",
    "run_migrations",
]
