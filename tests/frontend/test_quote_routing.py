"""A frontend's QuoteRouter on real PostgreSQL: a measuring backend that is gone, withdrawn
or unreachable is ``UNAVAILABLE`` / ``MEASURING_BACKEND_UNAVAILABLE`` at once, and the
trust bundle's AK list merges every chain without repeats."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from licensing_common.errors import Unavailable
from licensing_server.frontend.backend_client import BackendCertificateSigner, BackendQuoteClient
from licensing_server.frontend.quote_routing import QuoteRouter, merge_chains
from licensing_server.pki import CertificateAuthority
from licensing_server.storage import BackendDirectory, Database, EnclaveRecord, Phase
from tests.support import free_port, migrated_database

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
async def database(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Database]:
    with migrated_database("postgresql", tmp_path_factory.mktemp("routing")) as url:
        db = Database.connect(url)
        try:
            yield db
        finally:
            await db.close()


@pytest.fixture
async def router(
    database: Database, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[QuoteRouter]:
    tmp = tmp_path_factory.mktemp("ca")
    ca = CertificateAuthority.load_or_create(tmp / "ca-key.pem", tmp / "ca.pem")
    key, cert = ca.issue_key_pair(common_name="licensing-frontend", client=True)
    ca_pem = ca.ca_certificates_pem[0].encode()

    def channel(address: str) -> grpc.aio.Channel:
        return BackendCertificateSigner.channel(
            address, ca_pem=ca_pem, key_pem=key, cert_pem=cert.pem.encode()
        )

    local = channel(f"127.0.0.1:{free_port()}")
    routed = QuoteRouter(
        local=BackendQuoteClient(local),
        own_backend_id="backend-here",
        directory=BackendDirectory(database),
        stale_after=dt.timedelta(seconds=1),
        channel=channel,
    )
    yield routed
    await routed.close()
    await local.close(None)


def _measured_by(backend_id: str) -> EnclaveRecord:
    return EnclaveRecord(
        id=str(uuid.uuid4()),
        owner_id=str(uuid.uuid4()),
        request_id="r",
        phase=Phase.ATTESTED,
        last_sequence=7,
        created_at=NOW,
        expires_at=NOW,
        nonce=b"",
        endpoint="",
        tls_server_name="",
        certificate_pem="",
        certificate_sha256=b"",
        failure_reason="",
        runtime_handle="",
        backend_id=backend_id,
    )


async def _refused(router: QuoteRouter, record: EnclaveRecord) -> Unavailable:
    started = time.monotonic()
    with pytest.raises(Unavailable) as refused:
        await router.quote(record, os.urandom(32))
    assert time.monotonic() - started < 5  # an answer, not a hang
    assert refused.value.reason == "MEASURING_BACKEND_UNAVAILABLE"
    return refused.value


async def test_a_backend_never_seen_is_unavailable(router: QuoteRouter) -> None:
    await _refused(router, _measured_by("backend-unknown"))


async def test_a_backend_whose_heartbeat_is_stale_is_unavailable(
    router: QuoteRouter, database: Database
) -> None:
    await BackendDirectory(database).announce(
        "backend-stale", quote_address=f"127.0.0.1:{free_port()}", ak_certificate_chain_pem=[]
    )
    await asyncio.sleep(1.2)
    refused = await _refused(router, _measured_by("backend-stale"))
    assert "not running" in refused.message


async def test_a_backend_that_withdrew_its_address_is_unavailable(
    router: QuoteRouter, database: Database
) -> None:
    await BackendDirectory(database).announce(
        "backend-stopping", quote_address="", ak_certificate_chain_pem=[]
    )
    refused = await _refused(router, _measured_by("backend-stopping"))
    assert "cannot be reached" in refused.message


async def test_a_backend_that_does_not_answer_is_unavailable(
    router: QuoteRouter, database: Database
) -> None:
    await BackendDirectory(database).announce(
        "backend-gone", quote_address=f"127.0.0.1:{free_port()}", ak_certificate_chain_pem=[]
    )
    refused = await _refused(router, _measured_by("backend-gone"))
    assert "did not answer" in refused.message


def test_the_ak_list_names_each_leaf_first_then_each_issuer_once() -> None:
    a, b, ca = "A\n", "B\n", "CA\n"
    assert merge_chains([[a, ca], [a, ca], [b, ca], []]) == [a, b, ca]
    assert merge_chains([[b, ca], ["A", "CA"]]) == [b, "A", ca]  # compared without whitespace
