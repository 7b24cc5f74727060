"""PostgreSQL's row lock in ``EnclaveStore.reserve``: racing creates of one user stop at the limit.

PostgreSQL only: the store locks the owner's row there, and frontends may be many. On
SQLite (one frontend) the store's count and insert can interleave; the enclave catalog
serialises reservations per user instead (tests/enclaves/test_licences.py covers both).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Iterator

import pytest

from licensing_common.errors import ResourceExhausted
from licensing_server.storage import Database, EnclaveStore, Limits
from tests.storage.conftest import NOW, new_user
from tests.support import migrated_database


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with migrated_database("postgresql", tmp_path_factory.mktemp("locks")) as url:
        yield url


async def test_concurrent_reserves_of_one_user_stop_exactly_at_the_limit(
    database: Database,
) -> None:
    store = EnclaveStore(database)
    owner = await new_user(database)
    limits = Limits(3, dt.timedelta(hours=1))
    results = await asyncio.gather(
        *(
            store.reserve(
                owner_id=owner.id, request_id=uuid.uuid4().hex, nonce=b"", limits=limits, now=NOW
            )
            for _ in range(8)
        ),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, tuple)]
    refused = [r for r in results if isinstance(r, ResourceExhausted)]
    assert (len(won), len(refused)) == (3, 5), results
    assert len(await store.list_owned(owner.id, 10, None)) == 3
