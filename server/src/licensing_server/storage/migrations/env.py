"""Alembic environment: runs against the URL that ``run_migrations`` sets."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from licensing_server.storage._models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url")
assert url, "sqlalchemy.url must be set"
engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
