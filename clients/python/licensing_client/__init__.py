"""Python client for the licensing server, on the betterproto-generated grpclib stubs.

``licensing_client.gen`` is generated (``make generate``); this package adds
what every caller needs around it: TLS contexts for the two listeners and for
enclaves (pinned to the enclave's certificate), the bearer-token metadata, and
``connect_attested_enclave``, which pins an enclave's certificate only after a
fresh TPM attestation of it verifies (``licensing_client.attestation``).
The ``licensing`` command line is ``licensing_client.cli``.
"""

from licensing_client._attested import (
    NONCE_BYTES,
    AttestedEnclave,
    EnclaveAttestation,
    EnclaveNotReady,
    attest_enclave,
    connect_attested_enclave,
    trust_anchors,
)
from licensing_client._connect import (
    api_channel,
    bearer,
    enclave_channel,
    enrollment_channel,
    pinned_tls_context,
    tls_context,
    unverified_channel,
)

__all__ = [
    "NONCE_BYTES",
    "AttestedEnclave",
    "EnclaveAttestation",
    "EnclaveNotReady",
    "api_channel",
    "attest_enclave",
    "bearer",
    "connect_attested_enclave",
    "enclave_channel",
    "enrollment_channel",
    "pinned_tls_context",
    "tls_context",
    "trust_anchors",
    "unverified_channel",
]
