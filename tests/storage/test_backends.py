"""BackendDirectory on real PostgreSQL: where each backend's TPM answers, and its AK."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest

from licensing_server.storage import BackendDirectory, Database, EnclaveStore

CHAIN = [
    "-----BEGIN CERTIFICATE-----\nAKAK\n-----END CERTIFICATE-----\n",
    "-----BEGIN CERTIFICATE-----\nCACA\n-----END CERTIFICATE-----\n",
]
WITHIN = dt.timedelta(seconds=30)


@pytest.fixture
def directory(database: Database, database_url: str) -> BackendDirectory:
    if not database_url.startswith("postgresql"):
        pytest.skip(reason="the backends table is PostgreSQL's (SQLite has one backend)")
    return BackendDirectory(database)


def _name() -> str:
    return f"backend-{uuid.uuid4().hex[:8]}"


async def test_an_announced_backend_is_found_with_its_address_and_ak_chain(
    directory: BackendDirectory,
) -> None:
    name = _name()
    await directory.announce(name, quote_address="10.0.0.7:8446", ak_certificate_chain_pem=CHAIN)
    found = await directory.find(name, WITHIN)
    assert found is not None
    assert (found.quote_address, found.ak_certificate_chain_pem, found.live) == (
        "10.0.0.7:8446",
        tuple(CHAIN),
        True,
    )
    assert tuple(CHAIN) in await directory.ak_certificate_chains(WITHIN)
    assert await directory.find(_name(), WITHIN) is None


async def test_a_heartbeat_keeps_the_announcement_and_a_withdrawal_keeps_the_heartbeat(
    directory: BackendDirectory, database: Database
) -> None:
    name = _name()
    await EnclaveStore(database).heartbeat(name)  # the reconciler may write the row first
    await directory.announce(name, quote_address="10.0.0.8:8446", ak_certificate_chain_pem=CHAIN)
    await EnclaveStore(database).heartbeat(name)
    found = await directory.find(name, WITHIN)
    assert found is not None
    assert found.quote_address == "10.0.0.8:8446"
    await directory.announce(name, quote_address="", ak_certificate_chain_pem=CHAIN)
    found = await directory.find(name, WITHIN)
    assert found is not None
    assert (found.quote_address, found.live) == ("", True)


async def test_a_stale_backend_is_not_live_and_its_ak_leaves_the_list(
    directory: BackendDirectory,
) -> None:
    name = _name()
    chain = [CHAIN[0].replace("AKAK", "STALE"), CHAIN[1]]
    await directory.announce(name, quote_address="10.0.0.9:8446", ak_certificate_chain_pem=chain)
    await asyncio.sleep(1.2)
    found = await directory.find(name, dt.timedelta(seconds=1))
    assert found is not None
    assert not found.live
    assert tuple(chain) not in await directory.ak_certificate_chains(dt.timedelta(seconds=1))
