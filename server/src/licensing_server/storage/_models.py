"""Tables. Timestamps are stored as UTC and always read back timezone-aware."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[dt.datetime]):
    """SQLite forgets time zones; this puts UTC back on the way out."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(dt.UTC)

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # Normalised (see auth.usernames); unique is what makes concurrent SignUps safe.
    username: Mapped[str] = mapped_column(String(32), unique=True)
    password_hash: Mapped[str] = mapped_column(String(60))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class Session(Base):
    """One login: a refresh-token family and the access tokens minted from it."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    client_certificate_sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    revoked_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)


class RefreshToken(Base):
    """Refresh tokens are stored as SHA-256 only; the token itself is never kept."""

    __tablename__ = "refresh_tokens"
    __table_args__ = (Index("ix_refresh_tokens_session_id", "session_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    used_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class Entitlement(Base):
    """Per-user licence overrides; absent means the configured defaults."""

    __tablename__ = "entitlements"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    max_enclaves: Mapped[int | None] = mapped_column(nullable=True)
    enclave_ttl_seconds: Mapped[int | None] = mapped_column(nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class Enclave(Base):
    """One enclave and where it stands; ``phase`` is the name of a ``licensing.v1.Phase``."""

    __tablename__ = "enclaves"
    __table_args__ = (
        UniqueConstraint("owner_id", "request_id", name="uq_enclaves_owner_request"),
        Index("ix_enclaves_owner_created", "owner_id", "created_at", "id"),
        Index("ix_enclaves_phase", "phase"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    request_id: Mapped[str] = mapped_column(String(64))
    phase: Mapped[str] = mapped_column(String(32))
    last_sequence: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    nonce: Mapped[bytes] = mapped_column(LargeBinary(64))
    endpoint: Mapped[str] = mapped_column(String(255), default="")
    tls_server_name: Mapped[str] = mapped_column(String(255), default="")
    certificate_pem: Mapped[str] = mapped_column(Text, default="")
    certificate_sha256: Mapped[bytes] = mapped_column(LargeBinary(32), default=b"")
    failure_reason: Mapped[str] = mapped_column(String(64), default="")
    # What the runtime needs to find the workload again after a restart (JSON).
    runtime_handle: Mapped[str] = mapped_column(Text, default="")
    # The licensing.v1.Attestation of the ATTESTED event (serialized protobuf).
    attestation: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # The backend (``Settings.effective_backend_id``) whose task provisions (provisioned) it:
    # with replicas, only that backend, or the leader once it is gone, settles the row.
    backend_id: Mapped[str | None] = mapped_column(String(255), nullable=True)


class Backend(Base):
    """A live backend (PostgreSQL replicas): ``heartbeat_at`` is the database's clock."""

    __tablename__ = "backends"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    # host:port where frontends of other pods reach this backend's QuoteService ("": none).
    quote_address: Mapped[str] = mapped_column(String(255), default="", server_default="")
    # This backend's AK certificate chain (PEM, leaf first), for every frontend's trust bundle.
    ak_certificate_chain_pem: Mapped[str] = mapped_column(Text, default="", server_default="")


class EnclaveEvent(Base):
    """Every phase change, in order; written before it is reported to anyone."""

    __tablename__ = "enclave_events"

    enclave_id: Mapped[str] = mapped_column(
        ForeignKey("enclaves.id", ondelete="CASCADE"), primary_key=True
    )
    sequence: Mapped[int] = mapped_column(Integer, primary_key=True)
    phase: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class MeasurementEpoch(Base):
    """One life of PCR 23: from a reset by the backend (live set changed, or TPM reset)."""

    __tablename__ = "measurement_epochs"
    __table_args__ = (Index("ix_measurement_epochs_backend_id", "backend_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # Whose TPM's PCR 23 this is (None: SQLite's single backend).
    backend_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    reset_count: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class Measurement(Base):
    """One extend of PCR 23, in order within its epoch: the event log clients replay."""

    __tablename__ = "measurements"

    epoch_id: Mapped[int] = mapped_column(
        ForeignKey("measurement_epochs.id", ondelete="CASCADE"), primary_key=True
    )
    sequence: Mapped[int] = mapped_column(Integer, primary_key=True)
    pcr: Mapped[int] = mapped_column(Integer)
    digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    kind: Mapped[str] = mapped_column(String(32))
    enclave_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class Reattestation(Base):
    """The attestation a re-attestation round made, for the ATTESTED event it came with.

    Kept apart from ``enclaves.attestation`` (the provisioning one, over the creator's
    nonce), so replaying history gives every ATTESTED event its own evidence.
    """

    __tablename__ = "reattestations"

    enclave_id: Mapped[str] = mapped_column(
        ForeignKey("enclaves.id", ondelete="CASCADE"), primary_key=True
    )
    sequence: Mapped[int] = mapped_column(Integer, primary_key=True)
    round: Mapped[int] = mapped_column(Integer)
    attestation: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
