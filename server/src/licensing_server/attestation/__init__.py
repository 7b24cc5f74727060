"""TPM attestation of enclave certificates: AK provenance, the PCR 23 log, batched quotes."""

from licensing_server.attestation._attestor import Attestor, QuoteSource

__all__ = ["Attestor", "QuoteSource"]
