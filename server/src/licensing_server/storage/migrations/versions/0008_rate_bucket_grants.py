"""Rate buckets remember how many tokens their last take granted (a replica's reserve).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A take may now grant several tokens at once (storage._buckets: a replica's local
    # reserve); RETURNING sees only the new row, so the count is kept in it. The default
    # lets replicas still on the previous release, which insert without it, carry on.
    op.add_column(
        "rate_buckets",
        sa.Column("last_grant", sa.Integer(), nullable=False, server_default="1"),
    )


def downgrade() -> None:
    with op.batch_alter_table("rate_buckets") as batch:
        batch.drop_column("last_grant")
