"""Python client for the licensing server, on the betterproto-generated grpclib stubs.

``licensing_client.gen`` is generated (``make generate``); this package adds
what every caller needs around it: TLS contexts for the two listeners and for
enclaves (pinned to the enclave's certificate), and the bearer-token metadata.
The ``licensing`` command line is ``licensing_client.cli``.
"""

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
    "api_channel",
    "bearer",
    "enclave_channel",
    "enrollment_channel",
    "pinned_tls_context",
    "tls_context",
    "unverified_channel",
]
