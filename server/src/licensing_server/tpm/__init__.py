"""The TPM: a device reached through a TCTI string, and swtpm to stand in for one.

``TpmDevice("device:/dev/tpmrm0")`` in production and
``TpmDevice(SwtpmSimulator.prepare(d).tcti)`` in tests run the same code; only
the transport differs. Server code outside this package never imports tpm2-pytss.
"""

from __future__ import annotations

from licensing_server.tpm._errors import TpmCommandFailed, TpmLockedOut, TpmUnavailable, translate
from licensing_server.tpm._keys import DEFAULT_AK_HANDLE
from licensing_server.tpm._results import AttestationKeyInfo, LockoutState, QuoteResult
from licensing_server.tpm._transport import DeviceTransport, SwtpmTransport, TpmTransport
from licensing_server.tpm.credentials import make_credential, public_key_pem
from licensing_server.tpm.device import TpmDevice
from licensing_server.tpm.swtpm import SwtpmSimulator

__all__ = [
    "DEFAULT_AK_HANDLE",
    "AttestationKeyInfo",
    "DeviceTransport",
    "LockoutState",
    "QuoteResult",
    "SwtpmSimulator",
    "SwtpmTransport",
    "TpmCommandFailed",
    "TpmDevice",
    "TpmLockedOut",
    "TpmTransport",
    "TpmUnavailable",
    "make_credential",
    "public_key_pem",
    "translate",
]
