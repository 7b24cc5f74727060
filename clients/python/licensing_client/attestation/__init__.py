"""Client-side verification of enclave attestations (pure Python, no TSS libraries)."""

from licensing_client.attestation._verify import (
    AttestationError,
    Check,
    CheckResult,
    VerificationReport,
    verify_attestation,
)
from licensing_common.binding import (
    AK_CERTIFICATE_IDENTITY,
    DERIVATION,
    MEASURED_SET_KIND,
    MEASUREMENT_PCR,
    MerkleTree,
    merkle_root_and_proofs,
    merkle_root_from_proof,
    qualifying_value,
)

__all__ = [
    "AK_CERTIFICATE_IDENTITY",
    "DERIVATION",
    "MEASURED_SET_KIND",
    "MEASUREMENT_PCR",
    "AttestationError",
    "Check",
    "CheckResult",
    "MerkleTree",
    "VerificationReport",
    "merkle_root_and_proofs",
    "merkle_root_from_proof",
    "qualifying_value",
    "verify_attestation",
]
