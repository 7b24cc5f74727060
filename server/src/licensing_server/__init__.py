"""Attested-enclave licensing server: frontend (public API) and backend (CA, runtimes, TPM)."""
