"""A client verifies every part of an enclave's TPM attestation before it trusts the enclave."""

from __future__ import annotations

import base64
import copy
import json
import math
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from google.protobuf import json_format
from licensing.control.v1 import control_pb2, control_pb2_grpc
from licensing.v1 import attestation_pb2, attestation_pb2_grpc, enclave_pb2, enclave_pb2_grpc

from licensing_client.attestation import AttestationError, Check, MerkleTree, verify_attestation
from licensing_server.pki import CertificateAuthority
from tests.grpcurl import run_grpcurl
from tests.support import LoggedIn, Stack, error_reason, pid_of, start_stack

AK_URI = "spiffe://licensing.internal/tpm/attestation-key"
#: Enclaves created and deleted to show evidence does not grow (each adds ~105 bytes on old code).
CREATE_DELETE_CYCLES = 30


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def tpm_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A stack of our own: these tests pause and kill its swtpm."""
    tmp = tmp_path_factory.mktemp(f"attest-{request.param}")
    yield from start_stack(
        request.param,
        tmp,
        os.environ.get("LICENSING_TEST_POSTGRES_URL"),
        LICENSING_TPM_COMMAND_TIMEOUT_SECONDS="2",
        LICENSING_MAX_ENCLAVES="10",
    )


@dataclass
class Attested:
    user: LoggedIn
    enclave: enclave_pb2.Enclave
    nonce: bytes
    attestation: attestation_pb2.Attestation


def create(stack: Stack, user: LoggedIn) -> Attested:
    nonce = os.urandom(32)
    stub = enclave_pb2_grpc.EnclaveServiceStub(stack.user_channel(user))
    events = list(
        stub.CreateEnclave(
            enclave_pb2.CreateEnclaveRequest(request_id=uuid.uuid4().hex, nonce=nonce),
            metadata=user.bearer,
            timeout=60,
        )
    )
    phases = [enclave_pb2.Phase.Name(e.phase) for e in events]
    assert phases[-3:] == ["PHASE_READY", "PHASE_ATTESTING", "PHASE_ATTESTED"]
    return Attested(user, events[-1].enclave, nonce, events[-1].attestation)


def quote(stack: Stack, attested: Attested, nonce: bytes) -> attestation_pb2.Attestation:
    stub = attestation_pb2_grpc.AttestationServiceStub(stack.user_channel(attested.user))
    reply = stub.GetAttestation(
        attestation_pb2.GetAttestationRequest(enclave_id=attested.enclave.id, nonce=nonce),
        metadata=attested.user.bearer,
        timeout=30,
    )
    return reply.attestation


def check_of(
    attestation: attestation_pb2.Attestation,
    stack: Stack,
    nonce: bytes,
    certificate_pem: str,
    trusted: list[str] | None = None,
) -> Check:
    with pytest.raises(AttestationError) as failed:
        verify_attestation(
            attestation,
            nonce=nonce,
            expected_certificate_pem=certificate_pem,
            trusted_ca_pem=trusted or [stack.ca_pem.decode()],
        )
    return failed.value.check


@pytest.fixture(scope="module")
def attested(tpm_stack: Stack) -> Attested:
    return create(tpm_stack, tpm_stack.new_user())


def test_create_ends_attested_and_the_client_verifies_every_check(
    tpm_stack: Stack, attested: Attested
) -> None:
    report = verify_attestation(
        attested.attestation,
        nonce=attested.nonce,
        expected_certificate_pem=attested.enclave.certificate_pem,
        trusted_ca_pem=[tpm_stack.ca_pem.decode()],
    )
    assert [c.check for c in report.checks] == list(Check)
    assert attested.attestation.nonce == attested.nonce
    assert attested.attestation.qualifying_data_derivation.startswith(
        'sha256("licensing-attest-v1"'
    )
    assert 23 in attested.attestation.pcr_selection.pcrs
    # The AK certificate is published in the trust bundle too.
    from licensing.v1 import trust_pb2, trust_pb2_grpc

    bundle = trust_pb2_grpc.TrustServiceStub(tpm_stack.enroll_channel()).GetTrustBundle(
        trust_pb2.GetTrustBundleRequest()
    )
    assert list(bundle.ak_certificate_chain_pem) == list(
        attested.attestation.ak_certificate_chain_pem
    )


def test_a_fresh_quote_for_a_new_nonce_verifies(tpm_stack: Stack, attested: Attested) -> None:
    nonce = os.urandom(48)
    fresh = quote(tpm_stack, attested, nonce)
    verify_attestation(
        fresh,
        nonce=nonce,
        expected_certificate_pem=attested.enclave.certificate_pem,
        trusted_ca_pem=[tpm_stack.ca_pem.decode()],
    )


def test_grpcurl_users_get_bytes_the_library_verifies(
    tpm_stack: Stack, attested: Attested, grpcurl: str, tmp_path: Path
) -> None:
    (tmp_path / "u.key").write_bytes(attested.user.key_pem)
    (tmp_path / "u.pem").write_bytes(attested.user.cert_pem)
    nonce = os.urandom(32)
    result = run_grpcurl(
        grpcurl,
        "-cacert",
        str(tpm_stack.ca_path),
        "-cert",
        str(tmp_path / "u.pem"),
        "-key",
        str(tmp_path / "u.key"),
        "-H",
        f"authorization: Bearer {attested.user.access_token}",
        tpm_stack.api_addr,
        "licensing.v1.AttestationService/GetAttestation",
        data=json.dumps(
            {"enclave_id": attested.enclave.id, "nonce": base64.b64encode(nonce).decode()}
        ),
    )
    assert result.returncode == 0, result.stderr
    message = json_format.ParseDict(result.json()["attestation"], attestation_pb2.Attestation())
    verify_attestation(
        message,
        nonce=nonce,
        expected_certificate_pem=attested.enclave.certificate_pem,
        trusted_ca_pem=[tpm_stack.ca_pem.decode()],
    )


@pytest.mark.parametrize("length", [0, 15, 65])
def test_nonces_outside_16_to_64_bytes_are_refused(
    tpm_stack: Stack, attested: Attested, length: int
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        quote(tpm_stack, attested, os.urandom(length))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(raised.value) == "NONCE_INVALID"


# Each tampering must be caught by the check that names it. ---------------------------------


def _flip(data: bytes, index: int) -> bytes:
    mutable = bytearray(data)
    mutable[index] ^= 0x01
    return bytes(mutable)


def test_one_flipped_byte_in_the_quote_fails_the_signature(
    tpm_stack: Stack, attested: Attested
) -> None:
    forged = copy.deepcopy(attested.attestation)
    forged.quote = _flip(forged.quote, len(forged.quote) - 1)
    assert check_of(forged, tpm_stack, attested.nonce, attested.enclave.certificate_pem) is (
        Check.SIGNATURE
    )


def test_a_flipped_magic_byte_fails_the_magic_check(tpm_stack: Stack, attested: Attested) -> None:
    forged = copy.deepcopy(attested.attestation)
    forged.quote = _flip(forged.quote, 0)
    assert check_of(forged, tpm_stack, attested.nonce, attested.enclave.certificate_pem) is (
        Check.MAGIC
    )


def test_one_flipped_byte_in_the_signature_fails_it(tpm_stack: Stack, attested: Attested) -> None:
    forged = copy.deepcopy(attested.attestation)
    forged.signature = _flip(forged.signature, len(forged.signature) - 1)
    assert check_of(forged, tpm_stack, attested.nonce, attested.enclave.certificate_pem) is (
        Check.SIGNATURE
    )


def test_a_replayed_attestation_fails_for_our_new_nonce(
    tpm_stack: Stack, attested: Attested
) -> None:
    assert (
        check_of(attested.attestation, tpm_stack, os.urandom(32), attested.enclave.certificate_pem)
        is Check.QUALIFYING_DATA
    )


def test_an_attestation_of_another_enclave_does_not_vouch_for_this_one(
    tpm_stack: Stack, attested: Attested
) -> None:
    other = create(tpm_stack, attested.user)
    try:
        assert (
            check_of(other.attestation, tpm_stack, other.nonce, attested.enclave.certificate_pem)
            is Check.CERTIFICATE
        )
        # Even with the other certificate swapped in, the quote binds the original one.
        forged = copy.deepcopy(other.attestation)
        forged.enclave_certificate_pem = attested.enclave.certificate_pem
        forged.enclave_certificate_sha256 = attested.attestation.enclave_certificate_sha256
        assert (
            check_of(forged, tpm_stack, other.nonce, attested.enclave.certificate_pem)
            is Check.QUALIFYING_DATA
        )
    finally:
        enclave_pb2_grpc.EnclaveServiceStub(tpm_stack.user_channel(other.user)).DeleteEnclave(
            enclave_pb2.DeleteEnclaveRequest(enclave_id=other.enclave.id),
            metadata=other.user.bearer,
        )


def _tpm_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    size = 32
    return (
        b"\x00\x18\x00\x0b"
        + size.to_bytes(2, "big")
        + r.to_bytes(size, "big")
        + size.to_bytes(2, "big")
        + s.to_bytes(size, "big")
    )


def test_a_quote_signed_by_a_key_that_is_not_the_certified_ak_is_refused(
    tpm_stack: Stack, attested: Attested
) -> None:
    mallory = ec.generate_private_key(ec.SECP256R1())
    forged = copy.deepcopy(attested.attestation)
    forged.signature = _tpm_signature(mallory, forged.quote)
    assert check_of(forged, tpm_stack, attested.nonce, attested.enclave.certificate_pem) is (
        Check.SIGNATURE
    )
    # Claiming mallory's key as the AK does not help: the AK certificate is for another key.
    numbers = mallory.public_key().public_numbers()
    public = bytearray(forged.ak_public)
    public[-66:-34] = numbers.x.to_bytes(32, "big")
    public[-32:] = numbers.y.to_bytes(32, "big")
    forged.ak_public = bytes(public)
    assert check_of(forged, tpm_stack, attested.nonce, attested.enclave.certificate_pem) is (
        Check.AK_CERTIFICATE_CHAIN
    )


def test_an_ak_certificate_from_another_ca_is_refused(
    tpm_stack: Stack, attested: Attested, tmp_path: Path
) -> None:
    from cryptography import x509

    rogue = CertificateAuthority.load_or_create(tmp_path / "k.pem", tmp_path / "c.pem")
    ak_cert = x509.load_pem_x509_certificate(
        attested.attestation.ak_certificate_chain_pem[0].encode()
    )
    issued = rogue.issue(
        ak_cert.public_key(),
        common_name="licensing attestation key",
        lifetime=ak_cert.not_valid_after_utc - ak_cert.not_valid_before_utc,
        uris=[AK_URI],
    )
    forged = copy.deepcopy(attested.attestation)
    del forged.ak_certificate_chain_pem[:]
    forged.ak_certificate_chain_pem.extend([issued.pem, rogue.ca_certificates_pem[0]])
    assert check_of(forged, tpm_stack, attested.nonce, attested.enclave.certificate_pem) is (
        Check.AK_CERTIFICATE_CHAIN
    )
    # A user's client certificate from the right CA is not an AK certificate either.
    forged = copy.deepcopy(attested.attestation)
    del forged.ak_certificate_chain_pem[:]
    forged.ak_certificate_chain_pem.append(attested.user.cert_pem.decode())
    assert check_of(forged, tpm_stack, attested.nonce, attested.enclave.certificate_pem) is (
        Check.AK_CERTIFICATE_CHAIN
    )


def test_tampered_pcr_values_are_refused(tpm_stack: Stack, attested: Attested) -> None:
    forged = copy.deepcopy(attested.attestation)
    forged.pcr_values[0].value = _flip(forged.pcr_values[0].value, 0)
    assert check_of(forged, tpm_stack, attested.nonce, attested.enclave.certificate_pem) is (
        Check.PCR_DIGEST
    )


def _with_log(
    attestation: attestation_pb2.Attestation, digests: list[bytes]
) -> attestation_pb2.Attestation:
    forged = copy.deepcopy(attestation)
    del forged.event_log[:]
    for sequence, digest in enumerate(digests, start=1):
        forged.event_log.add(pcr=23, digest=digest, kind="enclave-certificate", sequence=sequence)
    return forged


def test_an_event_log_that_does_not_replay_to_pcr_23_is_refused(
    tpm_stack: Stack, attested: Attested
) -> None:
    real = attested.attestation
    cert_hash = real.enclave_certificate_sha256
    # A set forged to hold the certificate, with a proof that leads to its root.
    forged_set = MerkleTree([cert_hash, os.urandom(32)])
    for digests in (
        [],  # nothing measured
        [cert_hash],  # the certificate itself, as older servers logged it
        [forged_set.root],
        [real.event_log[0].digest, forged_set.root],  # the real root, then the forged one
    ):
        forged = _with_log(real, digests)
        forged.measurement_proof.CopyFrom(
            attestation_pb2.MerkleProof(leaf_index=0, leaf_count=2, siblings=forged_set.proof(0))
        )
        assert check_of(forged, tpm_stack, attested.nonce, attested.enclave.certificate_pem) is (
            Check.EVENT_LOG
        ), digests


def test_a_measurement_proof_that_does_not_lead_to_the_root_is_refused(
    tpm_stack: Stack, attested: Attested
) -> None:
    other = create(tpm_stack, attested.user)  # two live enclaves: the proof has a sibling
    try:
        real = quote(tpm_stack, attested, attested.nonce)
        assert real.measurement_proof.leaf_count >= 2
        assert len(real.measurement_proof.siblings) >= 1
        verify_attestation(
            real,
            nonce=attested.nonce,
            expected_certificate_pem=attested.enclave.certificate_pem,
            trusted_ca_pem=[tpm_stack.ca_pem.decode()],
        )

        def forged_proof(change: Callable[[attestation_pb2.MerkleProof], None]) -> Check:
            forged = copy.deepcopy(real)
            change(forged.measurement_proof)
            return check_of(forged, tpm_stack, attested.nonce, attested.enclave.certificate_pem)

        def flip_sibling(proof: attestation_pb2.MerkleProof) -> None:
            proof.siblings[0] = _flip(proof.siblings[0], 0)

        def other_leaf(proof: attestation_pb2.MerkleProof) -> None:
            proof.leaf_index ^= 1

        def out_of_range(proof: attestation_pb2.MerkleProof) -> None:
            proof.leaf_index = proof.leaf_count

        def extra_sibling(proof: attestation_pb2.MerkleProof) -> None:
            proof.siblings.append(bytes(32))

        def no_proof(proof: attestation_pb2.MerkleProof) -> None:
            proof.Clear()

        for change in (flip_sibling, other_leaf, out_of_range, extra_sibling, no_proof):
            assert forged_proof(change) is Check.MEASUREMENT_PROOF, change.__name__
        # The other enclave's (valid) proof is for another leaf: it proves nothing here.
        theirs = quote(tpm_stack, other, other.nonce).measurement_proof
        assert forged_proof(lambda proof: proof.CopyFrom(theirs)) is Check.MEASUREMENT_PROOF
    finally:
        _delete(tpm_stack, other)


def _delete(stack: Stack, attested: Attested) -> None:
    enclave_pb2_grpc.EnclaveServiceStub(stack.user_channel(attested.user)).DeleteEnclave(
        enclave_pb2.DeleteEnclaveRequest(enclave_id=attested.enclave.id),
        metadata=attested.user.bearer,
    )


def test_evidence_does_not_grow_with_the_enclaves_ever_created(
    tpm_stack: Stack, attested: Attested
) -> None:
    """Each quote's evidence is one PCR 23 event and a path logarithmic in the live set."""
    before = quote(tpm_stack, attested, os.urandom(32))
    for _ in range(CREATE_DELETE_CYCLES):
        _delete(tpm_stack, create(tpm_stack, attested.user))
    fresh = create(tpm_stack, attested.user)
    try:
        after = quote(tpm_stack, attested, os.urandom(32))
        # The live set grew by one (fresh): at most one more sibling, and varint bytes.
        assert len(after.SerializeToString()) <= len(before.SerializeToString()) + 40
        for evidence in (after, fresh.attestation):
            assert len(evidence.event_log) == 1
            assert evidence.event_log[0].kind == "enclave-certificate-set"
        live = before.measurement_proof.leaf_count
        assert after.measurement_proof.leaf_count == live + 1
        for evidence in (after, fresh.attestation):
            assert len(evidence.measurement_proof.siblings) <= math.ceil(math.log2(live + 1))
        # A deleted enclave leaves PCR 23 before the next quote is taken.
        _delete(tpm_stack, create(tpm_stack, attested.user))
        assert quote(tpm_stack, attested, os.urandom(32)).measurement_proof.leaf_count == live + 1
    finally:
        _delete(tpm_stack, fresh)


def test_a_hundred_concurrent_attestations_all_verify(tpm_stack: Stack, attested: Attested) -> None:
    def one(_: int) -> int:
        nonce = os.urandom(32)
        fresh = quote(tpm_stack, attested, nonce)
        verify_attestation(
            fresh,
            nonce=nonce,
            expected_certificate_pem=attested.enclave.certificate_pem,
            trusted_ca_pem=[tpm_stack.ca_pem.decode()],
        )
        return int(fresh.merkle_proof.leaf_count)

    with ThreadPoolExecutor(max_workers=100) as pool:
        batch_sizes = list(pool.map(one, range(100)))
    assert len(batch_sizes) == 100
    assert max(batch_sizes) > 1, "concurrent requests should share quotes"


def test_a_paused_tpm_gives_clear_errors_and_recovers(tpm_stack: Stack, attested: Attested) -> None:
    swtpm = pid_of(tpm_stack, "swtpm")
    os.kill(swtpm, signal.SIGSTOP)
    try:
        with pytest.raises(grpc.RpcError) as raised:
            quote(tpm_stack, attested, os.urandom(32))
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_reason(raised.value) == "TPM_UNAVAILABLE"
    finally:
        os.kill(swtpm, signal.SIGCONT)
    _eventually_verifies(tpm_stack, attested)


def test_a_tpm_reset_starts_a_new_log_epoch_and_quotes_still_verify(
    tpm_stack: Stack, attested: Attested
) -> None:
    before = quote(tpm_stack, attested, os.urandom(32)).log_epoch
    swtpm = pid_of(tpm_stack, "swtpm")
    os.kill(swtpm, signal.SIGKILL)  # the supervisor restarts it: PCRs are back to zero
    after = _eventually_verifies(tpm_stack, attested)
    assert pid_of(tpm_stack, "swtpm") != swtpm
    assert after.log_epoch > before


def _eventually_verifies(stack: Stack, attested: Attested) -> attestation_pb2.Attestation:
    deadline = time.monotonic() + 30
    while True:
        nonce = os.urandom(32)
        try:
            fresh = quote(stack, attested, nonce)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
            continue
        # Once the TPM answers again, the very first quote must verify.
        verify_attestation(
            fresh,
            nonce=nonce,
            expected_certificate_pem=attested.enclave.certificate_pem,
            trusted_ca_pem=[stack.ca_pem.decode()],
        )
        return fresh


def test_cached_ownership_and_rows_never_outlive_the_enclave_or_widen_access(
    tpm_stack: Stack,
) -> None:
    """Repeat attestations read no rows (frontend owner, backend certificate are cached),
    yet another user is still refused, and a deleted enclave is not attested a moment later."""
    mine = create(tpm_stack, tpm_stack.new_user())
    for _ in range(3):  # warm both caches
        nonce = os.urandom(32)
        verify_attestation(
            quote(tpm_stack, mine, nonce),
            nonce=nonce,
            expected_certificate_pem=mine.enclave.certificate_pem,
            trusted_ca_pem=[tpm_stack.ca_pem.decode()],
        )
    stranger = Attested(tpm_stack.new_user(), mine.enclave, mine.nonce, mine.attestation)
    with pytest.raises(grpc.RpcError) as refused:
        quote(tpm_stack, stranger, os.urandom(32))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    _delete(tpm_stack, mine)
    with pytest.raises(grpc.RpcError) as gone:
        quote(tpm_stack, mine, os.urandom(32))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _quote_service(stack: Stack) -> Any:
    frontend = stack.data_dir / "frontend"
    channel = stack.backend_channel(
        (frontend / "internal-client-key.pem").read_bytes(),
        (frontend / "internal-client.pem").read_bytes(),
    )
    return control_pb2_grpc.QuoteServiceStub(channel)


def test_a_quote_batch_answers_each_request_on_its_own(
    tpm_stack: Stack, attested: Attested
) -> None:
    """The frontend's batched call to the backend: one request's error spoils no other."""
    stub = _quote_service(tpm_stack)
    good = [os.urandom(32) for _ in range(3)]
    requests = [control_pb2.QuoteRequest(enclave_id=attested.enclave.id, nonce=n) for n in good]
    requests.insert(1, control_pb2.QuoteRequest(enclave_id=str(uuid.uuid4()), nonce=good[0]))
    requests.insert(2, control_pb2.QuoteRequest(enclave_id=attested.enclave.id, nonce=b"short"))
    requests.insert(3, control_pb2.QuoteRequest(enclave_id="not-a-uuid", nonce=good[0]))
    reply = stub.QuoteBatch(control_pb2.QuoteBatchRequest(requests=requests), timeout=30)
    assert len(reply.results) == len(requests)
    errors = [
        (_STATUS_CODES[r.error.code], r.error.reason)
        for r in reply.results
        if r.WhichOneof("result") == "error"
    ]
    assert errors == [
        (grpc.StatusCode.NOT_FOUND, "ENCLAVE_NOT_FOUND"),
        (grpc.StatusCode.INVALID_ARGUMENT, "NONCE_INVALID"),
        (grpc.StatusCode.INVALID_ARGUMENT, "ENCLAVE_ID_INVALID"),
    ]
    answered = [r.attestation for r in reply.results if r.WhichOneof("result") == "attestation"]
    quotes = set()
    for nonce, raw in zip(good, answered, strict=True):
        attestation = attestation_pb2.Attestation.FromString(raw)
        verify_attestation(
            attestation,
            nonce=nonce,
            expected_certificate_pem=attested.enclave.certificate_pem,
            trusted_ca_pem=[tpm_stack.ca_pem.decode()],
        )
        quotes.add(attestation.quote)
    assert len(quotes) == 1, "one batch call's requests share one quote"


def test_a_quote_batch_past_its_limit_is_refused_whole(
    tpm_stack: Stack, attested: Attested
) -> None:
    stub = _quote_service(tpm_stack)
    request = control_pb2.QuoteRequest(enclave_id=attested.enclave.id, nonce=os.urandom(32))
    with pytest.raises(grpc.RpcError) as refused:
        stub.QuoteBatch(control_pb2.QuoteBatchRequest(requests=[request] * 4097), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(refused.value) == "QUOTE_BATCH_TOO_LARGE"
