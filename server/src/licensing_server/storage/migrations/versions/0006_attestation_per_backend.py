"""Attestation per backend: each backend's PCR 23 log, and how to reach its TPM.

Revision ID: 0006
Revises: 0005

Each backend has its own TPM, so its measurement epochs are its own: a backend starting
an epoch drops only its own older ones. ``backends`` gains the address other pods'
frontends reach that backend's QuoteService on, and its AK certificate chain (for the
trust bundle). Epochs from before this revision belong to no backend: they are dropped
(the log is rewritten from the live set at each backend's next measure or quote).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DELETE FROM measurements")
    op.execute("DELETE FROM measurement_epochs")
    # Nullable: SQLite's single backend names none (as in enclaves.backend_id).
    with op.batch_alter_table("measurement_epochs") as batch:
        batch.add_column(sa.Column("backend_id", sa.String(255), nullable=True))
        batch.create_index("ix_measurement_epochs_backend_id", ["backend_id", "id"])
    with op.batch_alter_table("backends") as batch:
        batch.add_column(
            sa.Column("quote_address", sa.String(255), nullable=False, server_default="")
        )
        batch.add_column(
            sa.Column("ak_certificate_chain_pem", sa.Text(), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("backends") as batch:
        batch.drop_column("ak_certificate_chain_pem")
        batch.drop_column("quote_address")
    with op.batch_alter_table("measurement_epochs") as batch:
        batch.drop_index("ix_measurement_epochs_backend_id")
        batch.drop_column("backend_id")
