"""Two pods on one PostgreSQL, each backend with its own swtpm and AK, one licensing CA.

An enclave is measured by the backend that provisioned it, its quote comes from that
backend's TPM through either frontend, each backend's measurement log survives the
other's rewrites, and the trust bundle lists both AKs. A measuring backend that is gone
is a clear ``UNAVAILABLE`` / ``MEASURING_BACKEND_UNAVAILABLE``, not a hang.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from licensing.v1 import (
    attestation_pb2,
    enclave_pb2,
    enclave_pb2_grpc,
    trust_pb2,
    trust_pb2_grpc,
)

from licensing_client.attestation import verify_attestation
from licensing_server.storage import Database, EnclaveStore
from tests.attestation.replicas_support import rows, two_pods
from tests.attestation.test_attestation import Attested, create, quote
from tests.clients.cli_support import Cli
from tests.clients.test_cli_enclaves import CHECKS, checks_in, created_id
from tests.support import PASSWORD, LoggedIn, Stack, error_info, pid_of

_ENV = {
    "LICENSING_LEADER_RETRY_SECONDS": "1",
    "LICENSING_MAX_ENCLAVES": "10",
    "LICENSING_RECONCILE_INTERVAL_SECONDS": "1",
}


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Stack]]:
    """Two stacks (frontend + backend + swtpm each) on one database, each backend
    announcing its QuoteService-only listener to the other pod's frontend."""
    tmp = tmp_path_factory.mktemp("attest-replicas")
    with two_pods(tmp, os.environ.get("LICENSING_TEST_POSTGRES_URL"), **_ENV) as pair:
        yield pair


def _measured_by(stack: Stack, enclave_id: str) -> str | None:
    async def read() -> str | None:
        database = Database.connect(stack.database_url)
        try:
            record = await EnclaveStore(database).get(enclave_id)
            return record.backend_id if record else None
        finally:
            await database.close()

    return asyncio.run(read())


def _ak_certificate(stack: Stack) -> x509.Certificate:
    """The AK certificate the stack's backend issued for its own TPM's AK."""
    return x509.load_pem_x509_certificate((stack.data_dir / "backend" / "ak.pem").read_bytes())


def _signed_by_ak_of(attestation: attestation_pb2.Attestation, stack: Stack) -> bool:
    leaf = x509.load_pem_x509_certificate(attestation.ak_certificate_chain_pem[0].encode())
    return leaf == _ak_certificate(stack)


def _verified(stack: Stack, attested: Attested) -> attestation_pb2.Attestation:
    nonce = os.urandom(32)
    fresh = quote(stack, attested, nonce)
    verify_attestation(
        fresh,
        nonce=nonce,
        expected_certificate_pem=attested.enclave.certificate_pem,
        trusted_ca_pem=[stack.ca_pem.decode()],
    )
    return fresh


@pytest.fixture(scope="module")
def user(pods: tuple[Stack, Stack]) -> LoggedIn:
    return pods[0].new_user()


@pytest.fixture(scope="module")
def enclaves(pods: tuple[Stack, Stack], user: LoggedIn) -> tuple[Attested, Attested]:
    """One enclave created through each pod's frontend."""
    a, b = pods
    return create(a, user), create(b, user)


def test_the_two_backends_have_their_own_tpm_and_ak_under_one_ca(
    pods: tuple[Stack, Stack],
) -> None:
    a, b = pods
    assert a.ca_pem == b.ca_pem
    assert _ak_certificate(a).public_key() != _ak_certificate(b).public_key()
    assert a.swtpm_port != b.swtpm_port


def test_an_enclave_is_measured_by_the_backend_of_the_frontend_that_created_it(
    pods: tuple[Stack, Stack], enclaves: tuple[Attested, Attested]
) -> None:
    a, b = pods
    on_a, on_b = enclaves
    assert _measured_by(a, on_a.enclave.id) == "backend-a"
    assert _measured_by(a, on_b.enclave.id) == "backend-b"
    assert _signed_by_ak_of(on_a.attestation, a)
    assert _signed_by_ak_of(on_b.attestation, b)


def test_get_attestation_through_either_frontend_comes_from_the_measuring_tpm(
    pods: tuple[Stack, Stack], enclaves: tuple[Attested, Attested]
) -> None:
    a, b = pods
    for attested, measuring in zip(enclaves, pods, strict=True):
        for frontend in (a, b):
            fresh = _verified(frontend, attested)  # one user, one signing key set
            assert _signed_by_ak_of(fresh, measuring), (frontend.api_addr, measuring.api_addr)
            assert fresh.ak_public_pem == attested.attestation.ak_public_pem


def test_each_backends_log_survives_the_others_rewrites(
    pods: tuple[Stack, Stack], user: LoggedIn, enclaves: tuple[Attested, Attested]
) -> None:
    a, b = pods
    on_a, on_b = enclaves
    before = _verified(a, on_a).log_epoch
    # Backend B rewrites its PCR 23 twice (a create, a quote after a delete): A's log stays.
    extra = create(b, user)
    enclave_pb2_grpc.EnclaveServiceStub(b.user_channel(user)).DeleteEnclave(
        enclave_pb2.DeleteEnclaveRequest(enclave_id=extra.enclave.id),
        metadata=user.bearer,
        timeout=30,
    )
    _verified(b, on_b)
    epochs = rows(
        a.database_url,
        "SELECT backend_id, count(*) FROM measurement_epochs GROUP BY backend_id",
    )
    assert sorted(epochs) == [("backend-a", 1), ("backend-b", 1)]
    # A's quote still replays against A's epoch, unchanged by B's rewrites.
    assert _verified(b, on_a).log_epoch == before


def test_the_trust_bundle_lists_both_aks_through_either_frontend(
    pods: tuple[Stack, Stack], enclaves: tuple[Attested, Attested]
) -> None:
    a, b = pods
    ca = x509.load_pem_x509_certificate(a.ca_pem)
    for frontend in pods:
        bundle = trust_pb2_grpc.TrustServiceStub(frontend.enroll_channel()).GetTrustBundle(
            trust_pb2.GetTrustBundleRequest(), timeout=10
        )
        listed = [
            x509.load_pem_x509_certificate(p.encode()) for p in bundle.ak_certificate_chain_pem
        ]
        assert listed == [_ak_certificate(frontend), _ak_certificate(b if frontend is a else a), ca]
    # Each attestation's own chain still names its AK first, the CA after.
    for attested in enclaves:
        assert len(attested.attestation.ak_certificate_chain_pem) == 2


def test_an_enclave_deleted_through_the_other_frontend_leaves_its_tpms_measured_set(
    pods: tuple[Stack, Stack], user: LoggedIn, enclaves: tuple[Attested, Attested]
) -> None:
    """Backend A removes B's enclave (its pod-mate frontend was asked): B's PCR 23 drops
    it at B's next reconcile, so B's quotes no longer count it among the live."""
    a, b = pods
    _, on_b = enclaves
    extra = create(b, user)
    assert _measured_by(b, extra.enclave.id) == "backend-b"
    counted = _verified(a, on_b).measurement_proof.leaf_count
    enclave_pb2_grpc.EnclaveServiceStub(a.user_channel(user)).DeleteEnclave(
        enclave_pb2.DeleteEnclaveRequest(enclave_id=extra.enclave.id),
        metadata=user.bearer,
        timeout=30,
    )
    deadline = time.monotonic() + 15
    while _verified(a, on_b).measurement_proof.leaf_count != counted - 1:
        assert time.monotonic() < deadline, "B still measures the deleted enclave"
        time.sleep(0.5)


def test_the_cli_pins_the_ca_of_either_frontend_and_verifies_the_other_pods_enclave(
    pods: tuple[Stack, Stack], tmp_path: Path
) -> None:
    """The CLI's trust on first use and ``enclave attest`` through frontend A, for an
    enclave the CLI created through frontend B (measured by B's TPM)."""
    a, b = pods
    through_b = Cli(b, tmp_path / "b")
    username = through_b.signup_and_login()
    created = through_b.run("enclave", "create").ok()
    enclave_id = created_id(created)
    assert _measured_by(a, enclave_id) == "backend-b"
    through_a = Cli(a, tmp_path / "a")
    through_a.run("login", username, env={"LICENSING_PASSWORD": PASSWORD}).ok()
    report = through_a.run("--output", "json", "enclave", "attest", enclave_id).ok().json()
    assert report["source"] == "GetAttestation"
    assert checks_in(through_a.run("enclave", "attest", enclave_id).ok().stdout) == CHECKS
    assert (tmp_path / "a" / "ca.pem").read_bytes() == (tmp_path / "b" / "ca.pem").read_bytes()


def test_a_stopped_measuring_backend_is_a_clear_unavailable_not_a_hang(
    pods: tuple[Stack, Stack], enclaves: tuple[Attested, Attested]
) -> None:
    """Last in this module: pod B dies for good (no supervisor to restart it)."""
    a, b = pods
    on_a, on_b = enclaves
    assert b.proc is not None
    for pid in (b.proc.pid, pid_of(b, "backend"), pid_of(b, "frontend")):
        os.kill(pid, signal.SIGKILL)
    b.proc.wait(10)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as refused:
        quote(a, on_b, os.urandom(32))
    assert time.monotonic() - started < 5
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(refused.value)
    assert info is not None
    assert info.reason == "MEASURING_BACKEND_UNAVAILABLE"
    assert "Traceback" not in (refused.value.details() or "")
    # A's own enclaves are unaffected.
    _verified(a, on_a)
