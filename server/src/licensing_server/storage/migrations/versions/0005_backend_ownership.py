"""Which backend drives each enclave, and which backends are alive (PostgreSQL replicas).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: rows from before (and SQLite's, whose single backend never sets it) have none.
    with op.batch_alter_table("enclaves") as batch:
        batch.add_column(sa.Column("backend_id", sa.String(255), nullable=True))
    op.create_table(
        "backends",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("backends")
    with op.batch_alter_table("enclaves") as batch:
        batch.drop_column("backend_id")
