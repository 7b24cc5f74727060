"""Python client for the licensing server, on the betterproto-generated grpclib stubs.

The high-level API is ``LicensingClient``: connect (trusting only the given CA),
sign up, log in (key and CSR made here), sessions that refresh themselves, enclave
creation as a stream of progress events ending in a verified attestation, and
``EnclaveSession``, calls to an attested enclave over TLS pinned to the attested
certificate. Everything it raises is a ``LicensingError``.

Below it: ``licensing_client.gen`` is generated (``make generate``); TLS contexts and
channels for the two listeners and for enclaves, the bearer-token metadata, and
``connect_attested_enclave``, which pins an enclave's certificate only after a
fresh TPM attestation of it verifies (``licensing_client.attestation``).
The ``licensing`` command line is ``licensing_client.cli``, built on ``LicensingClient``.
"""

from licensing_client._attested import (
    NONCE_BYTES,
    AttestedEnclave,
    EnclaveAttestation,
    attest_enclave,
    connect_attested_enclave,
    trust_anchors,
)
from licensing_client._client import (
    Account,
    AttestationEvent,
    Created,
    CreateEvent,
    EnclaveSession,
    FetchingAttestation,
    Identity,
    LicensingClient,
    Progress,
    Reattested,
    Reconnecting,
    Signature,
    WatchEvent,
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
from licensing_client._errors import (
    AttestationFailedError,
    EnclaveFailedError,
    EnclaveNotReady,
    LicensingError,
    NotLoggedInError,
    RefreshFailedError,
    SessionEndedError,
    SignatureInvalidError,
)
from licensing_client._session import MemorySessionStore, Session, SessionStore

__all__ = [
    "NONCE_BYTES",
    "Account",
    "AttestationEvent",
    "AttestationFailedError",
    "AttestedEnclave",
    "CreateEvent",
    "Created",
    "EnclaveAttestation",
    "EnclaveFailedError",
    "EnclaveNotReady",
    "EnclaveSession",
    "FetchingAttestation",
    "Identity",
    "LicensingClient",
    "LicensingError",
    "MemorySessionStore",
    "NotLoggedInError",
    "Progress",
    "Reattested",
    "Reconnecting",
    "RefreshFailedError",
    "Session",
    "SessionEndedError",
    "SessionStore",
    "Signature",
    "SignatureInvalidError",
    "WatchEvent",
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
