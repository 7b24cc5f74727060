"""Python client for the licensing server, on the betterproto-generated grpclib stubs.

``licensing_client.gen`` is generated (``make generate``); this package adds
what every caller needs around it: TLS contexts for the two listeners and the
bearer-token metadata.
"""

from licensing_client._connect import (
    api_channel,
    bearer,
    enrollment_channel,
    tls_context,
)

__all__ = ["api_channel", "bearer", "enrollment_channel", "tls_context"]
