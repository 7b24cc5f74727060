"""Rate-limit buckets shared by frontend replicas (PostgreSQL; SQLite keeps them in memory).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # key: a digest of the bucket's name (storage._buckets). No index beyond the key:
    # every take rewrites full_at, and an indexed full_at would make each rewrite a
    # non-HOT update; fillfactor leaves room on the page for HOT updates. UNLOGGED: no
    # WAL, so a take commits without waiting for a flush; a crash empties the table,
    # which leaves every bucket full, as restarting an in-memory limiter does.
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "rate_buckets",
        sa.Column("key", sa.LargeBinary(16), primary_key=True),
        sa.Column("full_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_take_granted", sa.Boolean(), nullable=False),
        postgresql_with={"fillfactor": 70},
        prefixes=["UNLOGGED"] if postgresql else [],
    )


def downgrade() -> None:
    op.drop_table("rate_buckets")
