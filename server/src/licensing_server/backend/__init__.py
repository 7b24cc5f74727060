"""The internal backend process: CA, (later) runtimes and TPM; frontend-only mTLS API."""
