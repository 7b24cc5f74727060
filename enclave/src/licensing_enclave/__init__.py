"""The enclave workload: one per user request, serving enclave.v1.WorkloadService over mTLS.

Started by the backend's runtime with ``python -m licensing_enclave``; the stdio handshake
(``_bootstrap``) gets its key certified without the key ever leaving the process.
"""
