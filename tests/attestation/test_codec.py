"""The attestor's evidence and its wire form: one conversion, and stored rows still read.

The provisioner stores the ATTESTED event's evidence as a serialized
``licensing.v1.Attestation`` and the frontend sends those bytes as they are, so
what was stored before the attestor returned domain values must decode, and
encode back, unchanged.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from licensing.control.v1 import control_pb2
from licensing.v1 import attestation_pb2

from licensing_server.api.convert import wrapped
from licensing_server.attestation import (
    AttestationEncoder,
    AttestationEvidence,
    MerkleProof,
    attestation_evidence,
    attestation_message,
    decode_attestation,
    encode_attestation,
)

ROOT = Path(__file__).resolve().parents[2]


def _stored_row(*, batched: bool, measured: bool = True) -> bytes:
    """What the attestor built (as a message) and the provisioner stored before this change."""
    message = attestation_pb2.Attestation(
        quote=b"\xff\x54\x43\x47attest",
        signature=b"signature",
        ak_public=b"ak-public",
        ak_public_pem="-----BEGIN PUBLIC KEY-----\n...\n",
        ak_certificate_chain_pem=["leaf", "ca"],
        pcr_selection=attestation_pb2.PcrSelection(hash_algorithm="sha256", pcrs=[0, 7, 23]),
        pcr_values=[attestation_pb2.PcrValue(pcr=p, value=bytes([p]) * 32) for p in (0, 7, 23)],
        event_log=[
            attestation_pb2.MeasurementEvent(
                pcr=23, digest=b"r" * 32, kind="enclave-certificate-set", sequence=4
            )
        ],
        enclave_certificate_pem="-----BEGIN CERTIFICATE-----\n...\n",
        enclave_certificate_sha256=b"c" * 32,
        nonce=b"n" * 32,
        qualifying_data_derivation="sha256(...)",
        log_epoch=9,
    )
    if measured:
        message.measurement_proof.CopyFrom(
            attestation_pb2.MerkleProof(leaf_index=2, leaf_count=5, siblings=[b"a" * 32, b"b" * 32])
        )
    if batched:
        message.merkle_proof.CopyFrom(
            attestation_pb2.MerkleProof(leaf_index=0, leaf_count=2, siblings=[b"s" * 32])
        )
    return bytes(message.SerializeToString())


def test_stored_attestations_decode_and_encode_back_unchanged() -> None:
    for row in (
        _stored_row(batched=False),
        _stored_row(batched=True),
        _stored_row(batched=False, measured=False),  # rows of servers before the Merkle set
    ):
        evidence = decode_attestation(row)
        assert isinstance(evidence, AttestationEvidence)
        again = encode_attestation(evidence)
        assert attestation_pb2.Attestation.FromString(again) == (
            attestation_pb2.Attestation.FromString(row)
        )
        assert again == row


def test_evidence_keeps_which_proofs_are_present() -> None:
    single = decode_attestation(_stored_row(batched=False))
    assert single.merkle_proof is None
    assert single.measurement_proof == MerkleProof(2, 5, (b"a" * 32, b"b" * 32))
    batched = decode_attestation(_stored_row(batched=True))
    assert batched.merkle_proof == MerkleProof(0, 2, (b"s" * 32,))
    assert decode_attestation(_stored_row(batched=False, measured=False)).measurement_proof is None
    message = attestation_pb2.Attestation.FromString(encode_attestation(single))
    assert not message.HasField("merkle_proof")
    assert attestation_evidence(message) == single


def test_a_batch_encoded_with_its_shared_parts_once_parses_to_each_answer() -> None:
    """The servicer's fast path: the same messages as the canonical encoding, per request."""
    first = decode_attestation(_stored_row(batched=True))
    second = dataclasses.replace(
        first, nonce=b"m" * 32, merkle_proof=MerkleProof(1, 2, (b"t" * 32,))
    )
    alone = decode_attestation(_stored_row(batched=False))  # another quote: shared parts differ
    alone = dataclasses.replace(alone, quote=b"another quote")
    encoder = AttestationEncoder()
    for evidence in (first, second, alone, first):
        raw = encoder.encode(evidence)
        assert attestation_pb2.Attestation.FromString(raw) == attestation_message(evidence)
        reply = control_pb2.QuoteResponse.FromString(wrapped(raw))
        assert reply.attestation == attestation_message(evidence)
    big = dataclasses.replace(first, enclave_certificate_pem="x" * 300_000)  # a 3-byte length
    answer = attestation_pb2.GetAttestationResponse.FromString(wrapped(encoder.encode(big)))
    assert answer.attestation == attestation_message(big)


def _imports_wire_messages(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.split(".")[0] in ("licensing", "enclave")
            and "." in node.module
        ):
            return True
    return False


def test_only_the_api_layer_and_conversion_modules_build_wire_messages() -> None:
    """Domain code works on domain values; protobuf stays at the process boundaries."""
    allowed = {
        "server/src/licensing_server/api/backend.py",
        "server/src/licensing_server/api/frontend.py",
        "server/src/licensing_server/api/convert.py",
        "server/src/licensing_server/api/enrollment.py",
        "server/src/licensing_server/attestation/_codec.py",
        "server/src/licensing_server/frontend/backend_client.py",
        # Composition roots register the generated servicers.
        "server/src/licensing_server/backend/app.py",
        "server/src/licensing_server/frontend/app.py",
        "enclave/src/licensing_enclave/_servicer.py",
        "enclave/src/licensing_enclave/_app.py",
        # The enclave's call to the backend's enrolment listener (Kubernetes mode).
        "enclave/src/licensing_enclave/_enroll.py",
    }
    found = {
        str(path.relative_to(ROOT))
        for top in ("server/src", "enclave/src")
        for path in (ROOT / top).rglob("*.py")
        if _imports_wire_messages(path)
    }
    assert "server/src/licensing_server/attestation/_attestor.py" not in found
    assert found <= allowed, sorted(found - allowed)
