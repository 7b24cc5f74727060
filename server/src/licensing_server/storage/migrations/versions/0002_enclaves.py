"""Enclaves, their events and per-user entitlements.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "entitlements",
        sa.Column(
            "user_id",
            sa.String(36),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("max_enclaves", sa.Integer(), nullable=True),
        sa.Column("enclave_ttl_seconds", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "enclaves",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "owner_id",
            sa.String(36),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("phase", sa.String(32), nullable=False),
        sa.Column("last_sequence", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("nonce", sa.LargeBinary(64), nullable=False),
        sa.Column("endpoint", sa.String(255), nullable=False),
        sa.Column("tls_server_name", sa.String(255), nullable=False),
        sa.Column("certificate_pem", sa.Text(), nullable=False),
        sa.Column("certificate_sha256", sa.LargeBinary(32), nullable=False),
        sa.Column("failure_reason", sa.String(64), nullable=False),
        sa.Column("runtime_handle", sa.Text(), nullable=False),
        sa.UniqueConstraint("owner_id", "request_id", name="uq_enclaves_owner_request"),
    )
    op.create_index("ix_enclaves_owner_created", "enclaves", ["owner_id", "created_at", "id"])
    op.create_index("ix_enclaves_phase", "enclaves", ["phase"])
    op.create_table(
        "enclave_events",
        sa.Column(
            "enclave_id",
            sa.String(36),
            sa.ForeignKey("enclaves.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("sequence", sa.Integer(), primary_key=True),
        sa.Column("phase", sa.String(32), nullable=False),
        sa.Column("message", sa.String(1024), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("enclave_events")
    op.drop_table("enclaves")
    op.drop_table("entitlements")
