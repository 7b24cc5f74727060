"""TPM attestation of enclave certificates: AK provenance, the PCR 23 log, batched quotes."""

from licensing_server.attestation._attestor import Attestor, QuoteSource
from licensing_server.attestation._codec import (
    AttestationEncoder,
    attestation_evidence,
    attestation_message,
    decode_attestation,
    encode_attestation,
)
from licensing_server.attestation._evidence import (
    AttestationEvidence,
    MeasurementEvent,
    MerkleProof,
    PcrValue,
)

__all__ = [
    "AttestationEncoder",
    "AttestationEvidence",
    "Attestor",
    "MeasurementEvent",
    "MerkleProof",
    "PcrValue",
    "QuoteSource",
    "attestation_evidence",
    "attestation_message",
    "decode_attestation",
    "encode_attestation",
]
