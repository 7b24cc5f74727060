"""Two licensing pods on one PostgreSQL: frontend + backend + swtpm each, one CA.

What a Deployment with two replicas is, as processes: each backend has its own TPM and AK
and announces its QuoteService-only listener; the licensing CA and the frontend's keys are
shared as a Secret would share them. For tests/attestation/test_replicas.py and
bench/attestation_routing_bench.py.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

from tests.support import (
    Stack,
    create_postgres_database,
    drop_postgres_database,
    free_port,
    required_postgres,
)


def share_identity(first: Stack, data_dir: Path) -> None:
    """What a Secret gives every pod: the licensing CA and the frontend's keys (one set)."""
    (data_dir / "backend").mkdir(parents=True)
    shutil.copy2(first.data_dir / "ca.pem", data_dir / "ca.pem")
    shutil.copy2(first.data_dir / "backend" / "ca-key.pem", data_dir / "backend" / "ca-key.pem")
    shutil.copytree(first.data_dir / "frontend", data_dir / "frontend")


def rows(url: str, query: str) -> list[tuple[object, ...]]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(query))]
    finally:
        engine.dispose()


def wait_until_announced(url: str, backends: set[str], within: float) -> None:
    """Every backend proved its AK and recorded where its QuoteService answers."""
    deadline = time.monotonic() + within
    query = "SELECT id FROM backends WHERE quote_address <> '' AND ak_certificate_chain_pem <> ''"
    while {str(row[0]) for row in rows(url, query)} != backends:
        assert time.monotonic() < deadline, rows(url, "SELECT * FROM backends")
        time.sleep(0.2)


@contextlib.contextmanager
def two_pods(tmp: Path, admin_url: str | None, **extra_env: str) -> Iterator[tuple[Stack, Stack]]:
    """Pods ``backend-a`` and ``backend-b``, started one after the other (the first runs
    the migrations and makes the CA), both announced before this yields."""
    admin = required_postgres(admin_url)
    url, name = create_postgres_database(admin)
    stacks: list[Stack] = []
    try:
        for pod in ("a", "b"):
            data_dir = tmp / pod / "data-postgresql"
            if stacks:
                share_identity(stacks[0], data_dir)
            else:
                data_dir.mkdir(parents=True)
            stack = Stack(
                "postgresql",
                data_dir,
                url,
                free_port(),
                free_port(),
                free_port(),
                extra_env={
                    **extra_env,
                    "LICENSING_BACKEND_ID": f"backend-{pod}",
                    "LICENSING_BACKEND_QUOTE_ADDR": f"127.0.0.1:{free_port()}",
                },
            )
            stacks.append(stack)
            stack.start()
        wait_until_announced(url, {"backend-a", "backend-b"}, within=30)
        yield stacks[0], stacks[1]
    finally:
        for stack in stacks:
            stack.stop()
        drop_postgres_database(admin, name)
