"""What the attestor answers, as domain values: no wire message is built here.

``_codec`` turns these into ``licensing.v1.Attestation`` (the public wire form,
which is also what the database stores) and back.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MerkleProof:
    """Inclusion of a leaf in a Merkle tree (``licensing_client.attestation.MerkleTree``)."""

    leaf_index: int
    leaf_count: int
    #: Sibling hashes from the leaf up.
    siblings: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class PcrValue:
    pcr: int
    value: bytes


@dataclass(frozen=True, slots=True)
class MeasurementEvent:
    """One extend of a PCR since the attestor last reset it."""

    pcr: int
    digest: bytes
    kind: str
    #: Empty for the one event over the whole live set.
    enclave_id: str
    sequence: int


@dataclass(frozen=True, slots=True)
class AttestationEvidence:
    """A quote bound to a nonce and an enclave certificate, with what verifies it."""

    #: TPMS_ATTEST bytes, as signed, and the TPMT_SIGNATURE over them.
    quote: bytes
    signature: bytes
    #: TPM2B_PUBLIC bytes of the attestation key, and the same key as PEM.
    ak_public: bytes
    ak_public_pem: str
    #: Leaf first.
    ak_certificate_chain_pem: tuple[str, ...]
    hash_algorithm: str
    pcr_selection: tuple[int, ...]
    pcr_values: tuple[PcrValue, ...]
    event_log: tuple[MeasurementEvent, ...]
    enclave_certificate_pem: str
    enclave_certificate_sha256: bytes
    nonce: bytes
    qualifying_data_derivation: str
    #: Which life of PCR 23 ``event_log`` belongs to.
    log_epoch: int
    #: The certificate's place among the live ones (the root is the last event's digest).
    measurement_proof: MerkleProof | None
    #: This request's place among those one quote covered; None when it covered one.
    merkle_proof: MerkleProof | None = None
