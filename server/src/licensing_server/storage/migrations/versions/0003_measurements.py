"""Measurement log of PCR 23 and the attestation of each enclave.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "measurement_epochs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("reset_count", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "measurements",
        sa.Column(
            "epoch_id",
            sa.Integer(),
            sa.ForeignKey("measurement_epochs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("sequence", sa.Integer(), primary_key=True),
        sa.Column("pcr", sa.Integer(), nullable=False),
        sa.Column("digest", sa.LargeBinary(32), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("enclave_id", sa.String(36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("enclaves") as batch:
        batch.add_column(sa.Column("attestation", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("enclaves") as batch:
        batch.drop_column("attestation")
    op.drop_table("measurements")
    op.drop_table("measurement_epochs")
