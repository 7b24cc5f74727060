"""The one conversion between ``AttestationEvidence`` and ``licensing.v1.Attestation``.

The servicers send the message; the provisioner stores its serialized bytes with the
ATTESTED event, which the frontend passes on as they are, so the stored form is the
wire form and rows written before this module existed read unchanged.
"""

from __future__ import annotations

from licensing.v1 import attestation_pb2

from licensing_server.attestation._evidence import (
    AttestationEvidence,
    MeasurementEvent,
    MerkleProof,
    PcrValue,
)


def _proof_message(proof: MerkleProof) -> attestation_pb2.MerkleProof:
    return attestation_pb2.MerkleProof(
        leaf_index=proof.leaf_index, leaf_count=proof.leaf_count, siblings=proof.siblings
    )


def _proof(message: attestation_pb2.MerkleProof) -> MerkleProof:
    return MerkleProof(
        leaf_index=message.leaf_index,
        leaf_count=message.leaf_count,
        siblings=tuple(bytes(s) for s in message.siblings),
    )


def _shared_message(evidence: AttestationEvidence) -> attestation_pb2.Attestation:
    """The fields every answer to one quote has in common."""
    return attestation_pb2.Attestation(
        quote=evidence.quote,
        signature=evidence.signature,
        ak_public=evidence.ak_public,
        ak_public_pem=evidence.ak_public_pem,
        ak_certificate_chain_pem=evidence.ak_certificate_chain_pem,
        pcr_selection=attestation_pb2.PcrSelection(
            hash_algorithm=evidence.hash_algorithm, pcrs=evidence.pcr_selection
        ),
        pcr_values=[
            attestation_pb2.PcrValue(pcr=v.pcr, value=v.value) for v in evidence.pcr_values
        ],
        event_log=[
            attestation_pb2.MeasurementEvent(
                pcr=e.pcr,
                digest=e.digest,
                kind=e.kind,
                enclave_id=e.enclave_id,
                sequence=e.sequence,
            )
            for e in evidence.event_log
        ],
        qualifying_data_derivation=evidence.qualifying_data_derivation,
        log_epoch=evidence.log_epoch,
    )


def _own_message(evidence: AttestationEvidence) -> attestation_pb2.Attestation:
    """The fields of this request's answer alone: its certificate, nonce and proofs."""
    message = attestation_pb2.Attestation(
        enclave_certificate_pem=evidence.enclave_certificate_pem,
        enclave_certificate_sha256=evidence.enclave_certificate_sha256,
        nonce=evidence.nonce,
    )
    if evidence.measurement_proof is not None:
        message.measurement_proof.CopyFrom(_proof_message(evidence.measurement_proof))
    if evidence.merkle_proof is not None:
        message.merkle_proof.CopyFrom(_proof_message(evidence.merkle_proof))
    return message


def attestation_message(evidence: AttestationEvidence) -> attestation_pb2.Attestation:
    message = _shared_message(evidence)
    message.MergeFrom(_own_message(evidence))
    return message


class AttestationEncoder:
    """Serializes answers, the parts shared by one quote's batch once (not per request).

    Protobuf parses concatenated serializations of disjoint fields as one message, so
    the bytes parse to exactly ``attestation_message(evidence)``; only their field
    order differs from ``encode_attestation`` (the stored form, which stays canonical).
    """

    def __init__(self) -> None:
        self._key: tuple[object, ...] | None = None
        self._shared = b""

    def encode(self, evidence: AttestationEvidence) -> bytes:
        # One batch's answers share these objects, so comparing them is mostly identity.
        key = (
            evidence.quote,
            evidence.signature,
            evidence.log_epoch,
            evidence.ak_public,
            evidence.ak_certificate_chain_pem,
            evidence.pcr_values,
            evidence.event_log,
        )
        if key != self._key:
            self._shared = _shared_message(evidence).SerializeToString()
            self._key = key
        return self._shared + _own_message(evidence).SerializeToString()


def attestation_evidence(message: attestation_pb2.Attestation) -> AttestationEvidence:
    return AttestationEvidence(
        quote=bytes(message.quote),
        signature=bytes(message.signature),
        ak_public=bytes(message.ak_public),
        ak_public_pem=message.ak_public_pem,
        ak_certificate_chain_pem=tuple(message.ak_certificate_chain_pem),
        hash_algorithm=message.pcr_selection.hash_algorithm,
        pcr_selection=tuple(message.pcr_selection.pcrs),
        pcr_values=tuple(PcrValue(v.pcr, bytes(v.value)) for v in message.pcr_values),
        event_log=tuple(
            MeasurementEvent(e.pcr, bytes(e.digest), e.kind, e.enclave_id, e.sequence)
            for e in message.event_log
        ),
        enclave_certificate_pem=message.enclave_certificate_pem,
        enclave_certificate_sha256=bytes(message.enclave_certificate_sha256),
        nonce=bytes(message.nonce),
        qualifying_data_derivation=message.qualifying_data_derivation,
        log_epoch=message.log_epoch,
        measurement_proof=(
            _proof(message.measurement_proof) if message.HasField("measurement_proof") else None
        ),
        merkle_proof=_proof(message.merkle_proof) if message.HasField("merkle_proof") else None,
    )


def encode_attestation(evidence: AttestationEvidence) -> bytes:
    """The bytes the database keeps with the ATTESTED event (a serialized ``Attestation``)."""
    return bytes(attestation_message(evidence).SerializeToString())


def decode_attestation(stored: bytes) -> AttestationEvidence:
    """Read what ``encode_attestation`` (or any earlier version of it) stored."""
    return attestation_evidence(attestation_pb2.Attestation.FromString(stored))
